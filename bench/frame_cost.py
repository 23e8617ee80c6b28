"""Benchmark: what the cache's frame count costs a denoiser training step. The default base +
upsampler step (noise, forward, backward, clipping, AdamW, in train.precision) on random latents
and random caption states of each layout's shapes, layouts timed in alternating rounds in this one
run. Not a test.

    scripts/env.sh python bench/frame_cost.py [--layouts 16:24,32:48] [--steps 20] [--rounds 3]

A layout is FRAMES:TEXT_TOKENS (16:24 is v1's cache and caption length, 32:48 the events world's).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time


def make_step(frames: int, tokens: int):
    """A closure running one training step of the default denoisers at this layout."""
    import torch

    from model import DenoiserInputs, JointDenoisingTransformer, TextEmbedding, base_denoiser_loss, noise_schedulers
    from model import from_params, upsampler_loss
    from model.precision import autocast
    from tasks.params import load_params
    from tasks.training import make_optimizer, training_precision

    p = load_params(overrides=[f"cache.num_frames={frames}", f"conditioning.max_text_tokens={tokens}"])
    cfg, t, d = from_params(p), p.train, p.diffusion
    torch.manual_seed(0)
    base, up = JointDenoisingTransformer(cfg.base), JointDenoisingTransformer(cfg.upsampler)
    weights = list(base.parameters()) + list(up.parameters())
    opt = make_optimizer(weights, t.lr, t.weight_decay)
    sched, up_sched = noise_schedulers(d)
    b, n_up = t.batch_size, t.upsampler_batch_size
    ctx = TextEmbedding(torch.randn(b, 384), torch.randn(b, tokens, 384), torch.ones(b, tokens, dtype=torch.bool))
    v_base, aud = torch.randn(b, *cfg.base.video_latent_shape), torch.randn(b, *cfg.base.audio_latent_shape)
    v_up = torch.randn(n_up, *cfg.upsampler.video_latent_shape)
    amp = ("cpu", training_precision(t, torch.device("cpu")))
    inputs, up_inputs = DenoiserInputs(ctx), DenoiserInputs(ctx).select(torch.arange(n_up))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(*amp):
            loss = base_denoiser_loss(base, sched, v_base, aud, inputs, d.cond_dropout).total
            loss = loss + upsampler_loss(up, up_sched, v_up, v_base[:n_up], up_inputs, d.upsampler_max_noise_aug,
                                         d.cond_dropout)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, t.grad_clip)
        opt.step()

    return step, amp


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", default="16:24,32:48", help="comma list of FRAMES:TEXT_TOKENS")
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    layouts = [tuple(int(v) for v in item.split(":")) for item in args.layouts.split(",")]
    steps = {lay: make_step(*lay) for lay in layouts}
    for fn, _ in steps.values():  # warm-up: first-call allocations, oneDNN primitives
        for _ in range(3):
            fn()
    times: dict[tuple, list[float]] = {lay: [] for lay in layouts}
    for _ in range(args.rounds):
        for lay, (fn, _) in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[lay].append((time.perf_counter() - t0) / args.steps)
    amp = next(iter(steps.values()))[1]
    print(f"# denoiser step cost by layout  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"{platform.processor() or platform.machine()}  autocast {amp[1]}")
    first = layouts[0]
    for lay in layouts:
        med = statistics.median(times[lay])
        print(f"frames {lay[0]:>3}  text tokens {lay[1]:>3}   {med:.3f} s/step (rounds: "
              + ", ".join(f"{v:.3f}" for v in times[lay])
              + f")   x{med / statistics.median(times[first]):.2f} vs {first[0]}:{first[1]}")


if __name__ == "__main__":
    main()
