"""Probe and filter: is the file a decodable video, how long, at what rate, with audio or not, and
its content hash (for exact-duplicate detection). Never raises for a bad file: it says why instead."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path



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

    def as_dict(self) -> dict:
        return asdict(self)


def probe_clip(path: str | Path, min_duration: float = 0.25) -> ProbeInfo:
    """Decode-check a clip. ok=False with a reason for empty, corrupt, not-a-video or too-short files."""
    import av

    from .media import MediaError, decode_check, file_sha256

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return ProbeInfo(str(path), False, f"cannot stat ({exc.strerror or exc})")
    if size == 0:
        return ProbeInfo(str(path), False, "empty file")
    digest = file_sha256(path)
    has_audio, channels = False, 0
    try:
        with av.open(str(path)) as container:
            if container.streams.audio:
                has_audio = True
                channels = int(container.streams.audio[0].codec_context.channels or 0)
    except av.error.FFmpegError as exc:
        return ProbeInfo(str(path), False, f"not a readable media file ({exc.__class__.__name__})", content_hash=digest)
    try:
        times, (width, height) = decode_check(path)
    except MediaError as exc:
        return ProbeInfo(str(path), False, str(exc), content_hash=digest)
    n = len(times)
    step = float((times[-1] - times[0]) / (n - 1)) if n > 1 else 0.0  # mean frame period (VFR-safe)
    fps = 1.0 / step if step > 0 else 0.0
    duration = float(times[-1]) + (step if step > 0 else 0.0)
    if duration < min_duration:
        return ProbeInfo(str(path), False, f"too short ({duration:.2f} s < {min_duration} s)", duration, fps,
                         width, height, n, has_audio, channels, digest)
    return ProbeInfo(str(path), True, None, duration, fps, width, height, n, has_audio, channels, digest)
