"""`tinyveo prepare`: clips + annotations -> the article's pairs and the tensor cache.

Steps, each its own task module: ingest -> probe/filter -> audio extraction -> pair
reorganization -> tensor caching -> report. One bad clip never stops the run: it is skipped and
listed with its reason in DATA_DIR/prepare_report.json. Per-clip work runs in a process pool.

    tinyveo prepare --source data/raw --annotations data/raw/annotations.json --out data
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cache import CacheItem, CacheSettings, write_cache
from .extract_audio import extract_clip_audio
from .ingest import ingest
from .media import file_sha256, write_text_atomic
from .params import CacheParams
from .probe import ProbeInfo, probe_clip
from .reorganize import PairInput, reorganize
from .runtime import map_clips, process_pool

MapFn = Callable[[Callable, list, str], list]


@dataclass
class PrepareReport:
    kept: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    empty_captions: int = 0
    cache_computed: int = 0
    cache_reused: int = 0

    def summary(self) -> str:
        padded = sum(k["padded"] for k in self.kept)
        silent = sum(not k["has_audio"] for k in self.kept)
        return (f"prepared {len(self.kept)} clips ({self.cache_computed} cached now, {self.cache_reused} reused; "
                f"{padded} padded, {silent} without audio, {self.empty_captions} empty captions), "
                f"skipped {len(self.skipped)}")


PROBE_VERSION = 2   # bumped when ProbeInfo gains a field: older cached probes are redone


def _probe_all(paths: list[str], cache: CacheParams, cache_file: Path, mapper: MapFn) -> list[ProbeInfo]:
    """Probe every clip, reusing results for files whose size and mtime are unchanged since the last run."""
    limits = (cache.min_duration_s, cache.max_clip_mb * 2**20, cache.max_clip_pixels)
    try:
        known = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    stamps = {}
    for p in paths:
        st = os.stat(p)
        stamps[p] = [st.st_size, st.st_mtime_ns, *limits, PROBE_VERSION]
    todo = [p for p in paths if known.get(p, {}).get("stamp") != stamps[p]]
    for p, info in zip(todo, mapper(probe_clip, [(p, *limits) for p in todo], "probe")):
        known[p] = {"stamp": stamps[p], "info": info.as_dict()}
    write_text_atomic(cache_file, json.dumps({p: known[p] for p in paths}))
    return [ProbeInfo(**known[p]["info"]) for p in paths]


def prepare(source: str | Path, annotations: str | Path, out: str | Path, cache: CacheParams,
            workers: int | None = None, progress: bool = True, map_fn: MapFn | None = None) -> PrepareReport:
    """Every step of the data pipeline; `map_fn(fn, jobs, desc) -> results` runs the per-clip work
    (default: a process pool of `workers`; the Prefect data flow passes mapped tasks)."""
    workers = cache.workers if workers is None else workers
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = PrepareReport()
    ingested = ingest(source, annotations)
    report.empty_captions = ingested.empty_captions
    report.skipped += [{"source": s.source, "record": s.index, "reason": s.reason} for s in ingested.skipped]
    pool = process_pool(workers) if workers > 1 and map_fn is None else None  # workers start once per run
    mapper = map_fn or (lambda fn, jobs, desc: map_clips(fn, jobs, workers, desc, progress, pool))
    try:
        probes = _probe_all([str(r.video_path) for r in ingested.records], cache,
                            out / ".probe_cache.json", mapper)
        accepted = select_clips(ingested.records, probes, cache.skip_no_audio, report, cache.skip_truncated)
        jobs = audio_jobs(accepted, out, cache.sample_rate)
        extracted = extracted_clips(accepted, jobs, mapper(extract_clip_audio, jobs, "audio"), report)
        pairs = reorganize(pair_inputs(extracted), out)
        items = cache_items(extracted, pairs)
        result = write_cache(items, out / "cache", CacheSettings.from_params(cache), workers, progress, pool,
                             map_fn=map_fn)
        return write_report(items, result, out, report)
    finally:
        if pool is not None:
            pool.shutdown()


def select_clips(records: list, probes: list, skip_no_audio: bool, report: PrepareReport,
                 skip_truncated: bool = True) -> list[tuple]:
    """Keep clips that probed fine, are not duplicates (by content hash), are not truncated (when
    cache.skip_truncated) and, when cache.skip_no_audio, have audio; every other clip goes into the
    report with its reason."""
    first_by_hash: dict[str, str] = {}
    accepted = []
    for rec, info in zip(records, probes):
        if not info.ok:
            report.skipped.append({"source": rec.rel_path, "record": rec.index, "reason": info.reason})
        elif info.truncated and skip_truncated:
            report.skipped.append({"source": rec.rel_path, "record": rec.index, "reason": info.truncation()})
        elif info.content_hash in first_by_hash:
            report.skipped.append({"source": rec.rel_path, "record": rec.index,
                                   "reason": f"duplicate of {first_by_hash[info.content_hash]}"})
        elif not info.has_audio and skip_no_audio:
            report.skipped.append({"source": rec.rel_path, "record": rec.index, "reason": "no audio stream"})
        else:
            first_by_hash[info.content_hash] = rec.rel_path
            accepted.append((rec, info))
    return accepted


def audio_jobs(accepted: list[tuple], out: Path, sample_rate: int) -> list[tuple]:
    """extract_clip_audio arguments per accepted clip; WAVs are named by content hash."""
    audio_dir = Path(out) / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    return [(str(r.video_path), str(audio_dir / f"{i.content_hash[:24]}.wav"), sample_rate, i.has_audio, i.duration)
            for r, i in accepted]


def extracted_clips(accepted: list[tuple], jobs: list[tuple], errors: list[str | None],
                    report: PrepareReport) -> list[tuple]:
    """(record, probe, wav) for clips whose audio extraction worked; failures go into the report."""
    extracted = []
    for (rec, info), job, error in zip(accepted, jobs, errors):
        if error:
            report.skipped.append({"source": rec.rel_path, "record": rec.index, "reason": error})
        else:
            extracted.append((rec, info, Path(job[1])))
    return extracted


def pair_inputs(extracted: list[tuple]) -> list[PairInput]:
    return [PairInput(str(r.index), r.video_path, w, r.caption, r.image_path) for r, _, w in extracted]


def cache_items(extracted: list[tuple], pairs: list) -> list:
    """One CacheItem per reorganized pair, carrying content hashes, split and attributes."""
    items = []
    for (rec, info, _), pair in zip(extracted, pairs):
        items.append(CacheItem(
            id=f"{pair.modality}_{pair.video.stem.split('_')[-1]}", modality=pair.modality, caption=rec.caption,
            source=rec.rel_path, content_hash=info.content_hash, has_audio=info.has_audio,
            duration=round(info.duration, 4), fps=round(info.fps, 4), video=str(pair.video), wav=str(pair.wav),
            image=str(pair.image) if pair.image else None,
            image_hash=file_sha256(pair.image) if pair.image else None, split=rec.split,
            attributes=json.dumps(rec.attributes, sort_keys=True) if rec.attributes else None,
        ))
    return items


def write_report(items: list, result, out: str | Path, report: PrepareReport) -> PrepareReport:
    """Fill the report from the cache result and write DATA/prepare_report.json."""
    report.cache_computed, report.cache_reused = result.computed, result.reused
    failed = {s for s, _ in result.failed}
    report.skipped += [{"source": s, "record": None, "reason": r} for s, r in result.failed]
    for item in items:
        if item.source in failed:
            continue
        report.kept.append({"id": item.id, "source": item.source, "modality": item.modality, "has_audio": item.has_audio,
                            "duration": item.duration, "fps": item.fps, "padded": result.padded[item.source],
                            "split": item.split, "content_hash": item.content_hash})
    write_text_atomic(Path(out) / "prepare_report.json",
                      json.dumps({"summary": report.summary(), "kept": report.kept, "skipped": report.skipped},
                                 indent=1) + "\n")
    return report
