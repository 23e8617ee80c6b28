"""Sound per pitch band: steady tones and onsets (energy rises); silence and noise give neither."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..worlds.common import PITCHES

N_FFT, HOP = 512, 64            # 32 ms windows every 4 ms at 16 kHz
BAND = 2 ** 0.25                # a band spans a quarter octave either side of its pitch
MIN_SHARE = 0.25                # a band is active when it holds this share of the 100-4000 Hz energy ...
MIN_LEVEL = 0.02                # ... and at least this share of the clip's loudest band energy
STEADY_SHARE = 0.8              # a steady tone is active in this share of the clip
MIN_GAP_S = 0.12                # onsets closer than this are one event
EDGE_S = 0.05                   # onsets this close to the start are the clip starting, not an event


@dataclass
class SoundAnalysis:
    steady: list[str] = field(default_factory=list)                  # pitches with a steady tone
    onsets: dict[str, list[float]] = field(default_factory=dict)     # pitch -> onset times (s), non-steady bands


def band_energies(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(frame times, {pitch: band energy per frame}, 100-4000 Hz energy per frame)."""
    a = np.nan_to_num(np.asarray(audio, np.float64).reshape(-1))
    pad = np.pad(a, (N_FFT // 2, N_FFT // 2))
    n = 1 + (len(pad) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(pad, (n, N_FFT), (pad.strides[0] * HOP, pad.strides[0]))
    power = np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=1)) ** 2
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
    bands = {p: power[:, (freqs >= f / BAND) & (freqs <= f * BAND)].sum(1) for p, f in PITCHES.items()}
    total = power[:, (freqs >= 100) & (freqs <= 4000)].sum(1)
    return np.arange(n) * HOP / sample_rate, bands, total


def onset_times(times: np.ndarray, energy: np.ndarray, active: np.ndarray) -> list[float]:
    """The start of every active run, placed where the energy first reaches half the run's peak (the
    window centre then sits on the onset for a sharp attack), minus runs at the very start."""
    out: list[float] = []
    starts = np.nonzero(active & ~np.r_[False, active[:-1]])[0]
    for s in starts:
        e = s
        while e < len(active) and active[e]:
            e += 1
        peak = energy[s:e].max()
        first = s + int(np.argmax(energy[s:e] >= 0.5 * peak))
        lo = max(first - 1, 0)
        frac = (0.5 * peak - energy[lo]) / max(energy[first] - energy[lo], 1e-12) if first > lo else 0.0
        t = float(times[lo] + np.clip(frac, 0, 1) * (times[first] - times[lo]))
        if t >= EDGE_S and (not out or t - out[-1] >= MIN_GAP_S):
            out.append(t)
    return out


def analyse_sound(audio: np.ndarray, sample_rate: int) -> SoundAnalysis:
    times, bands, total = band_energies(audio, sample_rate)
    loudest = max((float(e.max()) for e in bands.values()), default=0.0)
    result = SoundAnalysis()
    if loudest <= 1e-9:
        return result
    inner = (times >= EDGE_S) & (times <= times[-1] - EDGE_S)
    for pitch, energy in bands.items():
        active = (energy >= MIN_SHARE * np.maximum(total, 1e-12)) & (energy >= MIN_LEVEL * loudest)
        if active[inner].mean() >= STEADY_SHARE:
            result.steady.append(pitch)
        else:
            found = onset_times(times, energy, active)
            if found:
                result.onsets[pitch] = found
    return result
