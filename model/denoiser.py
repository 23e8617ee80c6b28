"""JointDenoisingTransformer: a DiT over video, audio, text and image tokens (base and upsampler).

The article's components, kept by name, with its defects fixed:
- Positions are fixed sin-cos tables sized from the configured shapes (the article concatenated
  fresh torch.randn to its positions at every call). Video tokens get (t, h, w) positions; audio
  tokens share the time frequencies, placed at the same seconds, so sound and motion line up.
  A CPU prototype learned motion only with fixed (t, h, w) positions.
- The caption enters twice: its pooled vector in adaLN (as the article) and its token states as
  tokens of the joint sequence (a pooled vector separates attributes only weakly).
- A learned null condition replaces the caption for condition dropout, giving classifier-free
  guidance (`forward_with_cfg`).
- The upsampler sees the low-res latent, upsampled and concatenated channel-wise with its noisy
  input, plus the low-res noise level (noise-conditioning augmentation, as DeepFloyd IF): trained on
  noised low-res latents, sampled at a fixed level, so training and sampling agree.
- Image-to-video: the VAE latent of the input image enters as image tokens (and CLIP image features
  into adaLN when the backend has them).
- adaLN-Zero initialisation (DiT): every block starts as the identity and the outputs start at 0.

Sequence layout: [text (Lt)] [image (Li)] [video (Nv)] [audio (Na), base only].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .conditioning import TextEmbedding
from .config import DenoiserConfig

# Positions are expressed on a common grid: the whole window spans POSITION_SPAN units in time,
# and the frame spans POSITION_SPAN units in height and width, at every resolution.
POSITION_SPAN = 16.0


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x (B, N, D), shift/scale (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sin-cos embedding: positions (N,) -> (N, dim); dim must be even."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.double()[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def _centres(n: int) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) + 0.5) * (POSITION_SPAN / n)


def video_positions(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """(gt*gh*gw, dim): half the width for time, a quarter each for height and width."""
    gt, gh, gw = grid
    dt, dh = dim // 2, dim // 4
    dw = dim - dt - dh
    t, h, w = torch.meshgrid(_centres(gt), _centres(gh), _centres(gw), indexing="ij")
    return torch.cat(
        [sincos_embedding(t.flatten(), dt), sincos_embedding(h.flatten(), dh), sincos_embedding(w.flatten(), dw)], dim=1
    )


def audio_positions(n: int, dim: int) -> torch.Tensor:
    """(n, dim): the video's time frequencies at the same instants; no spatial part."""
    dt = dim // 2
    return torch.cat([sincos_embedding(_centres(n), dt), torch.zeros(n, dim - dt)], dim=1)


def image_positions(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """(gh*gw, dim): spatial part only, matching the video's height/width frequencies."""
    gh, gw = grid
    dt, dh = dim // 2, dim // 4
    dw = dim - dt - dh
    h, w = torch.meshgrid(_centres(gh), _centres(gw), indexing="ij")
    return torch.cat([torch.zeros(gh * gw, dt), sincos_embedding(h.flatten(), dh), sincos_embedding(w.flatten(), dw)], dim=1)


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of diffusion timesteps through an MLP: t (B,) -> (B, 4*dim), as the article."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim * 4))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
        angles = t.float()[:, None] * freqs[None, :]
        return self.mlp(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1))


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q, k, v (B, H, N, Dh); mask (B, N) bool, False: a key no query attends to -> (B, H, N, Dh).

    scaled_dot_product_attention off the CPU. On the CPU the explicit product form with an fp32
    softmax: at these lengths (N ~ 100-200) its bf16 forward + backward took 2.5 ms against 9.3 for
    SDPA's bf16 flash kernel (and 4.4 for SDPA in fp32), and in fp32 it is as fast as SDPA."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return scores.float().softmax(-1).to(v.dtype) @ v


class TransformerBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation from the condition vector.

    x (B, N, D), c (B, D), mask (B, N) bool or None -> (B, N, D).
    Fused qkv + `masked_attention` (SDPA was ~8% faster than nn.MultiheadAttention on CPU here).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = masked_attention(q, k, v, mask)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attention(modulate(self.norm1(x), shift_msa, scale_msa), mask)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated norm + linear to patch values: (B, N, D), c (B, D) -> (B, N, out_features). Zero-initialised."""

    def __init__(self, hidden_size: int, out_features: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        for layer in (self.linear, self.adaLN_modulation[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class TextRefiner(nn.Module):
    """Caption token states (B, L, E) + mask -> refined tokens (B, L, D) and a pooled vector (B, D).

    Why: the frozen encoder's mean-pooled vector barely separates word order (MiniLM cosine 0.9995
    between "... from left to right ..." and "... from right to left ..."), and what reaches the adaLN
    condition is learned far faster than what must be found by attention from the video tokens. A few
    self-attention layers with positions over the caption alone, then attention pooling into the
    condition (Imagen's attention pooling; HunyuanVideo's token refiner) carry the order into adaLN.
    """

    def __init__(self, context_dim: int, dim: int, heads: int, depth: int, max_tokens: int):
        super().__init__()
        # A width-3 convolution over the tokens: each position sees its neighbours, so "to right" and
        # "to left" differ from the first layer on.
        self.proj = nn.Conv1d(context_dim, dim, kernel_size=3, padding=1)
        self.register_buffer("pos", sincos_embedding(torch.arange(max_tokens, dtype=torch.float64), dim)[None],
                             persistent=False)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(depth)
        ])
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pool = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padding = ~mask
        tokens = tokens.masked_fill(padding[..., None], 0.0)
        x = self.proj(tokens.transpose(1, 2)).transpose(1, 2) + self.pos
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        x = x.masked_fill(padding[..., None], 0.0)  # the fast path may leave padded rows undefined
        pooled = self.pool(self.query.expand(x.shape[0], -1, -1), x, x, key_padding_mask=padding,
                           need_weights=False)[0][:, 0]
        return x, self.out(pooled)


@dataclass
class CaptionState:
    """The caption's inputs to the denoiser, which depend on neither the noisy latents nor t: a
    sampler computes them once per call instead of at every step."""

    text: torch.Tensor            # (B, Lt, D) refined caption tokens
    text_mask: torch.Tensor       # (B, Lt) bool
    cond: torch.Tensor            # (B, D): the caption's share of the adaLN condition


@dataclass
class ProjectedInputs:
    """What InputProjector hands to TokenBuilder (all widths D)."""

    text: torch.Tensor            # (B, Lt, D)
    text_mask: torch.Tensor       # (B, Lt) bool
    image: torch.Tensor           # (B, Li, D)
    image_mask: torch.Tensor      # (B, Li) bool: False where the item has no input image
    video: torch.Tensor           # (B, Nv, D)
    audio: torch.Tensor | None    # (B, Na, D), base only
    cond: torch.Tensor            # (B, D): adaLN condition


class InputProjector(nn.Module):
    """Patchify and embed every input; build the adaLN condition from timestep, caption, image, noise level."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        d = config.dim
        c_video = config.video_latent_shape[0]
        self.t_embedder = nn.Sequential(TimestepEmbedding(d), nn.Linear(d * 4, d))
        self.c_embedder = nn.Linear(config.context_dim, d)          # pooled caption -> adaLN
        self.text_refiner = TextRefiner(config.context_dim, d, config.heads, config.text_refiner_depth,
                                        config.max_text_tokens)  # caption tokens -> sequence and adaLN
        # Standardisation of the frozen encoder's features over the training captions (set by
        # `set_text_statistics`, saved with the weights). Why: MiniLM vectors of any two captions here
        # share ~95% of their direction, so the attribute words are a small residue on a large common
        # part; standardised, each word's difference is of order one from the first step.
        e = config.context_dim
        self.register_buffer("pooled_mean", torch.zeros(e))
        self.register_buffer("pooled_std", torch.ones(e))
        self.register_buffer("token_mean", torch.zeros(e))
        self.register_buffer("token_std", torch.ones(e))
        # The null condition for classifier-free guidance: a learned caption (pooled + one token).
        self.null_pooled = nn.Parameter(torch.zeros(config.context_dim))
        self.null_token = nn.Parameter(torch.zeros(config.context_dim))
        in_video = 2 * c_video if config.is_upsampler else c_video  # upsampler: low-res latent concatenated
        in_video += c_video if config.self_condition else 0  # the previous clean-latent estimate, concatenated
        self.video_patcher = nn.Conv3d(in_video, d, kernel_size=config.video_patch, stride=config.video_patch)
        self.image_patcher = nn.Conv2d(config.image_latent_shape[0], d, kernel_size=config.image_patch_hw,
                                       stride=config.image_patch_hw)
        self.video_patch_size = math.prod(config.video_patch) * c_video
        if config.is_upsampler:
            self.noise_level_embedder = nn.Sequential(TimestepEmbedding(d), nn.Linear(d * 4, d))
        else:
            c_audio = config.audio_latent_shape[0]
            in_audio = 2 * c_audio if config.self_condition else c_audio
            self.audio_patcher = nn.Conv1d(in_audio, d, kernel_size=config.audio_patch, stride=config.audio_patch)
            self.audio_patch_size = config.audio_patch * c_audio
        if config.image_feature_dim:
            self.image_feature_embedder = nn.Linear(config.image_feature_dim, d)

    def caption(self, context: TextEmbedding, drop_condition: torch.Tensor | None = None) -> CaptionState:
        """Standardise the caption, swap in the null condition for `drop_condition` rows, refine."""
        cfg = self.config
        pooled = (context.pooled - self.pooled_mean) / self.pooled_std
        tokens = (context.tokens - self.token_mean) / self.token_std
        text_mask = context.mask
        if tokens.shape[1] != cfg.max_text_tokens:
            raise ValueError(f"expected {cfg.max_text_tokens} caption tokens, got {tokens.shape[1]}")
        if drop_condition is not None:
            drop = drop_condition.to(torch.bool)
            pooled = torch.where(drop[:, None], self.null_pooled.expand_as(pooled), pooled)
            null_tokens = torch.zeros_like(tokens)
            null_tokens[:, 0] = self.null_token
            tokens = torch.where(drop[:, None, None], null_tokens, tokens)
            null_mask = torch.zeros_like(text_mask)
            null_mask[:, 0] = True
            text_mask = torch.where(drop[:, None], null_mask, text_mask)
        text, text_pooled = self.text_refiner(tokens, text_mask)
        return CaptionState(text, text_mask, self.c_embedder(pooled) + text_pooled)

    def forward(
        self,
        noisy_video: torch.Tensor,
        noisy_audio: torch.Tensor | None,
        t: torch.Tensor,
        context: TextEmbedding,
        low_res_video: torch.Tensor | None = None,
        low_res_noise_level: torch.Tensor | None = None,
        image_latent: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        drop_condition: torch.Tensor | None = None,
        self_cond_video: torch.Tensor | None = None,
        self_cond_audio: torch.Tensor | None = None,
        caption: CaptionState | None = None,
    ) -> ProjectedInputs:
        """`caption`: this call's `self.caption(context, drop_condition)`, computed before (or None)."""
        cfg = self.config
        b = noisy_video.shape[0]
        if caption is None:
            caption = self.caption(context, drop_condition)
        if image_latent is None:
            image_latent = noisy_video.new_zeros(b, *cfg.image_latent_shape)
            has_image = torch.zeros(b, dtype=torch.bool, device=noisy_video.device)
        elif has_image is None:
            has_image = torch.ones(b, dtype=torch.bool, device=noisy_video.device)
        has_image = has_image.to(torch.bool)
        if drop_condition is not None:
            has_image = has_image & ~drop_condition.to(torch.bool)
        text, text_mask = caption.text, caption.text_mask
        cond = self.t_embedder(t) + caption.cond
        if image_features is not None and cfg.image_feature_dim:
            keep = has_image[:, None].to(image_features.dtype)
            cond = cond + keep * self.image_feature_embedder(image_features)
        if cfg.is_upsampler:
            if low_res_video is None or low_res_noise_level is None:
                raise ValueError("the upsampler needs low_res_video and low_res_noise_level")
            low_res = F.interpolate(low_res_video, size=noisy_video.shape[2:], mode="nearest")
            noisy_video = torch.cat([noisy_video, low_res], dim=1)
            cond = cond + self.noise_level_embedder(low_res_noise_level)
        if cfg.self_condition:
            if self_cond_video is None:  # no estimate yet
                self_cond_video = torch.zeros_like(noisy_video[:, : cfg.video_latent_shape[0]])
            noisy_video = torch.cat([noisy_video, self_cond_video], dim=1)
            if noisy_audio is not None:
                previous_audio = torch.zeros_like(noisy_audio) if self_cond_audio is None else self_cond_audio
                noisy_audio = torch.cat([noisy_audio, previous_audio], dim=1)
        video = rearrange(self.video_patcher(noisy_video), "b d f h w -> b (f h w) d")
        audio = None
        if not cfg.is_upsampler:
            if noisy_audio is None:
                raise ValueError("the base denoiser needs noisy_audio")
            audio = rearrange(self.audio_patcher(noisy_audio), "b d l -> b l d")
        image = rearrange(self.image_patcher(image_latent), "b d h w -> b (h w) d")
        image_mask = has_image[:, None].expand(-1, image.shape[1])
        return ProjectedInputs(text, text_mask, image, image_mask, video, audio, cond)


class TokenBuilder(nn.Module):
    """Concatenate the token groups, each tagged with a learned modality embedding.

    -> x (B, Lt + Li + Nv [+ Na], D), mask (B, N) bool. The article prepended one extra token per
    modality; adding the modality embedding to every token of the group does the same job without
    lengthening the sequence.
    """

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        d = config.dim
        self.text_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.image_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.video_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        if not config.is_upsampler:
            self.audio_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)

    def forward(self, p: ProjectedInputs) -> tuple[torch.Tensor, torch.Tensor]:
        b, nv = p.video.shape[:2]
        groups = [p.text + self.text_token, p.image + self.image_token, p.video + self.video_token]
        masks = [p.text_mask, p.image_mask, torch.ones(b, nv, dtype=torch.bool, device=p.video.device)]
        if p.audio is not None:
            groups.append(p.audio + self.audio_token)
            masks.append(torch.ones(b, p.audio.shape[1], dtype=torch.bool, device=p.video.device))
        return torch.cat(groups, dim=1), torch.cat(masks, dim=1)


class PatchTransformer(nn.Module):
    """Fixed positions + the stack of TransformerBlocks: (B, N, D), c (B, D) -> (B, N, D)."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        d = config.dim
        if d % 8:
            raise ValueError(f"denoiser width must be a multiple of 8 for the position tables, got {d}")
        # Caption tokens get their own 1D order: "from left to right" and "from right to left" hold the
        # same words, and the frozen encoder's states carry their order only weakly.
        text = sincos_embedding(torch.arange(config.max_text_tokens, dtype=torch.float64), d)
        parts = [text, image_positions(config.image_grid, d), video_positions(config.video_grid, d)]
        if not config.is_upsampler:
            parts.append(audio_positions(config.audio_tokens, d))
        # Derived from the config, so not saved with the weights.
        self.register_buffer("pos_embed", torch.cat(parts).unsqueeze(0), persistent=False)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(d, config.heads, config.mlp_ratio) for _ in range(config.depth)]
        )

    def forward(self, x: torch.Tensor, cond_emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D), cond_emb (B, D), mask (B, N) bool (False: a key no token attends to) -> (B, N, D).

        Positions masked in every row (caption padding past the batch's longest caption, the image
        group of a batch without input images) are left out of the blocks: the mask hides them as
        keys and only video and audio tokens are read out, so the result is the same with fewer
        tokens (t2v sampling: 120 -> ~100 base tokens). Their rows are returned as they came in."""
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"token sequence of {x.shape[1]} does not match the configured {self.pos_embed.shape[1]}")
        x = x + self.pos_embed
        kept = None
        if mask is not None:
            used = mask.any(0)
            if not bool(used.all()):
                kept = used.nonzero().squeeze(1)
                full, x, mask = x, x.index_select(1, kept), mask.index_select(1, kept)
            if bool(mask.all()):
                mask = None  # no masking work in attention (and SDPA's fast path off the CPU)
        for block in self.transformer_blocks:
            x = block(x, cond_emb, mask)
        return x if kept is None else full.index_copy(1, kept, x)


class OutputProjector(nn.Module):
    """Tokens back to latents: video (B, C, F, H, W) and, for the base model, audio (B, Ca, L)."""

    def __init__(self, config: DenoiserConfig, video_patch_size: int, audio_patch_size: int | None):
        super().__init__()
        self.config = config
        self.final_video = FinalLayer(config.dim, video_patch_size)
        if audio_patch_size is not None:
            self.final_audio = FinalLayer(config.dim, audio_patch_size)

    def forward(self, x: torch.Tensor, cond_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        gt, gh, gw = cfg.video_grid
        gi = cfg.image_grid
        start = cfg.max_text_tokens + gi[0] * gi[1]
        nv = gt * gh * gw
        pf, ph, pw = cfg.video_patch
        vid = self.final_video(x[:, start : start + nv], cond_emb)
        vid_pred = rearrange(vid, "b (f h w) (p1 p2 p3 c) -> b c (f p1) (h p2) (w p3)", f=gt, h=gh, w=gw, p1=pf, p2=ph, p3=pw)
        if cfg.is_upsampler:
            return vid_pred, None
        aud = self.final_audio(x[:, start + nv : start + nv + cfg.audio_tokens], cond_emb)
        aud_pred = rearrange(aud, "b l (p c) -> b c (l p)", p=cfg.audio_patch)
        return vid_pred, aud_pred


class JointDenoisingTransformer(nn.Module):
    """The joint denoiser. Predicts the diffusion target (v, epsilon or x0, per the scheduler) for
    the video latent (B, C, F, H, W) and, in the base model, the audio latent (B, Ca, L)."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        self.is_upsampler = config.is_upsampler
        self.input_proj = InputProjector(config)
        self.token_builder = TokenBuilder(config)
        self.patch_transformer = PatchTransformer(config)
        self.output_proj = OutputProjector(
            config, self.input_proj.video_patch_size, None if config.is_upsampler else self.input_proj.audio_patch_size
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT: xavier for linear layers, patch embeddings like linear layers, small normal for the
        # timestep MLPs; the zero inits of adaLN and the final layers are re-applied after.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                nn.init.zeros_(m.bias)
        for emb in [self.input_proj.t_embedder] + ([self.input_proj.noise_level_embedder] if self.is_upsampler else []):
            for m in emb.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, (TransformerBlock, FinalLayer)):
                nn.init.zeros_(m.adaLN_modulation[-1].weight)
                nn.init.zeros_(m.adaLN_modulation[-1].bias)
            if isinstance(m, FinalLayer):
                nn.init.zeros_(m.linear.weight)
                nn.init.zeros_(m.linear.bias)

    def forward(
        self,
        noisy_video: torch.Tensor,
        noisy_audio: torch.Tensor | None,
        t: torch.Tensor,
        context: TextEmbedding,
        low_res_video: torch.Tensor | None = None,
        low_res_noise_level: torch.Tensor | None = None,
        image_latent: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        drop_condition: torch.Tensor | None = None,
        self_cond_video: torch.Tensor | None = None,
        self_cond_audio: torch.Tensor | None = None,
        caption: CaptionState | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """noisy_video (B, C, F, H, W); noisy_audio (B, Ca, L) or None (upsampler); t (B,) timesteps;
        context: caption embedding; low_res_video (B, C, F, h, w) and low_res_noise_level (B,) for the
        upsampler; image_latent (B, C, H, W) with has_image (B,) bool (rows without an input image, as
        t2v items in a mixed batch, are masked out); image_features (B, E) from CLIP; drop_condition (B,) bool:
        use the null condition for these rows; self_cond_video / self_cond_audio: the previous clean-latent
        estimates when config.self_condition (None: zeros, no estimate yet); caption: the precomputed
        `input_proj.caption(context, drop_condition)` (None: computed here)."""
        projected = self.input_proj(
            noisy_video, noisy_audio, t, context, low_res_video, low_res_noise_level,
            image_latent, image_features, has_image, drop_condition, self_cond_video, self_cond_audio, caption,
        )
        x, mask = self.token_builder(projected)
        x = self.patch_transformer(x, projected.cond, mask)
        video, audio = self.output_proj(x, projected.cond)
        # fp32 out under autocast too: guidance and the samplers' arithmetic stay in full precision.
        return video.float(), None if audio is None else audio.float()

    @torch.no_grad()
    def set_text_statistics(self, pooled: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Per-feature mean and std of the training captions: pooled (N, E), tokens (N, L, E), mask (N, L)."""
        real = tokens[mask.bool()].float()
        p = self.input_proj
        p.pooled_mean.copy_(pooled.float().mean(0))
        p.pooled_std.copy_(pooled.float().std(0).clamp_min(1e-3))
        p.token_mean.copy_(real.mean(0))
        p.token_std.copy_(real.std(0).clamp_min(1e-3))

    def forward_with_cfg(
        self,
        noisy_video: torch.Tensor,
        noisy_audio: torch.Tensor | None,
        t: torch.Tensor,
        context: TextEmbedding,
        guidance: float,
        caption_cache: dict[str, CaptionState] | None = None,
        **kwargs: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Classifier-free guidance with conditional and null rows batched in one forward:
        uncond + guidance * (cond - uncond). guidance == 1 is the plain conditional prediction.
        `caption_cache`: a dict the caller keeps across the steps of one sampling call (same context);
        the caption states are computed once into it (the refiner was ~12% of a sampling step)."""

        def cached(key: str, make) -> CaptionState:
            if caption_cache is None:
                return make()
            if key not in caption_cache:
                caption_cache[key] = make()
            return caption_cache[key]

        if guidance == 1.0:
            caption = cached("conditional", lambda: self.input_proj.caption(context))
            return self(noisy_video, noisy_audio, t, context, caption=caption, **kwargs)
        b = noisy_video.shape[0]

        def twice(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else torch.cat([x, x])

        doubled = TextEmbedding(twice(context.pooled), twice(context.tokens), twice(context.mask))  # type: ignore[arg-type]
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(noisy_video.device)
        caption = cached("guided", lambda: self.input_proj.caption(doubled, drop))
        extra = {k: twice(v) for k, v in kwargs.items()}
        vid, aud = self(twice(noisy_video), twice(noisy_audio), twice(t), doubled, drop_condition=drop,  # type: ignore[arg-type]
                        caption=caption, **extra)
        vid_c, vid_u = vid.chunk(2)
        vid_out = vid_u + guidance * (vid_c - vid_u)
        aud_out = None
        if aud is not None:
            aud_c, aud_u = aud.chunk(2)
            aud_out = aud_u + guidance * (aud_c - aud_u)
        return vid_out, aud_out
