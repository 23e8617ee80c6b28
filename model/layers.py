"""Building blocks of the denoisers: fixed sin-cos positions, the timestep embedding, attention,
the adaLN-Zero transformer block, the final layer (DiT) and the caption refiner."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

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


def factorised_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                         grid: tuple[int, int], axis: str) -> torch.Tensor:
    """Divided space/time attention over a sequence whose last t*s tokens are video, in (t, s) order.

    q, k, v (B, H, N, Dh); mask (B, N) bool or None; grid (t, s): frames of tokens and tokens a frame.
    Each video token attends to the video tokens of its own frame (axis "space") or of its own place
    in every frame ("time"), and to every other token (caption, image, audio); the other tokens attend
    to the whole sequence. Why: full attention over t*s video tokens costs (t*s)^2 and ran far below
    the matmul ceiling on the CPU; grouped, it costs t*s*(s + others) or t*s*(t + others).
    -> (B, H, N, Dh)."""
    t, s = grid
    n_other = q.shape[2] - t * s
    if axis not in ("space", "time") or n_other < 0:
        raise ValueError(f"factorised attention needs axis space|time and >= {t * s} tokens, got {axis!r}, {q.shape[2]}")
    groups, split, merge = ((t, "b h (t s) d -> (b t) h s d", "(b t) h s d -> b h (t s) d") if axis == "space"
                            else (s, "b h (t s) d -> (b s) h t d", "(b s) h t d -> b h (t s) d"))

    def grouped(x: torch.Tensor) -> torch.Tensor:
        return rearrange(x[:, :, n_other:], split, t=t, s=s)

    def shared(x: torch.Tensor) -> torch.Tensor:   # the other tokens, once per group: (B*groups, H, n_other, Dh)
        return x[:, :, :n_other].repeat_interleave(groups, dim=0)

    others = masked_attention(q[:, :, :n_other], k, v, mask)
    keys, values = torch.cat([shared(k), grouped(k)], dim=2), torch.cat([shared(v), grouped(v)], dim=2)
    group_mask = None
    if mask is not None:
        others_mask = mask[:, :n_other].repeat_interleave(groups, dim=0)
        group_mask = torch.cat([others_mask, mask.new_ones(others_mask.shape[0], keys.shape[2] - n_other)], dim=1)
    video = rearrange(masked_attention(grouped(q), keys, values, group_mask), merge, t=t, s=s)
    return torch.cat([others, video], dim=2)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation from the condition vector.

    x (B, N, D), c (B, D), mask (B, N) bool or None -> (B, N, D).
    Fused qkv + `masked_attention` (SDPA was ~8% faster than nn.MultiheadAttention on CPU here).
    With `video_grid` (t, s) and `axis` ("space" | "time"), the last t*s tokens are video and attend
    divided (`factorised_attention`); the weights are the same either way.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, video_grid: tuple[int, int] | None = None,
                 axis: str | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.video_grid, self.axis = video_grid, axis
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
        if self.video_grid is None:
            out = masked_attention(q, k, v, mask)
        else:
            out = factorised_attention(q, k, v, mask, self.video_grid, self.axis)
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

    def __init__(self, context_dim: int, dim: int, heads: int, depth: int, max_tokens: int, kernel: int = 1):
        super().__init__()
        # A convolution over the tokens: at width 3 each position sees its neighbours, so "to right" and
        # "to left" differ from the first layer on; at width 1 each word enters alone.
        self.proj = nn.Conv1d(context_dim, dim, kernel_size=kernel, padding=kernel // 2)
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
