"""`tinyveo train-vae`: the VideoVAE (both resolutions, one set of weights) and the AudioVAE, trained
on the tensor cache with reconstruction + a small KL term (the article never trained its VAEs); the
VideoVAE's reconstruction weighs moving pixels up (vae.video.motion_weight).
The AudioVAE may train longer than the VideoVAE (train.audio_vae_steps): the stage then runs on
with the audio loss alone, each VAE on a warmup/cosine schedule of its own length.

The latent scaling factors are set from the training latents and stored with the weights;
reconstruction PSNR on held-out clips goes into CKPT/vae/summary.json.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from model import AudioVAE, BatchDraws, VideoVAE, from_params, video_reconstruction_loss

from .cache import MultiModalDataset
from .checkpoint import VAE_DIR, save_vaes
from .metrics import psnr
from .params import Params
from .training import (StageSettings, TrainState, even_shares, finish_stage, fingerprint, run_loop, stage_session,
                       start_or_resume, training_precision, training_rows, wrap_ddp)


def vae_settings(params: Params) -> StageSettings:
    t = params.train
    return StageSettings(t.vae_stage_steps, t.vae_batch_size, t.vae_lr, t.warmup_steps, t.weight_decay,
                         t.grad_clip, params.seed, t.checkpoint_every, t.log_every,
                         max_nonfinite_steps=t.max_nonfinite_steps)


def vae_loss_fn(modules: dict[str, torch.nn.Module], data: dict[str, torch.Tensor], rows: list[int], cfg,
                upsampled_batch: int, device, steps: dict[str, int], step: Callable[[], int]):
    """loss_fn(idx, generator) of the VAE stage over the training `rows` of the cache tensors; a
    module's loss is computed while `step()` is under its `steps`."""
    def batch(field: str, idx: list[int]) -> torch.Tensor:
        x = data[field][[rows[i] for i in idx]].to(device)
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def loss_fn(idx: list[int], draws: BatchDraws) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        if step() < steps["video_vae"]:
            # One set of convolutional weights serves both sizes; 64x64 costs ~6x a 32x32 item on CPU, so
            # each step sees a few upsampled items (the global batch's first) beside the full base batch.
            n_up, up_draws = draws.take(upsampled_batch)
            for field, items, gen in (("video_base", idx, draws), ("video_upsampled", idx[:n_up], up_draws)):
                x = batch(field, items)
                recon, posterior = modules["video_vae"](x, gen)
                recon_loss = video_reconstruction_loss(recon, x, cfg.video_vae.motion_weight)
                losses[f"loss_{field}"] = recon_loss + cfg.video_vae.kl_weight * posterior.kl()
        if step() < steps["audio_vae"]:
            recon_a, target_a, posterior_a = modules["audio_vae"](batch("audio", idx), draws)
            losses["loss_audio_vae"] = (F.l1_loss(recon_a.float(), target_a)
                                        + cfg.audio_vae.kl_weight * posterior_a.kl())
        return losses

    return loss_fn


@torch.no_grad()
def scale_and_measure(video_vae: VideoVAE, audio_vae: AudioVAE, data: dict[str, torch.Tensor], manifest,
                      rows: list[int], device) -> dict[str, float]:
    """Set the latent scaling factors from training items; reconstruction quality on held-out ones."""
    video_vae.eval(), audio_vae.eval()
    sample = torch.tensor(rows[: min(len(rows), 128)])
    video_vae.set_scaling_factor(video_vae.encode_dist(data["video_base"][sample].to(device).float() / 255).mode())
    audio_vae.set_scaling_factor(audio_vae.encode_dist(data["audio"][sample].to(device).float()).mode())
    held = [i for i, s in enumerate(manifest["split"].fillna("train")) if s == "val"][:64] or rows[:64]
    hv = data["video_base"][held].to(device).float() / 255
    hu = data["video_upsampled"][held[:16]].to(device).float() / 255
    ha = data["audio"][held].to(device).float()
    return {
        "vae_psnr_base": psnr(video_vae.decode(video_vae.encode(hv)), hv),
        "vae_psnr_upsampled": psnr(video_vae.decode(video_vae.encode(hu)), hu),
        "vae_audio_logmel_l1": float(F.l1_loss(audio_vae.decode_features(audio_vae.encode(ha)), audio_vae.features(ha))),
    }


def train_vae(data_dir: str | Path, checkpoint: str | Path, params: Params, *, resume: bool = False,
              stop_after: int | None = None, progress: bool = True, device: str | None = None,
              force_resume: bool = False) -> dict[str, Any]:
    """Train both VAEs into CHECKPOINT/vae; returns the stage summary."""
    dataset = MultiModalDataset(Path(data_dir) / "cache")
    manifest, stage_dir = dataset.manifest, Path(checkpoint) / VAE_DIR
    with stage_session("train_vae", params, manifest, device, checkpoint) as (dist, dev, tracker):
        data = dataset.tensors()
        cfg = from_params(params)
        torch.manual_seed(params.seed)
        video_vae, audio_vae = VideoVAE(cfg.video_vae).to(dev), AudioVAE(cfg.audio_vae).to(dev)
        rows = training_rows(manifest)
        modules = wrap_ddp({"video_vae": video_vae, "audio_vae": audio_vae}, dist)
        settings, precision = vae_settings(params), training_precision(params.train, dev)
        t = params.train
        even_shares(dist, vae_upsampled_batch_size=min(t.vae_upsampled_batch_size, t.vae_batch_size))
        # The AudioVAE's own length: its round trip keeps onsets only after ~1200 steps (bench/RESULTS.md)
        steps = t.vae_module_steps
        state = TrainState.create(modules, len(rows), settings, dist, module_steps=steps)
        start_or_resume(state, stage_dir, resume, dist, fingerprint(params, manifest), force_resume)
        loss_fn = vae_loss_fn(modules, data, rows, cfg, t.vae_upsampled_batch_size, dev, steps, lambda: state.step)
        result = run_loop("vae", state, loss_fn, settings, stage_dir, dist, tracker, stop_after=stop_after,
                          amp=(dev.type, precision), progress=progress)
        result.metrics.update(scale_and_measure(video_vae, audio_vae, data, manifest, rows, dev))
        if not dist.main:
            return {}
        save_vaes(checkpoint, {"video_vae": video_vae, "audio_vae": audio_vae})
        tracker.metrics(result.metrics, result.steps)
        return finish_stage(stage_dir, result, params, manifest, tracker, precision)
