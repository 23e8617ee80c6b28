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

Two families of schedule share these functions: DDPM (prediction_type epsilon | v_prediction |
sample, integer timesteps) and flow matching (prediction_type "flow": rectified flow, x_t =
(1 - s) x0 + s noise, the model predicts noise - x0, timesteps s * num_train_timesteps as floats),
sampled by DPM-Solver++ in flow mode or by FlowMatchEuler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .denoiser import JointDenoisingTransformer
from .draws import BatchDraws
from .inputs import DenoiserInputs

SAMPLERS = ("ddpm", "ddim", "dpm", "euler")
FLOW = "flow"


def make_noise_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                         prediction_type: str = "v_prediction", flow_shift: float = 1.0):
    """The training scheduler: DDPM (as the article), or FlowMatchEuler for prediction_type "flow"."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if prediction_type == FLOW:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=flow_shift)
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
        prediction_type=prediction_type, clip_sample=False,
    )


def is_flow(scheduler) -> bool:
    return not hasattr(scheduler, "alphas_cumprod")


def _sigma(scheduler, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Flow matching: the noise share s of timesteps t, shaped to broadcast over `like`."""
    s = t.to(like.device, torch.float32) / scheduler.config.num_train_timesteps
    return s.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t of either family (the forward process)."""
    if is_flow(scheduler):
        s = _sigma(scheduler, t, x0)
        return (1 - s) * x0 + s * noise
    return scheduler.add_noise(x0, noise, t)


def noise_schedulers(diffusion: Any) -> tuple[Any, Any]:
    """(base, upsampler) training schedulers from the `diffusion` params group: one schedule, and
    each model's own prediction target (`upsampler_prediction_type`, default the base's)."""
    kind = diffusion.prediction_type
    up_kind = diffusion.upsampler_prediction_type or kind
    n, schedule, shift = diffusion.num_train_timesteps, diffusion.beta_schedule, diffusion.flow_shift
    return make_noise_scheduler(n, schedule, kind, shift), make_noise_scheduler(n, schedule, up_kind, shift)


SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")


def make_sampler(name: str, train_scheduler):
    """A fresh sampling scheduler sharing the training schedule. clip_sample stays off: latents are
    unit-variance, and clipping them to [-1, 1] breaks DDIM."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    config = dict(train_scheduler.config)
    if is_flow(train_scheduler):
        if name == "dpm":
            return DPMSolverMultistepScheduler(num_train_timesteps=config["num_train_timesteps"], use_flow_sigmas=True,
                                               prediction_type="flow_prediction", flow_shift=config["shift"],
                                               algorithm_type="dpmsolver++", solver_order=2)
        if name == "euler":
            return FlowMatchEulerDiscreteScheduler.from_config(config)
        raise ValueError(f"a flow-matching model samples with dpm or euler, got {name!r}")
    if name == "euler":
        raise ValueError("the euler sampler is for flow-matching models (diffusion.prediction_type: flow)")
    # Only the schedule itself carries over: the training scheduler's other settings (its timestep
    # spacing above all) are its own, and a scheduler read back from disk lists all of them.
    schedule = {k: config[k] for k in SCHEDULE_KEYS if k in config}
    if name == "ddpm":
        return DDPMScheduler(**schedule, clip_sample=False)
    if name == "ddim":
        return DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False)
    if name == "dpm":
        return DPMSolverMultistepScheduler(**schedule, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


def diffusion_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if is_flow(scheduler):
        return noise - x0
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
    if is_flow(scheduler):
        return noisy - _sigma(scheduler, t, noisy) * prediction
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return prediction
    alpha = scheduler.alphas_cumprod.to(noisy.device)[t].to(noisy.dtype).view(-1, *([1] * (noisy.dim() - 1)))
    if kind == "epsilon":
        return (noisy - (1 - alpha).sqrt() * prediction) / alpha.sqrt()
    if kind == "v_prediction":
        return alpha.sqrt() * noisy - (1 - alpha).sqrt() * prediction
    raise ValueError(f"unsupported prediction_type {kind!r}")


Draws = torch.Generator | BatchDraws | None   # a training loss's randomness (BatchDraws under DDP)


def _randn_like(x: torch.Tensor, generator: Draws) -> torch.Tensor:
    return BatchDraws.of(generator).randn(x.shape, x.dtype).to(x.device)


def _timesteps(n: int, high: int, generator: Draws, device: torch.device,
               logit_mean: float | None = None, logit_std: float = 1.0) -> torch.Tensor:
    """Training timesteps in [0, high): uniform, or logit-normal (SD3) when `logit_mean` is set:
    t / high = sigmoid(N(logit_mean, logit_std)), which puts more updates where the mean is."""
    draws = BatchDraws.of(generator)
    if logit_mean is None:
        return draws.randint(high, n).to(device)
    u = torch.sigmoid(draws.randn((n,), torch.float64) * logit_std + logit_mean)
    return (u * high).long().clamp_(0, high - 1).to(device)


def training_timesteps(scheduler, n: int, generator: Draws, device: torch.device,
                       logit_mean: float | None = None, logit_std: float = 1.0) -> torch.Tensor:
    """DDPM: integer timesteps. Flow: continuous s in (0, 1] (uniform or logit-normal), shifted as the
    sampler's sigmas are (s' = shift s / (1 + (shift - 1) s)), as timesteps s' * num_train_timesteps."""
    high = scheduler.config.num_train_timesteps
    if not is_flow(scheduler):
        return _timesteps(n, high, generator, device, logit_mean, logit_std)
    draws = BatchDraws.of(generator)
    if logit_mean is None:
        u = 1 - draws.rand(n, torch.float64)  # (0, 1]: s = 0 is the clean latent
    else:
        u = torch.sigmoid(draws.randn((n,), torch.float64) * logit_std + logit_mean)
    shift = float(scheduler.config.shift)
    return (shift * u / (1 + (shift - 1) * u) * high).float().to(device)


def _dropout(n: int, p: float, generator: Draws, device: torch.device) -> torch.Tensor:
    return (BatchDraws.of(generator).rand(n) < p).to(device)


@dataclass
class BaseLoss:
    video: torch.Tensor
    audio: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.video + self.audio


def _with_self_condition(model: JointDenoisingTransformer, scheduler, noisy_v: torch.Tensor, noisy_a: torch.Tensor,
                         t: torch.Tensor, inputs: DenoiserInputs, rate: float,
                         generator: Draws) -> DenoiserInputs:
    """A share (`rate`) of the rows first gets the model's own estimate, without gradient, as sampling will give it."""
    rows = (BatchDraws.of(generator).rand(len(t)) < rate).nonzero().squeeze(1).to(t.device)
    previous_v, previous_a = torch.zeros_like(noisy_v), torch.zeros_like(noisy_a)
    if len(rows):
        with torch.no_grad():
            pv, pa = model(noisy_v[rows], noisy_a[rows], t[rows], inputs.select(rows))
        previous_v[rows] = predicted_x0(scheduler, noisy_v[rows], pv, t[rows])
        previous_a[rows] = predicted_x0(scheduler, noisy_a[rows], pa, t[rows])
    return inputs.with_self_condition(previous_v, previous_a)


def base_denoiser_loss(
    model: JointDenoisingTransformer,
    scheduler,
    video_latent: torch.Tensor,
    audio_latent: torch.Tensor,
    inputs: DenoiserInputs,
    cond_dropout: float = 0.1,
    generator: Draws = None,
    timestep_logit_mean: float | None = None,
    timestep_logit_std: float = 1.0,
    self_condition_rate: float = 0.5,
) -> BaseLoss:
    """One DDPM training step's losses for the base model. Video and audio share the timestep:
    they are one joint sample, denoised together. `generator` may be a BatchDraws (DDP: this
    process's rows of the global batch's draws)."""
    b, device = video_latent.shape[0], video_latent.device
    t = training_timesteps(scheduler, b, generator, device, timestep_logit_mean, timestep_logit_std)
    noise_v, noise_a = _randn_like(video_latent, generator), _randn_like(audio_latent, generator)
    inputs = inputs.replace(drop=_dropout(b, cond_dropout, generator, device))
    noisy_v, noisy_a = add_noise(scheduler, video_latent, noise_v, t), add_noise(scheduler, audio_latent, noise_a, t)
    inner = getattr(model, "module", model)  # the model itself under DistributedDataParallel
    if inner.config.self_condition:
        inputs = _with_self_condition(inner, scheduler, noisy_v, noisy_a, t, inputs, self_condition_rate, generator)
    pred_v, pred_a = model(noisy_v, noisy_a, t, inputs)
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
    inputs: DenoiserInputs,
    max_noise_aug: int,
    cond_dropout: float = 0.1,
    generator: Draws = None,
) -> torch.Tensor:
    """Upsampler loss with noise-conditioning augmentation: the clean low-res latent is noised to a
    level drawn from [0, max_noise_aug) and the level is given to the model."""
    b, device = video_latent.shape[0], video_latent.device
    t = training_timesteps(scheduler, b, generator, device)
    level = _timesteps(b, max(int(max_noise_aug), 1), generator, device)
    noise = _randn_like(video_latent, generator)
    low_res = add_noise(scheduler, low_res_latent, _randn_like(low_res_latent, generator), level)
    inputs = inputs.replace(low_res_video=low_res, low_res_noise_level=level,
                            drop=_dropout(b, cond_dropout, generator, device))
    pred, _ = model(add_noise(scheduler, video_latent, noise, t), None, t, inputs)
    return F.mse_loss(pred, diffusion_target(scheduler, video_latent, noise, t))


def _interval(guidance_interval: tuple[int, int] | None, train_scheduler) -> tuple[int, int]:
    if guidance_interval is None:
        return 0, int(train_scheduler.config.num_train_timesteps)
    lo, hi = (int(v) for v in guidance_interval)
    if not 0 <= lo <= hi:
        raise ValueError(f"guidance_interval must be (lo, hi) with 0 <= lo <= hi, got {guidance_interval}")
    return lo, hi


class _Packing:
    """Video and audio latents of one sample packed into one row, so multistep samplers keep one history."""

    def __init__(self, config, batch: int):
        self.video_shape = (batch, *config.video_latent_shape)
        self.audio_shape = None if config.is_upsampler else (batch, *config.audio_latent_shape)
        self.n_video = int(torch.Size(config.video_latent_shape).numel())
        self.n_audio = 0 if self.audio_shape is None else int(torch.Size(config.audio_latent_shape).numel())

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        video = x[:, : self.n_video].reshape(self.video_shape)
        return video, None if self.audio_shape is None else x[:, self.n_video:].reshape(self.audio_shape)

    def pack(self, video: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        b = video.shape[0]
        return video.reshape(b, -1) if audio is None else torch.cat([video.reshape(b, -1), audio.reshape(b, -1)], 1)


@torch.no_grad()
def sample_latents(
    model: JointDenoisingTransformer,
    train_scheduler,
    inputs: DenoiserInputs,
    *,
    sampler: str = "dpm",
    steps: int = 20,
    guidance: float = 4.0,
    guidance_interval: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    low_res_noise_level: int = 100,
    on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reverse diffusion for one stage. Returns (video latent, audio latent or None for the upsampler).
    `on_step` is called after every step (progress bars).

    For the upsampler, `inputs.low_res_video` is the clean base latent: it is noised here to the
    fixed `low_res_noise_level`, matching training's noise-conditioning augmentation.

    `guidance_interval=(lo, hi)` applies guidance only at timesteps lo <= t <= hi (training timestep
    units) and the plain conditional prediction elsewhere, one forward instead of two (Kynkaanniemi
    et al. 2024): guidance at low noise overshoots fine structure. None: every step.
    """
    lo, hi = _interval(guidance_interval, train_scheduler)
    b, device = inputs.batch_size, inputs.caption.pooled.device
    packing = _Packing(model.config, b)
    scheduler = make_sampler(sampler, train_scheduler)
    scheduler.set_timesteps(steps)
    x = torch.randn((b, packing.n_video + packing.n_audio), generator=generator).to(device)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)
    if model.config.is_upsampler:
        if inputs.low_res_video is None:
            raise ValueError("the upsampler stage needs the base latent as inputs.low_res_video")
        level = torch.full((b,), int(low_res_noise_level), dtype=torch.long, device=device)
        noise = torch.randn(inputs.low_res_video.shape, generator=generator).to(device)
        inputs = inputs.replace(low_res_video=add_noise(train_scheduler, inputs.low_res_video, noise, level),
                                low_res_noise_level=level)
    plain, guided = model.with_caption_state(inputs), None  # captions refined once per call
    previous = torch.zeros_like(x) if model.config.self_condition else None
    flow = is_flow(train_scheduler)
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        video, audio = packing.unpack(model_in)
        # Flow: the model reads the sampler's exact sigma (DPM's integer timesteps round it).
        ts = torch.full((b,), float(scheduler.sigmas[i]) * train_scheduler.config.num_train_timesteps, device=device) \
            if flow else torch.full((b,), int(t), dtype=torch.long, device=device)
        scale = guidance if lo <= int(t) <= hi else 1.0
        if scale != 1.0 and guided is None:
            guided = model.with_caption_state(inputs.with_null_rows())
        step_inputs = plain if scale == 1.0 else guided
        if previous is not None:
            step_inputs = step_inputs.with_self_condition(*packing.unpack(previous))
        pred = model(video, audio, ts, step_inputs) if scale == 1.0 else \
            model.forward_with_cfg(video, audio, ts, step_inputs, scale)
        out = packing.pack(*pred)
        if previous is not None:
            previous = predicted_x0(train_scheduler, model_in, out, ts)  # the guided estimate
        x = scheduler.step(out, t, x, generator=generator).prev_sample
        if on_step is not None:
            on_step()
    return packing.unpack(x)
