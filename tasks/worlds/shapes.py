"""World v1 (`shapes`, the regression world): one coloured shape (40-50% of the frame) glides in one
of four directions while a steady tone plays. 4 colors x 3 shapes x 4 directions x 3 pitches = 144
combinations; 12 are held out for `test` and 12 others for `val`, every single value still seen in
training."""
from __future__ import annotations

import random

import numpy as np

from . import common
from .common import COLORS, DIRECTIONS, PITCHES, SHAPES, ClipSpec, ObjectSpec, line_position, steady_tone, stereo

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
    return [{"color": c, "shape": s, "direction": d, "pitch": p}
            for c in COLORS for s in SHAPES for d in DIRECTIONS for p in PITCHES]


def split_of(attrs: dict[str, str]) -> str:
    """12 combinations for test, 12 others for val, spread so each value appears in several of them."""
    idx = (list(COLORS).index(attrs["color"]) + SHAPES.index(attrs["shape"]) * 2
           + DIRECTIONS.index(attrs["direction"]) * 3 + list(PITCHES).index(attrs["pitch"]) * 5)
    return {0: "test", 6: "val"}.get(idx % 12, "train")


def make_caption(attrs: dict[str, str], rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(
        color=attrs["color"], Color=attrs["color"].capitalize(), shape=attrs["shape"],
        direction=rng.choice(DIRECTION_PHRASES[attrs["direction"]]), pitch=rng.choice(PITCH_PHRASES[attrs["pitch"]]),
    )


def line_path(direction: str, offset: float) -> tuple:
    """Centre-to-centre from 0.25 to 0.75 of the frame, `offset` off the centre line."""
    a, b, cross = 0.25, 0.75, 0.5 + offset
    return {"left-to-right": ("line", a, cross, b, cross), "right-to-left": ("line", b, cross, a, cross),
            "top-to-bottom": ("line", cross, a, cross, b), "bottom-to-top": ("line", cross, b, cross, a)}[direction]


def plan(num_clips: int, seed: int, i2v_fraction: float) -> list[ClipSpec]:
    """Deterministic clip specs: attributes cycle through every combination, in a seeded order."""
    rng = random.Random(seed)
    combos = all_combinations()
    specs, order = [], []
    for i in range(num_clips):
        if not order:
            order = combos[:]
            rng.shuffle(order)
        attrs = order.pop()
        caption = make_caption(attrs, rng)
        extent, offset = rng.uniform(0.40, 0.50), rng.uniform(-0.08, 0.08)
        obj = ObjectSpec(attrs["color"], attrs["shape"], attrs["direction"], attrs["pitch"], extent,
                         line_path(attrs["direction"], offset))
        specs.append(ClipSpec(i, (obj,), caption, split_of(attrs), rng.random() < i2v_fraction, "shapes"))
    return specs


def position(obj: ObjectSpec, t: float, duration_s: float) -> tuple[float, float]:
    return line_position(obj.path, t, duration_s)


def render_frames(spec: ClipSpec, size: int, fps: int, duration_s: float) -> np.ndarray:
    """(T, size, size, 3) uint8; the last frame shows the end of the path."""
    return common.render_frames(spec, size, fps, duration_s, position)


def render_audio(spec: ClipSpec, sample_rate: int, duration_s: float) -> np.ndarray:
    """(N, 2) float32: the object's steady tone."""
    n = int(round(sample_rate * duration_s))
    return stereo(steady_tone(PITCHES[spec.objects[0].pitch], n, sample_rate, 0.5))
