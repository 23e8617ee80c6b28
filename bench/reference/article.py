"""The article's model, ported as written: reference material for bench/quality.py and
bench/train_throughput.py only, not part of tinyveo.

Every class keeps the article's code path. Its defects are kept on purpose and marked `DEFECT` where they
live; tinyveo's fix is named beside each. Only these things differ from the article, each to make the
comparison fair or runnable offline:
- the width, depth and heads of the denoiser are arguments (article: 256, 4, 4) so the throughput
  benchmark can build both models at identical dims;
- the context vector comes from tinyveo's ConditioningEncoder (pooled MiniLM, 384 wide) because CLIP-L
  weights are not available offline; the article's `c_embedder` maps it like CLIP's 768-wide features;
- the timestep tensor is sized from the batch instead of the module constant BATCH_SIZE (with the
  article's BATCH_SIZE = 1 both are the same).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

# ---- the article's constants ---------------------------------------------------------------------
AUDIO_SAMPLE_RATE = 16000
AUDIO_DURATION_SEC = 2
AUDIO_SAMPLES = AUDIO_SAMPLE_RATE * AUDIO_DURATION_SEC
BASE_VIDEO_FRAMES = 16
BASE_VIDEO_HEIGHT = BASE_VIDEO_WIDTH = 32
UPSAMPLED_VIDEO_HEIGHT = UPSAMPLED_VIDEO_WIDTH = 64
VIDEO_LATENT_CHANNELS = 4
AUDIO_LATENT_CHANNELS = 16
VIDEO_PATCH_SIZE_F = VIDEO_PATCH_SIZE_H = VIDEO_PATCH_SIZE_W = 2
AUDIO_PATCH_SIZE = 16
VIDEO_LATENT_FRAMES = 8
BASE_VIDEO_LATENT_H = BASE_VIDEO_LATENT_W = 4
UPSAMPLED_VIDEO_LATENT_H = UPSAMPLED_VIDEO_LATENT_W = 8
AUDIO_LATENT_SAMPLES = AUDIO_SAMPLES // 32
DENOISER_TIMESTEPS = 1000
BATCH_SIZE = 1
LEARNING_RATE = 1e-4
GRADIENT_CLIP_NORM = 1.0
INFERENCE_STEPS = 50


@dataclass(frozen=True)
class ReferenceConfig:
    dim: int = 256        # DIT_EMBED_DIM
    depth: int = 4        # DIT_DEPTH
    heads: int = 4        # DIT_HEADS
    text_dim: int = 384   # TEXT_EMBED_DIM: 768 for CLIP-L in the article; the pooled MiniLM vector here


def preprocess_audio_tensor(w: torch.Tensor) -> torch.Tensor:
    """The article's preprocess_audio normalisation on an already-windowed (1, N) waveform: divide by the peak."""
    max_val = torch.max(torch.abs(w))
    return w / max_val if max_val > 0 else w


# ---- VAEs ------------------------------------------------------------------------------------------

class VideoVAE(nn.Module):
    """(B, 3, 16, H, W) -> (B, 4, 8, H/8, W/8). DEFECT: never trained (the training loop encodes under
    no_grad, so its parameters sit in the optimizer with no gradient); a /8 latent also loses shape.
    tinyveo: a VAE stage trained before the denoiser, /2 spatially."""

    def __init__(self):
        super().__init__()
        self.e = nn.Sequential(
            nn.Conv3d(3, 32, kernel_size=3, stride=(2, 2, 2), padding=1), nn.SiLU(),
            nn.Conv3d(32, 64, kernel_size=3, stride=(1, 2, 2), padding=1), nn.SiLU(),
            nn.Conv3d(64, 128, kernel_size=3, stride=(1, 2, 2), padding=1), nn.SiLU(),
            nn.Conv3d(128, VIDEO_LATENT_CHANNELS, kernel_size=3, stride=1, padding=1),
        )
        self.d = nn.Sequential(
            nn.ConvTranspose3d(VIDEO_LATENT_CHANNELS, 128, kernel_size=3, stride=1, padding=1), nn.SiLU(),
            nn.ConvTranspose3d(128, 64, kernel_size=3, stride=(1, 2, 2), padding=1, output_padding=(0, 1, 1)), nn.SiLU(),
            nn.ConvTranspose3d(64, 32, kernel_size=3, stride=(1, 2, 2), padding=1, output_padding=(0, 1, 1)), nn.SiLU(),
            nn.ConvTranspose3d(32, 3, kernel_size=3, stride=(2, 2, 2), padding=1, output_padding=1), nn.Sigmoid(),
        )

    def encode(self, x):
        return self.e(x)

    def decode(self, x):
        return self.d(x)


class AudioVAE(nn.Module):
    """(B, 1, 32000) raw waveform -> (B, 16, 1000). DEFECT: never trained (as VideoVAE); a raw-waveform
    latent did not train in a CPU prototype either. tinyveo: a trained log-mel autoencoder + Griffin-Lim."""

    def __init__(self):
        super().__init__()
        self.e = nn.Sequential(
            nn.Conv1d(1, 16, kernel_size=32, stride=8, padding=12), nn.SiLU(),
            nn.Conv1d(16, AUDIO_LATENT_CHANNELS, kernel_size=32, stride=4, padding=14),
        )
        self.d = nn.Sequential(
            nn.ConvTranspose1d(AUDIO_LATENT_CHANNELS, 16, kernel_size=32, stride=4, padding=14), nn.SiLU(),
            nn.ConvTranspose1d(16, 1, kernel_size=32, stride=8, padding=12),
            nn.Tanh(),
        )

    def encode(self, x):
        return self.e(x)

    def decode(self, x):
        return self.d(x)


# ---- denoiser --------------------------------------------------------------------------------------

def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TransformerBlock(nn.Module):
    """DEFECT (minor): the adaLN modulation is default-initialised, not zero (adaLN-Zero), so every block
    starts far from identity. tinyveo: adaLN-Zero as DiT."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        # The article passes the normed+modulated x as query and the raw x as key/value.
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), x, x)[0]
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class TimestepEmbedding(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim * 4))

    def forward(self, t):
        half_dim = self.dim // 2
        emb = torch.exp(torch.arange(half_dim, device=t.device) * -(np.log(10000.0) / (half_dim - 1)))
        emb = t.float()[:, None] * emb[None, :]
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
        return self.mlp(emb)


class InputProjector(nn.Module):
    """DEFECT: the condition is one pooled vector added to the timestep embedding (adaLN only); the
    caption's tokens never reach the denoiser. tinyveo: caption tokens in the joint sequence."""

    def __init__(self, is_upsampler, embed_dim, text_dim):
        super().__init__()
        self.is_upsampler = is_upsampler
        self.embed_dim = embed_dim
        self.t_embedder = nn.Sequential(TimestepEmbedding(embed_dim), nn.Linear(embed_dim * 4, embed_dim))
        self.c_embedder = nn.Linear(text_dim, embed_dim)
        self.video_patch_size = VIDEO_PATCH_SIZE_F * VIDEO_PATCH_SIZE_H * VIDEO_PATCH_SIZE_W * VIDEO_LATENT_CHANNELS
        patch = (VIDEO_PATCH_SIZE_F, VIDEO_PATCH_SIZE_H, VIDEO_PATCH_SIZE_W)
        self.video_patcher = nn.Conv3d(VIDEO_LATENT_CHANNELS, embed_dim, kernel_size=patch, stride=patch)
        self.audio_patch_size = AUDIO_PATCH_SIZE * AUDIO_LATENT_CHANNELS
        self.audio_patcher = nn.Conv1d(AUDIO_LATENT_CHANNELS, embed_dim, kernel_size=AUDIO_PATCH_SIZE,
                                       stride=AUDIO_PATCH_SIZE)
        if self.is_upsampler:
            self.low_res_patcher = nn.Conv3d(VIDEO_LATENT_CHANNELS, embed_dim, kernel_size=patch, stride=patch)

    def forward(self, noisy_video, noisy_audio, t, context, low_res_video=None):
        video_patches = rearrange(self.video_patcher(noisy_video), 'b c f h w -> b (f h w) c')
        # DEFECT: 1000 latent samples / patch 16 -> 62 tokens; the last 8 samples are never seen and the
        # output is interpolated back to 1000 (OutputProjector).
        audio_patches = rearrange(self.audio_patcher(noisy_audio), 'b c l -> b l c')
        cond_emb = self.t_embedder(t) + self.c_embedder(context)
        low_res_patches = None
        if self.is_upsampler and low_res_video is not None:
            low_res_patches = rearrange(self.low_res_patcher(low_res_video), 'b c f h w -> b (f h w) c')
        return video_patches, audio_patches, cond_emb, low_res_patches


class TokenBuilder(nn.Module):
    def __init__(self, is_upsampler, embed_dim):
        super().__init__()
        self.is_upsampler = is_upsampler
        self.video_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.audio_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        if self.is_upsampler:
            self.low_res_token = nn.Parameter(torch.randn(1, 1, embed_dim))

    def forward(self, B, video_patches, audio_patches, low_res_patches=None):
        tokens = [self.video_token.repeat(B, 1, 1), video_patches, self.audio_token.repeat(B, 1, 1), audio_patches]
        if self.is_upsampler and low_res_patches is not None:
            tokens = [self.low_res_token.repeat(B, 1, 1), low_res_patches] + tokens
        return torch.cat(tokens, dim=1)


class PatchTransformer(nn.Module):
    """DEFECT: learned positions from randn with no structure over (t, h, w); and when the sequence is
    longer than planned, the extra positions are fresh random noise at every call (not triggered at the
    article's shapes). tinyveo: fixed (t, h, w) sin-cos positions sized from the config, an error on a
    mismatch."""

    def __init__(self, is_upsampler, embed_dim, depth, heads):
        super().__init__()
        self.is_upsampler = is_upsampler
        self.embed_dim = embed_dim
        video_h = UPSAMPLED_VIDEO_LATENT_H if is_upsampler else BASE_VIDEO_LATENT_H
        video_w = UPSAMPLED_VIDEO_LATENT_W if is_upsampler else BASE_VIDEO_LATENT_W
        video_patches = (video_h // VIDEO_PATCH_SIZE_H) * (video_w // VIDEO_PATCH_SIZE_W) * (
            VIDEO_LATENT_FRAMES // VIDEO_PATCH_SIZE_F)
        audio_patches = AUDIO_LATENT_SAMPLES // AUDIO_PATCH_SIZE
        num_patches = video_patches + audio_patches + 2
        if is_upsampler:
            low_res_video_patches = (BASE_VIDEO_LATENT_H // VIDEO_PATCH_SIZE_H) * (
                BASE_VIDEO_LATENT_W // VIDEO_PATCH_SIZE_W) * (VIDEO_LATENT_FRAMES // VIDEO_PATCH_SIZE_F)
            num_patches += low_res_video_patches + 1
        self.pos_embed = nn.Parameter(torch.randn(1, int(num_patches), embed_dim))
        self.transformer_blocks = nn.ModuleList([TransformerBlock(embed_dim, heads) for _ in range(depth)])

    def forward(self, x, cond_emb):
        if x.shape[1] > self.pos_embed.shape[1]:
            extra_pos = torch.randn(1, x.shape[1] - self.pos_embed.shape[1], self.embed_dim, device=x.device)
            pos_embed = torch.cat([self.pos_embed, extra_pos], dim=1)
        else:
            pos_embed = self.pos_embed[:, :x.shape[1]]
        x += pos_embed
        for block in self.transformer_blocks:
            x = block(x, cond_emb)
        return x


class OutputProjector(nn.Module):
    def __init__(self, is_upsampler, embed_dim, video_patch_size, audio_patch_size):
        super().__init__()
        self.is_upsampler = is_upsampler
        self.final_video = FinalLayer(embed_dim, video_patch_size, VIDEO_LATENT_CHANNELS)
        self.final_audio = FinalLayer(embed_dim, audio_patch_size, AUDIO_LATENT_CHANNELS)

    def forward(self, x, cond_emb, video_patches_shape, audio_patches_shape, noisy_audio_shape,
                low_res_patches_shape=None):
        start_idx = 1
        if self.is_upsampler and low_res_patches_shape is not None:
            start_idx += 1 + low_res_patches_shape[1]
        vid_out_patches = x[:, start_idx: start_idx + video_patches_shape[1]]
        vid_pred = self.final_video(vid_out_patches, cond_emb)
        vid_pred = rearrange(
            vid_pred, 'b (f h w) (p1 p2 p3 c) -> b c (f p1) (h p2) (w p3)',
            p1=VIDEO_PATCH_SIZE_F, p2=VIDEO_PATCH_SIZE_H, p3=VIDEO_PATCH_SIZE_W,
            h=(UPSAMPLED_VIDEO_LATENT_H if self.is_upsampler else BASE_VIDEO_LATENT_H) // VIDEO_PATCH_SIZE_H,
            w=(UPSAMPLED_VIDEO_LATENT_W if self.is_upsampler else BASE_VIDEO_LATENT_W) // VIDEO_PATCH_SIZE_W,
            f=VIDEO_LATENT_FRAMES // VIDEO_PATCH_SIZE_F,
        )
        start = start_idx + video_patches_shape[1] + 1
        aud_pred = self.final_audio(x[:, start: start + audio_patches_shape[1]], cond_emb)
        aud_pred = rearrange(aud_pred, 'b l (p c) -> b c (l p)', p=AUDIO_PATCH_SIZE, c=AUDIO_LATENT_CHANNELS)
        if aud_pred.shape[2] != noisy_audio_shape[2]:
            aud_pred = F.interpolate(aud_pred, size=noisy_audio_shape[2], mode='linear', align_corners=False)
        return vid_pred, aud_pred


class JointDenoisingTransformer(nn.Module):
    """DEFECT: the upsampler also runs the audio path on zeros every step (its audio output is
    discarded). tinyveo: the upsampler has no audio tokens."""

    def __init__(self, is_upsampler=False, config: ReferenceConfig = ReferenceConfig()):
        super().__init__()
        self.is_upsampler = is_upsampler
        self.embed_dim = config.dim
        self.input_proj = InputProjector(is_upsampler, self.embed_dim, config.text_dim)
        self.token_builder = TokenBuilder(is_upsampler, self.embed_dim)
        self.patch_transformer = PatchTransformer(is_upsampler, self.embed_dim, config.depth, config.heads)
        self.output_proj = OutputProjector(is_upsampler, self.embed_dim, self.input_proj.video_patch_size,
                                           self.input_proj.audio_patch_size)

    def forward(self, noisy_video, noisy_audio, t, context, low_res_video=None):
        B = noisy_video.shape[0]
        video_patches, audio_patches, cond_emb, low_res_patches = self.input_proj(
            noisy_video, noisy_audio, t, context, low_res_video)
        x = self.token_builder(B, video_patches, audio_patches, low_res_patches)
        x = self.patch_transformer(x, cond_emb)
        return self.output_proj(x, cond_emb, video_patches.shape, audio_patches.shape, noisy_audio.shape,
                                low_res_patches.shape if low_res_patches is not None else None)
