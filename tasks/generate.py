"""`tinyveo generate`: prompts (and an optional first-frame image) -> clips with sound.

    tinyveo generate --checkpoint checkpoints --prompt "A red circle moves from left to right with a low tone" --out out/gen
    tinyveo generate --checkpoint checkpoints --prompt "..." --image first_frame.png --out out/gen
    tinyveo generate --checkpoint checkpoints --prompts prompts.txt --out out/gen   # or prompts.jsonl

Per sample it writes NAME.mp4 (H.264 video with the generated audio as an AAC track, via moviepy),
NAME.wav and NAME.png (the frames with the spectrogram beneath), plus samples.jsonl indexing them.
A prompts file is plain text, one prompt a line (MovieGenBench's MovieGenVideoBench.txt), or JSONL
with a `prompt` field per line (its audio bench format); JSONL lines may add `image` (a path,
relative to the file) and `attributes`.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .runtime import LazyPrefectTask, UserError, persistent_cache


@dataclass
class PromptSpec:
    prompt: str
    image: str | None = None
    attributes: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---- inputs -------------------------------------------------------------------------------------

def read_prompts(path: str | Path) -> list[PromptSpec]:
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
                image = str((path.parent / image) if not Path(image).is_absolute() else Path(image))
            extra = {k: v for k, v in record.items() if k not in ("prompt", "image", "attributes")}
            specs.append(PromptSpec(record["prompt"].strip(), image, record.get("attributes"), extra))
    else:
        specs = [PromptSpec(line) for _, line in lines]
    return specs


def load_image(path: str | Path):
    """An image file -> (3, H, W) float tensor in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError as exc:
        raise UserError(f"{path}: image not found") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image ({exc.__class__.__name__}: {exc})") from exc
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def load_pipeline(checkpoint: str | Path, device: str | None = None):
    """A trained checkpoint folder (written by `tinyveo train`) -> (TinyVeo, the params it was
    trained with). The EMA weights of the denoisers are used. Errors name the missing or
    incompatible file."""
    import torch

    from model import (AudioVAE, ConditioningEncoder, JointDenoisingTransformer, TinyVeo, VideoVAE, from_params,
                       noise_schedulers)

    from .checkpoint import latest_checkpoint, load_weights
    from .runtime import pick_device

    ckpt = Path(checkpoint)
    config_path = ckpt / "denoiser" / "config.json"
    if not ckpt.is_dir():
        raise UserError(f"{ckpt}: no such checkpoint folder (train one with `tinyveo train --out {ckpt}`)")
    if not config_path.exists():
        raise UserError(f"{config_path}: missing; {ckpt} is not a finished tinyveo checkpoint (run `tinyveo train`)")
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        params = saved["params"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise UserError(f"{config_path}: not a tinyveo checkpoint config ({exc})") from exc
    dev = pick_device(device or params["train"].get("device"))
    c = params["conditioning"]
    encoder = ConditioningEncoder.from_params(c).to(dev)
    if encoder.text_dim != saved.get("context_dim", encoder.text_dim):
        raise UserError(f"{config_path}: the checkpoint was trained with {saved['context_dim']}-d text embeddings, "
                        f"the configured {c['backend']} encoder gives {encoder.text_dim}-d")
    cfg = from_params(params, context_dim=encoder.text_dim, image_feature_dim=encoder.image_dim)
    video_vae, audio_vae = VideoVAE(cfg.video_vae), AudioVAE(cfg.audio_vae)
    base, upsampler = JointDenoisingTransformer(cfg.base), JointDenoisingTransformer(cfg.upsampler)
    folder = latest_checkpoint(ckpt / "denoiser")
    if folder is None:
        raise UserError(f"{ckpt / 'denoiser'}: no denoiser checkpoint (run the denoiser stage of `tinyveo train`)")
    targets = [(video_vae, ckpt / "vae", "video_vae"), (audio_vae, ckpt / "vae", "audio_vae"),
               (base, folder, "base_ema"), (upsampler, folder, "upsampler_ema")]
    for module, where, name in targets:
        try:
            module.load_state_dict(load_weights(where, name))
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from exc
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:3])
            raise UserError(f"{Path(where) / (name + '.safetensors')}: incompatible with {config_path} ({detail[:300]})") from exc
    scheduler, up_scheduler = noise_schedulers(params["diffusion"])
    fps = params["cache"]["num_frames"] / params["cache"]["window_s"]
    pipe = TinyVeo(cfg, encoder, video_vae, audio_vae, base, upsampler, scheduler, fps, up_scheduler).to(dev)
    return pipe, params


# ---- outputs ------------------------------------------------------------------------------------

def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "sample"


def to_uint8_frames(video, view_size: int | None = None):
    """(3, F, H, W) in [0, 1] -> (F, S, S, 3) uint8, nearest-upscaled to view_size when given."""
    import numpy as np

    frames = (video.permute(1, 2, 3, 0).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    if view_size and view_size > frames.shape[1]:
        k = max(int(view_size) // frames.shape[1], 1)
        frames = frames.repeat(k, axis=1).repeat(k, axis=2)
    return frames


def write_mp4(path: Path, frames, audio, sample_rate: int, fps: float) -> None:
    """H.264 video with the audio as an AAC track, written by moviepy (through a temporary name)."""
    import numpy as np
    from moviepy import AudioArrayClip, ImageSequenceClip

    from .media import atomic_path

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
    import soundfile as sf

    from .media import atomic_path

    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio, sample_rate, format="WAV", subtype="PCM_16")


def write_grid(path: Path, frames, audio, sample_rate: int, title: str) -> None:
    """Frames in two rows with the waveform and spectrogram beneath, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
    from .media import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), dpi=80, format="png")
    plt.close(fig)


def write_sample(out: Path, name: str, video, audio, sample_rate: int, fps: float, prompt: str,
                 view_size: int | None = 256, formats: Sequence[str] = ("mp4", "wav", "png")) -> dict[str, str]:
    """One generated clip -> the requested files under `out`; returns their paths by format."""
    import numpy as np

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


# ---- the step -----------------------------------------------------------------------------------

def _guidance_interval(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, int) for v in value) \
            or not 0 <= value[0] <= value[1]:
        raise UserError(f"sample.guidance_interval must be [lo, hi] timesteps with 0 <= lo <= hi (or null: every "
                        f"step), got {value!r}")
    return int(value[0]), int(value[1])


def sample_settings(params: dict[str, Any], steps: int | None = None, guidance: float | None = None,
                    sampler: str | None = None) -> dict[str, Any]:
    from model import SAMPLERS
    from model.precision import PRECISIONS

    s = params["sample"]
    out = {"steps": int(steps if steps is not None else s["steps"]),
           "guidance": float(guidance if guidance is not None else s["guidance"]),
           "sampler": str(sampler or s["sampler"]),
           "upsampler_noise_level": int(s["upsampler_noise_level"]),
           "upsampler_steps": int(s.get("upsampler_steps") or 0) or None,
           "guidance_interval": _guidance_interval(s.get("guidance_interval")),
           "precision": str(s["precision"])}
    if out["precision"] not in PRECISIONS:
        raise UserError(f"sample.precision must be one of {', '.join(PRECISIONS)}, got {out['precision']!r}")
    if out["sampler"] not in SAMPLERS:
        raise UserError(f"sampler must be one of {', '.join(SAMPLERS)}, got {out['sampler']!r}")
    if out["steps"] < 1:
        raise UserError(f"steps must be at least 1, got {out['steps']}")
    if out["upsampler_steps"] is not None and out["upsampler_steps"] < 1:
        raise UserError(f"sample.upsampler_steps must be at least 1 (or null: as steps), got {out['upsampler_steps']}")
    return out


def generate_batches(pipe, specs: Sequence[PromptSpec], settings: dict[str, Any], seed: int, batch_size: int,
                     progress: bool = False, desc: str = "generate"):
    """Yield (specs, GeneratedContent) per batch. Prompts with an image run in batches of their own
    (an i2v batch conditions every row on its image). Batch k uses seed + k."""
    import torch
    from tqdm import tqdm

    images = {s.image: load_image(s.image) for s in specs if s.image}
    groups: list[list[PromptSpec]] = []
    for spec in specs:
        if groups and len(groups[-1]) < batch_size and (groups[-1][0].image is None) == (spec.image is None):
            groups[-1].append(spec)
        else:
            groups.append([spec])
    bar = tqdm(total=len(specs), desc=desc, unit="clip", disable=not progress)
    for k, group in enumerate(groups):
        image = torch.stack([images[s.image] for s in group]) if group[0].image else None
        if image is not None and len({tuple(images[s.image].shape) for s in group}) > 1:
            import torch.nn.functional as F

            image = torch.stack([F.interpolate(images[s.image][None], size=images[group[0].image].shape[-2:],
                                               mode="bilinear", align_corners=False)[0] for s in group])
        result = pipe.generate_content([s.prompt for s in group], image, seed=seed + k, **settings)
        bar.update(len(group))
        yield group, result
    bar.close()


def generate(checkpoint: str | Path, specs: Sequence[PromptSpec], out: str | Path, params: dict[str, Any], *,
             steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
             seed: int | None = None, batch_size: int = 8, view_size: int = 256, device: str | None = None,
             progress: bool = True) -> list[dict[str, Any]]:
    """Generate one clip per prompt; returns the samples.jsonl records. The model comes from the
    checkpoint; sampling settings from `params` (the `sample` group) unless given here."""
    if not specs:
        raise UserError("no prompts given")
    for i, spec in enumerate(specs):
        if not spec.prompt.strip():
            raise UserError(f"prompt {i + 1} is empty")
    pipe, _ = load_pipeline(checkpoint, device)
    settings = sample_settings(params, steps, guidance, sampler)
    seed = int(params["seed"] if seed is None else seed)
    out = Path(out)
    records: list[dict[str, Any]] = []
    index = 0
    for group, result in generate_batches(pipe, specs, settings, seed, batch_size, progress):
        for row, spec in enumerate(group):
            index += 1
            name = f"{index:03d}-{slug(spec.prompt)}"
            files = write_sample(out, name, result.video[row], result.audio[row], result.sample_rate, result.fps,
                                 spec.prompt, view_size)
            records.append({"name": name, "prompt": spec.prompt, "image": spec.image, **files, **settings,
                            "seed": seed})
    with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return records


def generate_key(parameters: dict) -> str:
    from dataclasses import asdict

    from .runtime import checkpoint_files, content_digest

    specs = parameters["specs"]
    images = [Path(s.image) for s in specs if s.image]
    settings = {k: parameters.get(k) for k in ("steps", "guidance", "sampler", "seed", "batch_size", "view_size")}
    return content_digest("generate", [asdict(s) for s in specs], parameters["params"]["sample"], parameters["params"]["seed"],
                          settings, str(parameters["out"]), *images, *checkpoint_files(parameters["checkpoint"]))


generate_task = LazyPrefectTask(generate, name="generate", **persistent_cache(generate_key))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder written by `tinyveo train`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one text prompt")
    source.add_argument("--prompts", help="prompts file: plain text (one a line) or JSONL with a 'prompt' field")
    parser.add_argument("--image", default=None, help="first-frame image for image-to-video (with --prompt)")
    parser.add_argument("--out", required=True, help="output folder (mp4 + wav + png per sample, samples.jsonl)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps per stage (default: params sample.steps)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: params)")
    parser.add_argument("--sampler", default=None, help="ddpm | ddim | dpm (default: params sample.sampler)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: params seed)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per sampling batch (default: 8)")
    parser.add_argument("--view-size", type=int, default=256, help="mp4 frame size, nearest-upscaled (default: 256)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--params", default=None, help="params file (default: the repository's params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. --set sample.upsampler_noise_level=50 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from .params import load_params

    params = load_params(args.params, args.overrides)
    if args.prompt is not None:
        if not args.prompt.strip():
            raise UserError("--prompt is empty")
        specs = [PromptSpec(args.prompt.strip(), args.image)]
    else:
        if args.image:
            raise UserError("--image goes with --prompt; in a JSONL prompts file give each line an 'image' field")
        specs = read_prompts(args.prompts)
    records = generate(args.checkpoint, specs, args.out, params, steps=args.steps, guidance=args.guidance,
                       sampler=args.sampler, seed=args.seed, batch_size=args.batch_size, view_size=args.view_size,
                       device=args.device)
    for r in records:
        print(f"{r['mp4']}  <- {r['prompt']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import module_main

    return module_main("generate", argv)


if __name__ == "__main__":
    raise SystemExit(main())
