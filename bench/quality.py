"""Benchmark: what tinyveo's default training budget buys vs the article's model given the same wall
clock, on the built-in dataset. Prints the strict scorer's figures (tasks/score/) on the test
prompts, with the shuffled-prompt baseline beside, and VAE reconstruction PSNR, for both. Not a test.

    scripts/env.sh python bench/quality.py --data data
    scripts/env.sh python bench/quality.py --data data --tinyveo-checkpoint checkpoints   # reuse a default run
    scripts/env.sh python bench/quality.py --data data --curve-from checkpoints --curve-every 1500   # the curve

--curve-from CKPT: quality vs training minutes of one default run. The denoiser stage is trained
from CKPT's VAE and latents in chunks of --curve-every steps (resume is exact, so the chunks are one
run with the full-length LR schedule), and the splits in eval.splits are scored after each chunk.
Writes curve/<split>.tsv, curve.png and curve.json into --out; the minutes are training wall clock (the VAE
stage as recorded in CKPT, plus the denoiser chunks so far), evaluation time excluded.

    scripts/env.sh python bench/quality.py --compare-curves out/A out/B --out levers.png   # side by side

--eval-data DIR scores the curve on another prepared folder's splits, so runs trained on different
data (e.g. more clips) are compared on the same prompts.

Without --tinyveo-checkpoint, tinyveo is trained here with params.yaml (both stages) and its wall
clock (data loading, VAE stage, latent cache, denoiser stage) becomes the reference's budget. With it,
the budget is the sum of the stage times recorded in that checkpoint's summaries (the latent-cache
build is then not counted, which favours the reference). The reference is bench/reference/: the
article's model and loop over the same tensor cache and the same text encoder (pooled MiniLM).
Both are sampled for the same held-out prompts: tinyveo with params.yaml's sampler, the reference
with the article's 50 + 50 DDPM steps.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path


def reference_metrics(model, specs, cache, params, batch: int, seed: int) -> dict:
    import torch

    from reference.loop import generate_content
    from tasks.metrics import psnr
    from tasks.score import score_tensors

    videos, audios = [], []
    for k in range(0, len(specs), batch):
        group = specs[k:k + batch]
        video, audio = generate_content(model, [s.prompt for s in group],
                                        generator=torch.Generator().manual_seed(seed + k))
        videos += list(video)
        audios += [a.numpy() for a in audio]
    acc = score_tensors(videos, audios, [s.attributes for s in specs], params.cache.window_s, params.cache.sample_rate,
                        seed=seed)
    with torch.no_grad():
        rec = {}
        for field in ("video_base", "video_upsampled"):
            x = cache[field].float() / 255
            out = torch.cat([model.video_vae.decode(model.video_vae.encode(x[i:i + 16])) for i in range(0, len(x), 16)])
            rec[field.replace("video_", "video_psnr_")] = psnr(out, x)
    return {"scene": acc, "vae_reconstruction": rec}


def curve_rows(minutes: float, step: int, metrics: dict) -> list[dict]:
    from tasks.evaluate import curve_row

    return [curve_row(minutes, step, split, group["scene"]) for split, group in metrics["splits"].items()]


def write_curve(out: Path, rows: list[dict], title: str) -> None:
    """tinyveo evaluate's curve files (curve/<split>.tsv, curve.png) and curve.json for --compare-curves."""
    from tasks.evaluate import write_curve as write_curve_files

    write_curve_files(out, rows, title)
    (out / "curve.json").write_text(json.dumps(rows, indent=1) + "\n")


def compare_curves(folders: list[str], out: Path, split: str = "val") -> None:
    """One figure: each run's curve.json (its folder name as the label), one panel per score."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("color", "pitch", "count", "all_correct")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
    for folder in folders:
        rows = [r for r in json.loads((Path(folder) / "curve.json").read_text()) if r["split"] == split]
        for ax, key in zip(axes, keys):
            steps = [r.get("steps", r.get("step")) for r in rows]   # "step" in curves written before 2026-12-07
            ax.plot(steps, [r[key] or 0.0 for r in rows], marker="o", label=Path(folder).name)
    for ax, key in zip(axes, keys):
        ax.set(title=f"{split} {key}", xlabel="denoiser steps", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def quality_curve(data: str, source: Path, out: Path, params, every: int, eval_data: str | None = None) -> list[dict]:
    """Train the denoiser stage in chunks from SOURCE's VAE + latents; score eval.splits of `eval_data`
    (default: the training data) after each."""
    import shutil

    from tasks.evaluate import evaluate
    from tasks.train_denoiser import train_denoiser

    ckpt = out / "checkpoint"
    for stage in ("vae", "latents"):
        shutil.rmtree(ckpt / stage, ignore_errors=True)
        shutil.copytree(source / stage, ckpt / stage)
    minutes = json.loads((source / "vae" / "summary.json").read_text())["seconds"] / 60
    rows: list[dict] = []
    step, total = 0, params.train.denoiser_steps
    while step < total:
        t0 = time.perf_counter()
        summary = train_denoiser(data, ckpt, params, resume=step > 0, stop_after=every, progress=False,
                                 force_resume=True)  # its own run, in this process: the code is what was imported
        minutes += (time.perf_counter() - t0) / 60
        step = summary["steps"]
        metrics = evaluate(ckpt, out / f"eval-{step}", params, data=eval_data or data, progress=False, track=False)
        rows += curve_rows(minutes, step, metrics)
        for r in rows[-len(metrics["splits"]):]:
            print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)
        write_curve(out, rows, f"{total} steps")
    return rows


def main() -> None:
    import torch

    from reference.loop import ArticleModel, train_reference
    from tasks.evaluate import evaluate, split_specs
    from tasks.params import load_params
    from model import ConditioningEncoder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="prepared data folder (tinyveo prepare)")
    parser.add_argument("--tinyveo-checkpoint", help="a finished default run to reuse instead of training here")
    parser.add_argument("--budget-s", type=float, help="override the reference's wall-clock budget (seconds)")
    parser.add_argument("--out", default="outputs/bench-quality", help="metrics of both models as JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override (tinyveo)")
    parser.add_argument("--curve-from", help="checkpoint folder whose vae/ and latents/ the curve's run starts from")
    parser.add_argument("--curve-every", type=int, default=1500, help="denoiser steps between curve points")
    parser.add_argument("--eval-data", help="score the curve on this data folder's splits (default --data): "
                        "runs trained on different data then share one set of prompts")
    parser.add_argument("--compare-curves", nargs="+", metavar="DIR", help="plot these curve runs into --out (a .png)")
    args = parser.parse_args()
    if args.compare_curves:
        compare_curves(args.compare_curves, Path(args.out))
        return

    # the curve scores each chunk here, so its run keeps no snapshots for evaluate to score again
    no_snapshots = ["train.snapshot_every=null"] if args.curve_from else []
    params = load_params(overrides=[*args.set, "train.mlflow=false", *no_snapshots])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = params.seed
    if args.curve_from:
        print(f"# quality vs training minutes  {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
        quality_curve(args.data, Path(args.curve_from), out, params, args.curve_every, args.eval_data)
        return

    tmp = tempfile.TemporaryDirectory()
    if args.tinyveo_checkpoint:
        ckpt = Path(args.tinyveo_checkpoint)
        stages = {}
        for stage in ("vae", "denoiser"):
            summary = json.loads((ckpt / stage / "summary.json").read_text())
            stages[stage] = {"steps": summary["steps"], "seconds": summary["seconds"]}
        tinyveo_s = sum(s["seconds"] for s in stages.values())
        how = f"stage times recorded in {ckpt}"
    else:
        from tasks.encode_latents import encode_latents
        from tasks.train_denoiser import train_denoiser
        from tasks.train_vae import train_vae

        ckpt = Path(tmp.name) / "tinyveo"
        t0 = time.perf_counter()
        vae = train_vae(args.data, ckpt, params)
        encode_latents(args.data, ckpt, params)
        stages = {"vae": vae, "denoiser": train_denoiser(args.data, ckpt, params)}
        tinyveo_s = time.perf_counter() - t0
        how = "trained here"
    budget = args.budget_s or tinyveo_s
    print(f"tinyveo training: {tinyveo_s:.0f} s ({how}); reference budget: {budget:.0f} s", flush=True)

    tv = evaluate(ckpt, out / "tinyveo", params, data=args.data, track=False)
    tv_scene = tv["splits"]["test"]["scene"]

    encoder = ConditioningEncoder.from_params(params.conditioning)
    torch.manual_seed(seed)
    ref_model = ArticleModel(encoder)
    ref_train = train_reference(ref_model, Path(args.data) / "cache", budget_s=budget, seed=seed)
    specs, cache, _ = split_specs(args.data, ["test"], params.eval.num_prompts)["test"]
    split = "test"
    vae_cache = {k: v[: params.eval.num_vae_clips] for k, v in cache.items()}
    ref = reference_metrics(ref_model, specs, vae_cache, params, params.eval.batch_size, seed)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "split": split, "prompts": len(specs),
        "tinyveo": {"train_seconds": tinyveo_s, "stages": stages, "scene": tv_scene,
                    "vae_reconstruction": tv["vae_reconstruction"], "sampling": tv["sampling"]},
        "reference": {"train_seconds": ref_train.seconds, "steps": ref_train.steps, "epochs": ref_train.epochs,
                      "final_loss_mean_last_100": sum(ref_train.losses[-100:]) / max(len(ref_train.losses[-100:]), 1),
                      **ref, "sampling": "ddpm 50 + 50 steps, no guidance"},
        "peak_rss_gb": rss_gb,
    }
    (out / "quality.json").write_text(json.dumps(result, indent=1) + "\n")

    print(f"\n# quality per CPU-minute  {result['machine']}  torch {torch.__version__}")
    print(f"# {len(specs)} {split} prompts; tinyveo {tinyveo_s:.0f} s of training "
          "(" + ", ".join(f"{k} {v['steps']} steps" for k, v in stages.items()) + "); "
          f"reference {ref_train.seconds:.0f} s ({ref_train.steps} steps at batch 1, {ref_train.epochs:.2f} epochs)")
    keys = ["color", "shape", "motion", "pitch", "object_all", "all_correct"]
    print(f"{'':<24}" + "".join(f"{k:>12}" for k in keys))
    for name, acc in (("tinyveo", tv_scene), ("reference (article)", ref["scene"]),
                      ("shuffled prompts", tv_scene["baselines"]["shuffled"])):
        print(f"{name:<24}" + "".join(f"{acc[k]:>12.2f}" for k in keys))
    tvr, rr = tv["vae_reconstruction"], ref["vae_reconstruction"]
    print(f"VAE PSNR 32 px / 64 px: tinyveo {tvr['video_psnr_base']:.1f} / {tvr['video_psnr_upsampled']:.1f} dB, "
          f"reference {rr['video_psnr_base']:.1f} / {rr['video_psnr_upsampled']:.1f} dB")
    print(f"peak RSS of this process: {rss_gb:.2f} GB; JSON: {out / 'quality.json'}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
