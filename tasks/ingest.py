"""Ingest: read the annotations (JSON list or JSONL, the article's `video_path` + `summary`) and
resolve every path safely inside the source folder.

A path is rejected, without ever opening its target, when it is absolute (POSIX, Windows drive or
UNC), climbs out with `..`, or passes through a symlink that leads outside the folder. Windows
separators (`clips\\a.mp4`, as in the article's `split('\\\\')`) are accepted.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .runtime import UserError


class AnnotationError(UserError):
    """The annotations file itself is unusable (unreadable, not UTF-8, malformed)."""


@dataclass(frozen=True)
class Record:
    index: int                 # position in the annotations file (0-based)
    rel_path: str              # as written, separators normalised to '/'
    video_path: Path           # resolved inside the source folder
    caption: str
    image_path: Path | None = None
    attributes: dict[str, str] | None = None
    split: str | None = None
    segments: tuple[tuple[float, float, str], ...] = ()   # (start s, end s, caption): window-level captions


@dataclass(frozen=True)
class Skipped:
    source: str                # the path as written (or the record number when there is none)
    reason: str
    index: int | None = None


@dataclass
class IngestResult:
    records: list[Record] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    empty_captions: int = 0


_DRIVE = re.compile(r"^[A-Za-z]:")


def read_annotations(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list of records, or JSONL (one record a line). Errors name the file and the place."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read annotations ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise AnnotationError(f"{path}: not UTF-8 text (byte {exc.start}, line {line})") from exc
    stripped = text.lstrip()
    if not stripped:
        raise AnnotationError(f"{path}: empty annotations file")
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
        records = data
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AnnotationError(f"{path}: malformed JSON on line {lineno}, column {exc.colno}: {exc.msg}") from exc
    if not isinstance(records, list):
        raise AnnotationError(f"{path}: expected a JSON list of records or JSONL")
    return records


def resolve_inside(source: Path, written: str) -> Path:
    """Resolve a relative path from an annotation inside `source`, or raise ValueError saying why.

    Only lstat/readlink are used on the components; the target is never opened."""
    if not isinstance(written, str) or not written.strip():
        raise ValueError("empty path")
    normalised = written.strip().replace("\\", "/")
    if normalised.startswith("/") or _DRIVE.match(normalised) or normalised.startswith("//"):
        raise ValueError("absolute path")
    parts = PurePosixPath(normalised).parts
    if ".." in parts:
        raise ValueError("path climbs out of the source folder ('..')")
    root = Path(os.path.realpath(source))
    candidate = root.joinpath(*parts)
    resolved = Path(os.path.realpath(candidate))  # follows symlinks without opening the target
    if resolved != root and root not in resolved.parents:
        raise ValueError("path leads outside the source folder (symlink)")
    if not os.path.lexists(candidate):
        raise ValueError("file not found")
    if not resolved.is_file():
        raise ValueError("not a regular file")
    return resolved


def read_segments(value: Any) -> tuple[tuple[float, float, str], ...]:
    """`segments`: [{"start": s, "end": s, "summary": text}, ...] -> sorted (start, end, text), or
    ValueError naming the bad entry."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("segments: expected a list of {start, end, summary}")
    out = []
    for k, seg in enumerate(value):
        if not isinstance(seg, dict):
            raise ValueError(f"segments[{k}]: not an object")
        start, end, text = seg.get("start"), seg.get("end"), seg.get("summary")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (start, end)) or not 0 <= start < end:
            raise ValueError(f"segments[{k}]: needs numbers 0 <= start < end (seconds), got {start!r}, {end!r}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"segments[{k}]: no summary")
        out.append((float(start), float(end), text.strip()))
    return tuple(sorted(out))


def ingest(source: str | Path, annotations: str | Path) -> IngestResult:
    """Read annotations and resolve every record; bad records are skipped with a reason."""
    source = Path(source)
    if not source.is_dir():
        raise AnnotationError(f"{source}: source folder not found")
    result = IngestResult()
    for i, rec in enumerate(read_annotations(annotations)):
        where = f"{annotations}: record {i + 1}"
        if not isinstance(rec, dict):
            result.skipped.append(Skipped(where, "record is not a JSON object", i))
            continue
        written = rec.get("video_path")
        if not isinstance(written, str) or not written.strip():
            result.skipped.append(Skipped(where, "no video_path", i))
            continue
        try:
            video = resolve_inside(source, written)
        except ValueError as exc:
            result.skipped.append(Skipped(written, str(exc), i))
            continue
        image = None
        if rec.get("image_path"):
            try:
                image = resolve_inside(source, str(rec["image_path"]))
            except ValueError as exc:
                result.skipped.append(Skipped(str(rec["image_path"]), f"image: {exc}", i))
                continue
        try:
            segments = read_segments(rec.get("segments"))
        except ValueError as exc:
            result.skipped.append(Skipped(written, str(exc), i))
            continue
        caption = rec.get("summary")
        caption = caption.strip() if isinstance(caption, str) else ""
        if not caption:
            result.empty_captions += 1
        attrs = rec.get("attributes") if isinstance(rec.get("attributes"), dict) else None
        split = rec.get("split") if isinstance(rec.get("split"), str) else None
        result.records.append(Record(i, written.strip().replace("\\", "/"), video, caption, image, attrs, split,
                                     segments))
    return result
