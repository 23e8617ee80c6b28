"""Noise-schedule glue (diffusers schedulers, no hand-written schedule), training losses and the
cascaded sampler.

Fixes to the article:
- The diffusion target follows the scheduler's prediction_type (x0, "sample", by default; each model may
  have its own: `noise_schedulers`).
- Condition dropout during training and classifier-free guidance at sampling.
- The upsampler is trained on a noised low-res latent whose level is an input, and sampled with
  the clean base latent noised to a fixed level: the same distribution in both (the article
  trained on noisy low-res latents and sampled on clean ones).
- Video and audio latents are packed into one tensor per sample for the sampler, so multistep
  samplers (DPM-Solver++) keep one consistent history instead of being stepped twice per timestep.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from .conditioning import TextEmbedding
from .denoiser import JointDenoisingTransformer

SAMPLERS = ("ddpm", "ddim", "dpm")


def make_noise_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                         prediction_type: str = "v_prediction"):
    """The training scheduler (DDPM, as the article)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
        prediction_type=prediction_type, clip_sample=False,
    )


def noise_schedulers(diffusion: Mapping[str, Any]) -> tuple[Any, Any]:
    """(base, upsampler) training schedulers from params.yaml's `diffusion` group: one schedule, and
    each model's own prediction target (`upsampler_prediction_type`, default the base's)."""
    kind = diffusion["prediction_type"]
    up_kind = diffusion.get("upsampler_prediction_type") or kind
    n, schedule = int(diffusion["num_train_timesteps"]), diffusion["beta_schedule"]
    return make_noise_scheduler(n, schedule, kind), make_noise_scheduler(n, schedule, up_kind)


def make_sampler(name: str, train_scheduler):
    """A fresh sampling scheduler sharing the training schedule. clip_sample stays off: latents are
    unit-variance, and clipping them to [-1, 1] breaks DDIM."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    config = dict(train_scheduler.config)
    if name == "ddpm":
        return DDPMScheduler.from_config(config, clip_sample=False)
    if name == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False)
    if name == "dpm":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


def diffusion_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise ValueError(f"unsupported prediction_type {kind!r}")


def predicted_x0(scheduler, noisy: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean-latent estimate implied by a model output in the scheduler's target space."""
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return prediction
    alpha = scheduler.alphas_cumprod.to(noisy.device)[t].to(noisy.dtype).view(-1, *([1] * (noisy.dim() - 1)))
    if kind == "epsilon":
        return (noisy - (1 - alpha).sqrt() * prediction) / alpha.sqrt()
    if kind == "v_prediction":
        return alpha.sqrt() * noisy - (1 - alpha).sqrt() * prediction
    raise ValueError(f"unsupported prediction_type {kind!r}")


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def _timesteps(n: int, high: int, generator: torch.Generator | None, device: torch.device,
               logit_mean: float | None = None, logit_std: float = 1.0) -> torch.Tensor:
    """Training timesteps in [0, high): uniform, or logit-normal (SD3) when `logit_mean` is set:
    t / high = sigmoid(N(logit_mean, logit_std)), which puts more updates where the mean is."""
    if logit_mean is None:
        return torch.randint(0, high, (n,), generator=generator).to(device)
    u = torch.sigmoid(torch.randn(n, generator=generator, dtype=torch.float64) * logit_std + logit_mean)
    return (u * high).long().clamp_(0, high - 1).to(device)


def _dropout(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < p).to(device)


@dataclass
class BaseLoss:
    video: torch.Tensor
    audio: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.video + self.audio


def base_denoiser_loss(
    model: JointDenoisingTransformer,
    scheduler,
    video_latent: torch.Tensor,
    audio_latent: torch.Tensor,
    context: TextEmbedding,
    cond_dropout: float = 0.1,
    generator: torch.Generator | None = None,
    image_latent: torch.Tensor | None = None,
    has_image: torch.Tensor | None = None,
    image_features: torch.Tensor | None = None,
    timestep_logit_mean: float | None = None,
    timestep_logit_std: float = 1.0,
    self_condition_rate: float = 0.5,
) -> BaseLoss:
    """One DDPM training step's losses for the base model. Video and audio share the timestep:
    they are one joint sample, denoised together."""
    b, device = video_latent.shape[0], video_latent.device
    t = _timesteps(b, scheduler.config.num_train_timesteps, generator, device, timestep_logit_mean, timestep_logit_std)
    noise_v, noise_a = _randn_like(video_latent, generator), _randn_like(audio_latent, generator)
    drop = _dropout(b, cond_dropout, generator, device)
    noisy_v, noisy_a = scheduler.add_noise(video_latent, noise_v, t), scheduler.add_noise(audio_latent, noise_a, t)
    extra = dict(image_latent=image_latent, has_image=has_image, image_features=image_features)
    self_cond: dict[str, torch.Tensor] = {}
    inner = getattr(model, "module", model)  # the model itself under DistributedDataParallel
    if inner.config.self_condition:
        # A share of the items (self_condition_rate) first gets the model's own estimate, without
        # gradient, as sampling will give it.
        rows = (torch.rand(b, generator=generator) < self_condition_rate).nonzero().squeeze(1).to(device)
        previous_v, previous_a = torch.zeros_like(video_latent), torch.zeros_like(audio_latent)
        if len(rows):
            with torch.no_grad():
                pv, pa = inner(
                    noisy_v[rows], noisy_a[rows], t[rows], context.select(rows), drop_condition=drop[rows],
                    **{k: None if v is None else v[rows] for k, v in extra.items()},
                )
            previous_v[rows] = predicted_x0(scheduler, noisy_v[rows], pv, t[rows])
            previous_a[rows] = predicted_x0(scheduler, noisy_a[rows], pa, t[rows])
        self_cond = dict(self_cond_video=previous_v, self_cond_audio=previous_a)
    pred_v, pred_a = model(noisy_v, noisy_a, t, context, drop_condition=drop, **extra, **self_cond)
    assert pred_a is not None
    return BaseLoss(
        F.mse_loss(pred_v, diffusion_target(scheduler, video_latent, noise_v, t)),
        F.mse_loss(pred_a, diffusion_target(scheduler, audio_latent, noise_a, t)),
    )


def upsampler_loss(
    model: JointDenoisingTransformer,
    scheduler,
    video_latent: torch.Tensor,
    low_res_latent: torch.Tensor,
    context: TextEmbedding,
    max_noise_aug: int,
    cond_dropout: float = 0.1,
    generator: torch.Generator | None = None,
    image_latent: torch.Tensor | None = None,
    has_image: torch.Tensor | None = None,
    image_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Upsampler loss with noise-conditioning augmentation: the clean low-res latent is noised to a
    level drawn from [0, max_noise_aug) and the level is given to the model."""
    b, device = video_latent.shape[0], video_latent.device
    t = _timesteps(b, scheduler.config.num_train_timesteps, generator, device)
    level = _timesteps(b, max(int(max_noise_aug), 1), generator, device)
    noise = _randn_like(video_latent, generator)
    low_res = scheduler.add_noise(low_res_latent, _randn_like(low_res_latent, generator), level)
    drop = _dropout(b, cond_dropout, generator, device)
    pred, _ = model(
        scheduler.add_noise(video_latent, noise, t), None, t, context,
        low_res_video=low_res, low_res_noise_level=level, image_latent=image_latent, has_image=has_image,
        image_features=image_features, drop_condition=drop,
    )
    return F.mse_loss(pred, diffusion_target(scheduler, video_latent, noise, t))


@torch.no_grad()
def sample_latents(
    model: JointDenoisingTransformer,
    train_scheduler,
    context: TextEmbedding,
    *,
    sampler: str = "dpm",
    steps: int = 20,
    guidance: float = 4.0,
    guidance_interval: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    low_res_video: torch.Tensor | None = None,
    low_res_noise_level: int = 100,
    image_latent: torch.Tensor | None = None,
    has_image: torch.Tensor | None = None,
    image_features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reverse diffusion for one stage. Returns (video latent, audio latent or None for the upsampler).

    For the upsampler pass the clean base latent as `low_res_video`: it is noised here to the fixed
    `low_res_noise_level`, matching training's noise-conditioning augmentation.

    `guidance_interval=(lo, hi)` applies guidance only at timesteps lo <= t <= hi (training timestep
    units) and the plain conditional prediction elsewhere, one forward instead of two (Kynkaanniemi
    et al. 2024). Guidance at low noise sharpens what the null prediction blurs and overshoots fine
    structure: on the built-in data it turned squares ragged (held-out shape 0.76 at guidance 4
    everywhere, 0.96 with guidance only at t >= 700, 4 seeds). None: every step.
    """
    cfg = model.config
    if guidance_interval is None:
        lo, hi = 0, int(train_scheduler.config.num_train_timesteps)
    else:
        lo, hi = (int(v) for v in guidance_interval)
        if not 0 <= lo <= hi:
            raise ValueError(f"guidance_interval must be (lo, hi) with 0 <= lo <= hi, got {guidance_interval}")
    b = context.pooled.shape[0]
    device = context.pooled.device
    video_shape = (b, *cfg.video_latent_shape)
    audio_shape = None if cfg.is_upsampler else (b, *cfg.audio_latent_shape)
    n_video = int(torch.Size(cfg.video_latent_shape).numel())
    n_audio = 0 if audio_shape is None else int(torch.Size(cfg.audio_latent_shape).numel())

    scheduler = make_sampler(sampler, train_scheduler)
    scheduler.set_timesteps(steps)
    x = torch.randn((b, n_video + n_audio), generator=generator).to(device) * scheduler.init_noise_sigma

    extra: dict[str, torch.Tensor | None] = dict(image_latent=image_latent, has_image=has_image, image_features=image_features)
    if cfg.is_upsampler:
        if low_res_video is None:
            raise ValueError("the upsampler stage needs the base latent as low_res_video")
        level = torch.full((b,), int(low_res_noise_level), dtype=torch.long, device=device)
        noise = torch.randn(low_res_video.shape, generator=generator).to(device)
        extra["low_res_video"] = train_scheduler.add_noise(low_res_video, noise, level)
        extra["low_res_noise_level"] = level

    previous = torch.zeros_like(x) if cfg.self_condition else None
    captions: dict = {}  # the caption states, computed at the first step and reused
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, t)
        video = model_in[:, :n_video].reshape(video_shape)
        audio = None if audio_shape is None else model_in[:, n_video:].reshape(audio_shape)
        ts = torch.full((b,), int(t), dtype=torch.long, device=device)
        if previous is not None:
            extra["self_cond_video"] = previous[:, :n_video].reshape(video_shape)
            extra["self_cond_audio"] = None if audio_shape is None else previous[:, n_video:].reshape(audio_shape)
        scale = guidance if lo <= int(t) <= hi else 1.0
        pred_v, pred_a = model.forward_with_cfg(video, audio, ts, context, scale, caption_cache=captions, **extra)
        out = pred_v.reshape(b, -1) if pred_a is None else torch.cat([pred_v.reshape(b, -1), pred_a.reshape(b, -1)], 1)
        if previous is not None:
            previous = predicted_x0(train_scheduler, model_in, out, ts)  # the guided estimate
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    video = x[:, :n_video].reshape(video_shape)
    audio = None if audio_shape is None else x[:, n_video:].reshape(audio_shape)
    return video, audio
