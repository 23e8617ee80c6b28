"""Curation steps of `prepare`, after probing and filtering: a Captioner for clips whose annotation
has no `summary`, and a SafetyFilter. Both are pluggable through the `curate` params group, work
offline, and record what they did per item (`caption_source`, `safety` in the manifest and report).

Captioners (`curate.captioner`):
- `filename` (default, needs nothing): the words of the file name ("red_ball-bounce.mp4" -> "red ball
  bounce"), or "a video clip" for camera names (IMG_0042), plus whether it has sound.
- `clip`: CLIP zero-shot over `curate.caption_labels` on the clip's middle frame, from the local
  CLIP folder `curate.captioner_path` ("a video of {label}").
Safety (`curate.safety`):
- `pass` (default): nothing is checked, and the manifest says so for every item.
- `classifier`: a local transformers image-classification folder (`curate.safety_path`); a clip
  whose frames score `curate.safety_threshold` or more on any of `curate.unsafe_labels` is skipped
  with the label and score in the report.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .runtime import UserError

CAMERA_NAMES = {"img", "vid", "mov", "mvi", "dsc", "dscn", "pxl", "gopr", "gh", "dji", "video", "clip", "screen",
                "recording", "mp4", "final", "copy", "edit"}


@dataclass(frozen=True)
class Verdict:
    caption: str
    caption_source: str
    safety: str
    unsafe_reason: str | None = None


def filename_caption(path: str | Path, has_audio: bool) -> str:
    """Words of the file name (split at separators and camelCase, camera prefixes and numbers dropped)."""
    stem = re.sub(r"([a-z])([A-Z])", r"\1 \2", Path(path).stem)
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", stem) if w.lower() not in CAMERA_NAMES and len(w) > 1]
    text = " ".join(words) if words else "a video clip"
    return f"{text}, with sound" if has_audio else f"{text}, without sound"


def middle_frame(path: str | Path, duration: float) -> np.ndarray:
    """The frame on screen at the middle of the clip's first 4 s: (H, W, 3) uint8."""
    from .media import decode_video

    moment = min(duration, 4.0) / 2
    frames, times = decode_video(path, max_seconds=moment + 0.5)
    shown = int(np.searchsorted(times, moment, side="right")) - 1   # the last frame shown by then
    return frames[max(shown, 0)]


class ClipZeroShotCaptioner:
    def __init__(self, folder: str, labels: tuple[str, ...]):
        from transformers import CLIPModel, CLIPProcessor

        if not folder or not Path(folder).is_dir():
            raise UserError(f"curate.captioner_path: no CLIP folder at {folder!r} (curate.captioner: clip needs one; "
                            "nothing is downloaded)")
        if not labels:
            raise UserError("curate.caption_labels: the clip captioner needs labels to choose from")
        self.name = f"clip-zero-shot:{Path(folder).name}"
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        self.labels = list(labels)

    def __call__(self, frame: np.ndarray) -> str:
        import torch

        inputs = self.processor(text=[f"a video of {label}" for label in self.labels], images=[frame],
                                return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = self.model(**inputs).logits_per_image[0]
        return f"a video of {self.labels[int(logits.argmax())]}"


class ClassifierSafetyFilter:
    def __init__(self, folder: str, unsafe_labels: tuple[str, ...], threshold: float):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        if not folder or not Path(folder).is_dir():
            raise UserError(f"curate.safety_path: no classifier folder at {folder!r} (curate.safety: classifier "
                            "needs a local image-classification model; nothing is downloaded)")
        self.model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True).eval()
        self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        names = {v.lower(): int(k) for k, v in self.model.config.id2label.items()}
        missing = [label for label in unsafe_labels if label.lower() not in names]
        if missing:
            raise UserError(f"curate.unsafe_labels: {', '.join(missing)} not among the classifier's labels "
                            f"({', '.join(sorted(names))})")
        self.unsafe = {label: names[label.lower()] for label in unsafe_labels}
        self.threshold = threshold
        self.name = f"classifier:{Path(folder).name}"

    def __call__(self, frame: np.ndarray) -> tuple[str, str | None]:
        """(what the manifest records, the reason to skip or None)."""
        import torch

        with torch.no_grad():
            probs = self.model(**self.processor(images=[frame], return_tensors="pt")).logits.softmax(-1)[0]
        label, score = max(((name, float(probs[i])) for name, i in self.unsafe.items()), key=lambda x: x[1])
        record = f"{self.name}: {label} {score:.3f}"
        if score >= self.threshold:
            return record, f"unsafe: {label} scored {score:.3f} >= curate.safety_threshold {self.threshold}"
        return record, None


class Curator:
    """Both steps, models loaded once per run."""

    def __init__(self, curate: Any):
        c = curate
        if c.captioner not in ("filename", "clip"):
            raise UserError(f"curate.captioner must be filename or clip, got {c.captioner!r}")
        if c.safety not in ("pass", "classifier"):
            raise UserError(f"curate.safety must be pass or classifier, got {c.safety!r}")
        if c.near_duplicates not in ("auto", "drop", "report", "off"):
            raise UserError(f"curate.near_duplicates must be auto, drop, report or off, got {c.near_duplicates!r}")
        self.captioner = ClipZeroShotCaptioner(c.captioner_path, tuple(c.caption_labels)) \
            if c.captioner == "clip" else None
        self.safety = ClassifierSafetyFilter(c.safety_path, tuple(c.unsafe_labels), c.safety_threshold) \
            if c.safety == "classifier" else None

    @property
    def trivial(self) -> bool:
        """Nothing to load or decode: the defaults."""
        return self.captioner is None and self.safety is None

    def __call__(self, path: str | Path, caption: str, has_audio: bool, duration: float) -> Verdict:
        needs_frame = self.safety is not None or (self.captioner is not None and not caption)
        frame = middle_frame(path, duration) if needs_frame else None
        if caption:
            text, source = caption, "annotation"
        elif self.captioner is not None:
            text, source = self.captioner(frame), self.captioner.name
        else:
            text, source = filename_caption(path, has_audio), "filename"
        if self.safety is None:
            return Verdict(text, source, "not checked (curate.safety: pass)")
        record, reason = self.safety(frame)
        return Verdict(text, source, record, reason)


_CURATORS: dict[str, Curator] = {}


def curator_for(curate: Any) -> Curator:
    """One Curator (its models loaded once) per process and `curate` params."""
    key = repr(sorted(vars(curate).items()))
    if key not in _CURATORS:
        _CURATORS[key] = Curator(curate)
    return _CURATORS[key]


def curate_clip(path: str, caption: str, has_audio: bool, duration: float, curate: Any) -> Verdict:
    """The curation of one clip: what `prepare` maps per clip (a process pool, or Prefect tasks)."""
    return curator_for(curate)(path, caption, has_audio, duration)
