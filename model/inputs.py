"""What a denoiser reads besides the noisy latents and t, and the order of its token sequence.

`DenoiserInputs` gathers every condition in one object that losses, the sampler and the pipeline
pass along unchanged; `TokenLayout` is the one place the token order is written.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from .conditioning import TextEmbedding


@dataclass
class CaptionState:
    """The caption's share of the denoiser's input, independent of the noisy latents and t: a
    sampler computes it once per call (`JointDenoisingTransformer.with_caption_state`)."""

    text: torch.Tensor            # (B, Lt, D) refined caption tokens
    text_mask: torch.Tensor       # (B, Lt) bool
    cond: torch.Tensor            # (B, D): the caption's share of the adaLN condition


@dataclass
class DenoiserInputs:
    """Conditions of one batch of B rows. Only `caption` is required.

    caption: the text encoder's output; image_latent (B, C, H, W) + has_image (B,) bool + image_features
    (B, E): the first frame for image-to-video (rows without an image are masked out); low_res_video
    (B, C, F, h, w) + low_res_noise_level (B,): the upsampler's low-res input; self_cond_video /
    self_cond_audio: the previous clean-latent estimate (self-conditioning; None: zeros); drop (B,) bool:
    rows that take the null condition; caption_state: the caption already refined (None: refined in forward).
    """

    caption: TextEmbedding
    image_latent: torch.Tensor | None = None
    has_image: torch.Tensor | None = None
    image_features: torch.Tensor | None = None
    low_res_video: torch.Tensor | None = None
    low_res_noise_level: torch.Tensor | None = None
    self_cond_video: torch.Tensor | None = None
    self_cond_audio: torch.Tensor | None = None
    drop: torch.Tensor | None = None
    caption_state: CaptionState | None = None

    @property
    def batch_size(self) -> int:
        return self.caption.pooled.shape[0]

    def _tensors(self) -> dict[str, torch.Tensor]:
        skip = ("caption", "caption_state")
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}

    def replace(self, **changes: Any) -> "DenoiserInputs":
        return replace(self, **changes)

    def select(self, rows: torch.Tensor) -> "DenoiserInputs":
        """These rows (an index tensor); the caption is refined again for them."""
        picked = {k: v[rows] for k, v in self._tensors().items()}
        return replace(self, caption=self.caption.select(rows), caption_state=None, **picked)

    def to(self, device: torch.device | str) -> "DenoiserInputs":
        moved = {k: v.to(device) for k, v in self._tensors().items()}
        return replace(self, caption=self.caption.to(device), caption_state=None, **moved)

    def with_null_rows(self) -> "DenoiserInputs":
        """2B rows for classifier-free guidance: these rows, then the same rows with the null condition."""
        def twice(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x])

        b, c = self.batch_size, self.caption
        kept = self.drop if self.drop is not None else torch.zeros(b, dtype=torch.bool, device=c.pooled.device)
        doubled = {k: twice(v) for k, v in self._tensors().items() if k != "drop"}
        return replace(self, caption=TextEmbedding(twice(c.pooled), twice(c.tokens), twice(c.mask)),
                       drop=torch.cat([kept, torch.ones_like(kept)]), caption_state=None, **doubled)

    def with_self_condition(self, video: torch.Tensor, audio: torch.Tensor | None) -> "DenoiserInputs":
        """The previous estimate (of B or, for null rows, B / k rows: repeated to fill the batch)."""
        k = self.batch_size // video.shape[0]
        repeat = (lambda x: x if k == 1 else x.repeat(k, *([1] * (x.dim() - 1))))  # noqa: E731
        return replace(self, self_cond_video=repeat(video), self_cond_audio=None if audio is None else repeat(audio))


@dataclass(frozen=True)
class TokenLayout:
    """The joint sequence, in order: [text (Lt)] [image (Li)] [video (Nv)] [audio (Na), base only]."""

    groups: tuple[tuple[str, int], ...]

    @classmethod
    def from_config(cls, config) -> "TokenLayout":
        gh, gw = config.image_grid
        gt, vh, vw = config.video_grid
        groups = [("text", config.max_text_tokens), ("image", gh * gw), ("video", gt * vh * vw)]
        if not config.is_upsampler:
            groups.append(("audio", config.audio_tokens))
        return cls(tuple(groups))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.groups]

    def __len__(self) -> int:
        return sum(n for _, n in self.groups)

    def slice(self, name: str) -> slice:
        start = 0
        for group, n in self.groups:
            if group == name:
                return slice(start, start + n)
            start += n
        raise KeyError(f"no {name!r} tokens in this layout ({', '.join(self.names)})")

    def concat(self, parts: dict[str, torch.Tensor], dim: int = 1) -> torch.Tensor:
        """Per-group tensors joined along the token axis `dim`, in layout order."""
        return torch.cat([parts[name] for name in self.names], dim=dim)
