"""Benchmark: training throughput of the VAE and denoiser stages on the prepared cache: samples/s,
the share of step time spent assembling batches (data wait), and peak RSS. Not a test.

    scripts/env.sh python bench/train_throughput.py --data data [--steps 40]
"""
from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch

    from tasks.params import load_params
    from tasks.train import BatchCursor, load_cache_tensors, train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    params = load_params(overrides=[f"train.vae_steps={args.steps}", f"train.denoiser_steps={args.steps}",
                                    "train.mlflow=false", f"train.checkpoint_every={10**9}"])
    t = params["train"]
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(args.data, Path(tmp), params, progress=False)
    data, manifest = load_cache_tensors(Path(args.data) / "cache")
    # Data wait: the same batch assembly the loops do (index the in-memory cache), timed alone.
    cursor = BatchCursor(len(manifest), int(t["batch_size"]), 0)
    start = time.perf_counter()
    for _ in range(args.steps):
        rows = torch.tensor(cursor.next())
        for field in ("video_base", "video_upsampled", "audio"):
            data[field][rows].float()
    data_s = (time.perf_counter() - start) / args.steps
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads; {len(manifest)} cached items")
    print(f"{'stage':<10}{'batch':>7}{'steps':>7}{'s/step':>9}{'samples/s':>11}{'data wait':>11}")
    for stage, batch in (("vae", int(t["vae_batch_size"])), ("denoiser", int(t["batch_size"]))):
        s = summary["stages"][stage]
        per_step = s["seconds"] / s["steps"]
        print(f"{stage:<10}{batch:>7}{s['steps']:>7}{per_step:>9.3f}{batch / per_step:>11.1f}{data_s / per_step:>10.1%}")
    print(f"peak RSS: {rss_gb:.2f} GB")


if __name__ == "__main__":
    main()
