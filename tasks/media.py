"""Media I/O shared by the data tasks: PyAV decoding (bundled FFmpeg, no system install needed),
WAV via soundfile, atomic writes."""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


class MediaError(Exception):
    """A media file cannot be used; the message says why."""


def decode_video(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All frames as (T, H, W, 3) uint8 RGB and their presentation times (T,) in seconds.

    Works for variable frame rate clips: times come from each frame's pts, not from an assumed rate.
    Stops after `max_seconds` of video when given.
    """
    import av

    frames, times = [], []
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
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(t)
    except av.error.FFmpegError as exc:
        if not frames:
            raise MediaError(f"not a decodable video ({exc.__class__.__name__}: {exc})") from exc
        # A truncated file decodes up to the damage: keep what decoded.
    if not frames:
        raise MediaError("no decodable video frames")
    order = np.argsort(np.asarray(times), kind="stable")
    return np.stack(frames)[order], np.asarray(times, dtype=np.float64)[order]


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the sample rate."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), int(rate)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
