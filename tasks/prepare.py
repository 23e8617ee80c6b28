"""`tinyveo prepare`: clips + annotations -> the article's pairs and the tensor cache.

Steps, each its own task module: ingest -> probe/filter (quality thresholds in `cache`) -> curate
(captions for clips without one, safety: tasks/curate.py) -> audio extraction -> near-duplicates
(tasks/dedup.py) -> pair reorganization -> tensor caching (every whole cache.window_s window of a
clip, up to cache.max_windows_per_clip, from one decode of the clip) -> report. One bad clip never stops the
run: it is skipped and listed with its reason in DATA_DIR/prepare_report.json. Per-clip work runs
in a process pool.

    tinyveo prepare --source data/raw --annotations data/raw/annotations.json --out data
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .cache import CacheItem, CacheSettings, write_cache
from .extract_audio import extract_clip_audio
from .ingest import ingest
from .media import file_sha256, write_text_atomic
from .curate import curate_clip, curator_for
from .dedup import Clip, audio_print, decode_print, near_duplicates
from .params import CacheParams, CurateParams
from .probe import ProbeInfo, probe_clip
from .reorganize import PairInput, reorganize
from .runtime import map_clips, process_pool

MapFn = Callable[[Callable, list, str], list]


@dataclass
class PrepareReport:
    kept: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    empty_captions: int = 0
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    cache_computed: int = 0
    cache_reused: int = 0

    def summary(self) -> str:
        padded = sum(k["padded"] for k in self.kept)
        silent = sum(not k["has_audio"] for k in self.kept)
        clips = len({k["source"] for k in self.kept})
        return (f"prepared {clips} clips as {len(self.kept)} windows ({self.cache_computed} cached now, "
                f"{self.cache_reused} reused; {padded} padded, {silent} without audio, {self.empty_captions} "
                f"empty captions), skipped {len(self.skipped)}{self.near_duplicate_summary()}")

    def near_duplicate_summary(self) -> str:
        dropped = sum(d["action"] == "dropped" for d in self.near_duplicates)
        return f"; near-duplicates: {len(self.near_duplicates)} found, {dropped} dropped" if self.near_duplicates else ""


PROBE_VERSION = 6   # bumped when ProbeInfo gains or changes a field: older cached probes are redone


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
            workers: int | None = None, progress: bool = True, map_fn: MapFn | None = None,
            curate: CurateParams | None = None) -> PrepareReport:
    """Every step of the data pipeline; `map_fn(fn, jobs, desc) -> results` runs the per-clip work
    (default: a process pool of `workers`; the Prefect data flow passes mapped tasks)."""
    curate = curate or CurateParams()
    curator = curator_for(curate)   # a bad curate setting fails before any work
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
        accepted = select_clips(ingested.records, probes, cache.skip_no_audio, report, cache.skip_truncated,
                                quality_filters(cache))
        jobs = curate_jobs(accepted, curate)
        # the defaults read nothing: per-clip tasks only when a model looks at frames
        verdicts = [curate_clip(*job) for job in jobs] if curator.trivial else \
            mapper(curate_clip, jobs, "curate")
        accepted = curated(accepted, verdicts, report)
        jobs = audio_jobs(accepted, out, cache.sample_rate)
        extracted = extracted_clips(accepted, jobs, mapper(extract_clip_audio, jobs, "audio"), report)
        extracted = without_near_duplicates(extracted, curate, report)
        pairs = reorganize(pair_inputs(extracted), out)
        items = cache_items(extracted, pairs, cache)
        result = write_cache(items, out / "cache", CacheSettings.from_params(cache), workers, progress, pool,
                             map_fn=map_fn)
        return write_report(items, result, out, report)
    finally:
        if pool is not None:
            pool.shutdown()


def quality_filters(cache: CacheParams) -> list[Callable[[ProbeInfo], str | None]]:
    """The quality filters, as thresholds in the `cache` params: each gives the reason a clip fails, or None."""
    def too_dark(info: ProbeInfo) -> str | None:
        if 0 <= info.brightness < cache.min_brightness:
            return (f"too dark (brightest 1% of the picture at luma {info.brightness:.1f} < cache.min_brightness "
                    f"{cache.min_brightness})")
        return None

    def static(info: ProbeInfo) -> str | None:
        if 0 <= info.motion < cache.min_motion:
            return f"static (mean frame difference {info.motion:.2f} < cache.min_motion {cache.min_motion})"
        return None

    return [too_dark, static]


def select_clips(records: list, probes: list, skip_no_audio: bool, report: PrepareReport,
                 skip_truncated: bool = True, filters: list[Callable[[ProbeInfo], str | None]] = ()) -> list[tuple]:
    """Keep clips that probed fine (not too short), are not duplicates (by content hash), are not
    truncated (when cache.skip_truncated), pass the quality `filters` and, when cache.skip_no_audio,
    have audio; every other clip goes into the report with its reason."""
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
        elif failed := next((reason for reason in (f(info) for f in filters) if reason), None):
            report.skipped.append({"source": rec.rel_path, "record": rec.index, "reason": failed})
        else:
            first_by_hash[info.content_hash] = rec.rel_path
            accepted.append((rec, info))
    return accepted


def curate_jobs(accepted: list[tuple], curate: CurateParams) -> list[tuple]:
    return [(str(rec.video_path), rec.caption, info.has_audio, info.duration, curate) for rec, info in accepted]


def curated(accepted: list[tuple], verdicts: list, report: PrepareReport) -> list[tuple]:
    """(record with its caption, probe, verdict) per clip the curate step kept; an unsafe clip goes
    into the report with its label and score."""
    kept = []
    for (rec, info), verdict in zip(accepted, verdicts):
        if verdict.unsafe_reason:
            report.skipped.append({"source": rec.rel_path, "record": rec.index, "reason": verdict.unsafe_reason})
        else:
            kept.append((replace(rec, caption=verdict.caption), info, verdict))
    return kept


def audio_jobs(accepted: list[tuple], out: Path, sample_rate: int) -> list[tuple]:
    """extract_clip_audio arguments per accepted clip; WAVs are named by content hash."""
    audio_dir = Path(out) / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    return [(str(r.video_path), str(audio_dir / f"{i.content_hash[:24]}.wav"), sample_rate, i.has_audio, i.duration)
            for r, i, _ in accepted]


def extracted_clips(accepted: list[tuple], jobs: list[tuple], errors: list[str | None],
                    report: PrepareReport) -> list[tuple]:
    """(record, probe, wav, verdict) for clips whose audio extraction worked; failures go into the report."""
    extracted = []
    for (rec, info, verdict), job, error in zip(accepted, jobs, errors):
        if error:
            report.skipped.append({"source": rec.rel_path, "record": rec.index, "reason": error})
        else:
            extracted.append((rec, info, Path(job[1]), verdict))
    return extracted


def rendered_by_synth(record) -> bool:
    """A record `tinyveo synth` wrote: its attributes name a built-in world."""
    return bool(record.attributes and record.attributes.get("world"))


def without_near_duplicates(extracted: list[tuple], curate: CurateParams, report: PrepareReport) -> list[tuple]:
    """Drop near-duplicate clips (tasks/dedup.py), each named in the report with the clip kept. Under
    `auto`, pairs of clips rendered by `tinyveo synth` are listed but kept: they are separate draws
    whose captions and attributes say how they differ, even where a pixel apart."""
    mode = curate.near_duplicates
    if mode == "off" or len(extracted) < 2:
        return extracted
    clips = [Clip(rec.rel_path, decode_print(info.video_print), info.duration, info.width * info.height,
                  (lambda wav=wav: audio_print(wav)) if info.has_audio else None) for rec, info, wav, _ in extracted]
    synthetic = {rec.rel_path for rec, *_ in extracted if rendered_by_synth(rec)}
    dropped = {}
    for dup in near_duplicates(clips, curate.near_duplicate_video, curate.near_duplicate_audio_db):
        if mode == "report":
            action = "kept (curate.near_duplicates: report)"
        elif mode == "auto" and {dup.source, dup.of} <= synthetic:
            action = "kept (both rendered by tinyveo synth)"
        else:
            action, dropped[dup.source] = "dropped", dup.reason()
        report.near_duplicates.append({**vars(dup), "action": action})
    report.skipped += [{"source": rec.rel_path, "record": rec.index, "reason": dropped[rec.rel_path]}
                       for rec, *_ in extracted if rec.rel_path in dropped]
    return [e for e in extracted if e[0].rel_path not in dropped]


def pair_inputs(extracted: list[tuple]) -> list[PairInput]:
    return [PairInput(str(r.index), r.video_path, w, r.caption, r.image_path) for r, _, w, _ in extracted]


def window_count(duration: float, cache: CacheParams) -> int:
    """How many whole, non-overlapping windows of cache.window_s fit from cache.window_start_s (at
    least one: a shorter clip is padded), capped at cache.max_windows_per_clip."""
    whole = int((duration - cache.window_start_s + 1e-3) // cache.window_s)
    return max(1, min(whole, cache.max_windows_per_clip))


def window_caption(record, window: int, cache: CacheParams) -> str | None:
    """The caption of the annotation segment covering most of the window (at least half of it), if any."""
    start = cache.window_start_s + window * cache.window_s
    overlap = [(min(end, start + cache.window_s) - max(begin, start), text) for begin, end, text in record.segments]
    best = max(overlap, default=(0.0, None))
    return best[1] if best[0] >= cache.window_s / 2 else None


def cache_items(extracted: list[tuple], pairs: list, cache: CacheParams) -> list:
    """One CacheItem per window of each reorganized pair, carrying content hashes, split and
    attributes. A window takes the caption of the annotation segment covering most of it, else its
    clip's; every window keeps its clip's split (no clip straddles two splits). The first-frame
    image of an i2v clip belongs to its first window, so later windows are t2v."""
    items = []
    for (rec, info, _, verdict), pair in zip(extracted, pairs):
        for w in range(window_count(info.duration, cache)):
            image = pair.image if w == 0 else None
            segment = window_caption(rec, w, cache)
            items.append(CacheItem(
                id=f"{pair.modality}_{pair.video.stem.split('_')[-1]}" + (f"_w{w}" if w else ""),
                modality=pair.modality if image or not pair.image else "t2v", caption=segment or rec.caption,
                source=rec.rel_path, content_hash=info.content_hash, has_audio=info.has_audio,
                duration=round(info.duration, 4), fps=round(info.fps, 4), video=str(pair.video), wav=str(pair.wav),
                image=str(image) if image else None, image_hash=file_sha256(image) if image else None,
                split=rec.split, attributes=json.dumps(rec.attributes, sort_keys=True) if rec.attributes else None,
                window=w, caption_source="annotation segment" if segment else verdict.caption_source,
                safety=verdict.safety,
            ))
    return items


def write_report(items: list, result, out: str | Path, report: PrepareReport) -> PrepareReport:
    """Fill the report from the cache result and write DATA/prepare_report.json."""
    report.cache_computed, report.cache_reused = result.computed, result.reused
    failed = {s for s, _ in result.failed}
    report.skipped += [{"source": s, "record": None, "reason": r} for s, r in dict(result.failed).items()]  # once a clip
    for item in items:
        if item.source in failed:
            continue
        report.kept.append({"id": item.id, "source": item.source, "window": item.window, "caption": item.caption,
                            "caption_source": item.caption_source, "safety": item.safety, "modality": item.modality,
                            "has_audio": item.has_audio, "duration": item.duration, "fps": item.fps,
                            "padded": result.padded[item.id], "split": item.split, "content_hash": item.content_hash})
    windows = Counter(k["source"] for k in report.kept)
    write_text_atomic(Path(out) / "prepare_report.json",
                      json.dumps({"summary": report.summary(), "windows_per_clip": windows, "kept": report.kept,
                                  "skipped": report.skipped, "near_duplicates": report.near_duplicates},
                                 indent=1) + "\n")
    return report
