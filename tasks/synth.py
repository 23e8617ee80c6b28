"""The built-in synthetic dataset: real mp4 clips (H.264 + AAC, written by moviepy) of a coloured
shape moving across a dark frame while a tone plays, with captions from paraphrased templates.

Attributes: color x shape x direction x pitch (4 x 3 x 4 x 3 = 144 combinations). A fixed set of
combinations is held out (`split: holdout`) to measure compositional generalisation: every single
attribute value is still seen in training, only the combination is new.

    tinyveo synth --out data/raw --set data.synth_num_clips=600
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from .runtime import process_pool

if TYPE_CHECKING:  # writer processes import this module: no torch in them
    from .params import DataParams

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 220, 40),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left-to-right", "right-to-left", "top-to-bottom", "bottom-to-top")
PITCHES: dict[str, float] = {"low": 220.0, "mid": 440.0, "high": 880.0}
BACKGROUND = (18, 18, 26)

DIRECTION_PHRASES = {
    "left-to-right": ["from left to right", "left to right", "rightward across the frame"],
    "right-to-left": ["from right to left", "right to left", "leftward across the frame"],
    "top-to-bottom": ["from top to bottom", "top to bottom", "downward"],
    "bottom-to-top": ["from bottom to top", "bottom to top", "upward"],
}
PITCH_PHRASES = {"low": ["low", "deep"], "mid": ["mid", "medium"], "high": ["high", "high-pitched"]}
TEMPLATES = [
    "A {color} {shape} glides {direction} while a {pitch} beep plays",
    "A {color} {shape} moves {direction} with a {pitch} tone",
    "{Color} {shape} travelling {direction} as a {pitch} hum sounds",
    "A {pitch} tone plays while a {color} {shape} slides {direction}",
    "On a dark background, a {color} {shape} drifts {direction}; a {pitch} note rings",
]


def all_combinations() -> list[dict[str, str]]:
    return [
        {"color": c, "shape": s, "direction": d, "pitch": p}
        for c in COLORS for s in SHAPES for d in DIRECTIONS for p in PITCHES
    ]


def is_holdout(attrs: dict[str, str]) -> bool:
    """12 of 144 combinations, spread so that each attribute value appears in several of them."""
    idx = (list(COLORS).index(attrs["color"]) + SHAPES.index(attrs["shape"]) * 2
           + DIRECTIONS.index(attrs["direction"]) * 3 + list(PITCHES).index(attrs["pitch"]) * 5)
    return idx % 12 == 0


def make_caption(attrs: dict[str, str], rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    return template.format(
        color=attrs["color"], Color=attrs["color"].capitalize(), shape=attrs["shape"],
        direction=rng.choice(DIRECTION_PHRASES[attrs["direction"]]), pitch=rng.choice(PITCH_PHRASES[attrs["pitch"]]),
    )


def shape_mask(shape: str, size: int, cx: float, cy: float, extent: float, supersample: int = 2) -> np.ndarray:
    """Anti-aliased coverage (size, size) in [0, 1] of a shape `extent` pixels wide centred at (cx, cy)."""
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    x, y = np.meshgrid(coords, coords)
    half = extent / 2
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    elif shape == "square":
        inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    elif shape == "triangle":  # isosceles, pointing up, base and height = extent
        top, bottom = cy - half, cy + half
        frac = (y - top) / extent  # 0 at the apex, 1 at the base
        inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= frac * half)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


@dataclass(frozen=True)
class ClipSpec:
    index: int
    attributes: dict[str, str]
    caption: str
    split: str
    extent_frac: float     # shape width as a fraction of the frame
    offset_frac: float     # perpendicular offset of the path from the centre line
    with_image: bool


def render_frames(spec: ClipSpec, size: int, fps: int, duration_s: float) -> np.ndarray:
    """(T, size, size, 3) uint8: the shape moves centre-to-centre from 0.25 to 0.75 of the frame."""
    n = int(round(fps * duration_s))
    extent = spec.extent_frac * size
    color = np.array(COLORS[spec.attributes["color"]], dtype=np.float32)
    bg = np.array(BACKGROUND, dtype=np.float32)
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    start, end = 0.25 * size, 0.75 * size
    cross = size / 2 + spec.offset_frac * size
    for i in range(n):
        progress = i / max(n - 1, 1)
        along = start + (end - start) * progress
        direction = spec.attributes["direction"]
        if direction == "left-to-right":
            cx, cy = along, cross
        elif direction == "right-to-left":
            cx, cy = size - along, cross
        elif direction == "top-to-bottom":
            cx, cy = cross, along
        else:
            cx, cy = cross, size - along
        cover = shape_mask(spec.attributes["shape"], size, cx, cy, extent)[..., None]
        frames[i] = np.clip(bg * (1 - cover) + color * cover, 0, 255).astype(np.uint8)
    return frames


def render_audio(spec: ClipSpec, sample_rate: int, duration_s: float) -> np.ndarray:
    """(N, 2) float32 stereo tone with 20 ms fades."""
    n = int(round(sample_rate * duration_s))
    t = np.arange(n) / sample_rate
    tone = 0.5 * np.sin(2 * np.pi * PITCHES[spec.attributes["pitch"]] * t)
    fade = min(int(0.02 * sample_rate), n // 2)
    envelope = np.ones(n)
    envelope[:fade] = np.linspace(0, 1, fade)
    envelope[n - fade:] = np.linspace(1, 0, fade)
    mono = (tone * envelope).astype(np.float32)
    return np.stack([mono, mono], axis=1)


def plan(num_clips: int, seed: int, i2v_fraction: float) -> list[ClipSpec]:
    """Deterministic clip specs: attributes cycle through every combination, in a seeded order."""
    rng = random.Random(seed)
    combos = all_combinations()
    specs = []
    order: list[dict[str, str]] = []
    for i in range(num_clips):
        if not order:
            order = combos[:]
            rng.shuffle(order)
        attrs = order.pop()
        specs.append(ClipSpec(
            index=i, attributes=attrs, caption=make_caption(attrs, rng),
            split="holdout" if is_holdout(attrs) else "train",
            extent_frac=rng.uniform(0.40, 0.50), offset_frac=rng.uniform(-0.08, 0.08),
            with_image=rng.random() < i2v_fraction,
        ))
    return specs


def write_clip(spec: ClipSpec, out_dir: str, size: int, fps: int, duration_s: float, sample_rate: int) -> dict[str, Any]:
    """Render and write one clip (and its first-frame JPEG for i2v records); returns its annotation."""
    from moviepy import AudioArrayClip, VideoClip
    from PIL import Image

    out = Path(out_dir)
    frames = render_frames(spec, size, fps, duration_s)
    name = f"clips/clip_{spec.index:05d}.mp4"
    target = out / name
    target.parent.mkdir(parents=True, exist_ok=True)
    video = VideoClip(frame_function=lambda t: frames[min(int(t * fps + 1e-6), len(frames) - 1)], duration=duration_s)
    video = video.with_fps(fps).with_audio(AudioArrayClip(render_audio(spec, sample_rate, duration_s), fps=sample_rate))
    with tempfile.TemporaryDirectory() as tmp:
        partial = Path(tmp) / "clip.mp4"
        video.write_videofile(
            str(partial), fps=fps, codec="libx264", audio_codec="aac", audio_fps=sample_rate, preset="medium",
            threads=1, logger=None, temp_audiofile_path=tmp, pixel_format="yuv420p",
            ffmpeg_params=["-bf", "0"],
        )
        os.replace(partial, target)  # atomic: a killed run never leaves a half-written clip
    record: dict[str, Any] = {"video_path": name, "summary": spec.caption, "attributes": spec.attributes, "split": spec.split}
    if spec.with_image:
        image_name = f"images/clip_{spec.index:05d}.jpg"
        (out / image_name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frames[0]).save(out / image_name, quality=95)
        record["image_path"] = image_name
    return record


def synth(out_dir: str | Path, data: DataParams, workers: int = 2, progress: bool = True) -> Path:
    """Write `data.synth_num_clips` clips and `annotations.json` under out_dir; returns the annotations path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = plan(data.synth_num_clips, data.synth_seed, data.synth_i2v_fraction)
    args = [(s, str(out), data.synth_size, data.synth_fps, data.synth_duration_s, data.synth_sample_rate) for s in specs]
    if workers > 1:
        with process_pool(workers) as pool:
            futures = [pool.submit(write_clip, *a) for a in args]
            records = [f.result() for f in tqdm(futures, desc="synth", unit="clip", disable=not progress)]
    else:
        records = [write_clip(*a) for a in tqdm(args, desc="synth", unit="clip", disable=not progress)]
    annotations = out / "annotations.json"
    tmp = annotations.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, annotations)
    return annotations
