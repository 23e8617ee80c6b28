"""Checkpoints: weights in safetensors, training state in a file read with torch.load(weights_only=True).

Layout of one stage folder (CKPT_DIR/<stage>/):
    step-000500/  weights (*.safetensors) + state.pt   a complete checkpoint
    latest        the name of the newest complete checkpoint folder
A checkpoint is written into a temporary folder, renamed into place, and only then named in
`latest` (itself replaced atomically), so a kill -9 at any moment leaves the previous one loadable.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(stage_dir: str | Path, step: int, weights: dict[str, dict[str, torch.Tensor]],
                    state: dict[str, Any], keep: int = 2) -> Path:
    from safetensors.torch import save_file

    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp = stage_dir / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for module, tensors in weights.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / f"{module}.safetensors"))
    torch.save(state, tmp / "state.pt")
    final = stage_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = stage_dir / ".latest.tmp"
    pointer.write_text(name + "\n", encoding="utf-8")
    os.replace(pointer, stage_dir / "latest")
    for old in sorted(p for p in stage_dir.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def clear_checkpoints(stage_dir: str | Path) -> None:
    """Remove every checkpoint of a stage folder (complete, half-written, and the pointer)."""
    stage_dir = Path(stage_dir)
    for old in list(stage_dir.glob("step-*")) + list(stage_dir.glob(".step-*.tmp")):
        shutil.rmtree(old, ignore_errors=True)
    (stage_dir / "latest").unlink(missing_ok=True)


def latest_checkpoint(stage_dir: str | Path) -> Path | None:
    pointer = Path(stage_dir) / "latest"
    if not pointer.exists():
        return None
    folder = Path(stage_dir) / pointer.read_text(encoding="utf-8").strip()
    return folder if (folder / "state.pt").exists() else None


def load_weights(folder: str | Path, module: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(folder) / f"{module}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint has no weights for {module}")
    return load_file(str(path))


def load_state(folder: str | Path) -> dict[str, Any]:
    return torch.load(Path(folder) / "state.pt", weights_only=True)
