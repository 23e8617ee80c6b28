"""Near-duplicate detection in `prepare` (tasks/dedup.py): copies made with ffmpeg (re-encoded,
resized, trimmed, re-timed without sound) are dropped and named with the clip kept; other clips of
the same scene, and the same picture with other sound, stay."""
from __future__ import annotations

import json
import re

import pytest

from tasks.params import CacheParams, CurateParams
from tasks.prepare import prepare
from test_data import ffmpeg

COPIES = {"copy_crf35.mp4": ["-c:v", "libx264", "-crf", "35", "-c:a", "aac", "-b:a", "32k"],
          "copy_small.mp4": ["-vf", "scale=48:32", "-c:a", "copy"],
          "copy_trimmed.mp4": ["-ss", "1.3", "-c:v", "libx264", "-c:a", "aac"],
          "copy_15fps_silent.mp4": ["-r", "15", "-an"],
          "copy_10bit.mp4": ["-c:v", "libx264", "-pix_fmt", "yuv420p10le", "-c:a", "copy"]}
DISTINCT = ("later_in_the_scene.mp4", "other_sound.mp4")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """original.mp4: 4 s of a Mandelbrot zoom with a 440 Hz tone; its copies; a later stretch of the
    same zoom (the same scene, other moments); the original's picture with a 880 Hz tone."""
    src = tmp_path_factory.mktemp("dedup")
    zoom = ["-f", "lavfi", "-i", "mandelbrot=size=96x64:rate=25,trim=duration=12"]
    ffmpeg(*zoom, "-f", "lavfi", "-i", "sine=frequency=440:duration=12:sample_rate=48000", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-c:a", "aac", str(src / "scene.mp4"))
    ffmpeg("-t", "4", "-i", str(src / "scene.mp4"), str(src / "original.mp4"))
    ffmpeg("-ss", "6", "-t", "4", "-i", str(src / "scene.mp4"), str(src / "later_in_the_scene.mp4"))
    ffmpeg("-i", str(src / "original.mp4"), "-f", "lavfi", "-i", "sine=frequency=880:duration=4:sample_rate=48000",
           "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(src / "other_sound.mp4"))
    for name, args in COPIES.items():
        ffmpeg("-i", str(src / "original.mp4"), *args, str(src / name))
    (src / "scene.mp4").unlink()
    names = ["copy_trimmed.mp4", "original.mp4", *DISTINCT, *[n for n in COPIES if n != "copy_trimmed.mp4"]]
    (src / "ann.json").write_text(json.dumps([{"video_path": n, "summary": n[:-4]} for n in names]))
    return src


def run(folder, out, **curate):
    return prepare(folder, folder / "ann.json", out, CacheParams(), workers=1, progress=False,
                   curate=CurateParams(**curate))


def test_copies_are_dropped_naming_the_clip_kept_and_other_clips_of_the_scene_stay(folder, tmp_path):
    report = run(folder, tmp_path / "data")
    assert sorted({k["source"] for k in report.kept}) == ["later_in_the_scene.mp4", "original.mp4", "other_sound.mp4"]
    reasons = {s["source"]: s["reason"] for s in report.skipped}
    assert sorted(reasons) == sorted(COPIES)
    for name, reason in reasons.items():   # the trimmed copy is listed first: the longer original is kept
        assert re.fullmatch(r"near-duplicate of original\.mp4 \(luma distance \d\.\d\d(, sound \d\.\d\d dB)?, "
                            r"at [+-]\d\.\d s\)", reason), reason
    assert "sound" not in reasons["copy_15fps_silent.mp4"]
    assert "at +1.3 s" in reasons["copy_trimmed.mp4"]
    written = json.loads((tmp_path / "data" / "prepare_report.json").read_text())
    listed = {d["source"]: d for d in written["near_duplicates"]}
    assert sorted(listed) == sorted(COPIES) and {d["of"] for d in listed.values()} == {"original.mp4"}
    assert {d["action"] for d in listed.values()} == {"dropped"}


def test_report_mode_lists_copies_and_keeps_them_and_off_looks_for_none(folder, tmp_path):
    listed = run(folder, tmp_path / "report", near_duplicates="report")
    assert len({k["source"] for k in listed.kept}) == 3 + len(COPIES)
    assert sorted(d["source"] for d in listed.near_duplicates) == sorted(COPIES)
    off = run(folder, tmp_path / "off", near_duplicates="off")
    assert len({k["source"] for k in off.kept}) == 3 + len(COPIES) and off.near_duplicates == []


def test_thresholds_are_params(folder, tmp_path):
    """With the sound threshold at zero only the silent copy (judged by picture alone) goes."""
    report = run(folder, tmp_path / "data", near_duplicate_audio_db=0.0)
    assert [s["source"] for s in report.skipped] == ["copy_15fps_silent.mp4"]


def test_under_auto_built_in_renders_are_listed_not_dropped(tmp_path):
    """Two records tinyveo synth wrote (attributes name a world) stay under `auto`, and are listed;
    under `drop` the re-encoded one goes."""
    from conftest import synth_clips

    raw = tmp_path / "raw"
    records = json.loads(synth_clips(raw, 1, 0).read_text())
    ffmpeg("-i", str(raw / records[0]["video_path"]), "-c:v", "libx264", "-crf", "30", "-c:a", "copy",
           str(raw / "clips" / "reencoded.mp4"))
    records.append({**records[0], "video_path": "clips/reencoded.mp4"})
    records[1].pop("image_path", None)
    (raw / "ann.json").write_text(json.dumps(records))
    auto = prepare(raw, raw / "ann.json", tmp_path / "auto", CacheParams(), workers=1, progress=False)
    assert len({k["source"] for k in auto.kept}) == 2
    assert [d["action"] for d in auto.near_duplicates] == ["kept (both rendered by tinyveo synth)"]
    drop = prepare(raw, raw / "ann.json", tmp_path / "drop", CacheParams(), workers=1, progress=False,
                   curate=CurateParams(near_duplicates="drop"))
    assert [s["source"] for s in drop.skipped] == ["clips/reencoded.mp4"]


def test_a_bad_mode_is_one_clear_error(folder, tmp_path):
    from tasks.runtime import UserError

    with pytest.raises(UserError, match="curate.near_duplicates must be auto, drop, report or off, got 'maybe'"):
        run(folder, tmp_path / "data", near_duplicates="maybe")


def test_a_tone_one_band_away_is_other_sound_and_a_codec_shift_is_not():
    """The sound distance weighs bands by the louder clip's power: a steady tone moved to the next of
    the 24 bands is far (an unweighted mean over the bands would call it 5 dB), while a codec's
    changes to the quiet bands and a 1 dB level change stay near."""
    import numpy as np

    from tasks.dedup import AUDIO_FLOOR_DB, audio_distance

    def tone(band: int, level: float = 30.0) -> np.ndarray:
        prints = np.full((80, 24), AUDIO_FLOOR_DB, np.float32)
        prints[:, band] = level
        return prints

    assert audio_distance(tone(9), tone(10), 0.0) > 50
    recoded = tone(9, 29.0)
    recoded[:, [8, 10]] = 0.0   # spread 29 dB under the tone
    assert audio_distance(tone(9), recoded, 0.0) < 3
    silent = np.full((80, 24), AUDIO_FLOOR_DB, np.float32)
    assert audio_distance(silent, silent, 0.0) == 0.0
