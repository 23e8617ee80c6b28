"""`tinyveo export`: a training checkpoint folder -> a saved TinyVeoPipeline (diffusers layout).

    tinyveo export --checkpoint checkpoints --out exported [--metrics outputs/eval/metrics.json]

The folder holds safetensors per component, their configs, model_index.json and README.md, a model
card with what the model was trained on, its evaluation numbers (with --metrics) and its limits.
`TinyVeoPipeline.from_pretrained(out)` and `tinyveo generate --checkpoint out` read it back.
"""
from __future__ import annotations

import json
from pathlib import Path

from .runtime import UserError


def export(checkpoint: str | Path, out: str | Path, metrics: str | Path | None = None) -> Path:
    """Save the checkpoint's pipeline to OUT; `metrics` (an evaluate metrics.json) goes into its model card."""
    from tinyveo.pipeline import TinyVeoPipeline

    pipe = TinyVeoPipeline.from_checkpoint(checkpoint)
    if metrics is not None:
        path = Path(metrics)
        try:
            numbers = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: not a readable metrics file ({exc.__class__.__name__}: {exc})") from exc
        pipe.register_to_config(training={**pipe.config.training, "evaluation": numbers})
    out = Path(out)
    pipe.save_pretrained(out)
    return out
