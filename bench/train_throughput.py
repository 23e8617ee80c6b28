"""Benchmark: training throughput of the VAE and denoiser stages on the prepared cache: samples/s,
the share of step time spent assembling batches (data wait), and peak RSS; then tinyveo's denoiser
step against the article's (bench/reference) at identical width, depth, heads and batch, timed in
alternating rounds in this one run. Not a test.

    scripts/env.sh python bench/train_throughput.py --data data [--steps 40] [--compare-steps 20]

The comparison times two things for each model: the denoiser step alone (noise, forward and backward
of base + upsampler, clipping, AdamW) on latents of each model's own shapes, and the whole training
step as each loop runs it: the article re-encodes video, audio and captions through the VAEs and the
text encoder every step, tinyveo reads cached latents and caption states. tinyveo trains in its
train.precision (bf16 autocast where the hardware runs bf16 natively; --precision fp32 to compare);
the article's loop runs in fp32 as written, and its denoisers are also timed under tinyveo's autocast
so the table shows how much of the ratio is precision. tinyveo's step includes its EMA update, and is
also timed with its upsampler on every item of the batch, the article's work per step. Last, the
step's FLOPs (matrix products, forward + backward) per second against the measured matmul ceiling of
fp32 and bf16 on this machine.
"""
from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path


def _timed(fn, rounds: int, steps: int) -> list[float]:
    """fn() once per step; `rounds` blocks of `steps`, each block's mean seconds per step."""
    import time as _t

    out = []
    for _ in range(rounds):
        t0 = _t.perf_counter()
        for _ in range(steps):
            fn()
        out.append((_t.perf_counter() - t0) / steps)
    return out


def matmul_ceiling(dtype) -> dict[str, float]:
    """Measured FLOP/s of plain matrix products in `dtype`: the denoiser's typical shape and 2048^3."""
    import torch

    out = {}
    for name, (m, k, n) in (("4800x128@128x512", (4800, 128, 512)), ("2048^3", (2048, 2048, 2048))):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b
        reps = max(3, int(2e10 // (2 * m * k * n)))
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        out[name] = 2 * m * k * n * reps / (time.perf_counter() - t0)
    return out


def report_flops(step, seconds: dict[str, float], amp) -> None:
    """FLOPs of one training step (torch's FlopCounterMode: matrix products, forward + backward) at
    each measured step time (eager, compiled), against the measured matmul ceiling of the precision
    the step runs in."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from model.precision import cpu_has_native_bf16

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    label = "bf16" if amp is not None else "fp32"
    dtypes = [torch.float32] + [torch.bfloat16] * (amp is not None or cpu_has_native_bf16())
    if torch.bfloat16 not in dtypes:   # emulated: a 2048^3 product takes about a minute
        print("\n# bf16 matmul ceiling not measured: this CPU has no native bf16 (the step runs in fp32)")
    ceilings = {dtype: matmul_ceiling(dtype) for dtype in dtypes}
    for name, sec in seconds.items():
        achieved = flops / sec
        print(f"\n# tinyveo step, {name}: {flops / 1e9:.1f} GFLOP (matrix products, forward + backward) in {sec:.3f} s = "
              f"{achieved / 1e12:.3f} TFLOP/s, in {label}")
        for dtype, shapes in ceilings.items():
            for shape, ceiling in shapes.items():
                mark = "  <- the step's precision" if (dtype is torch.bfloat16) == (amp is not None) else ""
                print(f"matmul {shape:<18} {str(dtype).split('.')[-1]:<9} {ceiling / 1e12:7.3f} TFLOP/s; "
                      f"the step reaches {achieved / ceiling:6.1%} of it{mark}")


def profile_step(step, steps: int = 5, top: int = 15) -> None:
    """Where one training step's time goes: torch.profiler over `steps` steps, operators by self CPU
    time, with the share of the matrix products (what the FLOP count measures) against the rest."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    print(f"\n# profile of tinyveo's step ({steps} steps): matrix products {matmul / total:.1%} of self CPU time")
    print(f"{'operator':<44}{'calls/step':>11}{'ms/step':>9}{'share':>8}")
    for e in events[:top]:
        print(f"{e.key[:43]:<44}{e.count / steps:>11.0f}{e.self_cpu_time_total / steps / 1e3:>9.2f}"
              f"{e.self_cpu_time_total / total:>8.1%}")


MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
              "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::convolution",
              "aten::mkldnn_convolution", "aten::convolution_backward"}


def compare_with_reference(params: dict, data_dir: Path, steps: int, rounds: int = 3, profile: bool = False) -> None:
    """tinyveo vs the article's denoiser at identical dims and batch, alternating rounds."""
    import copy
    import statistics
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference.article import ReferenceConfig
    from reference.loop import ArticleModel, ArticleDataset, article_loss, collate
    from model import (ConditioningEncoder, DenoiserInputs, JointDenoisingTransformer, TextEmbedding,
                       base_denoiser_loss, from_params, noise_schedulers, upsampler_loss)
    from tasks.cache import MultiModalDataset
    from model.precision import autocast
    from tasks.training import make_optimizer, training_precision, update_ema

    torch.manual_seed(0)
    c, d, t = params.conditioning, params.diffusion, params.train
    batch = t.batch_size
    encoder = ConditioningEncoder.from_params(c)
    cfg = from_params(params, context_dim=encoder.text_dim)
    b_cfg = cfg.base
    # tinyveo: base + upsampler on random latents (shapes are what counts) and cached caption states.
    base, up = JointDenoisingTransformer(cfg.base), JointDenoisingTransformer(cfg.upsampler)
    sched, up_sched = noise_schedulers(d)
    items = ArticleDataset(MultiModalDataset(data_dir / "cache", split="train"))
    real = collate([items[i] for i in range(batch)])
    # The caption states of the batch's real captions (their padding decides how many tokens run).
    ctx = encoder.get_text_embeds(list(real["raw_caption"]))
    v_base, v_up = torch.randn(batch, *cfg.base.video_latent_shape), torch.randn(batch, *cfg.upsampler.video_latent_shape)
    aud = torch.randn(batch, *cfg.base.audio_latent_shape)
    img_b, img_u = torch.randn(batch, *cfg.base.image_latent_shape), torch.randn(batch, *cfg.upsampler.image_latent_shape)
    has_image = torch.rand(batch) < 0.25
    n_up = min((t.upsampler_batch_size or batch), batch)  # as training: the upsampler sees the first n_up items

    amp = training_precision(t, torch.device("cpu"))  # as tinyveo trains: train.precision (bf16 autocast where native)

    def make_step(base, up):
        """tinyveo's training step on these two denoisers, with their own optimizer and EMA copies."""
        tv_params = list(base.parameters()) + list(up.parameters())
        tv_opt = make_optimizer(tv_params, 1e-4, 0.0)  # as tinyveo trains (fused AdamW)
        base_ema, up_ema = copy.deepcopy(base).requires_grad_(False), copy.deepcopy(up).requires_grad_(False)

        def tinyveo_step(n_up: int = n_up) -> None:
            up_ctx = TextEmbedding(ctx.pooled[:n_up], ctx.tokens[:n_up], ctx.mask[:n_up])
            tv_opt.zero_grad(set_to_none=True)
            with autocast("cpu", amp):
                inputs = DenoiserInputs(ctx, image_latent=img_b, has_image=has_image)
                loss = base_denoiser_loss(base, sched, v_base, aud, inputs, 0.1).total
                up_inputs = DenoiserInputs(up_ctx, image_latent=img_u[:n_up], has_image=has_image[:n_up])
                loss = loss + upsampler_loss(up, up_sched, v_up[:n_up], v_base[:n_up], up_inputs, 250, 0.1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tv_params, 1.0)
            tv_opt.step()
            for ema, model in ((base_ema, base), (up_ema, up)):   # as tinyveo's loop: the EMA is part of its step
                update_ema(ema, model, t.ema_decay)
        return tinyveo_step

    tinyveo_step = make_step(base, up)
    # The same step with the transformer blocks compiled (train.compile): copies of the same weights.
    compiled_step = make_step(copy.deepcopy(base).compile_blocks(), copy.deepcopy(up).compile_blocks())
    build = time.perf_counter()
    compiled_step()
    build = time.perf_counter() - build

    # The article's model at the same width/depth/heads, its own latent shapes and loss.
    ref = ArticleModel(encoder, ReferenceConfig(dim=b_cfg.dim, depth=b_cfg.depth, heads=b_cfg.heads,
                                                text_dim=encoder.text_dim))
    ref_params = list(ref.parameters())
    ref_opt = torch.optim.AdamW(ref_params, lr=1e-4)  # as the article's loop
    with torch.no_grad():
        r_base, r_up = ref.video_vae.encode(real["video_base"]), ref.video_vae.encode(real["video_upsampled"])
        r_aud, r_ctx = ref.audio_vae.encode(real["audio"]), ref.context(real["raw_caption"])

    def reference_step(encode: bool, dtype=None) -> None:
        ref_opt.zero_grad(set_to_none=True)
        lat_b, lat_u, lat_a, context = r_base, r_up, r_aud, r_ctx
        if encode:  # the article's loop: every step through the VAEs and the text encoder
            with torch.no_grad():
                lat_b, lat_u = ref.video_vae.encode(real["video_base"]), ref.video_vae.encode(real["video_upsampled"])
                lat_a, context = ref.audio_vae.encode(real["audio"]), ref.context(real["raw_caption"])
        with autocast("cpu", dtype):
            loss = article_loss(ref, lat_b, lat_u, lat_a, context, torch.randint(0, 1000, (batch,)).long())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref_params, 1.0)
        ref_opt.step()

    # The article's loop in fp32 as written; its denoisers also under tinyveo's autocast, to show how
    # much of the ratio is precision and how much design.
    runs = {"tv": tinyveo_step, "tv_all": lambda: tinyveo_step(batch), "tv_compiled": compiled_step,
            "den": lambda: reference_step(False),
            "full": lambda: reference_step(True)}
    if amp is not None:
        runs["den_amp"] = lambda: reference_step(False, amp)
    for fn in runs.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):  # alternate so both see the same background load
        for k, fn in runs.items():
            times[k] += _timed(fn, 1, steps)
    m_tv, m_den, m_full = (statistics.median(times[k]) for k in ("tv", "den", "full"))
    n = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"\n# denoiser vs the article's at identical dims: width {b_cfg.dim}, depth {b_cfg.depth}, heads "
          f"{b_cfg.heads}, batch {batch}; median of {rounds} alternating rounds of {steps} steps; tinyveo in "
          f"{'bf16 autocast' if amp is not None else 'fp32'} (train.precision={t.precision})")
    print(f"{'model':<44}{'params (M)':>11}{'s/step':>9}{'samples/s':>11}{'tinyveo x':>11}")
    rows = [
        (f"tinyveo denoisers (base + upsampler on {n_up} of {batch})", n(base) + n(up), m_tv),
        (f"tinyveo, upsampler on all {batch} (the article's work)", n(base) + n(up), statistics.median(times["tv_all"])),
        (f"tinyveo, blocks compiled (first step {build:.0f} s)", n(base) + n(up), statistics.median(times["tv_compiled"])),
        ("article denoisers, latents given", n(ref.base_denoiser) + n(ref.upsampler_denoiser), m_den),
        ("article loop step (re-encodes VAEs + text)", n(ref.base_denoiser) + n(ref.upsampler_denoiser), m_full),
    ]
    if amp is not None:
        rows.append(("article denoisers, same bf16 autocast", n(ref.base_denoiser) + n(ref.upsampler_denoiser),
                     statistics.median(times["den_amp"])))
    for name, params_m, sec in rows:
        print(f"{name:<44}{params_m:>11.2f}{sec:>9.3f}{batch / sec:>11.1f}{sec / m_tv:>10.2f}x")
    report_flops(tinyveo_step, {"eager": m_tv, "blocks compiled": statistics.median(times["tv_compiled"])}, amp)
    if profile:
        profile_step(tinyveo_step)


def main() -> None:
    import torch

    from model.precision import PRECISIONS
    from tasks.params import load_params
    from tasks.cache import MultiModalDataset
    from tasks.encode_latents import encode_latents
    from tasks.train_denoiser import train_denoiser
    from tasks.train_vae import train_vae
    from tasks.training import BatchCursor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--compare-steps", type=int, default=10, help="steps per round of the reference comparison")
    parser.add_argument("--compare-only", action="store_true", help="skip the stage throughput part")
    parser.add_argument("--profile", action="store_true", help="also profile tinyveo's step by operator")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="tinyveo's training precision (default: params train.precision); the article's runs in fp32")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter for tinyveo (e.g. denoiser.base.dim=256); repeatable")
    args = parser.parse_args()
    overrides = ([] if args.precision is None else [f"train.precision={args.precision}"]) + args.set
    if args.compare_only:
        compare_with_reference(load_params(overrides=overrides), Path(args.data), args.compare_steps,
                               profile=args.profile)
        return
    # audio_vae_steps null: every VAE step times both VAEs
    params = load_params(overrides=[f"train.vae_steps={args.steps}", "train.audio_vae_steps=null",
                                    f"train.denoiser_steps={args.steps}", "train.mlflow=false",
                                    f"train.checkpoint_every={10**9}", *overrides])
    t = params.train
    with tempfile.TemporaryDirectory() as tmp:
        summary = {"vae": train_vae(args.data, tmp, params, progress=False)}
        encode_latents(args.data, tmp, params)
        summary["denoiser"] = train_denoiser(args.data, tmp, params, progress=False)
    dataset = MultiModalDataset(Path(args.data) / "cache")
    data, manifest = dataset.tensors(), dataset.manifest
    # Data wait: the same batch assembly the loops do (index the in-memory cache), timed alone.
    cursor = BatchCursor(len(manifest), t.batch_size, 0)
    start = time.perf_counter()
    for _ in range(args.steps):
        rows = torch.tensor(cursor.next())
        for field in ("video_base", "video_upsampled", "audio"):
            data[field][rows].float()
    data_s = (time.perf_counter() - start) / args.steps
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads; {len(manifest)} cached items")
    print(f"{'stage':<10}{'batch':>7}{'steps':>7}{'s/step':>9}{'samples/s':>11}{'data wait':>11}")
    for stage, batch in (("vae", t.vae_batch_size), ("denoiser", t.batch_size)):
        s = summary[stage]
        per_step = s["seconds"] / s["steps"]
        print(f"{stage:<10}{batch:>7}{s['steps']:>7}{per_step:>9.3f}{batch / per_step:>11.1f}{data_s / per_step:>10.1%}")
    print(f"peak RSS: {rss_gb:.2f} GB")
    compare_with_reference(params, Path(args.data), args.compare_steps, profile=args.profile)


if __name__ == "__main__":
    main()
