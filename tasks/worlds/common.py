"""What every built-in world shares: the palette, the shapes, the pitches, drawing and sounds."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ObjectSpec:
    """One object: what it is, where it goes, what it sounds like (positions as fractions of the frame)."""

    color: str
    shape: str
    motion: str            # a direction or "bounce"
    pitch: str
    extent: float          # width as a fraction of the frame
    path: tuple            # motion parameters: ("line", x0, y0, x1, y1) or ("bounce", x, floor_y, g, impacts...)
    impacts_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class ClipSpec:
    index: int
    objects: tuple[ObjectSpec, ...]
    caption: str
    split: str
    with_image: bool
    world: str
    extra: dict[str, Any] = field(default_factory=dict)   # world-specific annotation fields

    def scene(self, times: np.ndarray, position_fn) -> dict[str, Any]:
        """Ground truth for the annotations: per object its attributes, impacts and trajectory."""
        objects = []
        for obj in self.objects:
            xy = np.array([position_fn(obj, t) for t in times])
            objects.append({"color": obj.color, "shape": obj.shape, "motion": obj.motion, "pitch": obj.pitch,
                            "sound": "impacts" if obj.motion == "bounce" else "steady",
                            "impacts_s": [round(t, 4) for t in obj.impacts_s], "extent": round(obj.extent, 4),
                            "trajectory": [[round(float(t), 4), round(float(x), 4), round(float(y), 4)]
                                           for t, (x, y) in zip(times, xy)]})
        return {"world": self.world, "objects": objects, **self.extra}


def scene_from_attributes(attributes: Any) -> dict[str, Any] | None:
    """A scene from an annotation's `attributes`: the scene itself, or v1's flat
    {color, shape, direction, pitch} (also accepted in prompt files) as a one-object scene."""
    if isinstance(attributes, str):
        attributes = json.loads(attributes) if attributes.strip() else None
    if not isinstance(attributes, dict) or not attributes:
        return None
    if "objects" in attributes:
        return attributes
    if {"color", "shape", "direction", "pitch"} <= set(attributes):
        obj = {"color": attributes["color"], "shape": attributes["shape"], "motion": attributes["direction"],
               "pitch": attributes["pitch"], "sound": "steady", "impacts_s": []}
        return {"world": "shapes", "objects": [obj]}
    return None


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


def draw(objects, positions, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the objects at their (x, y) frame fractions over the background."""
    frame = np.broadcast_to(np.asarray(BACKGROUND, np.float32), (size, size, 3)).copy()
    for obj, (x, y) in zip(objects, positions):
        cover = shape_mask(obj.shape, size, x * size, y * size, obj.extent * size)[..., None]
        frame = frame * (1 - cover) + np.asarray(COLORS[obj.color], np.float32) * cover
    return np.clip(frame, 0, 255).astype(np.uint8)


def line_position(path: tuple, t: float, duration_s: float) -> tuple[float, float]:
    """("line", x0, y0, x1, y1): from the start at t = 0 to the end at `duration_s`, at constant speed."""
    _, x0, y0, x1, y1 = path
    progress = min(max(t / duration_s, 0.0), 1.0)
    return x0 + (x1 - x0) * progress, y0 + (y1 - y0) * progress


def render_frames(spec: ClipSpec, size: int, fps: int, duration_s: float, position) -> np.ndarray:
    """(T, size, size, 3) uint8 at `fps`; `position(obj, t, last)` places each object, last = the final frame's time."""
    n = int(round(fps * duration_s))
    last = (n - 1) / fps
    return np.stack([draw(spec.objects, [position(o, i / fps, last) for o in spec.objects], size) for i in range(n)])


def steady_tone(freq: float, n: int, sample_rate: int, amplitude: float, fade_s: float = 0.02) -> np.ndarray:
    """A sine at `freq` for the whole clip, with short fades so it has no click at either end."""
    t = np.arange(n) / sample_rate
    envelope = np.ones(n)
    fade = min(int(fade_s * sample_rate), n // 2)
    envelope[:fade] = np.linspace(0, 1, fade)
    envelope[n - fade:] = np.linspace(1, 0, fade)
    return amplitude * np.sin(2 * np.pi * freq * t) * envelope


def impact_sound(freq: float, onset_s: float, n: int, sample_rate: int, amplitude: float,
                 decay_s: float = 0.05, attack_s: float = 0.002) -> np.ndarray:
    """A percussive ping at `freq` starting at `onset_s`: a 2 ms attack, then an exponential decay."""
    t = np.arange(n) / sample_rate - onset_s
    on = t >= 0
    envelope = np.where(on, np.exp(-np.clip(t, 0, None) / decay_s) * np.clip(t / attack_s, 0, 1), 0.0)
    return amplitude * np.sin(2 * np.pi * freq * np.clip(t, 0, None)) * envelope


def stereo(mono: np.ndarray) -> np.ndarray:
    mono = mono.astype(np.float32)
    return np.stack([mono, mono], axis=1)
