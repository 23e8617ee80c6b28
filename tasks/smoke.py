"""Model smoke run: a few optimisation steps of every model on random tensors.

Checks an install end to end (VAEs, conditioning encoder, base denoiser, upsampler, diffusers
schedules) in well under a minute, and asserts that each model's loss on a fixed evaluation draw
goes down. It proves the plumbing learns; it is not a quality measure.

    tinyveo smoke [--steps N] [--set group.key=value ...]
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from model import (AudioVAE, ConditioningEncoder, DenoiserInputs, JointDenoisingTransformer, TextEmbedding, VideoVAE,
                   base_denoiser_loss, from_params, noise_schedulers, upsampler_loss)

from .media import write_text_atomic
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
    context = _smoke_context(params, batch_size, seed, use_text_encoder, dev)
    cfg = from_params(params, context_dim=context.tokens.shape[-1])
    data = _smoke_tensors(cfg, batch_size, seed, dev)
    models = {"video_vae": VideoVAE(cfg.video_vae).to(dev), "audio_vae": AudioVAE(cfg.audio_vae).to(dev),
              "base": JointDenoisingTransformer(cfg.base).to(dev),
              "upsampler": JointDenoisingTransformer(cfg.upsampler).to(dev)}
    losses = partial(_smoke_losses, models, data, DenoiserInputs(context), cfg, params.diffusion,
                     noise_schedulers(params.diffusion))

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            return {k: float(v) for k, v in losses(seed + 2).items()}

    result = SmokeResult(before=evaluate())
    params_all = [p for m in models.values() for p in m.parameters()]
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


def _smoke_context(params: Params, batch_size: int, seed: int, use_text_encoder: bool, dev) -> TextEmbedding:
    """Caption embeddings from the real encoder, or random token states of MiniLM's width without it."""
    if use_text_encoder:
        encoder = ConditioningEncoder.from_params(params.conditioning).to(dev)
        return encoder.get_text_embeds([CAPTIONS[i % len(CAPTIONS)] for i in range(batch_size)])
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch_size, params.conditioning.max_text_tokens, 384, generator=gen)
    mask = torch.ones(batch_size, tokens.shape[1], dtype=torch.bool)
    return TextEmbedding(tokens.mean(1), tokens, mask).to(dev)


def _smoke_tensors(cfg, batch_size: int, seed: int, dev) -> dict[str, torch.Tensor]:
    """Random clips, waveforms and latents of the configured shapes."""
    g = torch.Generator().manual_seed(seed + 1)
    shapes = {"video": (3, cfg.num_frames, cfg.base_size, cfg.base_size), "audio": (1, cfg.audio_vae.num_samples)}
    data = {"video": torch.rand(batch_size, *shapes["video"], generator=g),
            "audio": torch.rand(batch_size, *shapes["audio"], generator=g) * 2 - 1}
    for name, shape in (("base_latent", cfg.base.video_latent_shape), ("audio_latent", cfg.base.audio_latent_shape),
                        ("up_latent", cfg.upsampler.video_latent_shape)):
        data[name] = torch.randn(batch_size, *shape, generator=g)
    return {k: v.to(dev) for k, v in data.items()}


def _smoke_losses(models: dict, data: dict, inputs: DenoiserInputs, cfg, diff, schedulers, eval_seed: int | None
                  ) -> dict[str, torch.Tensor]:
    """Every model's training loss on the fixed tensors (noise drawn from `eval_seed`)."""
    gen = torch.Generator().manual_seed(eval_seed) if eval_seed is not None else None
    scheduler, up_scheduler = schedulers
    recon_v, dist_v = models["video_vae"](data["video"], gen)
    recon_a, target_a, dist_a = models["audio_vae"](data["audio"], gen)
    mse = torch.nn.functional.mse_loss
    base = base_denoiser_loss(models["base"], scheduler, data["base_latent"], data["audio_latent"], inputs,
                              diff.cond_dropout, gen)
    return {
        "video_vae": mse(recon_v, data["video"]) + cfg.video_vae.kl_weight * dist_v.kl(),
        "audio_vae": mse(recon_a, target_a) + cfg.audio_vae.kl_weight * dist_a.kl(),
        "base": base.total,
        "upsampler": upsampler_loss(models["upsampler"], up_scheduler, data["up_latent"], data["base_latent"], inputs,
                                    diff.upsampler_max_noise_aug, diff.cond_dropout, gen),
    }


def report_smoke(result: SmokeResult, steps: int, batch: int, out: str | None = None) -> int:
    """Print the losses (and write them as JSON for DVC); exit code 1 when a loss did not go down."""
    print(f"{'model':<12}{'loss before':>14}{'loss after':>14}{'ratio':>9}")
    for name in result.before:
        before, after = result.before[name], result.after[name]
        print(f"{name:<12}{before:>14.5f}{after:>14.5f}{after / before:>9.3f}")
    print(f"{steps} steps at batch {batch} in {result.seconds:.1f} s")
    failed = [k for k, ok in result.improved().items() if not ok]
    if out:
        # numbers only (a DVC metrics file): the verdict is the count of models whose loss did not go down
        report = {"steps": steps, "batch_size": batch, "seconds": round(result.seconds, 2), "failed": len(failed),
                  "loss_before": result.before, "loss_after": result.after}
        write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    if failed:
        print(f"smoke run FAILED: loss did not go down for {', '.join(failed)}")
        return 1
    print("smoke run passed: every model's loss went down")
    return 0
