"""The pictures the stages write beside their numbers: loss curves (training), per-attribute
accuracy, the quality-vs-minutes curve and a sample grid (evaluation). PNG files, written
atomically; matplotlib runs headless."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .media import atomic_path

ACCURACY_COLUMNS = ("color", "shape", "motion", "pitch", "object_all", "count", "all_correct")
KINDS = (("model", "tab:blue"), ("majority", "tab:gray"), ("shuffled", "tab:orange"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _pyplot().close(fig)


def loss_curve_png(losses: list[dict[str, float]], path: Path, title: str) -> None:
    """Every logged loss against the step, log scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3))
    for key in [k for k in dict.fromkeys(k for r in losses for k in r) if k != "step"]:
        points = [(r["step"], r[key]) for r in losses if key in r]   # a loss may stop before the stage
        ax.plot(*zip(*points), label=key, linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def quality_curve_png(rows: list[dict[str, Any]], keys: Sequence[str], path: Path, title: str) -> None:
    """One panel per split: each score in `keys` against the training minutes of its point."""
    plt = _pyplot()
    splits = list(dict.fromkeys(r["split"] for r in rows))
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits):
        mine = [r for r in rows if r["split"] == split]
        for key in keys:
            ax.plot([r["minutes"] for r in mine], [r[key] or 0.0 for r in mine], marker="o", label=key)
        ax.set(title=f"{split}: {title}", xlabel="training minutes", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    _save(fig, path)


def accuracy_png(splits: dict[str, dict[str, Any]], path: Path) -> bool:
    """Per split, the strict scorer's accuracies and impact-sync recall/precision: the model beside the
    majority-guess and shuffled-prompt baselines. False (nothing written) when no split was scored."""
    scored = {name: group["scene"] for name, group in splits.items() if "status" not in group.get("scene", {})}
    if not scored:
        return False
    plt = _pyplot()
    columns = list(ACCURACY_COLUMNS) + ["sync recall", "sync precision"]
    fig, axes = plt.subplots(len(scored), 1, figsize=(9, 2.6 * len(scored)), squeeze=False)
    for ax, (name, scene) in zip(axes[:, 0], scored.items()):
        x = np.arange(len(columns))
        rows = {"model": scene, **scene.get("baselines", {})}
        for k, (kind, color) in enumerate(KINDS):
            values = rows.get(kind, {})
            sync = values.get("sync", {})
            heights = [values.get(c) for c in ACCURACY_COLUMNS] + [sync.get("recall"), sync.get("precision")]
            ax.bar(x + (k - 1) * 0.27, [np.nan if h is None else h for h in heights], 0.27, label=kind, color=color)
        ax.set_xticks(x, columns, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name}: strict scorer, per attribute", fontsize=10)
        ax.legend(fontsize=7, ncols=3, loc="upper right")
    fig.tight_layout()
    _save(fig, path)
    return True


def samples_grid_png(videos: Sequence, prompts: Sequence[str], path: Path, frames: int = 6) -> bool:
    """One row per clip ((3, F, H, W) in [0, 1]): `frames` evenly spaced frames under its prompt."""
    if not videos:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(len(videos), 1, figsize=(1.5 * frames, 1.75 * len(videos)), squeeze=False)
    for ax, video, prompt in zip(axes[:, 0], videos, prompts):
        picks = np.linspace(0, video.shape[1] - 1, frames).round().astype(int)
        strip = video[:, picks].permute(2, 1, 3, 0).reshape(video.shape[2], -1, 3)   # (H, frames * W, 3)
        ax.imshow(np.asarray(strip.clamp(0, 1).float()))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(prompt[:110], fontsize=7, loc="left")
    fig.tight_layout()
    _save(fig, path)
    return True
