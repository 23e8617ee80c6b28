"""A clip's scene as detected, scored against the expected scene; a set of clips summarised with baselines."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .motion import classify
from .objects import MAX_EDGE_WIDTH, MAX_STRAY, SIZE_RANGE, frame_objects
from .sound import SoundAnalysis, analyse_sound

MIN_PRESENT = 0.9          # an object is in at least this share of the frames (a count needs half)
MIN_SHAPE_SHARE = 0.8      # ... and shows its shape in at least this share of them
MAX_BAD_FRAMES = 0.1       # frames with a split object or stray pixels allowed
ATTRIBUTES = ("color", "shape", "motion", "pitch")
DRAWN = ("right", "messy", "wrong_shape", "blob", "absent")   # how an expected object was drawn (`drawn_as`)


@dataclass
class Track:
    color: str
    present: float                 # share of frames with this color's object
    shape: str
    sharp: bool
    motion: str
    impacts: list[float]
    travel: float
    clean: bool                    # one blob, little stray, a plausible size, in nearly every frame


@dataclass
class ClipAnalysis:
    tracks: dict[str, Track]
    count: int
    sound: SoundAnalysis


def _track(color: str, seen: list[tuple[float, Any]], n_frames: int, bad: int) -> Track:
    ts = np.array([t for t, _ in seen])
    xs, ys = np.array([o.x for _, o in seen]), np.array([o.y for _, o in seen])
    shapes = Counter(o.shape for _, o in seen)
    shape, votes = shapes.most_common(1)[0]
    motion, hits, travel = classify(ts, xs, ys)
    size = float(np.median([o.size for _, o in seen]))
    return Track(color, len(seen) / n_frames, shape if votes >= MIN_SHAPE_SHARE * len(seen) else "none",
                 float(np.median([o.edge_width for _, o in seen])) <= MAX_EDGE_WIDTH, motion, hits, travel,
                 bad <= MAX_BAD_FRAMES * n_frames and SIZE_RANGE[0] <= size <= SIZE_RANGE[1])


def analyse_clip(frames: np.ndarray, audio: np.ndarray, sample_rate: int, times: np.ndarray) -> ClipAnalysis:
    """frames (T, H, W, 3) uint8 or float in [0, 1]; audio mono; times (T,) the instant each frame shows."""
    seen: dict[str, list[tuple[float, Any]]] = {}
    bad: Counter = Counter()
    for t, frame in zip(times, frames):
        objects, stray, blobs = frame_objects(frame)
        area = sum(o.area for o in objects)
        for o in objects:
            seen.setdefault(o.color, []).append((float(t), o))
            if blobs[o.color] > 1 or stray > max(4, MAX_STRAY * area):
                bad[o.color] += 1
    n = len(frames)
    tracks = {c: _track(c, s, n, bad[c]) for c, s in seen.items() if len(s) >= MIN_PRESENT * n}
    count = sum(len(s) >= 0.5 * n for s in seen.values())
    return ClipAnalysis(tracks, count, analyse_sound(audio, sample_rate))


def drawn_as(track: Track | None, shape: str) -> str:
    """How an object asked to be `shape` was drawn: absent (its color in under MIN_PRESENT of the frames),
    blob (no shape fits), wrong_shape, messy (the right shape, not clean or not sharp) or right."""
    if track is None:
        return "absent"
    if track.shape != shape:
        return "blob" if track.shape == "none" else "wrong_shape"
    return "right" if track.clean and track.sharp else "messy"


def drawn_counts(drawn: Sequence[str]) -> dict[str, int]:
    return {kind: sum(d == kind for d in drawn) for kind in DRAWN}


@dataclass
class ClipScore:
    objects: list[dict[str, bool]] = field(default_factory=list)   # per expected object: attribute -> correct
    drawn: list[str] = field(default_factory=list)                 # per expected object: `drawn_as`
    count_ok: bool = False
    sound_ok: bool = False
    impacts: int = 0               # visual impacts of objects that should bounce
    impacts_matched: int = 0       # ... with an onset of the object's pitch within one frame
    onsets: int = 0                # audio onsets in those objects' pitch bands
    onsets_matched: int = 0
    offsets_ms: list[float] = field(default_factory=list)   # each visual impact to the nearest right-pitch onset
    all_correct: bool = False


def _match(a: Sequence[float], b: Sequence[float], tol: float) -> int:
    return sum(any(abs(x - y) <= tol for y in b) for x in a)


def score_clip(analysis: ClipAnalysis, expected: dict[str, Any], frame_period: float,
               attributes: Sequence[str] = ATTRIBUTES) -> ClipScore:
    """Score one clip: `attributes` are the per-object attributes that count (i2v leaves out what the image shows)."""
    score, sound = ClipScore(), analysis.sound
    tol = frame_period + 1e-6
    for obj in expected["objects"]:
        track = analysis.tracks.get(obj["color"])
        found = track is not None and track.clean
        bounce = obj["motion"] == "bounce"
        pitch_ok = (obj["pitch"] not in sound.steady and bool(sound.onsets.get(obj["pitch"]))) if bounce \
            else obj["pitch"] in sound.steady
        drawn = drawn_as(track, obj["shape"])
        result = {"color": found, "shape": drawn == "right",
                  "motion": found and track.motion == obj["motion"], "pitch": pitch_ok}
        if bounce:
            visual = track.impacts if found and track.motion == "bounce" else []
            heard = sound.onsets.get(obj["pitch"], [])
            score.impacts += len(visual)
            score.onsets += len(heard)
            matched_v, matched_a = _match(visual, heard, tol), _match(heard, visual, tol)
            score.impacts_matched += matched_v
            score.onsets_matched += matched_a
            score.offsets_ms += [1000 * min(abs(v - a) for a in heard) for v in visual if heard]
            result["events"] = bool(visual) and matched_v == len(visual) and matched_a == len(heard)
        score.objects.append(result)
        score.drawn.append(drawn)
    gliders = {o["pitch"] for o in expected["objects"] if o["motion"] != "bounce"}
    bouncers = {o["pitch"] for o in expected["objects"] if o["motion"] == "bounce"}
    score.count_ok = analysis.count == len(expected["objects"])
    score.sound_ok = set(sound.steady) <= gliders and set(sound.onsets) <= bouncers
    score.all_correct = score.count_ok and score.sound_ok and all(
        all(r[a] for a in attributes) and r.get("events", True) for r in score.objects)
    return score


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def object_rates(objects: Sequence[dict[str, bool]], attributes: Sequence[str] = ATTRIBUTES) -> dict[str, Any]:
    """How many objects, each attribute's share correct, and the share with every attribute correct."""
    out: dict[str, Any] = {"objects": len(objects)}
    for a in attributes:
        out[a] = float(np.mean([r[a] for r in objects])) if objects else None
    out["object_all"] = float(np.mean([all(r[a] for a in attributes) for r in objects])) if objects else None
    return out


def summarise(scores: Sequence[ClipScore], attributes: Sequence[str] = ATTRIBUTES) -> dict[str, Any]:
    out: dict[str, Any] = {"clips": len(scores), **object_rates([r for s in scores for r in s.objects], attributes)}
    out["count"] = float(np.mean([s.count_ok for s in scores])) if scores else None
    out["all_correct"] = float(np.mean([s.all_correct for s in scores])) if scores else None
    out["drawn"] = drawn_counts([d for s in scores for d in s.drawn])
    offsets = [o for s in scores for o in s.offsets_ms]
    impacts, onsets = sum(s.impacts for s in scores), sum(s.onsets for s in scores)
    out["sync"] = {"visual_impacts": impacts, "audio_onsets": onsets,
                   "recall": _rate(sum(s.impacts_matched for s in scores), impacts),
                   "precision": _rate(sum(s.onsets_matched for s in scores), onsets),
                   "offset_ms_mean_abs": float(np.mean(offsets)) if offsets else None,
                   "offset_ms_median_abs": float(np.median(offsets)) if offsets else None,
                   "offset_ms_p90_abs": float(np.percentile(offsets, 90)) if offsets else None}
    return out


def majority_baseline(expected: Sequence[dict[str, Any]], attributes: Sequence[str] = ATTRIBUTES) -> dict[str, Any]:
    """What guessing the most common value of each attribute (and the most common count) scores."""
    objects = [o for e in expected for o in e["objects"]]
    guess = {a: Counter(o[a] for o in objects).most_common(1)[0][0] for a in attributes} if objects else {}
    counts = Counter(len(e["objects"]) for e in expected)
    count = counts.most_common(1)[0][0] if counts else 0
    out: dict[str, Any] = {a: float(np.mean([o[a] == guess[a] for o in objects])) for a in attributes}
    out["object_all"] = float(np.mean([all(o[a] == guess[a] for a in attributes) for o in objects])) if objects else None
    out["count"] = counts[count] / max(len(expected), 1)
    out["all_correct"] = float(np.mean([len(e["objects"]) == count and all(o[a] == guess[a] for o in e["objects"]
                                                                            for a in attributes) for e in expected]))
    out["guess"] = {**guess, "count": count}
    return out


def by_novelty(scores: Sequence[ClipScore], expected: Sequence[dict[str, Any]],
               attributes: Sequence[str] = ATTRIBUTES) -> dict[str, Any]:
    """Per-object scores grouped by each expected object's "novelty" tag (which of its attribute pairs
    training never showed, e.g. "color_shape", or "seen"): tells binding failures from drawing ones."""
    groups: dict[str, list[tuple[dict[str, bool], str]]] = {}
    for s, e in zip(scores, expected):
        for r, d, o in zip(s.objects, s.drawn, e["objects"]):
            groups.setdefault(str(o.get("novelty", "untagged")), []).append((r, d))
    return {tag: {**object_rates([r for r, _ in rs], attributes), "drawn": drawn_counts([d for _, d in rs])}
            for tag, rs in sorted(groups.items())}


def score_set(analyses: Sequence[ClipAnalysis], expected: Sequence[dict[str, Any]], frame_period: float,
              attributes: Sequence[str] = ATTRIBUTES, seed: int = 0) -> dict[str, Any]:
    """The set's scores, with the majority guess and a shuffled-prompt score (each clip against another prompt);
    `by_novelty` too where the expected objects carry a "novelty" tag."""
    scores = [score_clip(a, e, frame_period, attributes) for a, e in zip(analyses, expected)]
    out = summarise(scores, attributes)
    out["by_count"] = {}
    for n in sorted({len(e["objects"]) for e in expected}):   # one- and two-object scenes fail differently
        part = summarise([s for s, e in zip(scores, expected) if len(e["objects"]) == n], attributes)
        out["by_count"][str(n)] = {k: part[k] for k in ("clips", *attributes, "object_all", "all_correct")}
    if any("novelty" in o for e in expected for o in e["objects"]):
        out["by_novelty"] = by_novelty(scores, expected, attributes)
    if len(expected) > 1:
        order = list(range(len(expected)))
        random.Random(seed).shuffle(order)
        other = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}   # a derangement
        shuffled = summarise([score_clip(a, expected[other[i]], frame_period, attributes)
                              for i, a in enumerate(analyses)], attributes)
        out["baselines"] = {"majority": majority_baseline(expected, attributes),
                            "shuffled": {k: shuffled[k] for k in (*attributes, "object_all", "count", "all_correct")}}
    return out


def score_tensors(videos, audios, scenes: Sequence[dict[str, Any]], window_s: float, sample_rate: int,
                  attributes: Sequence[str] = ATTRIBUTES, seed: int = 0) -> dict[str, Any]:
    """score_set over clips of `window_s` seconds: videos (3, F, H, W) in [0, 1], audios mono arrays."""
    frames = videos[0].shape[1]
    times = np.arange(frames) * (window_s / frames)
    analyses = [analyse_clip(v.permute(1, 2, 3, 0).numpy(), a, sample_rate, times) for v, a in zip(videos, audios)]
    return score_set(analyses, scenes, window_s / frames, attributes, seed)
