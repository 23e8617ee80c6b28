"""`prepare` on a folder of mixed real clips (bench/real_clips.py: the real footage and sound in the
gradio wheel, plus ffmpeg-made VFR, 5.1, silent, short and truncated clips): the report accounts
for every input file and every window."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from real_clips import build_folder
    from tasks.params import load_params
    from tasks.prepare import prepare

    root = tmp_path_factory.mktemp("real")
    annotations = build_folder(root / "raw")
    prepare(root / "raw", annotations, root / "data", load_params().cache, workers=2, progress=False)
    return json.loads(annotations.read_text()), json.loads((root / "data" / "prepare_report.json").read_text()), root


def test_every_file_is_kept_or_skipped_with_its_reason(prepared):
    records, report, _ = prepared
    kept = {k["source"] for k in report["kept"]}
    skipped = {s["source"]: s["reason"] for s in report["skipped"]}
    assert kept | set(skipped) == {r["video_path"] for r in records} and not kept & set(skipped)
    assert skipped["broken.mp4"].startswith("not a readable media file")
    for copy in ("b.mp4", "b.avi", "muted_b.mp4"):   # the 5 s excerpt, re-encoded, without sound
        assert skipped[copy].startswith("near-duplicate of world.mp4"), skipped[copy]
    assert skipped["title_card_crop_silent.mkv"].startswith("near-duplicate of title_card.mp4")
    assert {d["source"]: d["of"] for d in report["near_duplicates"]} == {
        "b.mp4": "world.mp4", "b.avi": "world.mp4", "muted_b.mp4": "world.mp4", "title_card_crop_silent.mkv": "title_card.mp4"}
    assert len(skipped) == 5


def test_every_window_is_listed_with_where_its_caption_came_from(prepared):
    _, report, root = prepared
    windows = report["windows_per_clip"]
    assert sum(windows.values()) == len(report["kept"])
    assert windows["world.mp4"] == 15                         # 30 s in whole 2 s windows
    assert windows["saxophone_vfr.mp4"] >= 4 and windows["short.mp4"] == 1
    by_window = {(k["source"], k["window"]): k for k in report["kept"]}
    assert by_window[("world.mp4", 0)]["caption_source"] == "annotation segment"
    assert by_window[("world.mp4", 2)]["caption_source"] == "annotation"
    silent = by_window[("saxophone_spectrum_silent.mkv", 0)]
    assert not silent["has_audio"] and silent["caption"] == "saxophone spectrum silent, without sound"
    assert by_window[("short.mp4", 0)]["padded"] and by_window[("band_5.1.mkv", 0)]["has_audio"]
    assert {k["split"] for k in report["kept"] if k["source"] == "saxophone_vfr.mp4"} == {"test"}
    manifest = pd.read_parquet(root / "data" / "cache" / "manifest.parquet")
    assert len(manifest) == len(report["kept"])
