"""`tinyveo train`: the VAE stage, the latent cache, then the base + upsampler denoisers.

    tinyveo train --data data --out checkpoints [--set train.denoiser_steps=500] [--resume]
    torchrun --nproc_per_node 2 -m tasks.train --data data --out checkpoints   # DDP (gloo on CPU)

1. VAE stage: VideoVAE (both resolutions, one set of weights) and AudioVAE trained on the tensor
   cache with reconstruction + a small KL term; latent scaling factors set from the training
   latents and stored with the weights. The article never trained its VAEs.
2. Latent cache: every item encoded once per VAE version (content-addressed by the VAE weights and
   the cache manifest), captions embedded once per encoder; denoiser steps never run an encoder.
3. Denoiser stage: base JointDenoisingTransformer (video + audio) and upsampler (video, low-res
   latent with noise-conditioning augmentation), DDPM schedule from params, condition dropout,
   image-to-video conditioning for i2v items, AdamW + warmup + cosine LR + grad clipping, EMA.

Resume (`--resume`) restores weights, optimizer, LR schedule, EMA, step, RNG and data position:
on CPU a run interrupted and resumed ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .runtime import LazyPrefectTask, UserError, persistent_cache


class NonFiniteLossError(RuntimeError):
    """A NaN or Inf loss: training stops, the last good checkpoint stays."""


# ---- data -------------------------------------------------------------------------------------

def load_cache_tensors(cache_dir: str | Path) -> tuple[dict[str, Any], Any]:
    """Every cached tensor in memory (uint8 video/images, float16 audio), in manifest order."""
    import pandas as pd
    import torch
    from safetensors import safe_open

    from .cache import MANIFEST, TENSOR_FIELDS

    manifest_path = Path(cache_dir) / MANIFEST
    if not manifest_path.exists():
        raise UserError(f"{manifest_path}: no tensor cache (run `tinyveo prepare --out {Path(cache_dir).parent}` first)")
    manifest = pd.read_parquet(manifest_path)
    if not len(manifest):
        raise UserError(f"{manifest_path}: the cache is empty")
    out: dict[str, list] = {f: [] for f in TENSOR_FIELDS}
    for shard, rows in manifest.groupby("shard", sort=False):
        with safe_open(str(Path(cache_dir) / shard), framework="pt") as f:
            for field in TENSOR_FIELDS:
                offsets = torch.as_tensor(rows["offset"].to_numpy().copy())
                out[field].append((rows.index.to_numpy().copy(), f.get_tensor(field)[offsets]))
    tensors = {}
    for field, parts in out.items():
        order = torch.cat([torch.as_tensor(idx) for idx, _ in parts]).argsort()
        tensors[field] = torch.cat([t for _, t in parts])[order]
    return tensors, manifest


def epoch_indices(n: int, epoch: int, seed: int, world: int, rank: int) -> list[int]:
    """This rank's shuffled indices for an epoch (DistributedSampler: same order on every rank)."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return list(sampler)


class BatchCursor:
    """Deterministic batches by (epoch, position): the data position is part of the resume state."""

    def __init__(self, n: int, batch: int, seed: int, world: int = 1, rank: int = 0, epoch: int = 0, pos: int = 0):
        self.n, self.batch, self.seed, self.world, self.rank = n, batch, seed, world, rank
        self.epoch, self.pos = epoch, pos
        self._order = epoch_indices(n, epoch, seed, world, rank)

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = epoch_indices(self.n, self.epoch, self.seed, self.world, self.rank)
            take = self._order[self.pos : self.pos + self.batch - len(out)]
            out += take
            self.pos += len(take)
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}


# ---- shared training machinery -----------------------------------------------------------------

@dataclass
class Dist:
    world: int = 1
    rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    import torch.distributed as td

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not td.is_initialized():
        import torch

        td.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(world, int(os.environ.get("RANK", "0")))


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to 0 (the article's CosineAnnealingLR, with a warmup)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return f


def make_optimizer(params: list, lr: float, weight_decay: float):
    """AdamW, fused: one kernel over all tensors instead of a Python loop over ~190 of them
    (the optimizer step 12.5 -> 2.5 ms of a ~145 ms denoiser step on 2 CPU cores)."""
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def update_ema(ema, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - decay)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def _unwrap(module):
    return module.module if hasattr(module, "module") else module


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent.parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


@dataclass
class StageResult:
    name: str
    steps: int
    losses: list[dict[str, float]]
    metrics: dict[str, float]
    seconds: float


def run_stage(
    name: str,
    stage_dir: Path,
    modules: dict[str, Any],
    ema_decay: float | None,
    loss_fn: Callable[[list[int], Any], dict[str, Any]],
    n_items: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    weight_decay: float,
    grad_clip: float,
    seed: int,
    checkpoint_every: int,
    log_every: int,
    resume: bool,
    stop_after: int | None,
    dist: Dist,
    tracker,
    progress: bool,
    device_type: str = "cpu",
    amp_dtype: Any = None,
) -> StageResult:
    """The training loop shared by both stages: AdamW + warmup/cosine + grad clipping (+ EMA),
    deterministic batches and noise, atomic checkpoints, exact resume, NaN/Inf guard. `amp_dtype`:
    the autocast dtype of the forward pass (None: full fp32; see model.precision)."""
    import torch
    from tqdm import tqdm

    from model.precision import autocast

    from .checkpoint import clear_checkpoints, latest_checkpoint, load_state, load_weights, save_checkpoint

    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, lr, weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, steps))
    emas = {k: copy.deepcopy(_unwrap(m)).requires_grad_(False) for k, m in modules.items()} if ema_decay else {}
    generator = torch.Generator().manual_seed(seed * 7919 + dist.rank)
    per_rank = max(batch_size // dist.world, 1)
    cursor = BatchCursor(n_items, per_rank, seed, dist.world, dist.rank)
    step, losses = 0, []
    folder = latest_checkpoint(stage_dir) if resume else None
    if not resume and dist.main:
        clear_checkpoints(stage_dir)  # a fresh run replaces an older one (step numbers would interleave)
    if folder is not None:
        state = load_state(folder)
        for k, m in modules.items():
            _unwrap(m).load_state_dict(load_weights(folder, k))
        for k, e in emas.items():
            e.load_state_dict(load_weights(folder, f"{k}_ema"))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"][dist.rank] if dist.rank < len(state["rng"]) else state["rng"][0])
        cursor = BatchCursor(n_items, per_rank, seed, dist.world, dist.rank, state["epoch"], state["pos"])
        step = int(state["step"])
        losses = json.loads(state["losses"])

    def checkpoint() -> None:
        import torch.distributed as td

        rngs = [generator.get_state()]
        if dist.world > 1:
            gathered = [torch.zeros_like(rngs[0]) for _ in range(dist.world)]
            td.all_gather(gathered, rngs[0])
            rngs = gathered
        if dist.main:
            weights = {k: _unwrap(m).state_dict() for k, m in modules.items()}
            weights.update({f"{k}_ema": e.state_dict() for k, e in emas.items()})
            save_checkpoint(stage_dir, step, weights, {
                "step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rngs, **cursor.state(), "losses": json.dumps(losses),
            })
        if dist.world > 1:
            td.barrier()

    start, first_step = time.perf_counter(), step
    last = step + stop_after if stop_after is not None else steps
    bar = tqdm(total=steps, initial=step, desc=name, unit="step", disable=not (progress and dist.main))
    for m in modules.values():
        m.train()
    while step < min(steps, last):
        optimizer.zero_grad(set_to_none=True)
        with autocast(device_type, amp_dtype):
            parts = loss_fn(cursor.next(), generator)
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{name} stage: non-finite loss ({float(loss.detach())}) at step {step + 1}; "
                                     f"the last good checkpoint in {stage_dir} is kept")
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
        optimizer.step()
        scheduler.step()
        for k, e in emas.items():
            update_ema(e, _unwrap(modules[k]), ema_decay or 0.0)
        step += 1
        record = {k: float(v.detach()) for k, v in parts.items()}
        losses.append({"step": step, **record})
        bar.update()
        if dist.main and (step % log_every == 0 or step == steps):
            rate = (step - first_step) * batch_size / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            tracker.metrics({**record, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "samples_per_s": rate}, step)
        if step % checkpoint_every == 0 or step == steps:
            checkpoint()
    if step < steps and step % checkpoint_every:
        checkpoint()  # an early stop (--stop-after) still leaves a checkpoint to resume from
    bar.close()
    return StageResult(name, step, losses, {}, time.perf_counter() - start)


# ---- stages -------------------------------------------------------------------------------------

def training_precision(params: dict[str, Any], device) -> Any:
    """train.precision on this device -> the autocast dtype of both stages (None: fp32)."""
    from model.precision import autocast_dtype

    try:
        return autocast_dtype(str(params["train"]["precision"]), device)
    except ValueError as e:
        raise UserError(f"train.precision: {e}") from None


def training_rows(manifest) -> list[int]:
    """Manifest rows the models train on: everything but the held-out combinations (all rows when
    the dataset marks none as held out)."""
    return [i for i, s in enumerate(manifest["split"].fillna("train")) if s != "holdout"] or list(range(len(manifest)))


def train_vaes(data: dict[str, Any], manifest, cfg, params: dict[str, Any], out: Path, dist: Dist, tracker,
               resume: bool, stop_after: int | None, progress: bool, device) -> tuple[Any, Any, StageResult]:
    import torch
    import torch.nn.functional as F

    from model import AudioVAE, VideoVAE

    from .metrics import psnr

    t = params["train"]
    seed = int(params["seed"])
    torch.manual_seed(seed)
    video_vae, audio_vae = VideoVAE(cfg.video_vae).to(device), AudioVAE(cfg.audio_vae).to(device)
    train_idx = training_rows(manifest)
    modules: dict[str, Any] = {"video_vae": video_vae, "audio_vae": audio_vae}
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        modules = {k: DDP(m) for k, m in modules.items()}

    def batch(field: str, idx: list[int]):
        x = data[field][[train_idx[i] for i in idx]].to(device)
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    up_batch = int(t["vae_upsampled_batch_size"])

    def loss_fn(idx: list[int], gen) -> dict[str, Any]:
        losses = {}
        # One set of convolutional weights serves both sizes; 64x64 costs ~6x a 32x32 item on CPU,
        # so each step sees a few upsampled items beside the full base batch.
        for field, rows in (("video_base", idx), ("video_upsampled", idx[:up_batch])):
            x = batch(field, rows)
            recon, dist_ = modules["video_vae"](x, gen)
            losses[f"loss_{field}"] = F.mse_loss(recon, x) + cfg.video_vae.kl_weight * dist_.kl()
        recon_a, target_a, dist_a = modules["audio_vae"](batch("audio", idx), gen)
        losses["loss_audio_vae"] = F.l1_loss(recon_a.float(), target_a) + cfg.audio_vae.kl_weight * dist_a.kl()
        return losses

    result = run_stage(
        "vae", out / "vae", modules, None, loss_fn, len(train_idx), steps=int(t["vae_steps"]),
        batch_size=int(t["vae_batch_size"]), lr=float(t["vae_lr"]), warmup=int(t["warmup_steps"]),
        weight_decay=float(t["weight_decay"]), grad_clip=float(t["grad_clip"]), seed=seed,
        checkpoint_every=int(t["checkpoint_every"]), log_every=int(t["log_every"]), resume=resume,
        stop_after=stop_after, dist=dist, tracker=tracker, progress=progress, device_type=device.type,
        amp_dtype=training_precision(params, device),
    )
    video_vae.eval(), audio_vae.eval()
    with torch.no_grad():
        sample = torch.tensor(train_idx[: min(len(train_idx), 128)])
        z_v = video_vae.encode_dist(data["video_base"][sample].to(device).float() / 255).mode()
        z_a = audio_vae.encode_dist(data["audio"][sample].to(device).float()).mode()
        video_vae.set_scaling_factor(z_v)
        audio_vae.set_scaling_factor(z_a)
        held = [i for i, s in enumerate(manifest["split"].fillna("train")) if s == "holdout"][:64] or train_idx[:64]
        hv = data["video_base"][held].to(device).float() / 255
        hu = data["video_upsampled"][held[:16]].to(device).float() / 255
        ha = data["audio"][held].to(device).float()
        result.metrics = {
            "vae_psnr_base": psnr(video_vae.decode(video_vae.encode(hv)), hv),
            "vae_psnr_upsampled": psnr(video_vae.decode(video_vae.encode(hu)), hu),
            "vae_audio_logmel_l1": float(F.l1_loss(audio_vae.decode_features(audio_vae.encode(ha)), audio_vae.features(ha))),
        }
    if dist.main:
        from safetensors.torch import save_file

        from .media import atomic_path

        for name, module in (("video_vae", video_vae), ("audio_vae", audio_vae)):
            with atomic_path(out / "vae" / f"{name}.safetensors") as tmp:
                save_file({k: v.contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp))
        tracker.metrics(result.metrics, result.steps)
    return video_vae, audio_vae, result


def weights_hash(*modules) -> str:
    h = hashlib.sha256()
    for m in modules:
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def build_latent_cache(data: dict[str, Any], manifest, video_vae, audio_vae, encoder, out: Path, device,
                       batch: int = 32, write: bool = True) -> dict[str, Any]:
    """Encode every item once per VAE/encoder version; reuse the file when it exists."""
    import torch
    from safetensors.torch import load_file, save_file

    from .media import atomic_path

    key = hashlib.sha256("|".join([
        weights_hash(video_vae, audio_vae), "|".join(manifest["key"]), encoder.identity,
        "|".join(manifest["caption"].fillna("")),
    ]).encode()).hexdigest()[:16]
    path = out / f"latents-{key}.safetensors"
    if path.exists():
        return load_file(str(path))
    parts: dict[str, list] = {k: [] for k in ("video_base", "video_upsampled", "audio", "image_base", "image_upsampled",
                                              "text_pooled", "text_tokens", "text_mask", "image_features")}
    captions = manifest["caption"].fillna("").tolist()
    with torch.no_grad():
        for s in range(0, len(manifest), batch):
            sl = slice(s, s + batch)
            parts["video_base"].append(video_vae.encode(data["video_base"][sl].to(device).float() / 255).cpu())
            parts["video_upsampled"].append(video_vae.encode(data["video_upsampled"][sl].to(device).float() / 255).cpu())
            parts["audio"].append(audio_vae.encode(data["audio"][sl].to(device).float()).cpu())
            for size in ("base", "upsampled"):
                parts[f"image_{size}"].append(video_vae.encode_image(data[f"image_{size}"][sl].to(device).float() / 255).cpu())
            emb = encoder.get_text_embeds(captions[sl])
            parts["text_pooled"].append(emb.pooled.cpu())
            parts["text_tokens"].append(emb.tokens.cpu().half())
            parts["text_mask"].append(emb.mask.cpu())
            if encoder.image_dim:
                parts["image_features"].append(encoder.get_image_embeds(data["image_base"][sl].float() / 255).cpu())
    tensors = {k: torch.cat(v) for k, v in parts.items() if v}
    tensors["has_image"] = torch.tensor((manifest["modality"] == "i2v").to_numpy())
    if not write:  # DDP: every rank encodes the same items; rank 0 alone writes the file
        return tensors
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("latents-*.safetensors"):
        stale.unlink()
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    return tensors


def train_denoisers(latents: dict[str, Any], manifest, cfg, params: dict[str, Any], out: Path, dist: Dist, tracker,
                    resume: bool, stop_after: int | None, progress: bool, device) -> StageResult:
    import torch

    from model import JointDenoisingTransformer, TextEmbedding, base_denoiser_loss, noise_schedulers, upsampler_loss

    t, d = params["train"], params["diffusion"]
    seed = int(params["seed"])
    torch.manual_seed(seed + 1)
    scheduler, up_scheduler = noise_schedulers(d)
    modules: dict[str, Any] = {"base": JointDenoisingTransformer(cfg.base).to(device),
                               "upsampler": JointDenoisingTransformer(cfg.upsampler).to(device)}
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        modules = {k: DDP(m, find_unused_parameters=True) for k, m in modules.items()}
    train_idx = training_rows(manifest)
    rows = torch.tensor(train_idx)
    for m in modules.values():
        _unwrap(m).set_text_statistics(latents["text_pooled"][rows], latents["text_tokens"][rows], latents["text_mask"][rows])
    dropout, max_aug = float(d["cond_dropout"]), int(d["upsampler_max_noise_aug"])
    feats = latents.get("image_features")
    batch_size = int(t["batch_size"])
    logit_mean = None if d.get("timestep_logit_mean") is None else float(d["timestep_logit_mean"])
    logit_std = float(d.get("timestep_logit_std", 1.0))
    up_batch = int(t.get("upsampler_batch_size") or batch_size)
    if up_batch < 1:
        raise UserError(f"train.upsampler_batch_size={up_batch}: must be at least 1 (null: train.batch_size)")
    up_share = min(up_batch, batch_size) / batch_size  # capped: a smaller --set train.batch_size needs no second edit

    def batch(rows):
        """Items `rows` of the latent cache: a getter, the caption, has_image, image features."""
        get = lambda k: latents[k][rows].to(device)  # noqa: E731
        ctx = TextEmbedding(get("text_pooled").float(), get("text_tokens").float(), get("text_mask").bool())
        return get, ctx, get("has_image").bool(), feats[rows].to(device) if feats is not None else None

    def loss_fn(idx: list[int], gen) -> dict[str, Any]:
        rows = torch.tensor([train_idx[i] for i in idx])
        get, ctx, has_image, image_features = batch(rows)
        base = base_denoiser_loss(modules["base"], scheduler, get("video_base"), get("audio"), ctx, dropout, gen,
                                  image_latent=get("image_base"), has_image=has_image, image_features=image_features,
                                  timestep_logit_mean=logit_mean, timestep_logit_std=logit_std)
        # The upsampler learns from the first items of the batch only: its task (sharpen a given
        # low-res clip) is easier than the base's, and every item it skips is base steps gained.
        get, ctx, has_image, image_features = batch(rows[:max(1, round(len(idx) * up_share))])
        up = upsampler_loss(modules["upsampler"], up_scheduler, get("video_upsampled"), get("video_base"), ctx, max_aug,
                            dropout, gen, image_latent=get("image_upsampled"), has_image=has_image,
                            image_features=image_features)
        return {"loss_video": base.video, "loss_audio": base.audio, "loss_upsampler": up}

    return run_stage(
        "denoiser", out / "denoiser", modules, float(t["ema_decay"]), loss_fn, len(train_idx),
        steps=int(t["denoiser_steps"]), batch_size=batch_size, lr=float(t["lr"]),
        warmup=int(t["warmup_steps"]), weight_decay=float(t["weight_decay"]), grad_clip=float(t["grad_clip"]),
        seed=seed + 1, checkpoint_every=int(t["checkpoint_every"]), log_every=int(t["log_every"]), resume=resume,
        stop_after=stop_after, dist=dist, tracker=tracker, progress=progress, device_type=device.type,
        amp_dtype=training_precision(params, device),
    )


def loss_curve_png(losses: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    for key in [k for k in losses[0] if k != "step"]:
        ax.plot([r["step"] for r in losses], [r[key] for r in losses], label=key, linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_loss_tsv(losses: list[dict[str, float]], path: Path) -> None:
    keys = list(losses[0]) if losses else ["step"]
    lines = ["\t".join(keys)] + ["\t".join(str(r[k]) for k in keys) for r in losses]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_stage_files(stage_dir: Path, params: dict[str, Any], encoder, summary: dict[str, Any], stage: str,
                      run_id: str | None) -> None:
    """STAGE/config.json (the params the stage ran with + encoder widths: enough to rebuild every
    model) and STAGE/summary.json (its metrics and MLflow run id)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "config.json").write_text(json.dumps({"params": params, "context_dim": encoder.text_dim,
                                                       "image_feature_dim": encoder.image_dim}, indent=1), encoding="utf-8")
    stage_summary = {k: v for k, v in summary.items() if k != "stages"}
    stage_summary.update({"stage": stage, **summary["stages"][stage], "run_id": run_id})
    (stage_dir / "summary.json").write_text(json.dumps(stage_summary, indent=1) + "\n", encoding="utf-8")


def train(data_dir: str | Path, out_dir: str | Path, params: dict[str, Any], *, resume: bool = False,
          stages: Sequence[str] = ("vae", "denoiser"), stop_after: int | None = None, progress: bool = True,
          device: str | None = None) -> dict[str, Any]:
    """Run the requested stages; returns a summary. Layout of OUT: vae/ (step checkpoints, the final
    video_vae/audio_vae weights, config.json, summary.json, loss curve) and denoiser/ (step
    checkpoints with EMA weights, latents/, config.json, summary.json, loss curve): one folder per
    stage, so each is a separate DVC output."""
    import torch

    from model import AudioVAE, ConditioningEncoder, VideoVAE, from_params

    from .params import flatten
    from .runtime import pick_device, seed_everything
    from .tracking import Tracker

    dist = init_distributed()
    dev = pick_device(device or params["train"].get("device"))
    seed_everything(int(params["seed"]))
    torch.use_deterministic_algorithms(dev.type == "cpu", warn_only=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, manifest = load_cache_tensors(Path(data_dir) / "cache")
    c = params["conditioning"]
    encoder = ConditioningEncoder.from_params(c).to(dev)
    cfg = from_params(params, context_dim=encoder.text_dim, image_feature_dim=encoder.image_dim)
    t = params["train"]
    tracker = Tracker(dist.main and bool(t["mlflow"]), t.get("tracking_uri"), str(t["experiment"]))
    dataset_hash = hashlib.sha256("|".join(manifest["key"]).encode()).hexdigest()[:16]
    # Runs are named by stage and a digest of their params, so runs with other params stand apart in
    # the MLflow UI's comparison view.
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:6]
    tracker.start(f"train-{'+'.join(stages)}-{digest}", tags={"git_commit": git_commit(), "dataset_hash": dataset_hash})
    tracker.params(flatten(params))
    summary: dict[str, Any] = {"dataset_hash": dataset_hash, "items": len(manifest), "stages": {}}
    precision = "bf16" if training_precision(params, dev) is not None else "fp32"
    try:
        if "vae" in stages:
            tracker.start("vae", nested=True)
            video_vae, audio_vae, res = train_vaes(data, manifest, cfg, params, out, dist, tracker, resume, stop_after,
                                                    progress, dev)
            if dist.main and res.losses:
                write_loss_tsv(res.losses, out / "vae" / "loss_vae.tsv")
                loss_curve_png(res.losses, out / "vae" / "loss_vae.png", "VAE stage")
                tracker.artifact(out / "vae" / "loss_vae.png")
            tracker.end()
            summary["stages"]["vae"] = {"steps": res.steps, "seconds": round(res.seconds, 1), "precision": precision,
                                        **res.metrics}
            if dist.main:
                write_stage_files(out / "vae", params, encoder, summary, "vae", tracker.run_id)
            if stop_after is not None and res.steps < int(t["vae_steps"]):
                return summary
        else:
            video_vae, audio_vae = VideoVAE(cfg.video_vae).to(dev), AudioVAE(cfg.audio_vae).to(dev)
            from .checkpoint import load_weights

            for name, m in (("video_vae", video_vae), ("audio_vae", audio_vae)):
                if not (out / "vae" / f"{name}.safetensors").exists():
                    raise UserError(f"{out / 'vae' / (name + '.safetensors')}: no trained VAE (run the vae stage first)")
                m.load_state_dict(load_weights(out / "vae", name))
        video_vae.requires_grad_(False).eval()
        audio_vae.requires_grad_(False).eval()
        if "denoiser" in stages:
            latents = build_latent_cache(data, manifest, video_vae, audio_vae, encoder, out / "denoiser" / "latents", dev,
                                         write=dist.main)
            tracker.start("denoiser", nested=True)
            res = train_denoisers(latents, manifest, cfg, params, out, dist, tracker, resume, stop_after, progress, dev)
            if dist.main and res.losses:
                write_loss_tsv(res.losses, out / "denoiser" / "loss_denoiser.tsv")
                loss_curve_png(res.losses, out / "denoiser" / "loss_denoiser.png", "denoiser stage")
                tracker.artifact(out / "denoiser" / "loss_denoiser.png")
            tracker.end()
            last = res.losses[-1] if res.losses else {}
            summary["stages"]["denoiser"] = {"steps": res.steps, "seconds": round(res.seconds, 1), "precision": precision,
                                             **{k: v for k, v in last.items() if k != "step"}}
            if dist.main:
                write_stage_files(out / "denoiser", params, encoder, summary, "denoiser", tracker.run_id)
        summary["run_id"] = tracker.run_id
    finally:
        tracker.end()
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()
    return summary


def train_key(parameters: dict) -> str:
    """Inputs of a training call: the data (by content), the params except sampling/evaluation, the
    stages, and for a denoiser-only call the VAE weights it starts from."""
    from .runtime import content_digest, manifest_digest

    stages = list(parameters.get("stages", ("vae", "denoiser")))
    out = Path(parameters["out_dir"])
    deps = [] if "vae" in stages else [out / "vae" / "video_vae.safetensors", out / "vae" / "audio_vae.safetensors"]
    params = {k: v for k, v in parameters["params"].items() if k not in ("sample", "eval")}
    return content_digest("train", stages, params, str(out), manifest_digest(parameters["data_dir"]),
                          parameters.get("stop_after"), *deps)


train_task = LazyPrefectTask(train, name="train", **persistent_cache(train_key))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data folder written by `tinyveo prepare` (reads DATA/cache)")
    parser.add_argument("--out", required=True, help="checkpoint folder: OUT/vae and OUT/denoiser, one per stage")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--stages", default="vae,denoiser", help="comma list of stages to run (default: vae,denoiser)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop each stage after N more steps (checkpointed; continue later with --resume)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--metrics-dir", default=None,
                        help="also copy each stage's summary.json (as STAGE_summary.json) and loss TSV here (DVC metrics/plots)")
    parser.add_argument("--params", default=None, help="params file (default: the repository's params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. --set train.denoiser_steps=500 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from .params import load_params

    params = load_params(args.params, args.overrides)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - {"vae", "denoiser"}
    if unknown:
        raise UserError(f"--stages: unknown stage(s) {', '.join(sorted(unknown))} (known: vae, denoiser)")
    try:
        summary = train(args.data, args.out, params, resume=args.resume, stages=stages, stop_after=args.stop_after,
                        device=args.device)
    except NonFiniteLossError as exc:
        print(f"tinyveo train: error: {exc}")
        return 3
    if args.metrics_dir and int(os.environ.get("RANK", "0")) == 0:
        import shutil

        target = Path(args.metrics_dir)
        target.mkdir(parents=True, exist_ok=True)
        for stage in stages:
            for name, copy in (("summary.json", f"{stage}_summary.json"), (f"loss_{stage}.tsv", f"loss_{stage}.tsv")):
                if (Path(args.out) / stage / name).exists():
                    shutil.copyfile(Path(args.out) / stage / name, target / copy)
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import module_main

    return module_main("train", argv)


if __name__ == "__main__":
    raise SystemExit(main())
