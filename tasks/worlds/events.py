"""World v2 (`events`): one or two objects; each glides in a straight line with its steady tone, or
falls and bounces on the floor 1-3 times, and every impact makes a short ping at that object's pitch.

Compositions held out (`SPLITS`): test keeps out some (color, shape) pairs, some (shape, motion)
pairs and one pairing of two colors; val keeps out others of the same kinds; every single value is
still seen in training. A clip that shows any test composition is a test clip, else any val
composition makes it val. Captions name every object, its motion and its sound, in varied order;
some templates are used only for val and test captions.

Two objects share an orientation (both horizontal, in stacked lanes; or both vertical, in side by
side columns) so they never overlap.
"""
from __future__ import annotations

import random

import numpy as np

from . import common
from .common import COLORS, PITCHES, SHAPES, ClipSpec, ObjectSpec, impact_sound, line_position, steady_tone, stereo

MOTIONS = ("left-to-right", "right-to-left", "top-to-bottom", "bottom-to-top", "bounce")
HORIZONTAL, VERTICAL = ("left-to-right", "right-to-left"), ("top-to-bottom", "bottom-to-top", "bounce")
SPLITS = {
    "test": {"color_shape": {("red", "triangle"), ("blue", "circle")},
             "shape_motion": {("square", "bounce"), ("triangle", "left-to-right")},
             "color_pair": {frozenset({"red", "blue"})}},
    "val": {"color_shape": {("green", "square"), ("yellow", "circle")},
            "shape_motion": {("circle", "top-to-bottom"), ("square", "right-to-left")},
            "color_pair": {frozenset({"green", "yellow"})}},
}
TWO_OBJECT_FRACTION = 0.5
FLOOR = 0.94            # the objects' lowest edge, as a fraction of the frame
IMPACT_WINDOW = (0.3, 1.75)   # impacts happen inside the cached 2 s window, with a rebound after
MIN_IMPACT_GAP_S = 0.35

MOTION_PHRASES = {
    "left-to-right": ["glides from left to right", "moves left to right", "slides rightward", "drifts to the right"],
    "right-to-left": ["glides from right to left", "moves right to left", "slides leftward", "drifts to the left"],
    "top-to-bottom": ["glides from top to bottom", "moves downward", "slides down", "sinks steadily"],
    "bottom-to-top": ["glides from bottom to top", "moves upward", "slides up", "rises steadily"],
    "bounce": ["bounces on the floor", "drops and bounces", "falls and bounces", "bounces"],
}
SOUND_WORDS = {"steady": ["tone", "hum", "note"], "impacts": ["ping", "thud", "click"]}
PITCH_WORDS = {"low": ["low", "deep"], "mid": ["mid", "medium"], "high": ["high", "high-pitched"]}
OBJECT_TEMPLATES = {
    "train": ["a {color} {shape} {motion} with a {pitch} {sound}",
              "a {color} {shape} {motion}, making a {pitch} {sound}",
              "a {shape} in {color} {motion} with a {pitch} {sound}",
              "with a {pitch} {sound}, a {color} {shape} {motion}"],
    "held_out": ["a {pitch} {sound} comes from a {color} {shape} that {motion}",
                 "there is a {color} {shape} that {motion} and makes a {pitch} {sound}"],
}
SCENE_TEMPLATES = {
    "train": {1: ["{0}", "On a dark background, {0}"], 2: ["{0}, while {1}", "{0} and {1}", "Two objects: {0}; {1}"]},
    "held_out": {1: ["We see that {0}"], 2: ["{1}. Meanwhile {0}", "In one clip {0}, and {1}"]},
}


def split_of(objects) -> str:
    """test if the scene shows any test composition, else val if any val one, else train."""
    pairs = {frozenset(o.color for o in objects)} if len(objects) == 2 else set()
    for split in ("test", "val"):
        held = SPLITS[split]
        if (any((o.color, o.shape) in held["color_shape"] for o in objects)
                or any((o.shape, o.motion) in held["shape_motion"] for o in objects)
                or pairs & held["color_pair"]):
            return split
    return "train"


def object_clause(obj: ObjectSpec, rng: random.Random, pool: str) -> str:
    sound = "impacts" if obj.motion == "bounce" else "steady"
    return rng.choice(OBJECT_TEMPLATES[pool]).format(
        color=obj.color, shape=obj.shape, motion=rng.choice(MOTION_PHRASES[obj.motion]),
        pitch=rng.choice(PITCH_WORDS[obj.pitch]), sound=rng.choice(SOUND_WORDS[sound]))


def make_caption(objects, split: str, rng: random.Random) -> str:
    """Every object named with its motion and sound; val/test draw half their templates from a held-out pool."""
    pool = "held_out" if split != "train" and rng.random() < 0.5 else "train"
    clauses = [object_clause(o, rng, pool) for o in objects]
    text = rng.choice(SCENE_TEMPLATES[pool][len(objects)]).format(*clauses)
    return text[0].upper() + text[1:]


def _impact_times(rng: random.Random) -> tuple[float, ...]:
    k = rng.choice((1, 2, 3))
    while True:
        times = sorted(rng.uniform(*IMPACT_WINDOW) for _ in range(k))
        if all(b - a >= MIN_IMPACT_GAP_S for a, b in zip(times, times[1:])):
            return tuple(round(t, 4) for t in times)


def bounce_path(x: float, extent: float, rng: random.Random, duration_s: float) -> tuple[tuple, tuple[float, ...]]:
    """("bounce", x, floor, impacts, humps): a fall from rest, a hump between impacts, a rebound after the last."""
    floor, top = FLOOR - extent / 2, 1 - FLOOR + extent / 2
    span = floor - top
    impacts = _impact_times(rng)
    after = duration_s - impacts[-1]
    humps = [rng.uniform(0.6, 1.0) * span]                                  # drop height
    humps += [rng.uniform(0.4, 0.8) * span for _ in impacts[1:]]           # arcs between impacts
    humps.append(rng.uniform(0.35, 0.6) * span)                            # the rebound after the last
    return ("bounce", x, floor, impacts, tuple(humps), impacts[-1] + after * rng.uniform(1.1, 1.4)), impacts


def line_path(motion: str, lane: float, a: float, b: float) -> tuple:
    return {"left-to-right": ("line", a, lane, b, lane), "right-to-left": ("line", b, lane, a, lane),
            "top-to-bottom": ("line", lane, a, lane, b), "bottom-to-top": ("line", lane, b, lane, a)}[motion]


def _draw_objects(rng: random.Random, duration_s: float) -> tuple[ObjectSpec, ...]:
    n = 2 if rng.random() < TWO_OBJECT_FRACTION else 1
    colors, shapes, pitches = rng.sample(list(COLORS), n), rng.sample(SHAPES, n), rng.sample(list(PITCHES), n)
    group = rng.choice((HORIZONTAL, VERTICAL))
    motions = [rng.choice(group if n == 2 else MOTIONS) for _ in range(n)]
    lanes = [0.5 + rng.uniform(-0.08, 0.08)] if n == 1 else rng.sample([0.28, 0.72], 2)
    objects = []
    for color, shape, pitch, motion, lane in zip(colors, shapes, pitches, motions, lanes):
        extent = rng.uniform(0.40, 0.50) if n == 1 else rng.uniform(0.26, 0.32)
        a, b = (0.25, 0.75) if n == 1 else (0.22, 0.78)
        path, impacts = (bounce_path(lane, extent, rng, duration_s) if motion == "bounce"
                         else (line_path(motion, lane, a, b), ()))
        objects.append(ObjectSpec(color, shape, motion, pitch, extent, path, impacts))
    return tuple(objects)


def plan(num_clips: int, seed: int, i2v_fraction: float, duration_s: float = 2.5,
         held_out_fraction: float = 0.1) -> list[ClipSpec]:
    """Deterministic specs: `held_out_fraction` of the clips each for val and test, drawn by rejection
    from scenes of that split; the rest train."""
    rng = random.Random(seed)
    n_held = int(round(num_clips * held_out_fraction))
    wanted = ["val"] * n_held + ["test"] * n_held + ["train"] * (num_clips - 2 * n_held)
    rng.shuffle(wanted)
    specs = []
    for i, split in enumerate(wanted):
        objects = _draw_objects(rng, duration_s)
        while split_of(objects) != split:
            objects = _draw_objects(rng, duration_s)
        specs.append(ClipSpec(i, objects, make_caption(objects, split, rng), split, rng.random() < i2v_fraction,
                              "events"))
    return specs


def _bounce_height(path: tuple, t: float) -> float:
    """Height above the floor: a fall from rest before the first impact, parabolic humps after."""
    _, _, _, impacts, humps, end = path
    if t <= impacts[0]:
        return humps[0] * (1 - (t / impacts[0]) ** 2)
    starts, stops = impacts, impacts[1:] + (end,)
    for a, b, h in zip(starts, stops, humps[1:]):
        if t <= b:
            return 4 * h * (t - a) * (b - t) / (b - a) ** 2
    return 0.0


def position(obj: ObjectSpec, t: float, duration_s: float) -> tuple[float, float]:
    if obj.path[0] == "bounce":
        return obj.path[1], obj.path[2] - _bounce_height(obj.path, t)
    return line_position(obj.path, t, duration_s)


def render_frames(spec: ClipSpec, size: int, fps: int, duration_s: float) -> np.ndarray:
    return common.render_frames(spec, size, fps, duration_s, position)


def render_audio(spec: ClipSpec, sample_rate: int, duration_s: float) -> np.ndarray:
    """(N, 2) float32: each glider's steady tone plus a ping at every impact of each bouncer."""
    n = int(round(sample_rate * duration_s))
    share = 1.0 / len(spec.objects)
    mono = np.zeros(n)
    for obj in spec.objects:
        freq = PITCHES[obj.pitch]
        if obj.motion == "bounce":
            for t in obj.impacts_s:
                mono += impact_sound(freq, t, n, sample_rate, 0.8 * share)
        else:
            mono += steady_tone(freq, n, sample_rate, 0.5 * share)
    return stereo(mono)
