"""Tensor caching: the article's `preprocess_video` / `preprocess_audio`, done in sync, written once
into safetensors shards plus a manifest that `MultiModalDataset` reads lazily.

Sync fix: the article read the first 16 frames (~0.6 s at 25 fps) against the first 2 s of audio.
Here frame i is the frame on screen at t = start + i * window / F, the same window the audio covers,
chosen by presentation time (variable frame rate safe). Clips shorter than the window are padded
(black frames, silent samples) and flagged.

Storage: video and images as uint8 (exactly the decoded 8-bit values), audio as float16; the
dataset returns float tensors in [0, 1] (video) and [-1, 1] (audio). Shards are written to a
temporary file and renamed, and the manifest is replaced last, so a crash never leaves a partial
shard referenced. Each item is keyed by the content hashes of its inputs and the cache params:
unchanged items are never recomputed, a changed input redoes only its own item.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import Executor

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .runtime import LazyPrefectTask, map_clips, persistent_cache

MANIFEST = "manifest.parquet"
TENSOR_FIELDS = ("video_base", "video_upsampled", "audio", "image_base", "image_upsampled")


@dataclass(frozen=True)
class CacheSettings:
    num_frames: int = 16
    window_s: float = 2.0
    window_start_s: float = 0.0
    base_size: int = 32
    upsampled_size: int = 64
    sample_rate: int = 16000
    shard_size: int = 256

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "CacheSettings":
        c = params["cache"]
        return cls(int(c["num_frames"]), float(c["window_s"]), float(c["window_start_s"]), int(c["base_size"]),
                   int(c["upsampled_size"]), int(c["sample_rate"]), int(c["shard_size"]))

    def fingerprint(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "shard_size"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


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

    def key(self, settings: CacheSettings) -> str:
        parts = [self.content_hash, self.image_hash or "", settings.fingerprint()]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def frame_times(num_frames: int, window_s: float, start_s: float = 0.0) -> np.ndarray:
    """The instants the cached frames show: evenly spread over [start, start + window)."""
    return start_s + np.arange(num_frames) * (window_s / num_frames)


def select_frames(frames: np.ndarray, times: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, bool]:
    """For each wanted instant, the frame on screen then (last pts <= instant); black past the end."""
    period = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / 24
    end = float(times[-1]) + period
    idx = np.searchsorted(times, wanted + 1e-6, side="right") - 1
    idx = np.clip(idx, 0, len(times) - 1)
    out = frames[idx].copy()
    past = wanted >= end
    out[past] = 0
    return out, bool(past.any())


def preprocess_video_sizes(path: str | Path, sizes: tuple[int, ...], num_frames: int = 16, window_s: float = 2.0,
                           start_s: float = 0.0) -> tuple[dict[int, np.ndarray], bool]:
    """Decode once; {size: (F, size, size, 3) uint8} and whether padding was needed."""
    from .media import decode_video, resize_square

    frames, times = decode_video(path, max_seconds=start_s + window_s + 1.0)
    chosen, padded = select_frames(frames, times, frame_times(num_frames, window_s, start_s))
    return {s: resize_square(chosen, s) for s in sizes}, padded


def preprocess_video(path: str | Path, target_height: int, target_width: int, num_frames: int = 16,
                     window_s: float = 2.0, start_s: float = 0.0):
    """The article's function, in sync with the audio: (3, F, H, W) float in [0, 1]."""
    import torch

    if target_height != target_width:
        raise ValueError("tinyveo caches square frames (target_height == target_width)")
    sized, _ = preprocess_video_sizes(path, (target_height,), num_frames, window_s, start_s)
    return torch.from_numpy(sized[target_height]).permute(3, 0, 1, 2).float() / 255.0


def preprocess_audio_array(path: str | Path, sample_rate: int = 16000, window_s: float = 2.0,
                           start_s: float = 0.0) -> tuple[np.ndarray, bool]:
    """(N,) float32 mono in [-1, 1], peak-normalised, padded/trimmed to the window; and padded?"""
    from .media import read_wav, resample

    audio, rate = read_wav(path)
    audio = resample(audio, rate, sample_rate)
    n = int(round(window_s * sample_rate))
    first = int(round(start_s * sample_rate))
    clip = audio[first:first + n]
    padded = len(clip) < n
    if padded:
        clip = np.pad(clip, (0, n - len(clip)))
    peak = float(np.abs(clip).max()) if len(clip) else 0.0
    if peak > 0:
        clip = clip / peak
    return clip.astype(np.float32), padded


def preprocess_audio(path: str | Path, sample_rate: int = 16000, window_s: float = 2.0, start_s: float = 0.0):
    """The article's function: (1, N) float tensor, mono, peak-normalised, padded/trimmed."""
    import torch

    clip, _ = preprocess_audio_array(path, sample_rate, window_s, start_s)
    return torch.from_numpy(clip).unsqueeze(0)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8, centre-cropped to square."""
    from PIL import Image

    from .media import resize_square

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    return resize_square(arr[None], size)[0]


def item_tensors(item: CacheItem, settings: CacheSettings) -> tuple[dict[str, np.ndarray], bool]:
    """All tensors of one item (uint8 CHW video/images, float16 audio) and whether it was padded."""
    s = settings
    sized, padded_v = preprocess_video_sizes(item.video, (s.base_size, s.upsampled_size), s.num_frames, s.window_s,
                                             s.window_start_s)
    audio, padded_a = preprocess_audio_array(item.wav, s.sample_rate, s.window_s, s.window_start_s)
    out = {
        "video_base": sized[s.base_size].transpose(3, 0, 1, 2),
        "video_upsampled": sized[s.upsampled_size].transpose(3, 0, 1, 2),
        "audio": audio[None].astype(np.float16),
        "image_base": np.zeros((3, s.base_size, s.base_size), np.uint8),
        "image_upsampled": np.zeros((3, s.upsampled_size, s.upsampled_size), np.uint8),
    }
    if item.image:
        out["image_base"] = load_image(item.image, s.base_size).transpose(2, 0, 1)
        out["image_upsampled"] = load_image(item.image, s.upsampled_size).transpose(2, 0, 1)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}, padded_v or padded_a


def _work(args: tuple[CacheItem, CacheSettings]) -> tuple[dict[str, np.ndarray] | None, bool, str | None]:
    item, settings = args
    try:
        tensors, padded = item_tensors(item, settings)
        return tensors, padded, None
    except Exception as exc:  # one bad clip never kills the run: reported, the others go on
        return None, False, f"{type(exc).__name__}: {exc}"


def _write_shard(cache_dir: Path, keys: list[str], tensors: list[dict[str, np.ndarray]]) -> str:
    import torch
    from safetensors.torch import save_file

    from .media import atomic_path

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
    padded: dict[str, bool]         # source -> padded to the window, for every item in the manifest


def write_cache(items: list[CacheItem], cache_dir: str | Path, settings: CacheSettings, workers: int = 2,
                progress: bool = True, pool: Executor | None = None) -> CacheResult:
    """Bring the cache in line with `items`: compute only items whose key is new, then replace the
    manifest atomically and delete shards nothing refers to any more."""
    import pandas as pd

    from .media import atomic_path

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / MANIFEST
    old = pd.read_parquet(manifest_path) if manifest_path.exists() else None
    known: dict[str, tuple[str, int]] = {}
    padded_flags: dict[str, bool] = {}
    if old is not None:
        for key, shard, offset, padded in zip(old["key"], old["shard"], old["offset"], old["padded"]):
            if (cache_dir / shard).exists():
                known[key] = (shard, int(offset))
                padded_flags[key] = bool(padded)
    keys = [it.key(settings) for it in items]
    todo = [(it, k) for it, k in zip(items, keys) if k not in known]
    failed: list[tuple[str, str]] = []
    done_keys: list[str] = []
    done_tensors: list[dict[str, np.ndarray]] = []
    new_locations: dict[str, tuple[str, int]] = {}

    def flush() -> None:
        if done_keys:
            name = _write_shard(cache_dir, done_keys, done_tensors)
            for offset, key in enumerate(done_keys):
                new_locations[key] = (name, offset)
            done_keys.clear()
            done_tensors.clear()

    results = map_clips(_work, [((it, settings),) for it, _ in todo], workers, "cache", progress, pool)
    for (it, key), (tensors, padded, error) in zip(todo, results):
        if tensors is None:
            failed.append((it.source, f"cache: {error}"))
            continue
        done_keys.append(key)
        done_tensors.append(tensors)
        padded_flags[key] = padded
        if len(done_keys) >= settings.shard_size:
            flush()
    flush()
    rows = []
    failed_sources = {s for s, _ in failed}
    for it, key in zip(items, keys):
        if it.source in failed_sources and key not in known:
            continue
        shard, offset = known.get(key) or new_locations[key]
        row = asdict(it)
        row.update(key=key, shard=shard, offset=offset, padded=bool(padded_flags.get(key, False)))
        rows.append(row)
    columns = list(asdict(items[0]).keys()) + ["key", "shard", "offset", "padded"] if items else ["id", "key", "shard", "offset"]
    frame = pd.DataFrame(rows, columns=columns)
    unchanged = old is not None and old.reset_index(drop=True).equals(frame.reset_index(drop=True))
    if not unchanged:
        with atomic_path(manifest_path) as tmp:
            frame.to_parquet(tmp, index=False)
    referenced = set(frame["shard"]) if len(frame) else set()
    for shard in cache_dir.glob("shard-*.safetensors"):
        if shard.name not in referenced:
            shard.unlink()
    return CacheResult(manifest_path, computed=len(todo) - len(failed), reused=len(items) - len(todo), failed=failed,
                       padded={row["source"]: row["padded"] for row in rows})


def write_cache_key(parameters: dict) -> str:
    from .runtime import content_digest

    return content_digest("tensor-cache", [asdict(i) for i in parameters["items"]], asdict(parameters["settings"]),
                          str(parameters["cache_dir"]))


cache_task = LazyPrefectTask(write_cache, name="tensor-cache", **persistent_cache(write_cache_key))
