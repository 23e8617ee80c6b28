"""Prompts in and samples out: the prompts-file formats, sampling settings, batching, and the files
written per generated clip (mp4 with sound, wav, frame-grid png).

A prompts file is plain text, one prompt a line (MovieGenBench's MovieGenVideoBench.txt), or JSONL
with a `prompt` field per line (its audio bench format); JSONL lines may add `image` (a path,
relative to the file and inside its folder unless `allow_outside`) and `attributes`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import matplotlib
import numpy as np
import soundfile as sf
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from model import SAMPLERS
from model.precision import PRECISIONS

from .media import atomic_path
from .runtime import UserError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


SAMPLE_FORMATS = ("mp4", "wav", "png")   # the files `write_sample` can write per clip
MAX_IMAGE_BYTES = 64 << 20        # an input image larger than this is refused before it is decoded
MAX_IMAGE_PIXELS = 8192 * 8192    # and one that decodes to more pixels (a decompression bomb)


@dataclass
class PromptSpec:
    prompt: str
    image: str | None = None
    attributes: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    line: int | None = None           # its line in the prompts file


def confined_image(prompts_file: Path, number: int, image: Any, allow_outside: bool) -> str:
    """A JSONL line's image path, resolved against the prompts file's folder and kept inside it."""
    if not isinstance(image, str) or not image.strip():
        raise UserError(f"{prompts_file}:{number}: 'image' must be a path string")
    folder = prompts_file.parent.resolve()
    resolved = (folder / image).resolve()
    if not allow_outside and not resolved.is_relative_to(folder):
        raise UserError(f"{prompts_file}:{number}: image {image!r} is outside the prompts file's folder {folder} "
                        "(pass --allow-outside to read it)")
    return str(resolved)


def read_prompts(path: str | Path, allow_outside: bool = False) -> list[PromptSpec]:
    """Plain text (one prompt a line, blank lines skipped) or JSONL (a `prompt` field per line).
    JSONL is recognised by the .jsonl/.json suffix or a first line that starts with '{'."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the prompts file ({exc.__class__.__name__}: {exc})") from exc
    lines = [(i + 1, line.strip()) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise UserError(f"{path}: no prompts (the file is empty)")
    specs: list[PromptSpec] = []
    if path.suffix.lower() in (".jsonl", ".json") or lines[0][1].startswith("{"):
        for number, line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: not a JSON object ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise UserError(f"{path}:{number}: a JSONL prompts line needs a string field 'prompt'")
            if not record["prompt"].strip():
                raise UserError(f"{path}:{number}: empty prompt")
            image = record.get("image")
            if image is not None:
                image = confined_image(path, number, image, allow_outside)
            extra = {k: v for k, v in record.items() if k not in ("prompt", "image", "attributes")}
            specs.append(PromptSpec(record["prompt"].strip(), image, record.get("attributes"), extra, number))
    else:
        specs = [PromptSpec(line, line=number) for number, line in lines]
    return specs


def load_image(path: str | Path):
    """An image file -> (3, H, W) float tensor in [0, 1]; size-capped before decoding."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise UserError(f"{path}: image of {size} bytes is over the limit of {MAX_IMAGE_BYTES} bytes")
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise UserError(f"{path}: image of {img.width}x{img.height} pixels is over the limit of "
                                f"{MAX_IMAGE_PIXELS} pixels")
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError as exc:
        raise UserError(f"{path}: image not found") from exc
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: unreadable image ({exc.__class__.__name__}: {exc})") from exc
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "sample"


def to_uint8_frames(video, view_size: int | None = None):
    """(3, F, H, W) in [0, 1] -> (F, S, S, 3) uint8, nearest-upscaled to view_size when given."""
    frames = (video.permute(1, 2, 3, 0).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    if view_size and view_size > frames.shape[1]:
        k = max(int(view_size) // frames.shape[1], 1)
        frames = frames.repeat(k, axis=1).repeat(k, axis=2)
    return frames


def write_mp4(path: Path, frames, audio, sample_rate: int, fps: float) -> None:
    """H.264 video with the audio as an AAC track, written by moviepy (through a temporary name)."""
    from moviepy import AudioArrayClip, ImageSequenceClip  # moviepy probes ffmpeg at import: only when writing

    stereo = np.stack([audio, audio], axis=1).astype(np.float64)
    video = ImageSequenceClip(list(frames), fps=fps)
    sound = AudioArrayClip(stereo, fps=sample_rate)
    clip = video.with_audio(sound.with_duration(video.duration))
    with atomic_path(path) as tmp:
        tmp_mp4 = tmp.with_suffix(".mp4")  # moviepy picks the container from the suffix
        try:
            clip.write_videofile(str(tmp_mp4), fps=fps, codec="libx264", audio_codec="aac", audio_fps=sample_rate,
                                 pixel_format="yuv420p", logger=None, temp_audiofile_path=str(path.parent))
            tmp_mp4.replace(tmp)
        finally:
            tmp_mp4.unlink(missing_ok=True)
            clip.close()


def write_wav(path: Path, audio, sample_rate: int) -> None:
    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio, sample_rate, format="WAV", subtype="PCM_16")


def write_grid(path: Path, frames, audio, sample_rate: int, title: str) -> None:
    """Frames in two rows with the waveform and spectrogram beneath, as one PNG."""
    n = frames.shape[0]
    cols = (n + 1) // 2
    rows = [np.concatenate(list(frames[r * cols:(r + 1) * cols]), axis=1) for r in range(2)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(10, 6), gridspec_kw={"height_ratios": [2.5, 0.8, 1.5]})
    axes[0].imshow(np.concatenate(rows, axis=0), interpolation="nearest")
    axes[0].set_title(title[:110], fontsize=9)
    axes[0].axis("off")
    t = np.arange(len(audio)) / sample_rate
    axes[1].plot(t, audio, linewidth=0.3)
    axes[1].set_xlim(0, t[-1] if len(t) else 1)
    axes[1].set_ylabel("wave", fontsize=8)
    axes[2].specgram(audio, NFFT=512, Fs=sample_rate, noverlap=384, cmap="magma")
    axes[2].set_ylabel("Hz", fontsize=8)
    axes[2].set_xlabel("seconds", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), dpi=80, format="png")
    plt.close(fig)


def write_sample(out: Path, name: str, video, audio, sample_rate: int, fps: float, prompt: str,
                 view_size: int | None = 256, formats: Sequence[str] = SAMPLE_FORMATS) -> dict[str, str]:
    """One generated clip -> the requested files under `out`; returns their paths by format."""
    out.mkdir(parents=True, exist_ok=True)
    wave = audio.numpy().astype(np.float32)
    paths: dict[str, str] = {}
    if "mp4" in formats:
        write_mp4(out / f"{name}.mp4", to_uint8_frames(video, view_size), wave, sample_rate, fps)
        paths["mp4"] = str(out / f"{name}.mp4")
    if "wav" in formats:
        write_wav(out / f"{name}.wav", wave, sample_rate)
        paths["wav"] = str(out / f"{name}.wav")
    if "png" in formats:
        write_grid(out / f"{name}.png", to_uint8_frames(video), wave, sample_rate, prompt)
        paths["png"] = str(out / f"{name}.png")
    return paths


def sample_settings(sample, steps: int | None = None, guidance: float | None = None,
                    sampler: str | None = None) -> dict[str, Any]:
    """generate_content's keyword arguments from the `sample` params group (and CLI overrides), checked."""
    interval = sample.guidance_interval
    out = {"steps": steps if steps is not None else sample.steps,
           "guidance": float(guidance if guidance is not None else sample.guidance),
           "sampler": sampler or sample.sampler, "upsampler_noise_level": sample.upsampler_noise_level,
           "upsampler_steps": sample.upsampler_steps, "guidance_interval": interval, "precision": sample.precision}
    if interval is not None and not 0 <= interval[0] <= interval[1]:
        raise UserError(f"sample.guidance_interval must be [lo, hi] timesteps with 0 <= lo <= hi (or null: every "
                        f"step), got {list(interval)!r}")
    if out["precision"] not in PRECISIONS:
        raise UserError(f"sample.precision must be one of {', '.join(PRECISIONS)}, got {out['precision']!r}")
    if out["sampler"] not in SAMPLERS:
        raise UserError(f"sampler must be one of {', '.join(SAMPLERS)}, got {out['sampler']!r}")
    if out["steps"] < 1:
        raise UserError(f"steps must be at least 1, got {out['steps']}")
    if out["upsampler_steps"] is not None and out["upsampler_steps"] < 1:
        raise UserError(f"sample.upsampler_steps must be at least 1 (or null: as steps), got {out['upsampler_steps']}")
    return out


def group_specs(specs: Sequence[PromptSpec], batch_size: int) -> list[list[PromptSpec]]:
    """Consecutive prompts in batches; prompts with an image run in batches of their own."""
    groups: list[list[PromptSpec]] = []
    for spec in specs:
        if groups and len(groups[-1]) < batch_size and (groups[-1][0].image is None) == (spec.image is None):
            groups[-1].append(spec)
        else:
            groups.append([spec])
    return groups


def generate_batches(pipe, specs: Sequence[PromptSpec], settings: dict[str, Any], seed: int, batch_size: int,
                     progress: bool = False, desc: str = "generate", keep_going: bool = False,
                     ) -> Iterator[tuple[list[PromptSpec], Any]]:
    """Yield (specs, GeneratedContent) per batch, streaming: a batch's images are read when it runs.
    Batch k uses seed + k; an i2v batch's images are resized to its first image's size. With
    `keep_going`, a batch whose input is bad yields (specs, the UserError) and the rest go on."""
    bar = tqdm(total=len(specs), desc=desc, unit="clip", disable=not progress)
    for k, group in enumerate(group_specs(specs, batch_size)):
        images: list[torch.Tensor] = []
        kept: list[PromptSpec] = []
        for spec in group:
            try:
                images += [load_image(spec.image)] if spec.image else []
            except UserError as exc:
                if not keep_going:
                    raise
                bar.update(1)
                yield [spec], exc
                continue
            kept.append(spec)
        group = kept
        if group:
            image = torch.stack([im if im.shape == images[0].shape else resize_like(im, images[0]) for im in images]) \
                if images else None
            result = pipe.generate_content([s.prompt for s in group], image, seed=seed + k, **settings)
            bar.update(len(group))
            yield group, result
    bar.close()


def resize_like(image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> the spatial size of `like` (bilinear, no antialias: as generation always did)."""
    return torch.nn.functional.interpolate(image[None], size=like.shape[-2:], mode="bilinear", align_corners=False)[0]
