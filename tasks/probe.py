"""Probe and filter: is the file a decodable video, how long, at what rate, with audio or not, its
content hash (exact duplicates), brightness and motion (quality filters). Never raises for a bad
file: it says why instead."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

TRUNCATION_SLACK_S = 0.5   # declared minus decoded duration beyond this (and 10%) is a truncated file


@dataclass(frozen=True)
class ProbeInfo:
    path: str
    ok: bool
    reason: str | None = None
    duration: float = 0.0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    frames: int = 0
    has_audio: bool = False
    audio_channels: int = 0
    content_hash: str = ""
    declared_duration: float = 0.0   # what the container says; far more than `duration` decodes: truncated
    brightness: float = -1.0         # luma 0-255 of the brightest 1% of frames sampled every 0.25 s (-1: not measured)
    motion: float = -1.0             # mean absolute luma change between those frames (0: a still picture)
    video_print: str = ""            # luma prints every 0.1 s (tasks/dedup.py), base64 of uint8 (K, 64)

    @property
    def truncated(self) -> bool:
        return self.declared_duration - self.duration > max(TRUNCATION_SLACK_S, 0.1 * self.declared_duration)

    def truncation(self) -> str:
        return (f"truncated: the container declares {self.declared_duration:.2f} s, only {self.duration:.2f} s "
                f"({self.frames} frames) decode")

    def as_dict(self) -> dict:
        return asdict(self)


def probe_clip(path: str | Path, min_duration: float = 0.25, max_bytes: float | None = None,
               max_pixels: int | None = None) -> ProbeInfo:
    """Decode-check a clip. ok=False with a reason for empty, oversized, corrupt, not-a-video or
    too-short files; the size caps are checked before any frame is decoded."""
    import av

    from .dedup import encode_print
    from .media import MediaError, brightness_and_motion, decode_check, file_sha256

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return ProbeInfo(str(path), False, f"cannot stat ({exc.strerror or exc})")
    if size == 0:
        return ProbeInfo(str(path), False, "empty file")
    if max_bytes is not None and size > max_bytes:
        return ProbeInfo(str(path), False, f"file of {size} bytes is over the limit of {int(max_bytes)} "
                                           "(cache.max_clip_mb)")
    digest = file_sha256(path)
    has_audio, channels, declared = False, 0, 0.0
    try:
        with av.open(str(path)) as container:
            declared = declared_seconds(container)
            frame = container.streams.video[0].codec_context if container.streams.video else None
            if frame is not None and max_pixels is not None and frame.width * frame.height > max_pixels:
                return ProbeInfo(str(path), False, f"frames of {frame.width}x{frame.height} are over the limit of "
                                                   f"{max_pixels} pixels (cache.max_clip_pixels)", content_hash=digest)
            if container.streams.audio:
                has_audio = True
                channels = int(container.streams.audio[0].codec_context.channels or 0)
    except av.error.FFmpegError as exc:
        return ProbeInfo(str(path), False, f"not a readable media file ({exc.__class__.__name__})", content_hash=digest)
    try:
        times, (width, height), thumbs, prints = decode_check(path)
    except MediaError as exc:
        return ProbeInfo(str(path), False, str(exc), content_hash=digest)
    brightness, motion = brightness_and_motion(thumbs)
    video_print = encode_print(prints)
    n = len(times)
    step = float((times[-1] - times[0]) / (n - 1)) if n > 1 else 0.0  # mean frame period (VFR-safe)
    fps = 1.0 / step if step > 0 else 0.0
    duration = float(times[-1]) + (step if step > 0 else 0.0)
    if duration < min_duration:
        return ProbeInfo(str(path), False, f"too short ({duration:.2f} s < {min_duration} s)", duration, fps,
                         width, height, n, has_audio, channels, digest, declared, brightness, motion)
    return ProbeInfo(str(path), True, None, duration, fps, width, height, n, has_audio, channels, digest, declared,
                     brightness, motion, video_print)


def declared_seconds(container) -> float:
    """The video duration the container declares (its stream's, else the container's), 0 if none."""
    stream = container.streams.video[0] if container.streams.video else None
    if stream is not None and stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration else 0.0
