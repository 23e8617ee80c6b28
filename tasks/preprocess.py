"""The article's `preprocess_video` / `preprocess_audio`, done in sync: the tensors of one item.

Sync fix: the article read the first 16 frames (~0.6 s at 25 fps) against the first 2 s of audio.
Here frame i is the frame on screen at t = start + i * window / F, the same window the audio covers,
chosen by presentation time (variable frame rate safe). Clips shorter than the window are padded
(black frames, silent samples) and flagged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .media import OutOfOrder, decode_at, decode_video, read_wav, resample, resize_square, shown_until


def frame_times(num_frames: int, window_s: float, start_s: float = 0.0) -> np.ndarray:
    """The instants the cached frames show: evenly spread over [start, start + window)."""
    return start_s + np.arange(num_frames) * (window_s / num_frames)


def select_frames(frames: np.ndarray, times: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, bool]:
    """For each wanted instant, the frame on screen then (last pts <= instant); black past the end."""
    end = shown_until(times)
    idx = np.searchsorted(times, wanted + 1e-6, side="right") - 1
    idx = np.clip(idx, 0, len(times) - 1)
    out = frames[idx].copy()
    past = wanted >= end
    out[past] = 0
    return out, bool(past.any())


def preprocess_video_sizes(path: str | Path, sizes: tuple[int, ...], num_frames: int = 16, window_s: float = 2.0,
                           start_s: float = 0.0) -> tuple[dict[int, np.ndarray], bool]:
    """Decode once; {size: (F, size, size, 3) uint8} and whether padding was needed."""
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
    audio, rate = read_wav(path)
    return window_audio(resample(audio, rate, sample_rate), sample_rate, window_s, start_s)


def preprocess_audio(path: str | Path, sample_rate: int = 16000, window_s: float = 2.0, start_s: float = 0.0):
    """The article's function: (1, N) float tensor, mono, peak-normalised, padded/trimmed."""
    import torch

    clip, _ = preprocess_audio_array(path, sample_rate, window_s, start_s)
    return torch.from_numpy(clip).unsqueeze(0)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8, centre-cropped to square."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    return resize_square(arr[None], size)[0]


def window_tensors(chosen_sizes: dict[int, np.ndarray], audio: np.ndarray, item, settings) -> dict[str, np.ndarray]:
    """One item's cache tensors (uint8 CHW video/images, float16 audio) from its window's frames and samples."""
    s = settings
    out = {
        "video_base": chosen_sizes[s.base_size].transpose(3, 0, 1, 2),
        "video_upsampled": chosen_sizes[s.upsampled_size].transpose(3, 0, 1, 2),
        "audio": audio[None].astype(np.float16),
        "image_base": np.zeros((3, s.base_size, s.base_size), np.uint8),
        "image_upsampled": np.zeros((3, s.upsampled_size, s.upsampled_size), np.uint8),
    }
    if item.image:
        out["image_base"] = load_image(item.image, s.base_size).transpose(2, 0, 1)
        out["image_upsampled"] = load_image(item.image, s.upsampled_size).transpose(2, 0, 1)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def window_audio(audio: np.ndarray, sample_rate: int, window_s: float, start_s: float) -> tuple[np.ndarray, bool]:
    """A window of resampled mono samples, peak-normalised, padded past the end; and padded?"""
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


def clip_tensors(items: list, settings) -> list[tuple[dict[str, np.ndarray], bool]]:
    """Every window item of one clip from one decode of its video and one read of its audio: the
    tensors and whether the window was padded, per item (items share `video` and `wav`)."""
    s = settings
    starts = [s.window_start_s + it.window * s.window_s for it in items]
    sizes = (s.base_size, s.upsampled_size)
    wanted = np.concatenate([frame_times(s.num_frames, s.window_s, start) for start in starts])
    try:
        sized, past = decode_at(items[0].video, wanted, sizes)
    except OutOfOrder:   # rare streams: decode the span, sort by time, then select
        frames, times = decode_video(items[0].video, max_seconds=max(starts) + s.window_s + 1.0)
        chosen, _ = select_frames(frames, times, wanted)
        sized = {size: resize_square(chosen, size) for size in sizes}
        past = wanted >= shown_until(times)
    samples, rate = read_wav(items[0].wav)
    samples = resample(samples, rate, s.sample_rate)
    out = []
    for k, (item, start) in enumerate(zip(items, starts)):
        window = slice(k * s.num_frames, (k + 1) * s.num_frames)
        audio, padded_a = window_audio(samples, s.sample_rate, s.window_s, start)
        chosen = {size: frames[window] for size, frames in sized.items()}
        out.append((window_tensors(chosen, audio, item, s), bool(past[window].any()) or padded_a))
    return out


def compute_clip(items: list, settings) -> list[tuple[dict[str, np.ndarray] | None, bool, str | None]]:
    """(tensors, padded, None) or (None, False, the reason) per window item of one clip: one bad
    clip never kills the run."""
    try:
        return [(tensors, padded, None) for tensors, padded in clip_tensors(items, settings)]
    except Exception as exc:  # reported per clip by the caller; the others go on
        return [(None, False, f"{type(exc).__name__}: {exc}")] * len(items)
