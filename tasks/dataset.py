"""MultiModalDataset: the article's dataset over the tensor cache, read lazily (memory-mapped
safetensors shards), safe with DataLoader workers (each worker opens its own handles)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .cache import MANIFEST


class MultiModalDataset(Dataset):
    """Items with the article's keys: modality, video_base (3,F,32,32), video_upsampled (3,F,64,64),
    audio (1,N), raw_caption, input_image_base (3,32,32) (zeros for t2v, as the article),
    input_image_upsampled, plus has_image, has_audio, padded, split, id and attributes (JSON)."""

    def __init__(self, cache_dir: str | Path, split: str | None = None):
        import pandas as pd

        self.cache_dir = Path(cache_dir)
        manifest = self.cache_dir / MANIFEST
        if not manifest.exists():
            raise FileNotFoundError(f"{manifest}: no tensor cache here (run `tinyveo prepare` first)")
        frame = pd.read_parquet(manifest)
        if split is not None:
            frame = frame[frame["split"] == split]
        self.rows = frame.reset_index(drop=True).to_dict("records")
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # file handles do not cross into worker processes
        return state

    def _shard(self, name: str):
        from safetensors import safe_open

        if name not in self._handles:
            self._handles[name] = safe_open(str(self.cache_dir / name), framework="pt")
        return self._handles[name]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        row = self.rows[idx]
        shard = self._shard(row["shard"])
        i = int(row["offset"])

        def get(field: str) -> torch.Tensor:
            return shard.get_slice(field)[i : i + 1][0]

        has_image = row["modality"] == "i2v"
        return {
            "modality": row["modality"],
            "video_base": get("video_base").float() / 255.0,
            "video_upsampled": get("video_upsampled").float() / 255.0,
            "audio": get("audio").float(),
            "raw_caption": row["caption"],
            "input_image_base": get("image_base").float() / 255.0,
            "input_image_upsampled": get("image_upsampled").float() / 255.0,
            "has_image": has_image,
            "has_audio": bool(row["has_audio"]),
            "padded": bool(row["padded"]),
            "split": row.get("split") or "",
            "id": row["id"],
            "attributes": row.get("attributes") or "{}",
        }

    def attributes(self, idx: int) -> dict[str, str]:
        return json.loads(self.rows[idx].get("attributes") or "{}")
