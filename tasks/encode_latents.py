"""`tinyveo encode-latents`: every cached item through the trained VAEs and the caption encoder, once,
into CKPT/latents/latents.safetensors: the denoiser stage never runs an encoder.

The file's metadata records the encoder and its widths, which the denoiser checkpoint needs.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as td

from model import ConditioningEncoder, from_params

from .cache import MultiModalDataset
from .checkpoint import latents_path, load_vaes, write_latents
from .params import Params
from .runtime import pick_device
from .training import init_distributed

FIELDS = ("video_base", "video_upsampled", "audio", "image_base", "image_upsampled", "text_pooled", "text_tokens",
          "text_mask", "image_features")


@torch.no_grad()
def encode_items(data: dict[str, torch.Tensor], captions: list[str], video_vae, audio_vae, encoder, device,
                 batch: int = 32) -> dict[str, torch.Tensor]:
    """Latents of every item (VAE means, scaled) and its caption's embedding, in cache order."""
    parts: dict[str, list] = {k: [] for k in FIELDS}
    for s in range(0, len(captions), batch):
        sl = slice(s, s + batch)
        for field in ("video_base", "video_upsampled"):
            parts[field].append(video_vae.encode(data[field][sl].to(device).float() / 255).cpu())
        parts["audio"].append(audio_vae.encode(data["audio"][sl].to(device).float()).cpu())
        for size in ("base", "upsampled"):
            parts[f"image_{size}"].append(video_vae.encode_image(data[f"image_{size}"][sl].to(device).float() / 255).cpu())
        emb = encoder.get_text_embeds(captions[sl])
        parts["text_pooled"].append(emb.pooled.cpu())
        parts["text_tokens"].append(emb.tokens.cpu().half())
        parts["text_mask"].append(emb.mask.cpu())
        if encoder.image_dim:
            parts["image_features"].append(encoder.get_image_embeds(data["image_base"][sl].float() / 255).cpu())
    return {k: torch.cat(v) for k, v in parts.items() if v}


def encode_latents(data_dir: str | Path, checkpoint: str | Path, params: Params, *,
                   device: str | None = None) -> Path:
    """Write CHECKPOINT/latents/latents.safetensors; returns its path (under torchrun, rank 0 writes)."""
    dist = init_distributed()
    if dist.main:
        dev = pick_device(device or params.train.device)
        dataset = MultiModalDataset(Path(data_dir) / "cache")
        encoder = ConditioningEncoder.from_params(params.conditioning).to(dev)
        cfg = from_params(params, context_dim=encoder.text_dim, image_feature_dim=encoder.image_dim)
        video_vae, audio_vae = load_vaes(checkpoint, cfg, dev)
        manifest = dataset.manifest
        tensors = encode_items(dataset.tensors(), manifest["caption"].fillna("").tolist(), video_vae, audio_vae,
                               encoder, dev)
        tensors["has_image"] = torch.tensor((manifest["modality"] == "i2v").to_numpy())
        write_latents(checkpoint, tensors, encoder, manifest["key"].tolist())
    if dist.world > 1:
        td.barrier()
    return latents_path(checkpoint)
