"""VideoVAE and AudioVAE: KL-regularised autoencoders that give the denoisers their latent spaces.

Differences from the article, and why:
- The article's VAEs were never trained (encoding ran under no_grad, the decoders stayed random).
  These are trained by tasks/ on reconstruction + a small KL term.
- VideoVAE encodes stacked frame pairs with 2D convolutions instead of full-resolution 3D
  convolutions: the 3D backward took ~4 s per step on 2 CPU cores. The latent layout is the
  article's (B, C, F/2, H/s, W/s).
- AudioVAE works on a normalised log-mel spectrogram (phase-free) and decodes with
  InverseMelScale + Griffin-Lim: a raw-waveform latent never trained in a CPU prototype.
Both store `scaling_factor` (1 / std of the latents, set after training) with their weights, so the
denoisers always see unit-variance latents. `encode` returns scaled latents and `decode` takes them.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .config import AudioVAEConfig, VideoVAEConfig
from .draws import BatchDraws


class DiagonalGaussian:
    """A diagonal Gaussian over latents: mean and logvar of the same shape."""

    def __init__(self, moments: torch.Tensor, dim: int = 1):
        self.mean, logvar = moments.float().chunk(2, dim=dim)  # fp32 under autocast too
        self.logvar = logvar.clamp(-30.0, 20.0)

    def sample(self, generator: torch.Generator | BatchDraws | None = None) -> torch.Tensor:
        noise = BatchDraws.of(generator).randn(self.mean.shape, self.mean.dtype).to(self.mean.device)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to the standard normal, averaged over every element."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).mean()


class _ResBlock(nn.Module):
    def __init__(self, conv: type[nn.Module], channels: int):
        super().__init__()
        self.conv1 = conv(channels, channels, 3, padding=1)
        self.conv2 = conv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def _num_halvings(factor: int, what: str) -> int:
    n = int(round(math.log2(factor))) if factor >= 1 else -1
    if n < 0 or 2**n != factor:
        raise ValueError(f"{what} must be a power of two, got {factor}")
    return n


class _LatentScaling(nn.Module):
    """Holds the latent scaling factor as a persistent buffer (saved with the weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scaling_factor", torch.tensor(1.0))

    @torch.no_grad()
    def set_scaling_factor(self, latents: torch.Tensor) -> float:
        """Set the factor to 1 / std of unscaled latents (as Stable Diffusion's 0.18215)."""
        std = latents.float().std().clamp_min(1e-6)
        self.scaling_factor.fill_(1.0 / std.item())
        return float(self.scaling_factor)


class VideoVAE(_LatentScaling):
    """Video autoencoder.

    encode: (B, 3, F, H, W) in [0, 1] -> (B, C, F/ft, H/s, W/s), scaled.
    decode: (B, C, F/ft, H/s, W/s) scaled -> (B, 3, F, H, W) in [0, 1].
    The same weights serve 32x32 and 64x64 clips (fully convolutional).
    """

    def __init__(self, config: VideoVAEConfig = VideoVAEConfig()):
        super().__init__()
        self.config = config
        ft, hidden, c = config.temporal_downsample, config.hidden_channels, config.latent_channels
        stages = _num_halvings(config.spatial_downsample, "vae.video.spatial_downsample")
        widths = [hidden * min(2**i, 4) for i in range(stages + 1)]
        enc: list[nn.Module] = [nn.Conv2d(3 * ft, widths[0], 3, padding=1)]
        for i in range(stages):
            enc += [nn.SiLU(), nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1)]
        enc += [_ResBlock(nn.Conv2d, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 2 * c, 3, padding=1)]
        self.e = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(c, widths[-1], 3, padding=1), _ResBlock(nn.Conv2d, widths[-1])]
        for i in reversed(range(stages)):
            dec += [nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i + 1], widths[i], 3, padding=1)]
        dec += [nn.SiLU(), nn.Conv2d(widths[0], 3 * ft, 3, padding=1)]
        self.d = nn.Sequential(*dec)

    def encode_dist(self, video: torch.Tensor) -> DiagonalGaussian:
        """(B, 3, F, H, W) in [0, 1] -> Gaussian over unscaled latents (B, C, F/ft, H/s, W/s)."""
        b, _, f, h, w = video.shape
        ft = self.config.temporal_downsample
        if f % ft:
            raise ValueError(f"VideoVAE needs a frame count divisible by {ft}, got {f}")
        # channels_last: oneDNN's convolutions run 1.6x (train step) to 2.8x (64 px decode) faster on CPU
        stacked = rearrange(video * 2.0 - 1.0, "b c (f t) h w -> (b f) (t c) h w", t=ft)
        stacked = stacked.contiguous(memory_format=torch.channels_last)
        moments = rearrange(self.e(stacked), "(b f) c h w -> b c f h w", b=b)
        return DiagonalGaussian(moments)

    def decode_unscaled(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        frames = self.d(rearrange(z, "b c f h w -> (b f) c h w").contiguous(memory_format=torch.channels_last))
        video = rearrange(frames, "(b f) (t c) h w -> b c (f t) h w", b=b, t=self.config.temporal_downsample)
        return torch.sigmoid(video.float())

    def encode(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        dist = self.encode_dist(video)
        z = dist.sample(generator) if sample else dist.mode()
        return z * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_unscaled(z / self.scaling_factor)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> scaled latent (B, C, H/s, W/s): the image held still for ft frames."""
        still = image.unsqueeze(2).expand(-1, -1, self.config.temporal_downsample, -1, -1)
        return self.encode(still)[:, :, 0]

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Training pass: (reconstruction in [0, 1], posterior)."""
        dist = self.encode_dist(video)
        return self.decode_unscaled(dist.sample(generator)), dist


def video_reconstruction_loss(recon: torch.Tensor, video: torch.Tensor, motion_weight: float = 0.0) -> torch.Tensor:
    """MSE over (B, 3, F, H, W), each pixel weighted 1 + motion_weight x its distance from the clip's
    still frame (the per-pixel median over time): small moving objects on a still background
    otherwise cost almost nothing, and the VideoVAE learns to smear them."""
    if not motion_weight:
        return F.mse_loss(recon, video)
    still = video.median(dim=2, keepdim=True).values
    moving = (video - still).abs().mean(dim=1, keepdim=True)
    return ((recon - video).pow(2) * (1.0 + motion_weight * moving)).mean()


class AudioVAE(_LatentScaling):
    """Audio autoencoder over a normalised log-mel spectrogram.

    encode: waveform (B, 1, N) in [-1, 1] -> (B, C, T/td), scaled (N = sample_rate * window).
    decode: (B, C, T/td) scaled -> waveform (B, 1, N), peak-normalised, via Griffin-Lim.
    decode_features: the same latent -> normalised log-mel (B, n_mels, T), used for training.
    """

    def __init__(self, config: AudioVAEConfig = AudioVAEConfig()):
        super().__init__()
        import torchaudio  # deferred: only audio work pays its import

        self.config = config
        cfg = config
        hidden, c = cfg.hidden_channels, cfg.latent_channels
        stages = _num_halvings(cfg.time_downsample, "vae.audio.time_downsample")
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels, power=2.0
        )
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=cfg.n_fft // 2 + 1, n_mels=cfg.n_mels, sample_rate=cfg.sample_rate
        )
        # rand_init=False keeps decoding deterministic.
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=cfg.n_fft, hop_length=cfg.hop_length, power=2.0, n_iter=cfg.griffin_lim_iters, rand_init=False
        )
        enc: list[nn.Module] = [nn.Conv1d(cfg.n_mels, hidden, 3, padding=1)]
        for _ in range(stages):
            enc += [nn.SiLU(), nn.Conv1d(hidden, hidden, 4, stride=2, padding=1)]
        enc += [_ResBlock(nn.Conv1d, hidden), nn.SiLU(), nn.Conv1d(hidden, 2 * c, 3, padding=1)]
        self.e = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv1d(c, hidden, 3, padding=1), _ResBlock(nn.Conv1d, hidden)]
        for _ in range(stages):
            dec += [nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(hidden, hidden, 3, padding=1)]
        dec += [nn.SiLU(), nn.Conv1d(hidden, cfg.n_mels, 3, padding=1)]
        self.d = nn.Sequential(*dec)

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, 1, N) -> normalised log-mel (B, n_mels, T), roughly in [-1, 1]."""
        cfg = self.config
        target = cfg.hop_length * (cfg.num_mel_frames - 1)  # centred STFT: 1 + len // hop frames
        w = waveform[:, 0]
        w = F.pad(w, (0, target - w.shape[-1])) if w.shape[-1] < target else w[:, :target]
        with torch.autocast(w.device.type, enabled=False):  # the training target stays fp32 under autocast
            mel = self.mel(w.float())
            return (torch.log(mel + 1e-5) + cfg.log_mel_offset) / cfg.log_mel_scale

    def features_to_waveform(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel (B, n_mels, T) -> waveform (B, 1, N) in [-1, 1] (Griffin-Lim)."""
        cfg = self.config
        with torch.autocast(features.device.type, enabled=False):  # least squares and Griffin-Lim need fp32
            mel = (torch.exp(features.float() * cfg.log_mel_scale - cfg.log_mel_offset) - 1e-5).clamp_min(0.0)
            spec = self.inverse_mel(mel).clamp_min(0.0)
            wave = self.griffin_lim(spec)
        wave = F.pad(wave, (0, max(cfg.num_samples - wave.shape[-1], 0)))[:, : cfg.num_samples]
        peak = wave.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8)
        return (wave / peak).unsqueeze(1)

    def encode_dist(self, waveform: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.e(self.features(waveform)))

    def decode_features(self, z: torch.Tensor) -> torch.Tensor:
        return self.d(z / self.scaling_factor)

    def encode(self, waveform: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        dist = self.encode_dist(waveform)
        z = dist.sample(generator) if sample else dist.mode()
        return z * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.features_to_waveform(self.decode_features(z))

    def forward(self, waveform: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, DiagonalGaussian]:
        """Training pass: (reconstructed features, target features, posterior)."""
        target = self.features(waveform)
        dist = DiagonalGaussian(self.e(target))
        return self.d(dist.sample(generator)), target, dist
