"""Typed views of params.yaml for the model package.

model/ never reads files: callers (tasks/) load params.yaml and pass the dict to `from_params`.
Every shape the modules use is derived here, so a change in params.yaml is the only way to
change a shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class VideoVAEConfig:
    latent_channels: int = 4
    temporal_downsample: int = 2
    spatial_downsample: int = 8
    hidden_channels: int = 32
    kl_weight: float = 1e-6


@dataclass(frozen=True)
class AudioVAEConfig:
    sample_rate: int = 16000
    num_samples: int = 32000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 64
    num_mel_frames: int = 64
    latent_channels: int = 8
    time_downsample: int = 4
    hidden_channels: int = 128
    griffin_lim_iters: int = 16
    log_mel_offset: float = 5.0
    log_mel_scale: float = 6.0
    kl_weight: float = 1e-6

    @property
    def latent_length(self) -> int:
        return self.num_mel_frames // self.time_downsample


@dataclass(frozen=True)
class DenoiserConfig:
    """Shapes and sizes of one JointDenoisingTransformer (base or upsampler)."""

    is_upsampler: bool = False
    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    video_latent_shape: tuple[int, int, int, int] = (4, 8, 4, 4)  # (C, F, H, W)
    video_patch: tuple[int, int, int] = (2, 2, 2)
    audio_latent_shape: tuple[int, int] = (8, 16)  # (C, L); unused by the upsampler
    audio_patch: int = 1
    # Spatial size of the input image latent for image-to-video (C, H, W): the base-resolution
    # image encoded by the VideoVAE.
    image_latent_shape: tuple[int, int, int] = (4, 4, 4)
    # Square patch (in latent cells) of the image tokens; None: the video patch's (h, w). The image
    # only conditions, so coarser tokens than the video's cost little quality and save sequence.
    image_patch: int | None = None
    low_res_latent_shape: tuple[int, int, int, int] | None = None  # upsampler only
    context_dim: int = 384        # width of the text encoder's pooled vector and token states
    image_feature_dim: int = 0    # CLIP image feature width; 0 when the backend has none
    max_text_tokens: int = 32
    # Self-attention layers over the caption tokens before they join the sequence and are pooled into
    # the adaLN condition (0: projection and attention pooling only).
    text_refiner_depth: int = 0
    video_seconds: float = 2.0    # both modalities span the same window: shared time positions
    # Self-conditioning (Chen et al., "Analog Bits"): the model also reads its own previous estimate
    # of the clean latents, concatenated to the noisy ones (zeros when there is none). Base only.
    self_condition: bool = False

    @property
    def video_grid(self) -> tuple[int, int, int]:
        _, f, h, w = self.video_latent_shape
        pf, ph, pw = self.video_patch
        if f % pf or h % ph or w % pw:
            raise ValueError(f"video latent {self.video_latent_shape} is not divisible by patch {self.video_patch}")
        return f // pf, h // ph, w // pw

    @property
    def audio_tokens(self) -> int:
        if self.audio_latent_shape[1] % self.audio_patch:
            raise ValueError(f"audio latent {self.audio_latent_shape} is not divisible by patch {self.audio_patch}")
        return self.audio_latent_shape[1] // self.audio_patch

    @property
    def image_grid(self) -> tuple[int, int]:
        _, h, w = self.image_latent_shape
        ph, pw = self.image_patch_hw
        if h % ph or w % pw:
            raise ValueError(f"image latent {self.image_latent_shape} is not divisible by image patch {(ph, pw)}")
        return h // ph, w // pw

    @property
    def image_patch_hw(self) -> tuple[int, int]:
        if self.image_patch:
            return int(self.image_patch), int(self.image_patch)
        return self.video_patch[1], self.video_patch[2]


@dataclass(frozen=True)
class ModelConfig:
    video_vae: VideoVAEConfig = field(default_factory=VideoVAEConfig)
    audio_vae: AudioVAEConfig = field(default_factory=AudioVAEConfig)
    base: DenoiserConfig = field(default_factory=DenoiserConfig)
    upsampler: DenoiserConfig = field(default_factory=lambda: DenoiserConfig(is_upsampler=True))
    num_frames: int = 16
    base_size: int = 32
    upsampled_size: int = 64


def _denoiser(
    p: Mapping[str, Any],
    *,
    is_upsampler: bool,
    video_latent: tuple[int, int, int, int],
    audio_latent: tuple[int, int],
    image_latent: tuple[int, int, int],
    low_res_latent: tuple[int, int, int, int] | None,
    context_dim: int,
    image_feature_dim: int,
    max_text_tokens: int,
    seconds: float,
) -> DenoiserConfig:
    return DenoiserConfig(
        is_upsampler=is_upsampler,
        dim=int(p["dim"]),
        depth=int(p["depth"]),
        heads=int(p["heads"]),
        mlp_ratio=float(p["mlp_ratio"]),
        video_latent_shape=video_latent,
        video_patch=tuple(int(v) for v in p["video_patch"]),  # type: ignore[arg-type]
        audio_latent_shape=audio_latent,
        audio_patch=int(p["audio_patch"]),
        image_patch=int(p["image_patch"]) if p.get("image_patch") else None,
        image_latent_shape=image_latent,
        low_res_latent_shape=low_res_latent,
        context_dim=context_dim,
        image_feature_dim=image_feature_dim,
        max_text_tokens=max_text_tokens,
        text_refiner_depth=int(p.get("text_refiner_depth") or 0),
        video_seconds=seconds,
        self_condition=False if is_upsampler else bool(p.get("self_condition", False)),
    )


def from_params(params: Mapping[str, Any], *, context_dim: int = 384, image_feature_dim: int = 0) -> ModelConfig:
    """Build every model shape from a params.yaml dict.

    `context_dim` and `image_feature_dim` come from the conditioning encoder that is in use
    (384 for MiniLM, the CLIP projection width for CLIP).
    """
    cache, vae, den = params["cache"], params["vae"], params["denoiser"]
    v, a = vae["video"], vae["audio"]
    video_vae = VideoVAEConfig(
        latent_channels=int(v["latent_channels"]),
        temporal_downsample=int(v["temporal_downsample"]),
        spatial_downsample=int(v["spatial_downsample"]),
        hidden_channels=int(v["hidden_channels"]),
        kl_weight=float(v["kl_weight"]),
    )
    sample_rate = int(cache["sample_rate"])
    audio_vae = AudioVAEConfig(
        sample_rate=sample_rate,
        num_samples=int(round(sample_rate * float(cache["window_s"]))),
        n_fft=int(a["n_fft"]),
        hop_length=int(a["hop_length"]),
        n_mels=int(a["n_mels"]),
        num_mel_frames=int(a["num_mel_frames"]),
        latent_channels=int(a["latent_channels"]),
        time_downsample=int(a["time_downsample"]),
        hidden_channels=int(a["hidden_channels"]),
        griffin_lim_iters=int(a["griffin_lim_iters"]),
        log_mel_offset=float(a["log_mel_offset"]),
        log_mel_scale=float(a["log_mel_scale"]),
        kl_weight=float(a["kl_weight"]),
    )
    frames = int(cache["num_frames"])
    base_size, up_size = int(cache["base_size"]), int(cache["upsampled_size"])
    c, ft, s = video_vae.latent_channels, video_vae.temporal_downsample, video_vae.spatial_downsample
    for size in (base_size, up_size):
        if size % s:
            raise ValueError(f"frame size {size} is not divisible by vae.video.spatial_downsample={s}")
    if frames % ft:
        raise ValueError(f"cache.num_frames={frames} is not divisible by vae.video.temporal_downsample={ft}")
    base_latent = (c, frames // ft, base_size // s, base_size // s)
    up_latent = (c, frames // ft, up_size // s, up_size // s)
    audio_latent = (audio_vae.latent_channels, audio_vae.latent_length)
    common = dict(
        audio_latent=audio_latent,
        context_dim=context_dim,
        image_feature_dim=image_feature_dim,
        max_text_tokens=int(params["conditioning"]["max_text_tokens"]),
        seconds=float(cache["window_s"]),
    )
    base = _denoiser(
        den["base"], is_upsampler=False, video_latent=base_latent,
        image_latent=(c, base_latent[2], base_latent[3]), low_res_latent=None, **common,
    )
    upsampler = _denoiser(
        den["upsampler"], is_upsampler=True, video_latent=up_latent,
        image_latent=(c, up_latent[2], up_latent[3]), low_res_latent=base_latent, **common,
    )
    return ModelConfig(video_vae, audio_vae, base, upsampler, frames, base_size, up_size)
