"""Media I/O shared by the data tasks: PyAV decoding (bundled FFmpeg, no system install needed),
WAV via soundfile, atomic writes."""
from __future__ import annotations

import hashlib
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


class MediaError(Exception):
    """A media file cannot be used; the message says why."""


THUMB = 32   # side of the thumbnails probing keeps for the quality filters


def _decode(path: str | Path, max_seconds: float | None, to_rgb: bool, thumbs_every_s: float | None = None,
            thumbs: list | None = None) -> tuple[list, list[float], tuple[int, int]]:
    """Frames (RGB when `to_rgb`), their times and the frame size; with `thumbs_every_s`, a THUMB x
    THUMB RGB thumbnail about every that many seconds goes into `thumbs`."""
    import av

    frames, times = [], []
    next_thumb = 0.0
    size = (0, 0)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            base = stream.time_base
            start = stream.start_time or 0
            for frame in container.decode(stream):
                t = float((frame.pts - start) * base) if frame.pts is not None else len(times) / float(stream.average_rate or 24)
                if max_seconds is not None and t > max_seconds:
                    break
                size = (frame.width, frame.height)
                if to_rgb:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if thumbs_every_s is not None and t >= next_thumb:
                    thumbs.append(frame.reformat(width=THUMB, height=THUMB, format="rgb24").to_ndarray())
                    next_thumb = t + thumbs_every_s
                times.append(t)
    except av.error.FFmpegError as exc:
        if not times:
            raise MediaError(f"not a decodable video ({exc.__class__.__name__}: {exc})") from exc
        # A truncated file decodes up to the damage: keep what decoded.
    if not times:
        raise MediaError("no decodable video frames")
    return frames, times, size


def decode_video(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All frames as (T, H, W, 3) uint8 RGB and their presentation times (T,) in seconds.

    Works for variable frame rate clips: times come from each frame's pts, not from an assumed rate.
    Stops after `max_seconds` of video when given.
    """
    frames, times, _ = _decode(path, max_seconds, to_rgb=True)
    order = np.argsort(np.asarray(times), kind="stable")
    return np.stack(frames)[order], np.asarray(times, dtype=np.float64)[order]


def decode_check(path: str | Path, thumbs_every_s: float = 0.25) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """Decode every frame without converting it (the decode check of probing): sorted times, (W, H),
    and small RGB thumbnails (N, THUMB, THUMB, 3) about every `thumbs_every_s` for the quality filters."""
    thumbs: list = []
    _, times, size = _decode(path, None, to_rgb=False, thumbs_every_s=thumbs_every_s, thumbs=thumbs)
    return np.sort(np.asarray(times, dtype=np.float64)), size, np.stack(thumbs)


def brightness_and_motion(thumbs: np.ndarray) -> tuple[float, float]:
    """Mean luma (0-255, Rec. 601) of the thumbnails, and the mean absolute luma change between
    consecutive ones (0 for a still picture)."""
    luma = thumbs.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    motion = float(np.abs(np.diff(luma, axis=0)).mean()) if len(luma) > 1 else 0.0
    return float(luma.mean()), motion


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the sample rate."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), int(rate)


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (scipy): exact rational ratio, no torch import in worker processes."""
    from math import gcd

    from scipy.signal import resample_poly

    if rate == target:
        return audio.astype(np.float32, copy=False)
    g = gcd(rate, target)
    return resample_poly(audio, target // g, rate // g).astype(np.float32)


def resize_square(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) uint8: centre crop to square, then a box filter
    when shrinking (exact area average for integer factors) or bilinear when enlarging."""
    from PIL import Image

    _, h, w, _ = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    method = Image.Resampling.BOX if side >= size else Image.Resampling.BILINEAR
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        crop = Image.fromarray(np.ascontiguousarray(frame[top:top + side, left:left + side]))
        out[i] = np.asarray(crop.resize((size, size), method))
    return out


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


FAULT_ENV = "TINYVEO_FAULT_AT"
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Fault injection for the tests: TINYVEO_FAULT_AT=name[:k[:stop]] kills the process (SIGKILL)
    the k-th time (default the first) it passes the write point `name`; with `stop` the process
    stops itself there (SIGSTOP) until a SIGCONT, so a test can act while it is mid-run."""
    point, nth, action = (os.environ.get(FAULT_ENV, "").split(":") + ["", ""])[:3]
    if point != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)


def fsync_path(path: str | Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; if the block succeeds, fsync it, rename it over
    `target` and fsync the folder: a reader sees the old file or the new one, after a kill -9 or a
    power loss. The write point for fault injection is the target's file name."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_path(tmp)
        fault_point(target.name)  # the new file complete under its temporary name, the old one in place
        os.replace(tmp, target)
        fsync_path(target.parent, directory=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
