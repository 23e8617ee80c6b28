"""Audio extraction (moviepy): a 16 kHz mono WAV from any clip, every channel layout downmixed
(5.1 included). A clip with no audio stream gets a silent track of its duration."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .runtime import LazyPrefectTask


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


extract_audio_task = LazyPrefectTask(extract_audio, name="extract-audio", retries=2, retry_delay_seconds=[1, 4])
