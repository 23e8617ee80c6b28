"""`tinyveo prepare`: clips + annotations -> the article's pairs and the tensor cache.

Steps, each its own task module: ingest -> probe/filter -> audio extraction -> pair
reorganization -> tensor caching -> report. One bad clip never stops the run: it is skipped and
listed with its reason in DATA_DIR/prepare_report.json. Per-clip work runs in a process pool.

    tinyveo prepare --source data/raw --annotations data/raw/annotations.json --out data
"""
from __future__ import annotations

import argparse
import json
import os

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .runtime import LazyPrefectTask, map_clips, process_pool


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


def _probe_all(paths: list[str], min_duration: float, cache_file: Path, workers: int, progress: bool, pool):
    """Probe every clip, reusing results for files whose size and mtime are unchanged since the last run."""
    from .probe import ProbeInfo, probe_clip

    try:
        known = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    stamps = {}
    for p in paths:
        st = os.stat(p)
        stamps[p] = [st.st_size, st.st_mtime_ns, min_duration]
    todo = [p for p in paths if known.get(p, {}).get("stamp") != stamps[p]]
    fresh = map_clips(probe_clip, [(p, min_duration) for p in todo], workers, "probe", progress, pool)
    for p, info in zip(todo, fresh):
        known[p] = {"stamp": stamps[p], "info": info.as_dict()}
    from .media import atomic_path

    with atomic_path(cache_file) as tmp:
        tmp.write_text(json.dumps({p: known[p] for p in paths}), encoding="utf-8")
    return [ProbeInfo(**known[p]["info"]) for p in paths]


def extract_clip_audio(video: str, wav: str, sample_rate: int, has_audio: bool, duration: float) -> str | None:
    """Extract one clip's audio track to `wav`; returns None, or the reason it failed (never raises:
    one bad clip is reported, the run goes on)."""
    from .extract_audio import extract_audio

    if Path(wav).exists():
        return None  # content-addressed: the same clip was extracted before
    try:
        extract_audio(video, wav, sample_rate, has_audio, duration)
        return None
    except Exception as exc:  # reported per clip, never fatal for the run
        return f"audio extraction failed ({type(exc).__name__}: {exc})"


def prepare(source: str | Path, annotations: str | Path, out: str | Path, params: dict[str, Any],
            workers: int | None = None, progress: bool = True) -> PrepareReport:
    from .ingest import ingest

    c = params["cache"]
    workers = int(c["workers"]) if workers is None else workers
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = PrepareReport()
    ingested = ingest(source, annotations)
    note_ingest(ingested, report)
    pool = process_pool(workers) if workers > 1 else None  # one pool: workers start once per run
    try:
        probes = _probe_all([str(r.video_path) for r in ingested.records], float(c["min_duration_s"]),
                            out / ".probe_cache.json", workers, progress, pool)
        accepted = select_clips(ingested.records, probes, params, report)
        jobs = audio_jobs(accepted, out, params)
        errors = map_clips(extract_clip_audio, jobs, workers, "audio", progress, pool)
        return finish_prepare(accepted, jobs, errors, out, params, report, workers, progress, pool)
    finally:
        if pool is not None:
            pool.shutdown()


def note_ingest(ingested, report: PrepareReport) -> None:
    report.empty_captions = ingested.empty_captions
    report.skipped += [{"source": s.source, "record": s.index, "reason": s.reason} for s in ingested.skipped]


def select_clips(records: list, probes: list, params: dict[str, Any], report: PrepareReport) -> list[tuple]:
    """Keep clips that probed fine, are not duplicates (by content hash) and, when
    cache.skip_no_audio, have audio; every other clip goes into the report with its reason."""
    first_by_hash: dict[str, str] = {}
    accepted = []
    for rec, info in zip(records, probes):
        if not info.ok:
            report.skipped.append({"source": rec.rel_path, "record": rec.index, "reason": info.reason})
        elif info.content_hash in first_by_hash:
            report.skipped.append({"source": rec.rel_path, "record": rec.index,
                                   "reason": f"duplicate of {first_by_hash[info.content_hash]}"})
        elif not info.has_audio and bool(params["cache"]["skip_no_audio"]):
            report.skipped.append({"source": rec.rel_path, "record": rec.index, "reason": "no audio stream"})
        else:
            first_by_hash[info.content_hash] = rec.rel_path
            accepted.append((rec, info))
    return accepted


def audio_jobs(accepted: list[tuple], out: Path, params: dict[str, Any]) -> list[tuple]:
    """extract_clip_audio arguments per accepted clip; WAVs are named by content hash."""
    audio_dir = Path(out) / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    sample_rate = int(params["cache"]["sample_rate"])
    return [(str(r.video_path), str(audio_dir / f"{i.content_hash[:24]}.wav"), sample_rate, i.has_audio, i.duration)
            for r, i in accepted]


def finish_prepare(accepted: list[tuple], jobs: list[tuple], errors: list[str | None], out: Path,
                   params: dict[str, Any], report: PrepareReport, workers: int, progress: bool,
                   pool=None) -> PrepareReport:
    """Pair reorganization, tensor caching and the report, after audio extraction."""
    from .cache import CacheSettings, write_cache
    from .reorganize import reorganize

    extracted = extracted_clips(accepted, jobs, errors, report)
    pairs = reorganize(pair_inputs(extracted), out)
    items = cache_items(extracted, pairs)
    result = write_cache(items, Path(out) / "cache", CacheSettings.from_params(params), workers, progress, pool)
    return write_report(items, result, out, report)


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


def pair_inputs(extracted: list[tuple]) -> list:
    from .reorganize import PairInput

    return [PairInput(str(r.index), r.video_path, w, r.caption, r.image_path) for r, _, w in extracted]


def cache_items(extracted: list[tuple], pairs: list) -> list:
    """One CacheItem per reorganized pair, carrying content hashes, split and attributes."""
    from .cache import CacheItem
    from .media import file_sha256

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
    from .media import atomic_path

    report.cache_computed, report.cache_reused = result.computed, result.reused
    failed = {s for s, _ in result.failed}
    report.skipped += [{"source": s, "record": None, "reason": r} for s, r in result.failed]
    for item in items:
        if item.source in failed:
            continue
        report.kept.append({"id": item.id, "source": item.source, "modality": item.modality, "has_audio": item.has_audio,
                            "duration": item.duration, "fps": item.fps, "padded": result.padded[item.source],
                            "split": item.split, "content_hash": item.content_hash})
    with atomic_path(Path(out) / "prepare_report.json") as tmp:
        tmp.write_text(json.dumps({"summary": report.summary(), "kept": report.kept, "skipped": report.skipped},
                                  indent=1) + "\n", encoding="utf-8")
    return report


extract_clip_audio_task = LazyPrefectTask(extract_clip_audio, name="extract-audio", retries=2, retry_delay_seconds=[1, 4])
prepare_task = LazyPrefectTask(prepare, name="prepare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="folder holding the clips (every annotation path must be inside)")
    parser.add_argument("--annotations", required=True, help="JSON list or JSONL with video_path + summary per record")
    parser.add_argument("--out", required=True, help="data folder: dataset/t2v_pairs, dataset/i2v_pairs, cache/, report")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: cache.workers)")
    parser.add_argument("--params", default=None, help="params file (default: the repository's params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter (repeatable)")


def run(args: argparse.Namespace) -> int:
    from .params import load_params

    params = load_params(args.params, args.overrides)
    report = prepare(args.source, args.annotations, args.out, params, args.workers)
    for s in report.skipped:
        print(f"skipped {s['source']}: {s['reason']}")
    print(report.summary())
    print(f"report: {Path(args.out) / 'prepare_report.json'}")
    return 0 if report.kept else 1


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import module_main

    return module_main("prepare", argv)


if __name__ == "__main__":
    raise SystemExit(main())
