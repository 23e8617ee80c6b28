"""Motion from a trajectory: a direction (with a minimum travel) or a bounce (impacts with times)."""
from __future__ import annotations

import numpy as np

MIN_TRAVEL = 0.20          # a direction needs this much travel, as a fraction of the frame
MIN_FALL = 0.08            # an impact is a trajectory minimum after a fall of at least this much
MIN_REBOUND = 0.04         # ... followed by a rebound of at least this much
MAX_BOUNCE_DRIFT = 0.10    # a bouncing object stays in its column
MAX_BACKSTEP = 0.01        # a step back along the direction larger than this (frame fraction) ...
MAX_BACKSTEPS = 0.2        # ... in more than this share of the steps is jitter, not a glide


def impacts(ts: np.ndarray, ys: np.ndarray) -> list[float]:
    """Times of trajectory minima (largest y, image coordinates: down is +) between a fall and a rebound,
    refined below the frame period by intersecting the lines before and after the lowest frame."""
    found = []
    for i in range(1, len(ys) - 1):
        if not (ys[i] >= ys[i - 1] and ys[i] > ys[i + 1]):
            continue
        fall = ys[i] - ys[_last_turn(ys, i, -1)]
        rise = ys[i] - ys[_last_turn(ys, i, +1)]
        if fall >= MIN_FALL and rise >= MIN_REBOUND:
            found.append(_refine(ts, ys, i))
    return found


def _last_turn(ys: np.ndarray, i: int, step: int) -> int:
    """Walk from i in `step` direction while the object does not come lower; the index where it stops."""
    j = i
    while 0 <= j + step < len(ys) and ys[j + step] <= ys[j]:
        j += step
    return j


def _refine(ts: np.ndarray, ys: np.ndarray, i: int) -> float:
    """Impact time: where the falling line (i-1 -> i) meets the rising line (i+1 -> i+2), kept within a frame of i."""
    if i < 1 or i + 2 >= len(ys):
        return float(ts[i])
    down = (ys[i] - ys[i - 1]) / (ts[i] - ts[i - 1])
    up = (ys[i + 2] - ys[i + 1]) / (ts[i + 2] - ts[i + 1])
    if down <= 0 or up >= 0:
        return float(ts[i])
    # y = ys[i] + down (t - ts[i])  and  y = ys[i+1] + up (t - ts[i+1])
    t = (ys[i + 1] - ys[i] + down * ts[i] - up * ts[i + 1]) / (down - up)
    period = ts[i + 1] - ts[i]
    return float(np.clip(t, ts[i] - period, ts[i] + period))


def classify(ts: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[str, list[float], float]:
    """(motion, impact times, travel): "bounce", a direction, or "static" (too little travel)."""
    if len(ts) < 4:
        return "none", [], 0.0
    hits = impacts(ts, ys)
    drift = float(np.ptp(xs))
    if hits and drift <= MAX_BOUNCE_DRIFT:
        return "bounce", hits, float(np.ptp(ys))
    k = min(3, len(ts) // 3)
    dx = float(np.median(xs[-k:]) - np.median(xs[:k]))
    dy = float(np.median(ys[-k:]) - np.median(ys[:k]))
    major, minor = (dx, dy) if abs(dx) >= abs(dy) else (dy, dx)
    if abs(major) < MIN_TRAVEL or abs(minor) > 0.5 * abs(major) or hits:
        return "static" if abs(major) < MIN_TRAVEL and not hits else "none", hits, abs(major)
    steps = np.diff(xs if abs(dx) >= abs(dy) else ys) * np.sign(major)
    if np.mean(steps < -MAX_BACKSTEP) > MAX_BACKSTEPS:     # an object that jumps back and forth is not gliding
        return "none", hits, abs(major)
    if abs(dx) >= abs(dy):
        return ("left-to-right" if dx > 0 else "right-to-left"), [], abs(major)
    return ("top-to-bottom" if dy > 0 else "bottom-to-top"), [], abs(major)
