"""Audio extraction: a 16 kHz mono WAV from any clip, every channel layout downmixed (5.1 included).
A clip with no audio stream gets a silent track of its duration.

Decoded in-process with PyAV, converted exactly as moviepy's reader has ffmpeg do it (16-bit
stereo at 44.1 kHz: ffmpeg's standard downmix), then averaged to mono and resampled. The same
samples as the moviepy reader the article uses, without its two ffmpeg processes per clip."""
from __future__ import annotations

from pathlib import Path

import numpy as np



READ_RATE = 44100   # what moviepy's AudioFileClip reads at (its default fps)


def decode_stereo(path: str | Path) -> np.ndarray:
    """(N, 2) float32 in [-1, 1): the first audio stream as 16-bit stereo at READ_RATE."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        converter = av.AudioResampler(format="s16", layout="stereo", rate=READ_RATE)
        chunks = [out.to_ndarray() for frame in container.decode(stream) for out in converter.resample(frame)]
        chunks += [out.to_ndarray() for out in converter.resample(None)]
    packed = np.concatenate(chunks, axis=1) if chunks else np.zeros((1, 0), np.int16)
    return packed.reshape(-1, 2).astype(np.float32) / 32768


def extract_audio(video_path: str | Path, wav_path: str | Path, sample_rate: int = 16000, has_audio: bool = True,
                  duration: float = 0.0) -> Path:
    """Write `wav_path` (atomically) and return it."""
    import soundfile as sf

    from .media import atomic_path, resample

    if has_audio:
        mono = resample(decode_stereo(video_path).mean(axis=1), READ_RATE, sample_rate)
    else:
        mono = np.zeros(int(round(duration * sample_rate)), dtype=np.float32)
    with atomic_path(wav_path) as tmp:
        sf.write(str(tmp), np.clip(mono, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return Path(wav_path)


def extract_clip_audio(video: str, wav: str, sample_rate: int, has_audio: bool, duration: float) -> str | None:
    """Extract one clip's audio track to `wav`; returns None, or the reason it failed (never raises:
    one bad clip is reported, the run goes on)."""
    if Path(wav).exists():
        return None  # content-addressed: the same clip was extracted before
    try:
        extract_audio(video, wav, sample_rate, has_audio, duration)
        return None
    except Exception as exc:  # reported per clip, never fatal for the run
        return f"audio extraction failed ({type(exc).__name__}: {exc})"
