"""Evaluation metrics as plain functions on tensors: reconstruction PSNR/SSIM, CLIP score, LPIPS
(the built-in worlds' strict scorer is tasks/score/).

Conventions: video (B, 3, F, H, W) and images (B, 3, H, W) in [0, 1]; audio (B, N) in [-1, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F


# ---- reconstruction ---------------------------------------------------------------------------

def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for signals in [0, 1] (mean over the whole batch)."""
    mse = torch.mean((x.float() - y.float()) ** 2).clamp_min(1e-10)
    return float(10 * torch.log10(1.0 / mse))


def color_statistics(generated: torch.Tensor, real: torch.Tensor, bins: int = 16) -> dict[str, object]:
    """Colour of generated clips against real ones, both (B, 3, F, H, W) in [0, 1]: per-channel (RGB)
    mean and standard deviation, and the L1 distance of their normalised per-channel histograms
    (0: the same distribution, 2: disjoint), averaged over the channels."""
    def stats(x: torch.Tensor) -> tuple[list[float], list[float], torch.Tensor]:
        per_channel = x.float().transpose(0, 1).reshape(3, -1)
        hist = torch.stack([torch.histc(c, bins, 0.0, 1.0) for c in per_channel])
        return per_channel.mean(1).tolist(), per_channel.std(1).tolist(), hist / hist.sum(1, keepdim=True)

    g_mean, g_std, g_hist = stats(generated)
    r_mean, r_std, r_hist = stats(real)
    return {"generated_mean_rgb": g_mean, "real_mean_rgb": r_mean, "generated_std_rgb": g_std, "real_std_rgb": r_std,
            "histogram_l1": float((g_hist - r_hist).abs().sum(1).mean()), "bins": bins}


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) -> (B*F, 3, H, W); images pass through."""
    if x.dim() == 5:
        return x.permute(0, 2, 1, 3, 4).reshape(-1, x.shape[1], x.shape[3], x.shape[4])
    return x


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004; Gaussian window, C1 = 0.01^2, C2 = 0.03^2), per
    channel and frame, for signals in [0, 1]. The window shrinks for frames smaller than it."""
    a, b = _frames(x.float()), _frames(y.float())
    window = min(window, a.shape[-1], a.shape[-2])
    coords = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window).contiguous()
    blur = lambda t: F.conv2d(t, kernel, groups=a.shape[1])  # noqa: E731  valid region only, as skimage
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


# ---- CLIP score ---------------------------------------------------------------------------------

@dataclass
class ClipScore:
    raw: float               # mean cosine similarity between prompt and frame embeddings
    torchmetrics: float      # mean over samples of max(100 * cosine, 0): torchmetrics' CLIPScore convention
    per_sample: list[float]  # raw cosine per sample (frame-averaged)


def clip_score_from_features(text_features: torch.Tensor, frame_features: torch.Tensor) -> ClipScore:
    """text_features (B, E); frame_features (B, F, E) -> frame-averaged cosine per sample."""
    t = F.normalize(text_features.float(), dim=-1)
    f = F.normalize(frame_features.float(), dim=-1)
    cos = torch.einsum("be,bfe->bf", t, f)          # (B, F)
    per_sample = cos.mean(dim=1)
    tm = (100 * cos).clamp_min(0).mean(dim=1)      # torchmetrics clamps each image-text pair at 0
    return ClipScore(float(per_sample.mean()), float(tm.mean()), [float(v) for v in per_sample])


def clip_score(encoder, prompts: Sequence[str], video: torch.Tensor, max_frames: int | None = None) -> ClipScore:
    """CLIP score of generated clips with a CLIP ConditioningEncoder: every frame (or `max_frames`
    evenly spaced ones) embedded, cosine to the prompt, averaged over frames."""
    b, _, f = video.shape[:3]
    idx = torch.linspace(0, f - 1, min(max_frames or f, f)).round().long()
    frames = video[:, :, idx].permute(0, 2, 1, 3, 4).reshape(-1, 3, *video.shape[-2:])
    image_features = encoder.get_image_embeds(frames).reshape(b, len(idx), -1)
    return clip_score_from_features(encoder.get_text_features(list(prompts)), image_features)


# ---- LPIPS --------------------------------------------------------------------------------------

def lpips_backbone_file(net: str) -> Path:
    """Where torchvision keeps the ImageNet backbone weights LPIPS needs (torch hub cache)."""
    names = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth"}
    if net not in names:
        raise ValueError(f"eval.lpips_net must be one of {', '.join(names)}, got {net!r}")
    return Path(torch.hub.get_dir()) / "checkpoints" / names[net]


def lpips_distance(x: torch.Tensor, y: torch.Tensor, net: str = "alex") -> tuple[list[float], str]:
    """LPIPS between image batches in [0, 1]. Returns (per-pair distances, backbone), where backbone
    is "pretrained" when the ImageNet weights were in the torch hub cache and "random" otherwise:
    offline the backbone cannot be downloaded, and a random one is a plumbing check, not LPIPS."""
    import warnings

    import lpips

    pretrained = lpips_backbone_file(net).exists()
    with warnings.catch_warnings():  # lpips 0.1.4 calls torchvision's deprecated `pretrained=` API
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not pretrained, verbose=False).eval()
    with torch.no_grad():
        d = model(x.float() * 2 - 1, y.float() * 2 - 1).reshape(-1)
    return [float(v) for v in d], ("pretrained" if pretrained else "random")
