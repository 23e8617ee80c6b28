"""Model smoke run: a few optimisation steps of every model on random tensors.

Checks an install end to end (VAEs, conditioning encoder, base denoiser, upsampler, diffusers
schedules) in well under a minute, and asserts that each model's loss on a fixed evaluation draw
goes down. It proves the plumbing learns; it is not a quality measure.

    python -m tasks.smoke [--steps N] [--set group.key=value ...]
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from model import (AudioVAE, ConditioningEncoder, DenoiserInputs, JointDenoisingTransformer, TextEmbedding, VideoVAE,
                   base_denoiser_loss, from_params, noise_schedulers, upsampler_loss)

from .params import Params
from .runtime import pick_device, seed_everything
from .training import make_optimizer

CAPTIONS = [
    "A red circle glides from left to right while a high beep plays",
    "A blue square drops from top to bottom with a low hum",
    "A yellow triangle moves right to left as a mid tone sounds",
    "A green circle rises from bottom to top with a high-pitched beep",
]


@dataclass
class SmokeResult:
    """Loss on a fixed evaluation draw, before and after training, per model."""

    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def improved(self) -> dict[str, bool]:
        return {k: self.after[k] < self.before[k] for k in self.before}


def run_smoke(
    params: Params,
    steps: int,
    batch_size: int,
    seed: int = 0,
    use_text_encoder: bool = True,
    device: str | None = None,
    progress: bool = True,
) -> SmokeResult:
    start = time.perf_counter()
    seed_everything(seed)
    dev = pick_device(device)
    cond_p = params.conditioning
    if use_text_encoder:
        encoder = ConditioningEncoder.from_params(cond_p)
        encoder.to(dev)
        captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch_size)]
        context = encoder.get_text_embeds(captions)
        context_dim = encoder.text_dim
    else:
        context_dim = 384
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randn(batch_size, cond_p.max_text_tokens, context_dim, generator=gen)
        mask = torch.ones(batch_size, tokens.shape[1], dtype=torch.bool)
        context = TextEmbedding(tokens.mean(1), tokens, mask).to(dev)
    cfg = from_params(params, context_dim=context_dim)
    diff = params.diffusion
    scheduler, up_scheduler = noise_schedulers(diff)

    g = torch.Generator().manual_seed(seed + 1)
    video_base = torch.rand(batch_size, 3, cfg.num_frames, cfg.base_size, cfg.base_size, generator=g).to(dev)
    audio = (torch.rand(batch_size, 1, cfg.audio_vae.num_samples, generator=g) * 2 - 1).to(dev)
    base_latent = torch.randn(batch_size, *cfg.base.video_latent_shape, generator=g).to(dev)
    audio_latent = torch.randn(batch_size, *cfg.base.audio_latent_shape, generator=g).to(dev)
    up_latent = torch.randn(batch_size, *cfg.upsampler.video_latent_shape, generator=g).to(dev)

    video_vae, audio_vae = VideoVAE(cfg.video_vae).to(dev), AudioVAE(cfg.audio_vae).to(dev)
    base, upsampler = JointDenoisingTransformer(cfg.base).to(dev), JointDenoisingTransformer(cfg.upsampler).to(dev)
    max_aug, dropout = diff.upsampler_max_noise_aug, diff.cond_dropout

    def losses(eval_seed: int | None) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(eval_seed) if eval_seed is not None else None
        recon_v, dist_v = video_vae(video_base, gen)
        recon_a, target_a, dist_a = audio_vae(audio, gen)
        b = base_denoiser_loss(base, scheduler, base_latent, audio_latent, DenoiserInputs(context), dropout, gen)
        return {
            "video_vae": torch.nn.functional.mse_loss(recon_v, video_base) + cfg.video_vae.kl_weight * dist_v.kl(),
            "audio_vae": torch.nn.functional.mse_loss(recon_a, target_a) + cfg.audio_vae.kl_weight * dist_a.kl(),
            "base": b.total,
            "upsampler": upsampler_loss(upsampler, up_scheduler, up_latent, base_latent, DenoiserInputs(context), max_aug,
                                        dropout, gen),
        }

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            return {k: float(v) for k, v in losses(seed + 2).items()}

    result = SmokeResult(before=evaluate())
    modules = [video_vae, audio_vae, base, upsampler]
    params_all = [p for m in modules for p in m.parameters()]
    optimizer = make_optimizer(params_all, params.train.lr, params.train.weight_decay)
    train_gen = torch.Generator().manual_seed(seed + 3)
    for _ in tqdm(range(steps), desc="smoke", disable=not progress, unit="step"):
        optimizer.zero_grad(set_to_none=True)
        loss = sum(v for v in losses(int(torch.randint(0, 2**31 - 1, (1,), generator=train_gen))).values())
        loss.backward()  # type: ignore[union-attr]
        torch.nn.utils.clip_grad_norm_(params_all, params.train.grad_clip)
        optimizer.step()
    result.after = evaluate()
    result.seconds = time.perf_counter() - start
    return result


def report_smoke(result: SmokeResult, steps: int, batch: int, out: str | None = None) -> int:
    """Print the losses (and write them as JSON for DVC); exit code 1 when a loss did not go down."""
    print(f"{'model':<12}{'loss before':>14}{'loss after':>14}{'ratio':>9}")
    for name in result.before:
        before, after = result.before[name], result.after[name]
        print(f"{name:<12}{before:>14.5f}{after:>14.5f}{after / before:>9.3f}")
    print(f"{steps} steps at batch {batch} in {result.seconds:.1f} s")
    failed = [k for k, ok in result.improved().items() if not ok]
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        report = {"steps": steps, "batch_size": batch, "seconds": round(result.seconds, 2), "passed": not failed,
                  "loss_before": result.before, "loss_after": result.after}
        Path(out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if failed:
        print(f"smoke run FAILED: loss did not go down for {', '.join(failed)}")
        return 1
    print("smoke run passed: every model's loss went down")
    return 0
