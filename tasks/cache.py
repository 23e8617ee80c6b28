"""The tensor cache: every item's tensors (tasks/preprocess.py) written once into safetensors shards
plus a manifest, and the one reader of them, `MultiModalDataset`.

Storage: video and images as uint8 (exactly the decoded 8-bit values), audio as float16; the
dataset returns float tensors in [0, 1] (video) and [-1, 1] (audio). Shards are written to a
temporary file and renamed, and the manifest is replaced last, so a crash never leaves a partial
shard referenced. Each item is keyed by the content hashes of its inputs and the cache params:
unchanged items are never recomputed, a changed input redoes only its own item.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from itertools import groupby
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from .media import atomic_path
from .preprocess import compute_clip
from .runtime import UserError, map_clips

MANIFEST = "manifest.parquet"
TENSOR_FIELDS = ("video_base", "video_upsampled", "audio", "image_base", "image_upsampled")


@dataclass(frozen=True)
class CacheSettings:
    """The `cache` params that shape the tensors, as a class of this module: per-item workers unpickle
    it without importing tasks.params (and with it torch)."""

    num_frames: int
    window_s: float
    window_start_s: float
    base_size: int
    upsampled_size: int
    sample_rate: int
    shard_size: int

    @classmethod
    def from_params(cls, cache) -> "CacheSettings":
        """From the `cache` params group."""
        return cls(**{f.name: getattr(cache, f.name) for f in fields(cls)})

    def fingerprint(self) -> str:
        shaping = {k: v for k, v in asdict(self).items() if k != "shard_size"}
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CacheItem:
    id: str
    modality: str             # t2v | i2v
    caption: str
    source: str               # the path as written in the annotations
    content_hash: str
    has_audio: bool
    duration: float
    fps: float
    video: str                # the pair's mp4
    wav: str                  # the pair's wav
    image: str | None = None
    image_hash: str | None = None
    split: str | None = None
    attributes: str | None = None  # JSON, when the annotations carry attributes
    window: int = 0               # which window of the clip: it starts at window_start_s + window * window_s
    caption_source: str = "annotation"   # annotation | filename | clip-zero-shot:<model> (tasks/curate.py)
    safety: str = ""              # what the safety step checked, or that it did not

    def key(self, settings: CacheSettings) -> str:
        parts = [self.content_hash, self.image_hash or "", settings.fingerprint()]
        parts += [f"window {self.window}"] if self.window else []   # a clip's first window keeps its old key
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _write_shard(cache_dir: Path, keys: list[str], tensors: list[dict[str, np.ndarray]]) -> str:
    name = "shard-" + hashlib.sha256("|".join(keys).encode()).hexdigest()[:16] + ".safetensors"
    stacked = {f: torch.from_numpy(np.stack([t[f] for t in tensors])) for f in TENSOR_FIELDS}
    with atomic_path(cache_dir / name) as tmp:
        save_file(stacked, str(tmp), metadata={"keys": json.dumps(keys)})
    return name


@dataclass
class CacheResult:
    manifest: Path
    computed: int
    reused: int
    failed: list[tuple[str, str]]   # (source, reason)
    padded: dict[str, bool]         # item id -> padded to the window, for every item in the manifest


def write_cache(items: list[CacheItem], cache_dir: str | Path, settings: CacheSettings, workers: int = 2,
                progress: bool = True, pool=None, map_fn: Callable | None = None) -> CacheResult:
    """Bring the cache in line with `items`: compute only items whose key is new, then replace the
    manifest atomically and delete shards nothing refers to any more. `map_fn(fn, jobs, desc)` runs
    the per-item work (default: `runtime.map_clips` over `workers` processes or `pool`)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / MANIFEST
    old = pd.read_parquet(manifest_path) if manifest_path.exists() else None
    known, padded_flags = _known_items(old, cache_dir)
    keys = [it.key(settings) for it in items]
    todo = [(it, k) for it, k in zip(items, keys) if k not in known]
    clips = [list(group) for _, group in groupby([it for it, _ in todo], key=lambda it: it.video)]
    per_clip = (map_fn or (lambda fn, j, desc: map_clips(fn, j, workers, desc, progress, pool)))(
        compute_clip, [(clip, settings) for clip in clips], "cache")   # one decode per clip for all its windows
    results = [r for clip_results in per_clip for r in clip_results]
    new_locations, failed = _write_new_items(cache_dir, todo, results, settings.shard_size, padded_flags)
    locations = {**known, **new_locations}
    rows = [_manifest_row(it, key, locations[key], padded_flags.get(key, False))
            for it, key in zip(items, keys) if key in locations]
    columns = [f.name for f in fields(CacheItem)] + ["key", "shard", "offset", "padded"]   # also when empty
    frame = pd.DataFrame(rows, columns=columns)
    _replace_manifest(cache_dir, old, frame)
    return CacheResult(manifest_path, computed=len(todo) - len(failed), reused=len(items) - len(todo), failed=failed,
                       padded={row["id"]: row["padded"] for row in rows})


def _known_items(old: pd.DataFrame | None, cache_dir: Path) -> tuple[dict[str, tuple[str, int]], dict[str, bool]]:
    """Location and padded flag of every manifest item whose shard is still on disk."""
    known: dict[str, tuple[str, int]] = {}
    padded: dict[str, bool] = {}
    if old is not None and len(old):   # an empty manifest of an older version lacks columns
        for key, shard, offset, pad in zip(old["key"], old["shard"], old["offset"], old["padded"]):
            if (cache_dir / shard).exists():
                known[key] = (shard, int(offset))
                padded[key] = bool(pad)
    return known, padded


def _write_new_items(cache_dir: Path, todo: list, results, shard_size: int, padded_flags: dict[str, bool]
                     ) -> tuple[dict[str, tuple[str, int]], list[tuple[str, str]]]:
    """Write computed items in shards of `shard_size` as results arrive; return their locations and the failures."""
    locations: dict[str, tuple[str, int]] = {}
    failed: list[tuple[str, str]] = []
    keys: list[str] = []
    tensors_list: list[dict[str, np.ndarray]] = []

    def flush() -> None:
        if keys:
            name = _write_shard(cache_dir, keys, tensors_list)
            locations.update({key: (name, offset) for offset, key in enumerate(keys)})
            keys.clear()
            tensors_list.clear()

    for (it, key), (tensors, padded, error) in zip(todo, results):
        if tensors is None:
            failed.append((it.source, f"cache: {error}"))
            continue
        keys.append(key)
        tensors_list.append(tensors)
        padded_flags[key] = padded
        if len(keys) >= shard_size:
            flush()
    flush()
    return locations, failed


def _manifest_row(item: CacheItem, key: str, location: tuple[str, int], padded: bool) -> dict:
    shard, offset = location
    return {**asdict(item), "key": key, "shard": shard, "offset": offset, "padded": bool(padded)}


def _replace_manifest(cache_dir: Path, old: pd.DataFrame | None, frame: pd.DataFrame) -> None:
    """Write the manifest atomically when it changed, then delete shards it no longer refers to."""
    if old is None or not old.reset_index(drop=True).equals(frame.reset_index(drop=True)):
        with atomic_path(cache_dir / MANIFEST) as tmp:
            frame.to_parquet(tmp, index=False)
    referenced = set(frame["shard"]) if len(frame) else set()
    for shard in cache_dir.glob("shard-*.safetensors"):
        if shard.name not in referenced:
            shard.unlink()


def read_manifest(cache_dir: str | Path) -> pd.DataFrame:
    path = Path(cache_dir) / MANIFEST
    if not path.exists():
        raise UserError(f"{path}: no tensor cache (run `tinyveo prepare --out {Path(cache_dir).parent}` first)")
    manifest = pd.read_parquet(path)
    if not len(manifest):
        raise UserError(f"{path}: the cache is empty")
    return manifest


class MultiModalDataset(Dataset):
    """The article's dataset over the tensor cache, the one reader of it. Items (lazily, memory-mapped,
    safe with DataLoader workers) carry the article's keys: modality, video_base (3,F,32,32),
    video_upsampled (3,F,64,64), audio (1,N), raw_caption, input_image_base (3,32,32) (zeros for t2v,
    as the article), input_image_upsampled, plus has_image, has_audio, padded, split, id and
    attributes (JSON). `tensors()` loads every item at once, as training does."""

    def __init__(self, cache_dir: str | Path, split: str | None = None):
        self.cache_dir = Path(cache_dir)
        frame = read_manifest(self.cache_dir)
        self.manifest = frame[frame["split"] == split] if split is not None else frame
        self.rows = self.manifest.reset_index(drop=True).to_dict("records")
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # file handles do not cross into worker processes
        return state

    def _shard(self, name: str):
        if name not in self._handles:
            self._handles[name] = safe_open(str(self.cache_dir / name), framework="pt")
        return self._handles[name]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        row = self.rows[idx]
        shard, i = self._shard(row["shard"]), int(row["offset"])

        def get(field: str) -> torch.Tensor:
            return shard.get_slice(field)[i : i + 1][0]

        return {
            "modality": row["modality"], "raw_caption": row["caption"],
            "video_base": get("video_base").float() / 255.0, "video_upsampled": get("video_upsampled").float() / 255.0,
            "audio": get("audio").float(),
            "input_image_base": get("image_base").float() / 255.0,
            "input_image_upsampled": get("image_upsampled").float() / 255.0,
            "has_image": row["modality"] == "i2v", "has_audio": bool(row["has_audio"]), "padded": bool(row["padded"]),
            "split": row.get("split") or "", "id": row["id"], "attributes": row.get("attributes") or "{}",
        }

    def attributes(self, idx: int) -> dict[str, str]:
        return json.loads(self.rows[idx].get("attributes") or "{}")

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every field of every item in memory (uint8 video/images, float16 audio), in manifest order."""
        parts: dict[str, list] = {f: [] for f in TENSOR_FIELDS}
        for shard, rows in self.manifest.groupby("shard", sort=False):
            offsets = torch.as_tensor(rows["offset"].to_numpy().copy())
            for field in TENSOR_FIELDS:
                parts[field].append((rows.index.to_numpy().copy(), self._shard(shard).get_tensor(field)[offsets]))
        out = {}
        for field, chunks in parts.items():
            order = torch.cat([torch.as_tensor(idx) for idx, _ in chunks]).argsort()
            out[field] = torch.cat([t for _, t in chunks])[order]
        return out
