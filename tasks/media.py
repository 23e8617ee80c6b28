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


class OutOfOrder(MediaError):
    """Frames came out of presentation order: stream-selecting them is unsafe (decode all, then sort)."""


THUMB = 32   # side of the thumbnails probing keeps for the quality filters
PRINT_GRID = 8      # a frame's print: mean luma of PRINT_GRID x PRINT_GRID cells (near-duplicate detection)
PRINT_MAX_S = 60.0  # prints cover a clip's first minute: more than the windows cached of it


def luma_print(frame) -> np.ndarray:
    """(PRINT_GRID * PRINT_GRID,) uint8: the mean luma of each cell, read from the decoded 8-bit Y
    plane (no colour conversion: a tenth of the cost of an RGB thumbnail); other formats (RGB,
    10-bit HDR) are converted to 8-bit YUV first, whose Y has the same range as a video's."""
    luma_first = frame.format.name.startswith(("yuv", "nv", "gray"))
    if not luma_first or frame.format.components[0].bits != 8:
        frame = frame.reformat(format="yuv420p")
    plane, g = frame.planes[0], PRINT_GRID
    h, w = frame.height - frame.height % g, frame.width - frame.width % g
    y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:h, :w]
    sums = y.reshape(g, h // g, g, w // g).sum((1, 3), dtype=np.uint32)
    return (sums // ((h // g) * (w // g))).astype(np.uint8).reshape(-1)


def timed_frames(path: str | Path) -> Iterator:
    """(frame, presentation time in s) of the first video stream, in decoding order. A file damaged
    after its first frames ends there (a truncated file decodes up to the damage); one that yields
    no frame raises MediaError saying why."""
    import av

    count = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            base, start = stream.time_base, stream.start_time or 0
            for frame in container.decode(stream):
                t = float((frame.pts - start) * base) if frame.pts is not None else count / float(stream.average_rate or 24)
                count += 1
                yield frame, t
    except av.error.FFmpegError as exc:
        if not count:
            raise MediaError(f"not a decodable video ({exc.__class__.__name__}: {exc})") from exc
    if not count:
        raise MediaError("no decodable video frames")


def _decode(path: str | Path, max_seconds: float | None, to_rgb: bool, thumbs_every_s: float | None = None,
            thumbs: list | None = None, prints_every_s: float | None = None, prints: list | None = None,
            prints_max_s: float = 0.0) -> tuple[list, list[float], tuple[int, int]]:
    """Frames (RGB when `to_rgb`), their times and the frame size; with `thumbs_every_s`, a THUMB x
    THUMB RGB thumbnail about every that many seconds goes into `thumbs`; with `prints_every_s`,
    `prints[k]` is the luma print of the frame on screen at k * prints_every_s, up to `prints_max_s`."""
    frames, times = [], []
    next_thumb = 0.0
    size = (0, 0)
    for frame, t in timed_frames(path):
        if max_seconds is not None and t > max_seconds:
            break
        size = (frame.width, frame.height)
        if to_rgb:
            frames.append(frame.to_ndarray(format="rgb24"))
        if thumbs_every_s is not None and t >= next_thumb:
            thumbs.append(frame.reformat(width=THUMB, height=THUMB, format="rgb24").to_ndarray())
            next_thumb = t + thumbs_every_s
        if prints_every_s is not None and len(prints) * prints_every_s <= min(t, prints_max_s):
            shown = luma_print(frame)
            while len(prints) * prints_every_s <= min(t, prints_max_s):   # a frame held over a gap fills it
                prints.append(shown)
        times.append(t)
    return frames, times, size


def decode_video(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All frames as (T, H, W, 3) uint8 RGB and their presentation times (T,) in seconds.

    Works for variable frame rate clips: times come from each frame's pts, not from an assumed rate.
    Stops after `max_seconds` of video when given.
    """
    frames, times, _ = _decode(path, max_seconds, to_rgb=True)
    order = np.argsort(np.asarray(times), kind="stable")
    return np.stack(frames)[order], np.asarray(times, dtype=np.float64)[order]


def decode_check(path: str | Path, thumbs_every_s: float = 0.25, prints_every_s: float = 0.1,
                 prints_max_s: float = PRINT_MAX_S) -> tuple[np.ndarray, tuple[int, int], np.ndarray, np.ndarray]:
    """Decode every frame without converting it (the decode check of probing): sorted times, (W, H),
    small RGB thumbnails (N, THUMB, THUMB, 3) about every `thumbs_every_s` for the quality filters,
    and luma prints (K, PRINT_GRID**2) on a `prints_every_s` grid for near-duplicate detection."""
    thumbs: list = []
    prints: list = []
    _, times, size = _decode(path, None, to_rgb=False, thumbs_every_s=thumbs_every_s, thumbs=thumbs,
                             prints_every_s=prints_every_s, prints=prints, prints_max_s=prints_max_s)
    return np.sort(np.asarray(times, dtype=np.float64)), size, np.stack(thumbs), np.stack(prints)


def shown_until(times) -> float:
    """When a clip's last frame leaves the screen: one (median) frame period after it shows."""
    period = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / 24
    return float(times[-1]) + period


def decode_at(path: str | Path, wanted: np.ndarray, sizes: tuple[int, ...]) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """The frame on screen at each of the increasing instants `wanted` (seconds; the last frame whose
    time <= instant, the first frame before it starts), centre-cropped and resized to every size:
    {size: (N, size, size, 3) uint8}, and per instant whether it is past the end (then black).

    Streams: a frame is converted to RGB only if some instant shows it, and decoding stops after the
    last instant, so memory is the output's whatever the clip's length or resolution."""
    out = {s: np.zeros((len(wanted), s, s, 3), np.uint8) for s in sizes}
    times: list[float] = []
    shown, j = None, 0      # (frame, its resized pictures); next instant to fill

    def fill(frame, upto: float) -> None:
        nonlocal shown, j
        while j < len(wanted) and wanted[j] + 1e-6 < upto:
            if shown is None or shown[0] is not frame:
                rgb = frame.to_ndarray(format="rgb24")
                shown = (frame, {s: _square(rgb, s) for s in sizes})
            for s in sizes:
                out[s][j] = shown[1][s]
            j += 1

    previous = None
    for frame, t in timed_frames(path):
        if times and t < times[-1]:
            raise OutOfOrder(f"{path}: frames out of presentation order")
        fill(previous if previous is not None else frame, t)   # instants before t show the previous frame
        times.append(t)
        previous = frame
        if j == len(wanted):
            break
    past = np.zeros(len(wanted), bool)
    if j < len(wanted):     # the clip ended first: the last frame until one period after it, then black
        fill(previous, shown_until(times) + 1e-6)
        past[j:] = True
    return out, past


def brightness_and_motion(thumbs: np.ndarray) -> tuple[float, float]:
    """The luma (0-255, Rec. 601) of the brightest 1% of the thumbnails' pixels, and the mean
    absolute luma change between consecutive thumbnails (0 for a still picture). The brightest
    percent, not the mean: night footage and lines on black are dark on average, yet show something."""
    luma = thumbs.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    motion = float(np.abs(np.diff(luma, axis=0)).mean()) if len(luma) > 1 else 0.0
    return float(np.percentile(luma, 99)), motion


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
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = _square(frame, size)
    return out


def _square(frame: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w, _ = frame.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    method = Image.Resampling.BOX if side >= size else Image.Resampling.BILINEAR
    crop = Image.fromarray(np.ascontiguousarray(frame[top:top + side, left:left + side]))
    return np.asarray(crop.resize((size, size), method))


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


def write_tsv(path: str | Path, rows: list[dict], keys: list[str] | None = None) -> None:
    """One header line of `keys` (default: every key of the rows, in order), then a line per row;
    a missing or None value is an empty cell (DVC plots and pandas read it as missing)."""
    keys = keys or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["\t".join(keys)] + ["\t".join("" if r.get(k) is None else str(r[k]) for k in keys) for r in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")
