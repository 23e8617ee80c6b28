"""Benchmark: the whole denoiser training step (base + upsampler forward and backward, clipping,
AdamW, EMA) of several configurations side by side, in alternating rounds of one run, eager, in
train.precision. Then where the default step's time goes (base, upsampler, optimizer + EMA). Not a test.

    scripts/env.sh python bench/step_configs.py --data D --checkpoint C \
        [--config NAME=KEY=VALUE,KEY=VALUE ...] [--rounds 4] [--steps 10]

C must hold the latents of D (`tinyveo encode-latents`). Without --config: the default, temporal
video tokens of 4 and of 2 latent frames with factorised attention.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch

CONFIGS = {
    "default": [],
    "patch [4,2,2] factorised": ["denoiser.base.video_patch=[4,2,2]", "denoiser.base.attention=factorised"],
    "patch [2,2,2] factorised": ["denoiser.base.video_patch=[2,2,2]", "denoiser.base.attention=factorised"],
}


def build(sets: list[str], latents, widths, rows):
    """Modules, EMA copies, optimizer, loss_fn and precision of one configuration."""
    from model import JointDenoisingTransformer, from_params
    from tasks.params import load_params
    from tasks.train_denoiser import denoiser_loss_fn
    from tasks.training import make_optimizer, training_precision

    params = load_params(None, sets)
    cfg = from_params(params, **widths)
    torch.manual_seed(0)
    modules = {"base": JointDenoisingTransformer(cfg.base), "upsampler": JointDenoisingTransformer(cfg.upsampler)}
    for m in modules.values():
        m.set_text_statistics(latents["text_pooled"][rows], latents["text_tokens"][rows], latents["text_mask"][rows])
    emas = {k: copy.deepcopy(m).requires_grad_(False) for k, m in modules.items()}
    weights = [p for m in modules.values() for p in m.parameters()]
    optimizer = make_optimizer(weights, params.train.lr, params.train.weight_decay)
    loss_fn = denoiser_loss_fn(modules, latents, rows, params, torch.device("cpu"))
    return params, modules, emas, weights, optimizer, loss_fn, training_precision(params.train, torch.device("cpu"))


def step_fn(params, modules, emas, weights, optimizer, loss_fn, precision, n_rows: int):
    """One training step as run_loop takes it, on a random batch."""
    from model import BatchDraws
    from tasks.training import update_ema

    generator = torch.Generator().manual_seed(0)
    batch = params.train.batch_size

    def step() -> None:
        idx = torch.randint(n_rows, (batch,), generator=generator).tolist()
        with torch.autocast("cpu", dtype=precision or torch.bfloat16, enabled=precision is not None):
            loss = sum(loss_fn(idx, BatchDraws.of(generator)).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, params.train.grad_clip)
        optimizer.step()
        for k in modules:
            update_ema(emas[k], modules[k], params.train.ema_decay)

    return step


def breakdown(latents, widths, rows) -> dict[str, float]:
    """Seconds of the default step's parts: base forward + backward (the batch), upsampler forward +
    backward (its share), clipping + AdamW + EMA."""
    from model import BatchDraws, base_denoiser_loss, noise_schedulers, upsampler_loss
    from tasks.train_denoiser import batch_inputs, upsampler_items
    from tasks.training import update_ema

    params, modules, emas, weights, optimizer, _, _ = build([], latents, widths, rows)
    d, generator = params.diffusion, torch.Generator().manual_seed(0)
    scheduler, up_scheduler = noise_schedulers(d)
    batch = torch.tensor(rows[:params.train.batch_size])
    up = batch[:upsampler_items(params, len(batch))]

    def base() -> None:
        loss = base_denoiser_loss(modules["base"], scheduler, latents["video_base"][batch], latents["audio"][batch],
                                  batch_inputs(latents, batch, "base", "cpu"), d.cond_dropout, BatchDraws.of(generator))
        (loss.video + loss.audio).backward()

    def upsampler() -> None:
        upsampler_loss(modules["upsampler"], up_scheduler, latents["video_upsampled"][up], latents["video_base"][up],
                       batch_inputs(latents, up, "upsampled", "cpu"), d.upsampler_max_noise_aug, d.cond_dropout,
                       BatchDraws.of(generator)).backward()

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(weights, params.train.grad_clip)
        optimizer.step()
        for k in modules:
            update_ema(emas[k], modules[k], params.train.ema_decay)

    out = {}
    for name, fn in ((f"base forward + backward ({len(batch)} items)", base),
                     (f"upsampler forward + backward ({len(up)} items)", upsampler), ("clip + AdamW + EMA", update)):
        fn()
        t0 = time.perf_counter()
        for _ in range(10):
            fn()
        out[name] = (time.perf_counter() - t0) / 10
    return out


def main() -> None:
    from tasks.cache import read_manifest
    from tasks.checkpoint import read_latents
    from tasks.training import training_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared data folder")
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder with the latents of --data")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=KEY=VALUE,KEY=VALUE",
                        help="a configuration to time (repeatable); without it the built-in three")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    args = parser.parse_args()
    configs = {c.split("=", 1)[0]: [s for s in c.split("=", 1)[1].split(",") if s] for c in args.config} or CONFIGS

    manifest = read_manifest(Path(args.data) / "cache")
    latents, widths = read_latents(args.checkpoint, manifest["key"].tolist())
    rows = training_rows(manifest)
    steps = {}
    for name, sets in configs.items():
        built = build(sets, latents, widths, rows)
        steps[name] = step_fn(*built, n_rows=len(rows))
        print(f"{name}: precision {built[-1] or 'fp32'}", flush=True)
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps)
    print(f"\n# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| configuration | s/step by round | median | x the first |\n| --- | --- | --- | --- |")
    first = statistics.median(next(iter(times.values())))
    for name, ts in times.items():
        print(f"| {name} | {' '.join(f'{t:.3f}' for t in ts)} | {statistics.median(ts):.3f} | "
              f"{statistics.median(ts) / first:.2f}x |")
    print("\n| part of the default step | s |\n| --- | --- |")
    for name, s in breakdown(latents, widths, rows).items():
        print(f"| {name} | {s:.3f} |")


if __name__ == "__main__":
    main()
