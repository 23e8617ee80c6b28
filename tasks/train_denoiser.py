"""`tinyveo train-denoiser`: the base JointDenoisingTransformer (video + audio) and the upsampler
(video, from the low-res latent with noise-conditioning augmentation), on the encoded latents.

DDPM schedule from params, condition dropout, image-to-video conditioning for i2v items, AdamW +
warmup + cosine LR + grad clipping, EMA weights (what sampling uses), kept every
`train.snapshot_every` steps for evaluate's quality-vs-minutes curve.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from model import (BatchDraws, DenoiserInputs, JointDenoisingTransformer, TextEmbedding, base_denoiser_loss,
                   from_params, noise_schedulers, upsampler_loss)

from .cache import read_manifest
from .checkpoint import DENOISER_DIR, read_latents
from .params import Params
from .runtime import UserError
from .training import (StageSettings, TrainState, compile_decision, even_shares, finish_stage, fingerprint, run_loop,
                       stage_session, start_or_resume, training_precision, training_rows, unwrap, wrap_ddp)


def denoiser_settings(params: Params) -> StageSettings:
    t = params.train
    return StageSettings(t.denoiser_steps, t.batch_size, t.lr, t.warmup_steps, t.weight_decay, t.grad_clip,
                         params.seed + 1, t.checkpoint_every, t.log_every, t.ema_decay,
                         max_nonfinite_steps=t.max_nonfinite_steps, snapshot_every=t.snapshot_every)


def upsampler_items(params: Params, batch: int) -> int:
    """Items of each (global) batch the upsampler trains on: its task (sharpen a given low-res clip)
    is easier than the base's, and every item it skips is base steps gained."""
    t = params.train
    up_batch = t.upsampler_batch_size or t.batch_size
    if up_batch < 1:
        raise UserError(f"train.upsampler_batch_size={up_batch}: must be at least 1 (null: train.batch_size)")
    share = min(up_batch, t.batch_size) / t.batch_size  # capped: a smaller train.batch_size needs no second edit
    return max(1, round(batch * share))


def batch_inputs(latents: dict[str, torch.Tensor], rows: torch.Tensor, size: str, device) -> DenoiserInputs:
    """DenoiserInputs of cached items `rows`, with the input image at `size` (base | upsampled)."""
    def get(key: str) -> torch.Tensor:
        return latents[key][rows].to(device)

    caption = TextEmbedding(get("text_pooled").float(), get("text_tokens").float(), get("text_mask").bool())
    features = get("image_features") if "image_features" in latents else None
    return DenoiserInputs(caption, image_latent=get(f"image_{size}"), has_image=get("has_image").bool(),
                          image_features=features)


def denoiser_loss_fn(modules: dict[str, torch.nn.Module], latents: dict[str, torch.Tensor], train_rows: list[int],
                     params: Params, device):
    """loss_fn(idx, generator) of the denoiser stage: base loss on the batch, upsampler loss on its share."""
    d = params.diffusion
    scheduler, up_scheduler = noise_schedulers(d)

    def loss_fn(idx: list[int], draws: BatchDraws) -> dict[str, torch.Tensor]:
        rows = torch.tensor([train_rows[i] for i in idx])
        base = base_denoiser_loss(modules["base"], scheduler, latents["video_base"][rows].to(device),
                                  latents["audio"][rows].to(device), batch_inputs(latents, rows, "base", device),
                                  d.cond_dropout, draws, timestep_logit_mean=d.timestep_logit_mean,
                                  timestep_logit_std=d.timestep_logit_std)
        # the global batch's first items (this rank's share of them under DDP)
        n_up, up_draws = draws.take(upsampler_items(params, draws.size or len(idx)))
        up_rows = rows[:n_up]
        up = upsampler_loss(modules["upsampler"], up_scheduler, latents["video_upsampled"][up_rows].to(device),
                            latents["video_base"][up_rows].to(device),
                            batch_inputs(latents, up_rows, "upsampled", device), d.upsampler_max_noise_aug,
                            d.cond_dropout, up_draws)
        return {"loss_video": base.video, "loss_audio": base.audio, "loss_upsampler": up}

    return loss_fn


def train_denoiser(data_dir: str | Path, checkpoint: str | Path, params: Params, *, resume: bool = False,
                   stop_after: int | None = None, progress: bool = True, device: str | None = None,
                   force_resume: bool = False) -> dict[str, Any]:
    """Train both denoisers into CHECKPOINT/denoiser from CHECKPOINT/latents; returns the stage summary."""
    manifest, stage_dir = read_manifest(Path(data_dir) / "cache"), Path(checkpoint) / DENOISER_DIR
    with stage_session("train_denoiser", params, manifest, device, checkpoint) as (dist, dev, tracker):
        latents, widths = read_latents(checkpoint, manifest["key"].tolist())
        cfg = from_params(params, **widths)
        torch.manual_seed(params.seed + 1)
        modules = {"base": JointDenoisingTransformer(cfg.base).to(dev),
                   "upsampler": JointDenoisingTransformer(cfg.upsampler).to(dev)}
        modules = wrap_ddp(modules, dist, find_unused_parameters=True)
        rows = training_rows(manifest)
        picked = torch.tensor(rows)
        for m in modules.values():
            unwrap(m).set_text_statistics(latents["text_pooled"][picked], latents["text_tokens"][picked],
                                          latents["text_mask"][picked])
        settings, precision = denoiser_settings(params), training_precision(params.train, dev)
        even_shares(dist, upsampler_items=upsampler_items(params, settings.batch_size))
        loss_fn = denoiser_loss_fn(modules, latents, rows, params, dev)
        state = TrainState.create(modules, len(rows), settings, dist)
        start_or_resume(state, stage_dir, resume, dist, fingerprint(params, manifest), force_resume)
        remaining = settings.steps - state.step if stop_after is None else min(stop_after, settings.steps - state.step)
        compiled, why = compile_decision(params.train, remaining, dist, dev)
        if compiled:  # after the EMA copies are made: they stay plain modules
            for m in modules.values():
                unwrap(m).compile_blocks()
        if dist.main and progress:
            print(f"train_denoiser: transformer blocks {'compiled' if compiled else 'eager'} ({why})", file=sys.stderr)
        result = run_loop("denoiser", state, loss_fn, settings, stage_dir, dist, tracker, stop_after=stop_after,
                          amp=(dev.type, precision), progress=progress)
        if not dist.main:
            return {}
        result.metrics["compiled_blocks"] = compiled
        return finish_stage(stage_dir, result, params, manifest, tracker, precision, widths)
