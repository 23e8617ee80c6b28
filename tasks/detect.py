"""Analytic attribute detectors for the built-in dataset: recover color, shape, direction and pitch
from a clip with no pretrained model. They are the honest quality metric for generated clips.

- color: mean RGB of the foreground (pixels well above the dark background), nearest palette color
- shape: fill ratio of the foreground inside its bounding box (square ~1, circle ~0.79, triangle ~0.5)
- direction: the dominant axis and sign of the foreground centroid's trajectory
- pitch: the FFT peak of the audio, nearest of 220/440/880 Hz on a log scale
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .synth import BACKGROUND, COLORS, PITCHES

CHANCE = {"color": 1 / len(COLORS), "shape": 1 / 3, "direction": 1 / 4, "pitch": 1 / len(PITCHES)}


def foreground(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or float in [0, 1] -> bool mask of pixels clearly brighter than the background."""
    f = frame.astype(np.float32)
    if f.max() <= 1.0:
        f = f * 255.0
    return np.abs(f - np.asarray(BACKGROUND, dtype=np.float32)).max(axis=-1) > 60


def detect_color(frames: np.ndarray) -> str:
    masks = np.stack([foreground(f) for f in frames])
    if not masks.any():
        return "none"
    f = frames.astype(np.float32)
    if f.max() <= 1.0:
        f = f * 255.0
    mean = f[masks].mean(axis=0)
    names = list(COLORS)
    dists = [np.linalg.norm(mean - np.asarray(COLORS[n], dtype=np.float32)) for n in names]
    return names[int(np.argmin(dists))]


def fill_ratio(mask: np.ndarray) -> float | None:
    ys, xs = np.nonzero(mask)
    if len(ys) < 4:
        return None
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    return float(mask.sum() / box)


def detect_shape(frames: np.ndarray) -> str:
    ratios = [r for r in (fill_ratio(foreground(f)) for f in frames) if r is not None]
    if not ratios:
        return "none"
    r = float(np.median(ratios))
    if r > 0.9:
        return "square"
    if r > 0.64:
        return "circle"
    return "triangle"


def detect_direction(frames: np.ndarray) -> str:
    centres = []
    for i, f in enumerate(frames):
        ys, xs = np.nonzero(foreground(f))
        if len(ys):
            centres.append((i, xs.mean(), ys.mean()))
    if len(centres) < 2:
        return "none"
    c = np.asarray(centres)
    dx = np.polyfit(c[:, 0], c[:, 1], 1)[0]
    dy = np.polyfit(c[:, 0], c[:, 2], 1)[0]
    if abs(dx) >= abs(dy):
        return "left-to-right" if dx > 0 else "right-to-left"
    return "top-to-bottom" if dy > 0 else "bottom-to-top"


def detect_pitch(audio: np.ndarray, sample_rate: int) -> str:
    a = np.asarray(audio, dtype=np.float64).reshape(-1)
    if not np.any(a):
        return "none"
    spectrum = np.abs(np.fft.rfft(a * np.hanning(len(a))))
    freqs = np.fft.rfftfreq(len(a), 1.0 / sample_rate)
    band = (freqs > 80) & (freqs < 4000)
    peak = float(freqs[band][np.argmax(spectrum[band])])
    names = list(PITCHES)
    return names[int(np.argmin([abs(np.log2(peak / PITCHES[n])) for n in names]))]


def detect_all(frames: np.ndarray, audio: np.ndarray, sample_rate: int) -> dict[str, str]:
    """frames (T, H, W, 3) uint8 or float in [0, 1]; audio mono."""
    return {
        "color": detect_color(frames),
        "shape": detect_shape(frames),
        "direction": detect_direction(frames),
        "pitch": detect_pitch(audio, sample_rate),
    }


def detect_clip(video_path: str | Path, sample_rate: int = 16000) -> dict[str, str]:
    """Detect every attribute of an mp4 with an audio track, decoded from the file."""
    import av

    from .media import decode_video

    frames, _ = decode_video(video_path)
    chunks = []
    with av.open(str(video_path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    audio = np.concatenate(chunks) if chunks else np.zeros(1, dtype=np.float32)
    return detect_all(frames, audio, sample_rate)
