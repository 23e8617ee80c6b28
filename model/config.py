"""Model configs: frozen dataclasses whose defaults are the shipped model (nanoGPT style).

Fields marked `derived` are shapes computed from other settings (frame count, frame size, the VAE's
downsampling, the text encoder's width) by `build_config`; the others are what params.yaml sets.
model/ never reads files: tasks/ loads params.yaml and hands these dataclasses over.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any


def derived(default: Any) -> Any:
    """A field computed by `build_config`, not read from params.yaml."""
    return field(default=default, metadata={"derived": True})


def settable_fields(cls) -> list[str]:
    """The fields of a config that params.yaml may set."""
    return [f.name for f in fields(cls) if not f.metadata.get("derived")]


@dataclass(frozen=True)
class VideoVAEConfig:
    latent_channels: int = 4
    temporal_downsample: int = 2
    spatial_downsample: int = 2
    hidden_channels: int = 32
    kl_weight: float = 1e-6
    motion_weight: float = 10.0  # training loss: moving pixels weigh 1 + this x their distance from the still frame


@dataclass(frozen=True)
class AudioVAEConfig:
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
    sample_rate: int = derived(16000)
    num_samples: int = derived(32000)

    @property
    def latent_length(self) -> int:
        return self.num_mel_frames // self.time_downsample


@dataclass(frozen=True)
class DenoiserConfig:
    """One JointDenoisingTransformer (base or upsampler). Defaults: the shipped base model."""

    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    video_patch: tuple[int, int, int] = (8, 2, 2)  # (t, h, w) in latent cells
    audio_patch: int = 1
    image_patch: int | None = 4   # square patch of the i2v image tokens; None: the video patch's (h, w)
    text_refiner_depth: int = 2   # self-attention layers over the caption tokens
    text_refiner_kernel: int = 1  # caption tokens each refiner input mixes (odd); 1: each token alone
    caption_in_adaln: bool = True # the pooled caption also conditions adaLN; False: only the caption tokens
    sentence_in_adaln: bool = False  # True: adaLN also adds the encoder's whole-sentence vector
    self_condition: bool = False  # also read the previous clean-latent estimate (base only)
    attention: str = "full"       # full | factorised: video tokens attend within a frame and across frames, alternately
    is_upsampler: bool = derived(False)
    video_latent_shape: tuple[int, int, int, int] = derived((4, 16, 16, 16))  # (C, F, H, W)
    audio_latent_shape: tuple[int, int] = derived((8, 16))                    # (C, L); unused by the upsampler
    image_latent_shape: tuple[int, int, int] = derived((4, 16, 16))           # the input image's VAE latent
    low_res_latent_shape: tuple[int, int, int, int] | None = derived(None)    # upsampler only
    context_dim: int = derived(384)       # width of the text encoder's pooled vector and token states
    image_feature_dim: int = derived(0)   # CLIP image feature width; 0 when the backend has none
    max_text_tokens: int = derived(48)
    video_seconds: float = derived(2.0)   # both modalities span the same window: shared time positions

    def __post_init__(self) -> None:
        if self.attention not in ("full", "factorised"):
            raise ValueError(f"denoiser attention must be full or factorised, got {self.attention!r}")
        if self.text_refiner_kernel < 1 or self.text_refiner_kernel % 2 == 0:
            raise ValueError(f"denoiser text_refiner_kernel must be odd and positive, got {self.text_refiner_kernel}")

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


# Fields whose default changed after configs were saved without them: a saved config that lacks one
# predates the field and was trained with this value (read by `saved_denoiser_settings`).
BEFORE_FIELD_EXISTED = {"text_refiner_kernel": 3, "sentence_in_adaln": True}


def saved_denoiser_settings(settings: dict) -> dict:
    """A saved denoiser config's fields, with the value it was trained with for any field newer than it."""
    return {**BEFORE_FIELD_EXISTED, **settings}


UPSAMPLER = DenoiserConfig(video_patch=(8, 4, 4), image_patch=8, text_refiner_depth=1, is_upsampler=True,
                           video_latent_shape=(4, 16, 32, 32), image_latent_shape=(4, 32, 32),
                           low_res_latent_shape=(4, 16, 16, 16))


@dataclass(frozen=True)
class ModelConfig:
    video_vae: VideoVAEConfig = field(default_factory=VideoVAEConfig)
    audio_vae: AudioVAEConfig = field(default_factory=AudioVAEConfig)
    base: DenoiserConfig = field(default_factory=DenoiserConfig)
    upsampler: DenoiserConfig = UPSAMPLER
    num_frames: int = 32
    base_size: int = 32
    upsampled_size: int = 64


def build_config(video_vae: VideoVAEConfig, audio_vae: AudioVAEConfig, base: DenoiserConfig,
                 upsampler: DenoiserConfig, *, num_frames: int, window_s: float, base_size: int, upsampled_size: int,
                 sample_rate: int, max_text_tokens: int, context_dim: int = 384,
                 image_feature_dim: int = 0) -> ModelConfig:
    """Fill every derived shape from the frame count and sizes, the VAEs' downsampling and the encoder widths."""
    c, ft, s = video_vae.latent_channels, video_vae.temporal_downsample, video_vae.spatial_downsample
    for size in (base_size, upsampled_size):
        if size % s:
            raise ValueError(f"frame size {size} is not divisible by vae.video.spatial_downsample={s}")
    if num_frames % ft:
        raise ValueError(f"cache.num_frames={num_frames} is not divisible by vae.video.temporal_downsample={ft}")
    audio_vae = replace(audio_vae, sample_rate=sample_rate, num_samples=int(round(sample_rate * window_s)))
    latent = {size: (c, num_frames // ft, size // s, size // s) for size in (base_size, upsampled_size)}
    common = dict(audio_latent_shape=(audio_vae.latent_channels, audio_vae.latent_length), context_dim=context_dim,
                  image_feature_dim=image_feature_dim, max_text_tokens=max_text_tokens, video_seconds=window_s)
    base = replace(base, is_upsampler=False, video_latent_shape=latent[base_size],
                   image_latent_shape=latent[base_size][:1] + latent[base_size][2:], low_res_latent_shape=None, **common)
    upsampler = replace(upsampler, is_upsampler=True, self_condition=False, video_latent_shape=latent[upsampled_size],
                        image_latent_shape=latent[upsampled_size][:1] + latent[upsampled_size][2:],
                        low_res_latent_shape=latent[base_size], **common)
    return ModelConfig(video_vae, audio_vae, base, upsampler, num_frames, base_size, upsampled_size)


def from_params(params: Any, *, context_dim: int = 384, image_feature_dim: int = 0) -> ModelConfig:
    """The model a typed params tree (tasks.params.Params) describes, for an encoder of these widths."""
    cache = params.cache
    return build_config(params.vae.video, params.vae.audio, params.denoiser.base, params.denoiser.upsampler,
                        num_frames=cache.num_frames, window_s=cache.window_s, base_size=cache.base_size,
                        upsampled_size=cache.upsampled_size, sample_rate=cache.sample_rate,
                        max_text_tokens=params.conditioning.max_text_tokens, context_dim=context_dim,
                        image_feature_dim=image_feature_dim)
