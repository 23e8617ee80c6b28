"""Near-duplicate clips, a curation step of `prepare`: re-encoded, resized, re-timed or trimmed
copies of one clip.

Each clip has two prints, compared at the time offset where they agree best:
- video: the mean luma of 8 x 8 cells of the frame on screen every 0.1 s (taken by the probe's
  decode, first 60 s), so a resize, a new codec or frame rate barely moves it, and a trim is an
  offset. Distance: mean absolute difference (0-255) over the overlap, which must cover half of the
  shorter clip.
- audio: log energy (dB) in 24 bands from 60 Hz to 4 kHz every 25 ms of the 16 kHz WAV, compared
  near the video's offset, each band weighted by the louder clip's power there. Only when both
  clips have sound: a copy with its sound stripped is still a copy.
Two clips are near-duplicates when both distances are under `curate.near_duplicate_video` and
`curate.near_duplicate_audio_db`. A copy is named in the report with the clip kept: the one with
sound, then the longest, the largest frame, the first listed. Different clips of one scene differ
in where things are when, and stay.

Measurements behind the thresholds: bench/RESULTS.md.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .media import PRINT_GRID, PRINT_MAX_S

PRINT_STEP_S = 0.1        # the video print's grid (decode_check's prints_every_s)
MIN_OVERLAP = 0.5         # share of the shorter clip two prints must overlap to be compared
AUDIO_HOP_S = 0.025
AUDIO_BANDS = 24
AUDIO_FLOOR_DB = -60.0    # quieter than this is silence, whatever the codec left there
SCREEN_EVERY = 5          # screening compares every 5th print step of a clip against all steps


def encode_print(prints: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(prints, np.uint8).tobytes()).decode("ascii")


def decode_print(text: str) -> np.ndarray:
    """(K, PRINT_GRID**2) float32 luma 0-255 per 0.1 s step."""
    raw = np.frombuffer(base64.b64decode(text), np.uint8)
    return raw.reshape(-1, PRINT_GRID * PRINT_GRID).astype(np.float32)


def audio_print(wav: str | Path) -> np.ndarray:
    """(M, AUDIO_BANDS) float32: band log energies (dB, floored) every AUDIO_HOP_S of a WAV."""
    from .media import read_wav, resample

    audio, rate = read_wav(wav)
    audio = resample(audio[: int((PRINT_MAX_S + 1) * rate)], rate, 16000)   # the span the video print covers
    win, hop = 1024, int(AUDIO_HOP_S * 16000)
    audio = np.pad(audio, (0, max(0, win - len(audio))))
    frames = np.lib.stride_tricks.sliding_window_view(audio, win)[::hop] * np.hanning(win).astype(np.float32)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(win, 1 / 16000)
    band = np.digitize(freqs, np.geomspace(60, 4000, AUDIO_BANDS + 1)) - 1
    energy = np.stack([power[:, band == b].sum(1) for b in range(AUDIO_BANDS)], 1)
    return np.maximum(10 * np.log10(energy + 1e-12), AUDIO_FLOOR_DB).astype(np.float32)


def video_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean absolute luma difference, where b starts in a in seconds: b[t] ~ a[t + offset]) at the
    best offset where the prints overlap over at least MIN_OVERLAP of the shorter one."""
    swap = len(a) > len(b)
    short, long_ = (b, a) if swap else (a, b)
    need = max(1, int(np.ceil(MIN_OVERLAP * len(short))))
    best = (float("inf"), 0)
    for k in range(need - len(short), len(long_) - need + 1):   # short[i] against long_[i + k]
        lo, hi = max(0, -k), min(len(short), len(long_) - k)
        best = min(best, (float(np.abs(short[lo:hi] - long_[lo + k:hi + k]).mean()), k))
    distance, k = best
    return distance, (k if swap else -k) * PRINT_STEP_S


def audio_distance(a: np.ndarray, b: np.ndarray, offset_s: float, search_s: float = 0.15) -> float:
    """Absolute band-energy difference (dB) of b against a, each band weighted by the power of the
    louder clip there (a tone fills one band of 24, and a codec's changes to the quiet bands do not
    count), averaged over their overlap, at offsets within `search_s` of `offset_s` (b[t] ~
    a[t + offset_s], as video_distance gives it). Both silent: 0."""
    best = float("inf")
    centre = int(round(offset_s / AUDIO_HOP_S))
    reach = int(round(search_s / AUDIO_HOP_S))
    for k in range(centre - reach, centre + reach + 1):   # a[i + k] against b[i]
        lo, hi = max(0, -k), min(len(b), len(a) - k)
        if hi - lo >= max(1, MIN_OVERLAP * min(len(a), len(b))):
            x, y = a[lo + k:hi + k], b[lo:hi]
            loud = np.maximum(x, y)
            weight = np.where(loud > AUDIO_FLOOR_DB, 10 ** ((loud - loud.max(axis=1, keepdims=True)) / 10), 0.0)
            total = weight.sum(axis=1)
            sounding = total > 0
            if not sounding.any():
                return 0.0
            per_frame = (np.abs(x - y) * weight).sum(axis=1)[sounding] / total[sounding]
            best = min(best, float(per_frame.mean()))
    return best


@dataclass(frozen=True)
class Clip:
    source: str
    video_print: np.ndarray          # (K, 64) from decode_print
    duration: float
    pixels: int
    audio: Callable[[], np.ndarray] | None = None   # its audio print, computed on demand; None: no sound


@dataclass(frozen=True)
class NearDuplicate:
    source: str                      # the clip judged a copy
    of: str                          # the clip kept
    video_distance: float
    audio_distance_db: float | None  # None when either clip has no sound
    offset_s: float                  # where `source` starts in `of`

    def reason(self) -> str:
        sound = "" if self.audio_distance_db is None else f", sound {self.audio_distance_db:.2f} dB"
        return (f"near-duplicate of {self.of} (luma distance {self.video_distance:.2f}{sound}, "
                f"at {self.offset_s:+.1f} s)")


def candidate_pairs(prints: list[np.ndarray], threshold: float) -> set[tuple[int, int]]:
    """Pairs of clips with some print step within reach of one of the other's (an RMS screen,
    loose enough for any pair whose mean distance is under `threshold`)."""
    if len(prints) < 2:
        return set()
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(prints)])
    rows = np.concatenate(prints)
    step = np.concatenate([np.arange(len(p)) for p in prints])   # each row's place in its clip
    queries = np.flatnonzero(step % SCREEN_EVERY == 0)
    norms = (rows ** 2).sum(1)
    reach = (4 * threshold) ** 2 * rows.shape[1]   # squared L2 for an RMS difference of 4 x the mean threshold
    pairs: set[tuple[int, int]] = set()
    for start in range(0, len(queries), 512):
        q = queries[start:start + 512]
        d2 = norms[q, None] + norms[None, :] - 2 * rows[q] @ rows.T
        qi, ri = np.nonzero(d2 < reach)
        pairs.update((min(a, b), max(a, b)) for a, b in zip(owner[q][qi], owner[ri]) if a != b)
    return pairs


def near_duplicates(clips: list[Clip], video_threshold: float, audio_threshold_db: float) -> list[NearDuplicate]:
    """Every clip that is a near-duplicate of a kept one. Clips are kept in order of preference (with
    sound, longer, larger, listed first); a clip goes only as a copy of a kept clip it matches
    itself, so a silent copy cannot chain two clips with different sound together."""
    audio_cache: dict[int, np.ndarray] = {}

    def sound(i: int) -> np.ndarray:
        if i not in audio_cache:
            audio_cache[i] = clips[i].audio()
        return audio_cache[i]

    def match(keep: int, i: int) -> NearDuplicate | None:
        video, offset = video_distance(clips[keep].video_print, clips[i].video_print)
        if video >= video_threshold:
            return None
        audio = None
        if clips[keep].audio is not None and clips[i].audio is not None:
            audio = audio_distance(sound(keep), sound(i), offset)
            if audio >= audio_threshold_db:
                return None
        return NearDuplicate(clips[i].source, clips[keep].source, round(video, 3),
                             None if audio is None else round(audio, 3), round(offset, 3))

    neighbours: dict[int, set[int]] = {}
    for i, j in candidate_pairs([c.video_print for c in clips], video_threshold):
        neighbours.setdefault(i, set()).add(j)
        neighbours.setdefault(j, set()).add(i)
    preference = sorted(neighbours, key=lambda i: (clips[i].audio is None, -round(clips[i].duration, 1),
                                                   -clips[i].pixels, i))
    found: dict[int, NearDuplicate] = {}
    for keep in preference:
        if keep in found:
            continue
        for i in sorted(neighbours[keep] - found.keys()):   # an earlier keeper it matched would have taken it
            if (dup := match(keep, i)) is not None:
                found[i] = dup
    return sorted(found.values(), key=lambda d: d.source)
