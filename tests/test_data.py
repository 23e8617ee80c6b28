"""Data pipeline: synth, ingest safety, probe/filter, audio extraction, pairs, tensor
cache and MultiModalDataset, on real media files (ffmpeg from imageio-ffmpeg, no network)."""
from __future__ import annotations

import builtins
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tasks.cache import CacheSettings, write_cache
from tasks.params import CacheParams
from tasks.ingest import AnnotationError, ingest, read_annotations
from tasks.media import decode_video, read_wav
from tasks.prepare import prepare

from conftest import synth_clips


def ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True, timeout=120)


def lavfi_clip(path: Path, duration: float = 2.5, audio: str | None = "sine=frequency=440", channels: int = 2,
               extra: tuple[str, ...] = (), video: str = "testsrc2") -> Path:
    separator = ":" if "=" in video else "="
    args = ["-f", "lavfi", "-i", f"{video}{separator}size=96x64:rate=25:duration={duration}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"{audio}:duration={duration}:sample_rate=48000", "-ac", str(channels), "-c:a", "aac"]
    else:
        args += ["-an"]
    args += ["-c:v", "libx264", "-pix_fmt", "yuv420p", *extra, str(path)]
    ffmpeg(*args)
    return path


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synth_clips(out, 48, 3)
    return out


def test_synth_is_deterministic(tmp_path):
    a = synth_clips(tmp_path / "a", 3, 7)
    b = synth_clips(tmp_path / "b", 3, 7)
    c = synth_clips(tmp_path / "c", 3, 8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    for rec in json.loads(a.read_text()):
        fa, ta = decode_video(tmp_path / "a" / rec["video_path"])
        fb, tb = decode_video(tmp_path / "b" / rec["video_path"])
        assert np.array_equal(fa, fb) and np.array_equal(ta, tb)


def test_synth_records_follow_the_article_format(synth_dir):
    records = json.loads((synth_dir / "annotations.json").read_text())
    assert len(records) == 48
    for r in records:
        assert {"video_path", "summary", "attributes", "split"} <= set(r)
        assert r["split"] in {"train", "val", "test"}
    assert any("image_path" in r for r in records)
    frames, times = decode_video(synth_dir / records[0]["video_path"])
    assert frames.shape[1:] == (128, 128, 3) and abs(times[-1] - 2.5) < 0.1 and len(frames) == 80   # 32 fps


# --- ingest -------------------------------------------------------------------------------------

def _write_annotations(path: Path, records) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_ingest_rejects_unsafe_paths_without_opening_them(tmp_path, monkeypatch):
    source = tmp_path / "src"
    (source / "clips").mkdir(parents=True)
    (source / "clips" / "ok.mp4").write_bytes(b"x")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"secret")
    os.symlink(outside, source / "clips" / "link.mp4")
    records = [
        {"video_path": "clips\\ok.mp4", "summary": "fine"},
        {"video_path": "..\\..\\secret.mp4", "summary": "a"},
        {"video_path": "../../secret.mp4", "summary": "b"},
        {"video_path": str(outside), "summary": "c"},
        {"video_path": "C:\\clips\\x.mp4", "summary": "d"},
        {"video_path": "clips/link.mp4", "summary": "e"},
        {"video_path": "clips/missing.mp4", "summary": "f"},
        {"video_path": "clips/ok.mp4"},
    ]
    ann = _write_annotations(tmp_path / "ann.json", records)
    opened: list[str] = []
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    def spy_os(file, *a, **k):
        opened.append(str(file))
        return real_os_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    monkeypatch.setattr(os, "open", spy_os)
    result = ingest(source, ann)
    monkeypatch.setattr(builtins, "open", real_open)
    monkeypatch.setattr(io, "open", real_io_open)
    monkeypatch.setattr(os, "open", real_os_open)

    assert [r.rel_path for r in result.records] == ["clips/ok.mp4", "clips/ok.mp4"]
    assert result.empty_captions == 1
    reasons = {s.source: s.reason for s in result.skipped}
    assert "climbs out" in reasons["..\\..\\secret.mp4"] and "climbs out" in reasons["../../secret.mp4"]
    assert "absolute" in reasons[str(outside)] and "absolute" in reasons["C:\\clips\\x.mp4"]
    assert "outside" in reasons["clips/link.mp4"]
    assert "not found" in reasons["clips/missing.mp4"]
    assert not any("secret" in p or "missing" in p for p in opened), opened


def test_malformed_and_non_utf8_annotations_name_the_file_and_place(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"video_path": "a.mp4",\n "summary": }]', encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"bad\.json: malformed JSON at line 2"):
        read_annotations(bad)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"video_path": "a.mp4"}\n{oops}\n', encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"bad\.jsonl: malformed JSON on line 2"):
        read_annotations(jsonl)
    latin = tmp_path / "latin.json"
    latin.write_bytes('[{"video_path": "a.mp4", "summary": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"latin\.json: not UTF-8"):
        read_annotations(latin)
    good = tmp_path / "good.jsonl"
    good.write_text('{"video_path": "a.mp4", "summary": "x"}\n\n{"video_path": "b.mp4"}\n', encoding="utf-8")
    assert len(read_annotations(good)) == 2


# --- prepare on a messy folder ------------------------------------------------------------------

@pytest.fixture(scope="module")
def messy(tmp_path_factory, synth_dir):
    src = tmp_path_factory.mktemp("messy")
    records = json.loads((synth_dir / "annotations.json").read_text())[:6]
    for r in records:
        for key in ("video_path", "image_path"):
            if key in r:
                (src / r[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(synth_dir / r[key], src / r[key])
    good = src / records[0]["video_path"]
    (src / "bad").mkdir()
    (src / "bad" / "truncated.mp4").write_bytes(good.read_bytes()[:4000])
    (src / "bad" / "empty.mp4").write_bytes(b"")
    (src / "bad" / "notes.mp4").write_text("this is not a video\n")
    shutil.copy(good, src / "bad" / "duplicate.mp4")
    # different pictures: copies of one would be near-duplicates (tests/test_dedup.py)
    lavfi_clip(src / "surround.mp4", channels=6)
    lavfi_clip(src / "silent.mp4", audio=None, video="testsrc2", extra=("-vf", "hflip,negate"))
    lavfi_clip(src / "short.mp4", duration=1.2, video="testsrc")
    lavfi_clip(src / "vfr.mp4", extra=("-vf", "vflip,select='lt(n\\,10)+not(mod(n\\,3))'", "-fps_mode", "vfr"))
    lavfi_clip(src / "clip.avi", extra=("-c:v", "mpeg4", "-vf", "negate"))
    whole = lavfi_clip(src / "long.mp4", duration=8, extra=("-movflags", "+faststart"))  # index first: a cut file decodes
    (src / "bad" / "cut.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 6])
    whole.unlink()
    extra = ["bad/cut.mp4", "bad/truncated.mp4", "bad/empty.mp4", "bad/notes.mp4", "bad/duplicate.mp4", "surround.mp4",
             "silent.mp4", "short.mp4", "vfr.mp4", "clip.avi"]
    all_records = records + [{"video_path": p.replace("/", "\\"), "summary": f"clip {p}"} for p in extra]
    ann = _write_annotations(src / "annotations.json", all_records)
    return src, ann


@pytest.fixture(scope="module")
def prepared(messy, tmp_path_factory):
    from tasks.params import load_params

    src, ann = messy
    out = tmp_path_factory.mktemp("prepared")
    report = prepare(src, ann, out, load_params().cache, workers=2, progress=False)
    return out, report


def test_prepare_skips_bad_files_with_reasons_and_keeps_good_ones(prepared):
    out, report = prepared
    skipped = {s["source"]: s["reason"] for s in report.skipped}
    # paths were written with Windows separators; the report normalises them to '/'
    assert set(skipped) == {"bad/cut.mp4", "bad/truncated.mp4", "bad/empty.mp4", "bad/notes.mp4", "bad/duplicate.mp4"}
    assert re.fullmatch(r"truncated: the container declares 8\.00 s, only 1\.\d+ s \(\d+ frames\) decode",
                        skipped["bad/cut.mp4"]), skipped["bad/cut.mp4"]
    assert skipped["bad/empty.mp4"] == "empty file"
    assert "not" in skipped["bad/notes.mp4"] and "not" in skipped["bad/truncated.mp4"]
    assert skipped["bad/duplicate.mp4"].startswith("duplicate of clips/")
    kept = {k["source"]: k for k in report.kept}
    assert len(kept) == 6 + 5
    assert kept["silent.mp4"]["has_audio"] is False
    assert kept["short.mp4"]["padded"] is True
    assert kept["vfr.mp4"]["padded"] is False
    saved = json.loads((out / "prepare_report.json").read_text())
    assert len(saved["kept"]) == 11 and len(saved["skipped"]) == 5 and "skipped 5" in saved["summary"]


def test_oversized_clips_are_refused_before_any_frame_is_decoded(tmp_path, monkeypatch):
    """cache.max_clip_mb and cache.max_clip_pixels: a clip over either is skipped with the reason
    and the cap named, and no frame of it is decoded; a clip within both is kept."""
    from dataclasses import replace

    import tasks.media as media
    from conftest import synth_clips
    from tasks.params import load_params
    from tasks.prepare import prepare

    ann = synth_clips(tmp_path / "raw", 2, 5)
    cache = load_params().cache
    decoded: list[str] = []
    real = media.decode_check
    monkeypatch.setattr(media, "decode_check", lambda path, **kw: decoded.append(str(path)) or real(path, **kw))
    for limit, reason in ((dict(max_clip_pixels=128 * 128 - 1), r"frames of 128x128 are over the limit of 16383 "
                                                                 r"pixels \(cache.max_clip_pixels\)"),
                          (dict(max_clip_mb=1e-3), r"file of \d+ bytes is over the limit of 1048 \(cache.max_clip_mb\)")):
        out = tmp_path / "capped"   # the same folder twice: a run that kept nothing must not break the next
        report = prepare(tmp_path / "raw", ann, out, replace(cache, workers=1, **limit), progress=False)
        assert not report.kept and len(report.skipped) == 2, report.skipped
        assert all(re.fullmatch(reason, r["reason"]) for r in report.skipped), report.skipped
        assert decoded == []
    kept = prepare(tmp_path / "raw", ann, tmp_path / "ok", replace(cache, workers=1), progress=False)
    assert len(kept.kept) == 2 and len(decoded) == 2


def test_pairs_follow_the_article_layout(prepared):
    out, report = prepared
    t2v, i2v = out / "dataset" / "t2v_pairs", out / "dataset" / "i2v_pairs"
    n_i2v = sum(k["modality"] == "i2v" for k in report.kept)
    n_t2v = len(report.kept) - n_i2v
    assert sorted(p.name for p in t2v.glob("video_*.mp4")) == sorted(f"video_{i}.mp4" for i in range(1, n_t2v + 1))
    for i in range(1, n_t2v + 1):
        assert (t2v / f"video_{i}.wav").exists() and (t2v / f"video_{i}.txt").read_text().strip()
    for i in range(1, n_i2v + 1):
        assert (i2v / f"image_{i}.jpg").exists() and (i2v / f"video_{i}.wav").exists()


def test_audio_is_16k_mono_and_surround_is_downmixed(prepared):
    out, report = prepared
    kept = {k["source"]: k for k in report.kept}
    wav = out / "audio" / f"{kept['surround.mp4']['content_hash'][:24]}.wav"
    import soundfile as sf

    info = sf.info(str(wav))
    assert info.samplerate == 16000 and info.channels == 1
    audio, _ = read_wav(wav)
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 10
    silent, _ = read_wav(out / "audio" / f"{kept['silent.mp4']['content_hash'][:24]}.wav")
    assert len(silent) > 0 and not np.any(silent)


def test_dataset_reads_the_cache_with_worker_processes(prepared):
    from torch.utils.data import DataLoader

    from tasks.cache import MultiModalDataset

    out, report = prepared
    ds = MultiModalDataset(out / "cache")
    assert len(ds) == len(report.kept)
    item = ds[0]
    assert item["video_base"].shape == (3, 32, 32, 32) and item["video_upsampled"].shape == (3, 32, 64, 64)
    assert item["audio"].shape == (1, 32000) and item["input_image_base"].shape == (3, 32, 32)
    assert 0 <= float(item["video_base"].min()) and float(item["video_base"].max()) <= 1
    assert float(item["audio"].abs().max()) == pytest.approx(1.0, abs=1e-3)  # peak-normalised
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    assert batch["video_base"].shape == (4, 3, 32, 32, 32) and len(batch["raw_caption"]) == 4
    i2v = [i for i in range(len(ds)) if ds[i]["modality"] == "i2v"]
    assert i2v and float(ds[i2v[0]]["input_image_base"].max()) > 0


def test_rerun_does_no_work_and_a_changed_clip_redoes_only_itself(messy, prepared):
    from tasks.params import load_params

    src, ann = messy
    out, _ = prepared
    manifest = out / "cache" / "manifest.parquet"
    before = (manifest.stat().st_mtime_ns, sorted(p.name for p in (out / "cache").glob("shard-*")))
    again = prepare(src, ann, out, load_params().cache, workers=1, progress=False)
    assert again.cache_computed == 0 and again.cache_reused == 11
    assert (manifest.stat().st_mtime_ns, sorted(p.name for p in (out / "cache").glob("shard-*"))) == before
    lavfi_clip(src / "short.mp4", duration=1.5, audio="sine=frequency=880")  # the input changes
    changed = prepare(src, ann, out, load_params().cache, workers=1, progress=False)
    assert changed.cache_computed == 1 and changed.cache_reused == 10


def test_crash_mid_cache_leaves_no_partial_shard_in_the_manifest(tmp_path, prepared, monkeypatch):
    import pandas as pd

    import tasks.cache as cache_module
    from tasks.cache import CacheItem, MANIFEST

    out, _ = prepared
    cache = tmp_path / "cache"
    shutil.copytree(out / "cache", cache)
    old = pd.read_parquet(cache / MANIFEST)
    rows = old.astype(object).where(old.notna(), None).to_dict("records")
    items = [CacheItem(**{k: r[k] for k in CacheItem.__dataclass_fields__}) for r in rows]
    fields = {k: rows[0][k] for k in CacheItem.__dataclass_fields__}
    fields["content_hash"] = "0" * 64  # a new item: must be computed and written
    fields["source"] = "new.mp4"

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_module, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        write_cache(items + [CacheItem(**fields)], cache, CacheSettings.from_params(CacheParams()), workers=1,
                    progress=False)
    after = pd.read_parquet(cache / MANIFEST)
    assert after.equals(old)
    assert all((cache / s).exists() for s in after["shard"])
    assert not list(cache.glob(".*tmp")) and not any(p.read_bytes() == b"partial" for p in cache.iterdir())


def test_video_and_audio_windows_agree(tmp_path):
    """A white flash and a click both at t = 1.0 s land on the same instant in the cache."""
    from moviepy import AudioArrayClip, VideoClip

    from tasks.preprocess import frame_times, preprocess_audio, preprocess_video
    from tasks.extract_audio import extract_audio

    fps, rate, dur = 24, 44100, 2.5
    frames = np.zeros((int(fps * dur), 64, 64, 3), np.uint8)
    frames[24:27] = 255  # flash from t = 1.0 s for 3 frames
    audio = np.zeros((int(rate * dur), 2), np.float32)
    audio[rate : rate + 200] = 0.9  # click at t = 1.0 s
    audio += 0.001 * np.random.default_rng(0).standard_normal(audio.shape).astype(np.float32)
    clip = VideoClip(frame_function=lambda t: frames[min(int(t * fps + 1e-6), len(frames) - 1)], duration=dur)
    clip = clip.with_fps(fps).with_audio(AudioArrayClip(audio, fps=rate))
    path = tmp_path / "flash.mp4"
    clip.write_videofile(str(path), fps=fps, codec="libx264", audio_codec="aac", logger=None,
                         temp_audiofile_path=str(tmp_path))
    wav = extract_audio(path, tmp_path / "flash.wav")
    video = preprocess_video(path, 32, 32)
    sound = preprocess_audio(wav)
    flash_frame = int(video.mean(dim=(0, 2, 3)).argmax())
    flash_t = frame_times(16, 2.0)[flash_frame]
    click_t = int(sound[0].abs().argmax()) / 16000
    assert abs(flash_t - 1.0) < 1 / 8 and abs(click_t - 1.0) < 1 / 8
    assert abs(flash_t - click_t) <= 2.0 / 16  # within one cached frame period


def test_prepare_cli_bad_annotations_is_one_line_naming_the_file(tmp_path):
    import sys

    (tmp_path / "src").mkdir()
    bad = tmp_path / "ann.json"
    bad.write_text("[{,}]")
    proc = subprocess.run([sys.executable, "-m", "tasks.cli", "prepare", "--source", str(tmp_path / "src"),
                           "--annotations", str(bad), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "malformed JSON" in lines[0]


def _stepped_clip(path: Path, duration: float, fps: int = 24, rate: int = 44100, first: int = 1) -> Path:
    """A clip whose brightness and tone change every 2 s: window k is grey level 40 (k + first) with a
    sine at 300 (k + first) Hz."""
    from moviepy import AudioArrayClip, VideoClip

    t = np.arange(int(rate * duration)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 300 * (t // 2 + first) * t).astype(np.float32)
    clip = VideoClip(frame_function=lambda s: np.full((48, 48, 3), 40 * (int(s // 2) + first), np.uint8),
                     duration=duration)
    clip = clip.with_fps(fps).with_audio(AudioArrayClip(np.stack([tone, tone], 1), fps=rate))
    clip.write_videofile(str(path), fps=fps, codec="libx264", audio_codec="aac", logger=None,
                         temp_audiofile_path=str(path.parent))
    return path


def test_every_window_of_a_long_clip_is_an_item_decoded_once(tmp_path, monkeypatch):
    """A 7.3 s clip gives its three whole 2 s windows (each its own frames and sound), a 1.5 s clip one
    padded window; each clip is decoded once for all its windows; a lower cap keeps the first windows
    without recomputing them."""
    import tasks.preprocess as preprocess
    from tasks.cache import MultiModalDataset
    from tasks.params import load_params

    src = tmp_path / "clips"
    src.mkdir()
    _stepped_clip(src / "long.mp4", 7.3)
    _stepped_clip(src / "short.mp4", 1.5, first=5)   # not the long one's first 1.5 s: that would be a copy
    (src / "ann.json").write_text(json.dumps([{"video_path": "long.mp4", "summary": "steps of grey"},
                                              {"video_path": "short.mp4", "summary": "one grey"}]))
    decodes = []
    real_decode = preprocess.decode_at
    monkeypatch.setattr(preprocess, "decode_at", lambda path, *a: decodes.append(path) or real_decode(path, *a))
    cache = load_params(overrides=["cache.min_motion=0"]).cache   # these grey levels stand still within a window
    report = prepare(src, src / "ann.json", tmp_path / "data", cache, workers=1, progress=False)
    assert len(decodes) == 2 and len(report.kept) == 4
    written = json.loads((tmp_path / "data" / "prepare_report.json").read_text())
    assert written["windows_per_clip"] == {"long.mp4": 3, "short.mp4": 1}
    assert "prepared 2 clips as 4 windows" in written["summary"]
    dataset = MultiModalDataset(tmp_path / "data" / "cache")
    items = {row["id"]: dataset[i] for i, row in enumerate(dataset.rows)}
    longs = sorted((k for k in items if items[k]["raw_caption"] == "steps of grey"), key=lambda k: (len(k), k))
    assert [k.rsplit("_w", 1)[-1] if "_w" in k else "0" for k in longs] == ["0", "1", "2"]
    for w, key in enumerate(longs):
        grey = float(items[key]["video_base"].mean()) * 255
        spectrum = np.abs(np.fft.rfft(items[key]["audio"][0].numpy()))
        assert abs(grey - 40 * (w + 1)) < 6, (key, grey)
        assert abs(int(spectrum.argmax()) / 2.0 - 300 * (w + 1)) < 5, key   # 2 s window: bins of 0.5 Hz
        assert not items[key]["padded"]
    short = next(v for v in items.values() if v["raw_caption"] == "one grey")
    assert short["padded"]
    capped = prepare(src, src / "ann.json", tmp_path / "data", cache.__class__(**{**cache.__dict__,
                                                                                  "max_windows_per_clip": 2}),
                     workers=1, progress=False)
    assert len(capped.kept) == 3 and capped.cache_computed == 0 and capped.cache_reused == 3


def test_quality_filters_are_params_with_a_reason_in_the_report(tmp_path):
    """A black clip is too dark and a grey still picture is static, each skipped with its measured
    value and the param that decided; a moving clip stays; a zero threshold turns a filter off."""
    src = tmp_path / "clips"
    src.mkdir()
    lavfi_clip(src / "black.mp4", video="color=c=black")
    lavfi_clip(src / "still.mp4", video="color=c=gray")
    lavfi_clip(src / "moving.mp4")
    (src / "ann.json").write_text(json.dumps([{"video_path": f"{n}.mp4", "summary": n} for n in ("black", "still", "moving")]))
    cache = CacheParams()
    report = prepare(src, src / "ann.json", tmp_path / "data", cache, workers=1, progress=False)
    reasons = {s["source"]: s["reason"] for s in report.skipped}
    assert [k["source"] for k in report.kept] == ["moving.mp4"]
    assert re.fullmatch(r"too dark \(brightest 1% of the picture at luma \d+\.\d < cache\.min_brightness 20\.0\)",
                        reasons["black.mp4"]), reasons["black.mp4"]
    assert re.fullmatch(r"static \(mean frame difference 0\.\d\d < cache\.min_motion 0\.2\)", reasons["still.mp4"])
    written = json.loads((tmp_path / "data" / "prepare_report.json").read_text())
    assert {s["source"] for s in written["skipped"]} == {"black.mp4", "still.mp4"}
    off = prepare(src, src / "ann.json", tmp_path / "data", CacheParams(min_brightness=0.0, min_motion=0.0),
                  workers=1, progress=False)
    assert sorted(k["source"] for k in off.kept) == ["black.mp4", "moving.mp4", "still.mp4"]


def test_annotation_segments_caption_the_windows_they_cover(tmp_path):
    """A segment covering at least half a window gives it its caption (recorded as such); other
    windows keep the clip's; a malformed segment skips the record with the entry named."""
    from tasks.params import load_params

    src = tmp_path / "clips"
    src.mkdir()
    _stepped_clip(src / "long.mp4", 6.3)
    _stepped_clip(src / "other.mp4", 2.2, first=5)
    segments = [{"start": 0, "end": 2, "summary": "a dark grey screen"}, {"start": 2.5, "end": 4.5, "summary": "lighter"}]
    (src / "ann.json").write_text(json.dumps([
        {"video_path": "long.mp4", "summary": "steps of grey", "segments": segments},
        {"video_path": "other.mp4", "summary": "x", "segments": [{"start": 2, "end": 1, "summary": "backwards"}]}]))
    cache = load_params(overrides=["cache.min_motion=0"]).cache
    report = prepare(src, src / "ann.json", tmp_path / "data", cache, workers=1, progress=False)
    windows = sorted((k["window"], k["caption"], k["caption_source"]) for k in report.kept)
    assert windows == [(0, "a dark grey screen", "annotation segment"), (1, "lighter", "annotation segment"),
                       (2, "steps of grey", "annotation")]
    assert report.skipped == [{"source": "other.mp4", "record": 1,
                               "reason": "segments[0]: needs numbers 0 <= start < end (seconds), got 2, 1"}]


def test_streamed_decode_shows_the_frames_a_full_decode_selects(messy):
    """decode_at (one streamed pass, converting only the frames shown) gives the tensors of decoding
    every frame and selecting by time, on a VFR clip and past a clip's end (black, flagged)."""
    from tasks.media import decode_at
    from tasks.preprocess import frame_times, resize_square, select_frames

    src, _ = messy
    for name, starts in (("vfr.mp4", [0.0]), ("surround.mp4", [0.0, 2.0])):   # 2.5 s: the second window runs out
        wanted = np.concatenate([frame_times(32, 2.0, s) for s in starts])
        streamed, past = decode_at(src / name, wanted, (32, 64))
        frames, times = decode_video(src / name)
        chosen, padded = select_frames(frames, times, wanted)
        for size in (32, 64):
            assert np.array_equal(streamed[size], resize_square(chosen, size)), (name, size)
        assert bool(past.any()) == padded == (len(starts) == 2), name


def _sleep_then_pid(seconds: float) -> int:
    import time

    time.sleep(seconds)
    return os.getpid()


def test_workers_start_only_for_a_step_with_enough_work():
    """A quick step runs in this process; a step whose remaining work outlasts runtime.POOL_WORTH_S
    goes to worker processes after its first PROBE_JOBS jobs, results in order."""
    from tasks.runtime import POOL_WORTH_S, PROBE_JOBS, map_clips

    quick = map_clips(_sleep_then_pid, [(0.001,)] * 20, workers=2, desc="quick", progress=False)
    assert set(quick) == {os.getpid()}
    jobs = [(0.25,)] * (PROBE_JOBS + int(POOL_WORTH_S / 0.25) + 4)
    slow = map_clips(_sleep_then_pid, jobs, workers=2, desc="slow", progress=False)
    assert slow[:PROBE_JOBS] == [os.getpid()] * PROBE_JOBS and os.getpid() not in slow[PROBE_JOBS:]
