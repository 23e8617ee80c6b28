"""Benchmark: seconds per generated clip (base + upsampler + VAE decoders) for each sampler and step
count, at batch 1 and batch 8, with the attribute accuracy each setting reaches on held-out prompts.
Ratios are against the article's setting (DDPM, 50 steps per stage), measured in the same run on the
same trained checkpoint, and against the article's own pipeline (bench/reference: its denoisers at
tinyveo's base width unless --article-width, 50 + 50 DDPM steps, no guidance, its VAE decoders),
timed in the same run, as it is and with denormal floats flushed to zero (an untrained model's
sampling can drift into denormals, which x86 computes ~100x slower). The article's model is not
trained here; its accuracy is in bench/quality.py. Not a test.

    scripts/env.sh python bench/generate_latency.py --checkpoint checkpoints --data data
    scripts/env.sh python bench/generate_latency.py --settings dpm:10,dpm:20,ddpm:50 --prompts 48
"""
from __future__ import annotations

import argparse
import platform
import time

KEYS = ("color", "shape", "motion", "pitch", "all_correct")


def main() -> None:
    import numpy as np
    import torch

    from model.precision import PRECISIONS, autocast_dtype
    from tasks.checkpoint import load_pipeline
    from tasks.evaluate import split_specs
    from tasks.samples import sample_settings
    from tasks.score import score_tensors

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints")
    parser.add_argument("--data", default="data", help="prepared data folder (its val prompts: this is tuning)")
    parser.add_argument("--settings", default="dpm:10/5,dpm:10,dpm:20,ddim:20,ddpm:50",
                        help="comma list of sampler:steps[/upsampler_steps] (ddpm:50 is the article's setting)")
    parser.add_argument("--prompts", type=int, default=24, help="val prompts per setting for the scores")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: params sample.guidance)")
    parser.add_argument("--guidance-interval", default=None,
                        help="LO,HI timesteps where guidance applies, or 'all' (default: params sample.guidance_interval)")
    parser.add_argument("--repeats", type=int, default=3, help="timed batch-1 clips per setting (median)")
    parser.add_argument("--article-width", type=int, default=None, help="the article's denoiser width (default: "
                        "tinyveo's base width, like for like; the article's own is 256)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="tinyveo's sampling precision (default: params sample.precision); the article's runs in fp32")
    args = parser.parse_args()

    from tasks.params import load_params

    overrides = [] if args.precision is None else [f"sample.precision={args.precision}"]
    params = load_params(overrides=overrides)
    defaults = sample_settings(params.sample, guidance=args.guidance)  # reads and checks the sample group
    precision = defaults["precision"]
    guidance = defaults["guidance"]
    interval = defaults["guidance_interval"] if args.guidance_interval is None else \
        (None if args.guidance_interval == "all" else tuple(int(v) for v in args.guidance_interval.split(",")))
    torch.manual_seed(0)
    pipe, _ = load_pipeline(args.checkpoint)
    split = "val"
    specs, _, _ = split_specs(args.data, [split], args.prompts)[split]
    prompts = [s.prompt for s in specs]
    def parse(setting: str) -> tuple[str, int, int]:
        sampler, steps = setting.split(":")
        base, _, up = steps.partition("/")
        return sampler, int(base), int(up or base)

    settings = [parse(s) for s in args.settings.split(",")]
    for n in (1, 8):  # warm-up at both batch sizes (first-call allocations, oneDNN primitives, lazy imports)
        pipe.generate_content(prompts[:n], steps=2, precision=precision)

    rows = []
    for sampler, steps, up_steps in settings:
        one = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            pipe.generate_content(prompts[r % len(prompts)], steps=steps, sampler=sampler, guidance=guidance,
                                  guidance_interval=interval, seed=r,
                                  upsampler_steps=up_steps, precision=precision)
            one.append(time.perf_counter() - t0)
        videos, audios, t8 = [], [], []
        for k in range(0, len(prompts), 8):
            t0 = time.perf_counter()
            out = pipe.generate_content(prompts[k:k + 8], steps=steps, sampler=sampler, guidance=guidance,
                                        guidance_interval=interval, seed=k,
                                        upsampler_steps=up_steps, precision=precision)
            t8.append((time.perf_counter() - t0) / len(prompts[k:k + 8]))
            videos += list(out.video)
            audios += [a.numpy() for a in out.audio]
        scores = score_tensors(videos, audios, [s.attributes for s in specs], params.cache.window_s,
                               out.sample_rate)
        name = f"{sampler}:{steps}" + (f"/{up_steps}" if up_steps != steps else "")
        rows.append({"setting": name, "s_per_clip_b1": float(np.median(one)), "s_per_clip_b8": float(np.median(t8)),
                     **{k: scores[k] for k in KEYS}, "shuffled_all_correct": scores["baselines"]["shuffled"]["all_correct"]})

    # The article's pipeline, timed the same way (batch 1 repeats, then batches of 8).
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference.article import ReferenceConfig
    from reference.loop import ArticleModel, generate_content

    width = args.article_width or pipe.base.config.dim
    article = ArticleModel(pipe.encoder, ReferenceConfig(dim=width, text_dim=pipe.encoder.text_dim))

    def time_article() -> dict[str, float]:
        for n in (1, 8):
            generate_content(article, prompts[:n], steps=2)
        one, t8 = [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            # a list of one: the article's loop takes a sequence, and a bare string is a batch of its characters
            generate_content(article, [prompts[r % len(prompts)]], generator=torch.Generator().manual_seed(r))
            one.append(time.perf_counter() - t0)
        for k in range(0, min(len(prompts), 16), 8):
            t0 = time.perf_counter()
            generate_content(article, prompts[k:k + 8], generator=torch.Generator().manual_seed(k))
            t8.append((time.perf_counter() - t0) / len(prompts[k:k + 8]))
        return {"s_per_clip_b1": float(np.median(one)), "s_per_clip_b8": float(np.median(t8))}

    article_row = time_article()
    torch.set_flush_denormal(True)
    flushed_row = time_article()
    torch.set_flush_denormal(False)

    ref = next((r for r in rows if r["setting"] == "ddpm:50"), rows[-1])
    print(f"# generate latency  torch {torch.__version__}  threads {torch.get_num_threads()}  {platform.processor() or platform.machine()}")
    amp = "bf16 autocast" if autocast_dtype(precision, pipe.device) is not None else "fp32"
    print(f"# {len(prompts)} {split} prompts, guidance {guidance} at t in {interval or 'every step'}, tinyveo in {amp} "
          f"(sample.precision={precision}); ratio = {ref['setting']} time / this time")
    keys = list(KEYS)
    print(f"{'setting':<10} {'s/clip b1':>9} {'s/clip b8':>9} {'x b1':>6} {'x b8':>6} " + " ".join(f"{k:>9}" for k in keys))
    for r in rows:
        print(f"{r['setting']:<10} {r['s_per_clip_b1']:>9.3f} {r['s_per_clip_b8']:>9.3f} "
              f"{ref['s_per_clip_b1'] / r['s_per_clip_b1']:>6.1f} {ref['s_per_clip_b8'] / r['s_per_clip_b8']:>6.1f} "
              + " ".join(f"{r[k]:>9.2f}" for k in keys))
    print(f"{'article':<10} {article_row['s_per_clip_b1']:>9.3f} {article_row['s_per_clip_b8']:>9.3f} "
          f"{ref['s_per_clip_b1'] / article_row['s_per_clip_b1']:>6.1f} {ref['s_per_clip_b8'] / article_row['s_per_clip_b8']:>6.1f}"
          f"   (the article's pipeline at width {width}: ddpm 50 + 50, no guidance; accuracy: bench/quality.py)")
    print(f"{'article, denormals flushed':<10} {flushed_row['s_per_clip_b1']:>9.3f} {flushed_row['s_per_clip_b8']:>9.3f}"
          f"   (b1 / b8 per clip: {article_row['s_per_clip_b1'] / article_row['s_per_clip_b8']:.1f}x as it is, "
          f"{flushed_row['s_per_clip_b1'] / flushed_row['s_per_clip_b8']:.1f}x flushed)")
    print("# speed-up of each tinyveo setting over the article's pipeline (s/clip article / s/clip setting):")
    for r in rows:
        print(f"#   {r['setting']:<10} b1 {article_row['s_per_clip_b1'] / r['s_per_clip_b1']:>6.1f}x   "
              f"b8 {article_row['s_per_clip_b8'] / r['s_per_clip_b8']:>6.1f}x")
    print("shuffled-prompt all_correct per setting: " + ", ".join(f"{r['setting']} {r['shuffled_all_correct']:.2f}"
                                                              for r in rows))


if __name__ == "__main__":
    main()
