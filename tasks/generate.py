"""`tinyveo generate`: prompts (and an optional first-frame image) -> clips with sound.

    tinyveo generate --checkpoint checkpoints --prompt "A red circle moves from left to right with a low tone" --out out/gen
    tinyveo generate --checkpoint checkpoints --prompt "..." --image first_frame.png --out out/gen
    tinyveo generate --checkpoint checkpoints --prompts prompts.txt --out out/gen   # or prompts.jsonl
    tinyveo generate --checkpoint exported --prompt "..." --out out/gen   # a folder `tinyveo export` wrote

The model is `tinyveo.TinyVeoPipeline.from_pretrained(--checkpoint)`: a training checkpoint folder
or a saved pipeline.

Per sample it writes NAME.mp4 (H.264 video with the generated audio as an AAC track), NAME.wav and
NAME.png (the frames with the spectrogram beneath), plus samples.jsonl indexing them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .media import write_text_atomic
from .params import Params
from .runtime import UserError, pick_device
from .samples import SAMPLE_FORMATS, PromptSpec, generate_batches, sample_settings, slug, write_sample


def load(folder: str | Path, device: str | None):
    """TinyVeoPipeline.from_pretrained of a training checkpoint or an exported pipeline folder."""
    from tinyveo.pipeline import TinyVeoPipeline

    try:
        return TinyVeoPipeline.from_pretrained(folder, pick_device(device))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{folder}: not a loadable tinyveo pipeline ({exc.__class__.__name__}: {exc})") from exc


def generate(checkpoint: str | Path, specs: Sequence[PromptSpec], out: str | Path, params: Params, *,
             steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
             seed: int | None = None, batch_size: int = 8, view_size: int = 256, device: str | None = None,
             progress: bool = True, formats: Sequence[str] = SAMPLE_FORMATS) -> list[dict[str, Any]]:
    """Generate one clip per prompt; returns the samples.jsonl records. The model comes from the
    checkpoint; sampling settings from `params.sample` unless given here."""
    if not specs:
        raise UserError("no prompts given")
    for i, spec in enumerate(specs):
        if not spec.prompt.strip():
            raise UserError(f"prompt {i + 1} is empty")
    settings = sample_settings(params.sample, steps, guidance, sampler)
    pipe = load(checkpoint, device or params.train.device)
    seed = params.seed if seed is None else seed
    out = Path(out)
    records: list[dict[str, Any]] = []
    for group, result in generate_batches(pipe, specs, settings, seed, batch_size, progress, keep_going=True):
        if isinstance(result, UserError):   # one bad line never loses the others
            print(f"tinyveo generate: skipped: {result}", file=sys.stderr)
            records += [{"line": spec.line, "prompt": spec.prompt, "error": str(result)} for spec in group]
        else:
            for row, spec in enumerate(group):
                name = f"{len(records) + 1:03d}-{slug(spec.prompt)}"
                files = write_sample(out, name, result.video[row], result.audio[row], result.sample_rate, result.fps,
                                     spec.prompt, view_size, formats)
                records.append({"name": name, "line": spec.line, "prompt": spec.prompt, "image": spec.image, **files,
                                **settings, "seed": seed})
        # after every batch: an interrupted run keeps its index
        write_text_atomic(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    if all("error" in r for r in records):
        raise UserError(f"no clip generated: every prompt failed ({records[0]['error']})")
    return records
