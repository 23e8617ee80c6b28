"""Cascaded generation: the article's `generate_content`, done right.

    text (+ image) -> ConditioningEncoder -> base JointDenoisingTransformer (video + audio latents,
    classifier-free guidance) -> upsampler (video latent at 2x, conditioned on the clean base latent
    noised to a fixed level, as in training) -> VideoVAE / AudioVAE decoders -> frames + waveform.

Fixes to the article: guidance (cond and null rows in one forward), the upsampler sees the same
low-res distribution as in training, any diffusers sampler (DPM-Solver++ by default), seeded and
batched, image-to-video through image-latent tokens (and CLIP image features with the CLIP backend).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conditioning import ConditioningEncoder, TextEmbedding
from .config import ModelConfig
from .denoiser import JointDenoisingTransformer
from .diffusion import sample_latents
from .inputs import DenoiserInputs
from .precision import autocast, autocast_dtype
from .vae import AudioVAE, VideoVAE


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, size, size), antialiased: how every input image reaches a model."""
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@dataclass
class GeneratedContent:
    video: torch.Tensor       # (B, 3, F, H, W) in [0, 1]: the upsampler's output
    base_video: torch.Tensor | None  # (B, 3, F, h, w) in [0, 1]: the base model's output (decode_base=True)
    audio: torch.Tensor       # (B, N) in [-1, 1]
    sample_rate: int
    fps: float
    prompts: list[str]


class TinyVeo(nn.Module):
    """Every trained component, ready to sample. Build it from a checkpoint with
    `tasks.checkpoint.load_pipeline`; this class reads no files."""

    def __init__(self, config: ModelConfig, encoder: ConditioningEncoder, video_vae: VideoVAE, audio_vae: AudioVAE,
                 base: JointDenoisingTransformer, upsampler: JointDenoisingTransformer, train_scheduler, fps: float,
                 upsampler_scheduler=None, bf16_speedup: Callable[[], float] | None = None):
        super().__init__()
        self.config = config
        self.encoder, self.video_vae, self.audio_vae = encoder, video_vae, audio_vae
        self.base, self.upsampler = base, upsampler
        self.train_scheduler = train_scheduler
        # The upsampler may predict another target (x0 by default: see params.yaml) on the same schedule.
        self.upsampler_scheduler = upsampler_scheduler or train_scheduler
        self.fps = float(fps)
        self.bf16_speedup = bf16_speedup   # precision "auto" on a CPU: this machine's measurement (model.precision)
        self.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def denoiser_inputs(self, context: TextEmbedding, image: torch.Tensor | None) -> tuple[DenoiserInputs, DenoiserInputs]:
        """(base, upsampler) inputs: the caption, and for image-to-video the image's latent at each
        model's resolution (+ CLIP features). image: (3, H, W) or (B, 3, H, W) in [0, 1]."""
        if image is None:
            return DenoiserInputs(context), DenoiserInputs(context)
        batch = context.pooled.shape[0]
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"input_image must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
        if image.shape[0] == 1 and batch > 1:
            image = image.expand(batch, -1, -1, -1)
        if image.shape[0] != batch:
            raise ValueError(f"{image.shape[0]} input images for {batch} prompts")
        image = image.float().clamp(0, 1).to(self.device)
        features = self.encoder.get_image_embeds(image) if self.encoder.image_dim else None
        has_image = torch.ones(batch, dtype=torch.bool, device=self.device)

        def at_resolution(model: JointDenoisingTransformer) -> DenoiserInputs:
            size = model.config.video_latent_shape[-1] * self.video_vae.config.spatial_downsample
            latent = self.video_vae.encode_image(resize_image(image, size))
            return DenoiserInputs(context, image_latent=latent, has_image=has_image, image_features=features)

        return at_resolution(self.base), at_resolution(self.upsampler)

    @torch.no_grad()
    def generate_content(
        self,
        prompt: str | Sequence[str],
        input_image: torch.Tensor | None = None,
        *,
        steps: int = 20,
        guidance: float = 4.0,
        guidance_interval: tuple[int, int] | None = None,
        sampler: str = "dpm",
        seed: int = 0,
        generator: torch.Generator | None = None,
        upsampler_noise_level: int = 100,
        upsampler_steps: int | None = None,
        decode_base: bool = False,
        precision: str = "auto",
        on_step: Callable[[], None] | None = None,
    ) -> GeneratedContent:
        """Prompt(s) (and an optional first-frame image in [0, 1]) -> decoded video and audio.
        `decode_base` also decodes the base model's low-res video (a diagnostic; it costs a decode).
        `precision` ("auto" | "bf16" | "fp32", see model.precision): autocast of the denoisers and
        decoders; the caption and image encodings stay fp32, as in the training latent cache.
        `generator` (a CPU torch.Generator) replaces `seed`; `on_step` is called after each denoising step.

        The same (prompts, image, settings, seed) give identical output on CPU.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompts given")
        for i, p in enumerate(prompts):
            if not p or not p.strip():
                raise ValueError(f"prompt {i + 1} is empty")
        generator = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        context = self.encoder.get_text_embeds(prompts).to(self.device)
        base_inputs, up_inputs = self.denoiser_inputs(context, input_image)
        settings = dict(sampler=sampler, guidance=guidance, guidance_interval=guidance_interval, generator=generator,
                        on_step=on_step)
        with autocast(self.device, autocast_dtype(precision, self.device, self.bf16_speedup)):
            base_video, audio = sample_latents(self.base, self.train_scheduler, base_inputs, steps=steps, **settings)
            up_video, _ = sample_latents(self.upsampler, self.upsampler_scheduler,
                                         up_inputs.replace(low_res_video=base_video), steps=upsampler_steps or steps,
                                         low_res_noise_level=upsampler_noise_level, **settings)
            assert audio is not None
            video = self.video_vae.decode(up_video).clamp(0, 1).cpu()
            base_decoded = self.video_vae.decode(base_video).clamp(0, 1).cpu() if decode_base else None
            waveform = self.audio_vae.decode(audio)[:, 0].clamp(-1, 1).cpu()
        return GeneratedContent(
            video=video,
            base_video=base_decoded,
            audio=waveform,
            sample_rate=self.audio_vae.config.sample_rate,
            fps=self.fps,
            prompts=prompts,
        )
