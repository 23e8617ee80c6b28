"""Pair reorganization into the article's layout:

    DATA_DIR/dataset/t2v_pairs/video_N.mp4, video_N.wav, video_N.txt
    DATA_DIR/dataset/i2v_pairs/image_N.jpg, video_N.mp4, video_N.wav, video_N.txt

Files are hard-linked where the filesystem allows (no copy), else copied; re-running with the same
inputs changes nothing, and pair files no longer produced are removed.
"""
from __future__ import annotations

import filecmp
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .media import write_text_atomic



@dataclass(frozen=True)
class PairInput:
    key: str                  # stable id of the source record
    video: Path
    wav: Path
    caption: str
    image: Path | None = None


@dataclass(frozen=True)
class Pair:
    key: str
    modality: str             # "t2v" or "i2v"
    video: Path
    wav: Path
    caption_file: Path
    image: Path | None


def _place(src: Path, dst: Path) -> None:
    if dst.exists():
        try:
            if os.path.samefile(src, dst) or filecmp.cmp(src, dst, shallow=False):
                return
        except OSError:
            pass
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _write_text(dst: Path, text: str) -> None:
    if dst.exists() and dst.read_text(encoding="utf-8") == text:
        return
    write_text_atomic(dst, text)


def reorganize(items: list[PairInput], data_dir: str | Path) -> list[Pair]:
    root = Path(data_dir) / "dataset"
    dirs = {"t2v": root / "t2v_pairs", "i2v": root / "i2v_pairs"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    counters = {"t2v": 0, "i2v": 0}
    pairs, produced = [], set()
    for item in items:
        modality = "i2v" if item.image is not None else "t2v"
        counters[modality] += 1
        n, d = counters[modality], dirs[modality]
        video, wav, txt = d / f"video_{n}.mp4", d / f"video_{n}.wav", d / f"video_{n}.txt"
        _place(item.video, video)
        _place(item.wav, wav)
        _write_text(txt, item.caption + "\n")
        image = None
        if item.image is not None:
            image = d / f"image_{n}{item.image.suffix.lower() or '.jpg'}"
            _place(item.image, image)
        produced.update(p for p in (video, wav, txt, image) if p is not None)
        pairs.append(Pair(item.key, modality, video, wav, txt, image))
    for d in dirs.values():
        for stale in d.iterdir():
            if stale not in produced:
                stale.unlink()
    return pairs
