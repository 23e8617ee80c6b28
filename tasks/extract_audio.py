"""Audio extraction (moviepy): a 16 kHz mono WAV from any clip, every channel layout downmixed
(5.1 included). A clip with no audio stream gets a silent track of its duration."""
from __future__ import annotations

from pathlib import Path

import numpy as np



def extract_audio(video_path: str | Path, wav_path: str | Path, sample_rate: int = 16000, has_audio: bool = True,
                  duration: float = 0.0) -> Path:
    """Write `wav_path` (atomically) and return it."""
    import soundfile as sf

    from .media import atomic_path, resample

    if has_audio:
        from moviepy import AudioFileClip

        # Read at the native rate: moviepy 2.2's reader returns near-silence when asked to resample.
        clip = AudioFileClip(str(video_path))
        try:
            native = int(clip.fps)
            samples = np.asarray(clip.to_soundarray(), dtype=np.float32)
        finally:
            clip.close()
        mono = samples.mean(axis=1) if samples.ndim == 2 else samples
        mono = resample(mono, native, sample_rate)
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
