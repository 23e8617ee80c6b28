"""JointDenoisingTransformer: a DiT over video, audio, text and image tokens (base and upsampler).

The article's components, kept by name, with its defects fixed:
- Positions are fixed sin-cos tables sized from the configured shapes (the article concatenated
  fresh torch.randn to its positions at every call). Video tokens get (t, h, w) positions; audio
  tokens share the time frequencies, placed at the same seconds, so sound and motion line up.
  A CPU prototype learned motion only with fixed (t, h, w) positions.
- The caption enters as words: its token states, each token alone into a small refiner, join the
  joint sequence, and the refiner's attention pool conditions adaLN. The article's pooled sentence
  vector is one point per whole caption, which for an unseen composition lands near a seen one; it
  separates attributes only weakly. `sentence_in_adaln: true` adds it to adaLN again,
  `text_refiner_kernel` > 1 mixes neighbouring tokens first, `caption_in_adaln: false` keeps only the tokens.
- A learned null condition replaces the caption for condition dropout, giving classifier-free
  guidance (`forward_with_cfg`).
- The upsampler sees the low-res latent, upsampled and concatenated channel-wise with its noisy
  input, plus the low-res noise level (noise-conditioning augmentation, as DeepFloyd IF): trained on
  noised low-res latents, sampled at a fixed level, so training and sampling agree.
- Image-to-video: the VAE latent of the input image enters as image tokens (and CLIP image features
  into adaLN when the backend has them).
- adaLN-Zero initialisation (DiT): every block starts as the identity and the outputs start at 0.

The sequence order lives in `model.inputs.TokenLayout`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .config import DenoiserConfig
from .inputs import CaptionState, DenoiserInputs, TokenLayout
from .layers import (FinalLayer, TextRefiner, TimestepEmbedding, TransformerBlock, audio_positions, image_positions,
                     masked_attention, sincos_embedding, video_positions)

__all__ = ["FinalLayer", "InputProjector", "JointDenoisingTransformer", "OutputProjector", "PatchTransformer",
           "TextRefiner", "TimestepEmbedding", "TokenBuilder", "TransformerBlock", "masked_attention"]


@dataclass
class ProjectedInputs:
    """What InputProjector hands to TokenBuilder (all widths D)."""

    tokens: dict[str, torch.Tensor]   # per group of the layout: (B, n, D)
    masks: dict[str, torch.Tensor]    # per group: (B, n) bool, False for keys no token attends to
    cond: torch.Tensor                # (B, D): adaLN condition


class InputProjector(nn.Module):
    """Patchify and embed every input; build the adaLN condition from timestep, caption, image, noise level."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        d = config.dim
        c_video = config.video_latent_shape[0]
        self.t_embedder = nn.Sequential(TimestepEmbedding(d), nn.Linear(d * 4, d))
        self.uses_sentence = config.caption_in_adaln and config.sentence_in_adaln
        if self.uses_sentence:
            self.c_embedder = nn.Linear(config.context_dim, d)      # pooled caption -> adaLN
        self.text_refiner = TextRefiner(config.context_dim, d, config.heads, config.text_refiner_depth,
                                        config.max_text_tokens, config.text_refiner_kernel)  # -> sequence, adaLN
        # Standardisation of the frozen encoder's features over the training captions (set by
        # `set_text_statistics`, saved with the weights): MiniLM vectors of any two captions share ~95%
        # of their direction, so standardised, each word's difference is of order one from the first step.
        e = config.context_dim
        self.register_buffer("pooled_mean", torch.zeros(e))
        self.register_buffer("pooled_std", torch.ones(e))
        self.register_buffer("token_mean", torch.zeros(e))
        self.register_buffer("token_std", torch.ones(e))
        # The null condition for classifier-free guidance: a learned caption (pooled + one token).
        if self.uses_sentence:
            self.null_pooled = nn.Parameter(torch.zeros(config.context_dim))
        self.null_token = nn.Parameter(torch.zeros(config.context_dim))
        self._register_load_state_dict_pre_hook(self._skip_unused_sentence_weights)
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

    def _skip_unused_sentence_weights(self, state_dict, prefix, *args) -> None:
        # Models saved before 2026-12-08 built the sentence path even when it was switched off.
        if not self.uses_sentence:
            for key in [k for k in state_dict if k.startswith((prefix + "c_embedder.", prefix + "null_pooled"))]:
                del state_dict[key]

    def caption(self, inputs: DenoiserInputs) -> CaptionState:
        """Standardise the caption, swap in the null condition for `inputs.drop` rows, refine."""
        context, cfg = inputs.caption, self.config
        tokens = (context.tokens - self.token_mean) / self.token_std
        text_mask = context.mask
        if tokens.shape[1] != cfg.max_text_tokens:
            raise ValueError(f"expected {cfg.max_text_tokens} caption tokens, got {tokens.shape[1]}")
        drop = None if inputs.drop is None else inputs.drop.to(torch.bool)
        if drop is not None:
            null_tokens = torch.zeros_like(tokens)
            null_tokens[:, 0] = self.null_token
            tokens = torch.where(drop[:, None, None], null_tokens, tokens)
            null_mask = torch.zeros_like(text_mask)
            null_mask[:, 0] = True
            text_mask = torch.where(drop[:, None], null_mask, text_mask)
        text, text_pooled = self.text_refiner(tokens, text_mask)
        if not cfg.caption_in_adaln:   # one global vector per caption invites recalling whole clips
            return CaptionState(text, text_mask, torch.zeros_like(text_pooled))
        if not self.uses_sentence:     # the sentence vector is one point per whole caption
            return CaptionState(text, text_mask, text_pooled)
        pooled = (context.pooled - self.pooled_mean) / self.pooled_std
        if drop is not None:
            pooled = torch.where(drop[:, None], self.null_pooled.expand_as(pooled), pooled)
        return CaptionState(text, text_mask, self.c_embedder(pooled) + text_pooled)

    def _image(self, video: torch.Tensor, inputs: DenoiserInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(image latent, has_image) with the image masked for rows that have none or take the null condition."""
        b = video.shape[0]
        image, has_image = inputs.image_latent, inputs.has_image
        if image is None:
            image = video.new_zeros(b, *self.config.image_latent_shape)
            has_image = torch.zeros(b, dtype=torch.bool, device=video.device)
        elif has_image is None:
            has_image = torch.ones(b, dtype=torch.bool, device=video.device)
        has_image = has_image.to(torch.bool)
        if inputs.drop is not None:
            has_image = has_image & ~inputs.drop.to(torch.bool)
        return image, has_image

    def _concat_conditions(self, video: torch.Tensor, audio: torch.Tensor | None, inputs: DenoiserInputs):
        """Channel-wise inputs: the upsampler's low-res latent and the self-condition estimates."""
        cfg = self.config
        if cfg.is_upsampler:
            if inputs.low_res_video is None or inputs.low_res_noise_level is None:
                raise ValueError("the upsampler needs low_res_video and low_res_noise_level")
            video = torch.cat([video, F.interpolate(inputs.low_res_video, size=video.shape[2:], mode="nearest")], dim=1)
        if cfg.self_condition:
            previous = inputs.self_cond_video
            video = torch.cat([video, torch.zeros_like(video[:, : cfg.video_latent_shape[0]]) if previous is None
                               else previous], dim=1)
            if audio is not None:
                audio = torch.cat([audio, torch.zeros_like(audio) if inputs.self_cond_audio is None
                                   else inputs.self_cond_audio], dim=1)
        return video, audio

    def forward(self, noisy_video: torch.Tensor, noisy_audio: torch.Tensor | None, t: torch.Tensor,
                inputs: DenoiserInputs) -> ProjectedInputs:
        cfg = self.config
        caption = inputs.caption_state if inputs.caption_state is not None else self.caption(inputs)
        image, has_image = self._image(noisy_video, inputs)
        cond = self.t_embedder(t) + caption.cond
        if inputs.image_features is not None and cfg.image_feature_dim:
            keep = has_image[:, None].to(inputs.image_features.dtype)
            cond = cond + keep * self.image_feature_embedder(inputs.image_features)
        video, audio = self._concat_conditions(noisy_video, noisy_audio, inputs)
        if cfg.is_upsampler:
            cond = cond + self.noise_level_embedder(inputs.low_res_noise_level)
        tokens = {"text": caption.text, "video": rearrange(self.video_patcher(video), "b d f h w -> b (f h w) d"),
                  "image": rearrange(self.image_patcher(image), "b d h w -> b (h w) d")}
        masks = {"text": caption.text_mask}
        if not cfg.is_upsampler:
            if audio is None:
                raise ValueError("the base denoiser needs noisy_audio")
            tokens["audio"] = rearrange(self.audio_patcher(audio), "b d l -> b l d")
        masks["image"] = has_image[:, None].expand(-1, tokens["image"].shape[1])
        return ProjectedInputs(tokens, masks, cond)


class TokenBuilder(nn.Module):
    """Concatenate the token groups in layout order, each tagged with a learned modality embedding.

    -> x (B, N, D), mask (B, N) bool. The article prepended one extra token per modality; adding the
    modality embedding to every token of the group does the same job without lengthening the sequence.
    """

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.layout = TokenLayout.from_config(config)
        d = config.dim
        self.text_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.image_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.video_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        if not config.is_upsampler:
            self.audio_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)

    def forward(self, p: ProjectedInputs) -> tuple[torch.Tensor, torch.Tensor]:
        tagged = {name: p.tokens[name] + getattr(self, f"{name}_token") for name in self.layout.names}
        masks = {name: p.masks.get(name) for name in self.layout.names}
        for name, mask in masks.items():
            if mask is None:  # video and audio tokens are always attended to
                x = p.tokens[name]
                masks[name] = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.layout.concat(tagged), self.layout.concat(masks)


class PatchTransformer(nn.Module):
    """Fixed positions + the stack of TransformerBlocks: (B, N, D), c (B, D) -> (B, N, D)."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        d = config.dim
        if d % 8:
            raise ValueError(f"denoiser width must be a multiple of 8 for the position tables, got {d}")
        # Caption tokens get their own 1D order: "from left to right" and "from right to left" hold the
        # same words, and the frozen encoder's states carry their order only weakly.
        tables = {"text": sincos_embedding(torch.arange(config.max_text_tokens, dtype=torch.float64), d),
                  "image": image_positions(config.image_grid, d), "video": video_positions(config.video_grid, d)}
        if not config.is_upsampler:
            tables["audio"] = audio_positions(config.audio_tokens, d)
        # Derived from the config, so not saved with the weights.
        layout = TokenLayout.from_config(config)
        self.register_buffer("pos_embed", layout.concat(tables, dim=0).unsqueeze(0), persistent=False)
        self.register_buffer("order", None, persistent=False)  # factorised: a permutation putting video last
        grid, axes = None, [None] * config.depth
        if config.attention == "factorised":
            gt, gh, gw = config.video_grid
            grid, axes = (gt, gh * gw), [("space", "time")[i % 2] for i in range(config.depth)]
            video = range(len(layout))[layout.slice("video")]
            order = [i for i in range(len(layout)) if i not in video] + list(video)
            self.register_buffer("order", torch.tensor(order), persistent=False)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(d, config.heads, config.mlp_ratio, grid, axis) for axis in axes]
        )

    def forward(self, x: torch.Tensor, cond_emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D), cond_emb (B, D), mask (B, N) bool (False: a key no token attends to) -> (B, N, D).

        Positions masked in every row (caption padding past the batch's longest caption, the image
        group of a batch without input images) are left out of the blocks: the mask hides them as
        keys and only video and audio tokens are read out, so the result is the same with fewer
        tokens. Their rows are returned as they came in. With factorised attention the blocks see the
        video tokens last (`order`), where `factorised_attention` groups them; the output is in layout order."""
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"token sequence of {x.shape[1]} does not match the configured {self.pos_embed.shape[1]}")
        x = x + self.pos_embed
        if self.order is not None:
            x = self._blocks(x.index_select(1, self.order), cond_emb,
                             None if mask is None else mask.index_select(1, self.order))
            return torch.empty_like(x).index_copy_(1, self.order, x)
        return self._blocks(x, cond_emb, mask)

    def _blocks(self, x: torch.Tensor, cond_emb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        kept = None
        if mask is not None:
            used = mask.any(0)
            if not bool(used.all()):
                kept = used.nonzero().squeeze(1)
                full, x, mask = x, x.index_select(1, kept), mask.index_select(1, kept)
            if bool(mask.all()):
                mask = None  # no masking work in attention
        for block in self.transformer_blocks:
            x = block(x, cond_emb, mask)
        return x if kept is None else full.index_copy(1, kept, x)


class OutputProjector(nn.Module):
    """Tokens back to latents: video (B, C, F, H, W) and, for the base model, audio (B, Ca, L)."""

    def __init__(self, config: DenoiserConfig, video_patch_size: int, audio_patch_size: int | None):
        super().__init__()
        self.config = config
        self.layout = TokenLayout.from_config(config)
        self.final_video = FinalLayer(config.dim, video_patch_size)
        if audio_patch_size is not None:
            self.final_audio = FinalLayer(config.dim, audio_patch_size)

    def forward(self, x: torch.Tensor, cond_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        gt, gh, gw = cfg.video_grid
        pf, ph, pw = cfg.video_patch
        vid = self.final_video(x[:, self.layout.slice("video")], cond_emb)
        vid_pred = rearrange(vid, "b (f h w) (p1 p2 p3 c) -> b c (f p1) (h p2) (w p3)", f=gt, h=gh, w=gw, p1=pf, p2=ph, p3=pw)
        if cfg.is_upsampler:
            return vid_pred, None
        aud = self.final_audio(x[:, self.layout.slice("audio")], cond_emb)
        return vid_pred, rearrange(aud, "b l (p c) -> b c (l p)", p=cfg.audio_patch)


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

    def compile_blocks(self) -> "JointDenoisingTransformer":
        """torch.compile every transformer block in place; parameter names and checkpoints are unchanged.
        The block's norms, modulation, casts and GELU fuse around its matrix products; the sequence
        length is dynamic, since the caption padding that runs varies from batch to batch."""
        for block in self.patch_transformer.transformer_blocks:
            block.compile(dynamic=True)
        return self

    def forward(self, noisy_video: torch.Tensor, noisy_audio: torch.Tensor | None, t: torch.Tensor,
                inputs: DenoiserInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """noisy_video (B, C, F, H, W); noisy_audio (B, Ca, L) or None (upsampler); t (B,) timesteps;
        inputs: every condition of the B rows (model.inputs.DenoiserInputs)."""
        projected = self.input_proj(noisy_video, noisy_audio, t, inputs)
        x, mask = self.token_builder(projected)
        x = self.patch_transformer(x, projected.cond, mask)
        video, audio = self.output_proj(x, projected.cond)
        # fp32 out under autocast too: guidance and the samplers' arithmetic stay in full precision.
        return video.float(), None if audio is None else audio.float()

    def with_caption_state(self, inputs: DenoiserInputs) -> DenoiserInputs:
        """The inputs with their caption refined once, for a sampler to reuse at every step."""
        return inputs.replace(caption_state=self.input_proj.caption(inputs))

    def forward_with_cfg(self, noisy_video: torch.Tensor, noisy_audio: torch.Tensor | None, t: torch.Tensor,
                         inputs: DenoiserInputs, guidance: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Classifier-free guidance: `inputs` are the B rows' `with_null_rows()` (conditional rows, then
        null rows), run in one forward; returns uncond + guidance * (cond - uncond) for the B rows."""
        def twice(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else torch.cat([x, x])

        def guide(out: torch.Tensor | None) -> torch.Tensor | None:
            if out is None:
                return None
            cond, uncond = out.chunk(2)
            return uncond + guidance * (cond - uncond)

        video, audio = self(twice(noisy_video), twice(noisy_audio), twice(t), inputs)  # type: ignore[arg-type]
        return guide(video), guide(audio)

    @torch.no_grad()
    def set_text_statistics(self, pooled: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Per-feature mean and std of the training captions: pooled (N, E), tokens (N, L, E), mask (N, L)."""
        real = tokens[mask.bool()].float()
        p = self.input_proj
        p.pooled_mean.copy_(pooled.float().mean(0))
        p.pooled_std.copy_(pooled.float().std(0).clamp_min(1e-3))
        p.token_mean.copy_(real.mean(0))
        p.token_std.copy_(real.std(0).clamp_min(1e-3))
