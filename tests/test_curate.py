"""prepare's curation steps (tasks/curate.py): captions for clips without a summary and the safety
filter, each pluggable, offline, and recorded per item; the models are tiny ones built here."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from tasks.params import CacheParams, CurateParams
from tasks.prepare import prepare
from tasks.runtime import UserError
from test_data import lavfi_clip

ANNOTATIONS = [{"video_path": "red_ball-bounce.mp4"}, {"video_path": "IMG_0042.mp4", "summary": "  "},
               {"video_path": "annotated.mp4", "summary": "A blue square slides"}]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    src = tmp_path_factory.mktemp("curate")
    lavfi_clip(src / "red_ball-bounce.mp4")
    lavfi_clip(src / "IMG_0042.mp4", audio=None, video="testsrc")
    lavfi_clip(src / "annotated.mp4", audio="sine=frequency=660")
    (src / "ann.json").write_text(json.dumps(ANNOTATIONS))
    return src


def run(clips, out, workers=1, **curate):
    report = prepare(clips, clips / "ann.json", out, CacheParams(), workers=workers, progress=False,
                     curate=CurateParams(**curate))
    manifest = pd.read_parquet(out / "cache" / "manifest.parquet").set_index("source")
    return report, manifest


def test_clips_without_a_summary_are_captioned_from_their_file_name_and_it_is_recorded(clips, tmp_path):
    report, manifest = run(clips, tmp_path / "data")
    assert manifest.loc["red_ball-bounce.mp4", "caption"] == "red ball bounce, with sound"
    assert manifest.loc["IMG_0042.mp4", "caption"] == "a video clip, without sound"
    assert manifest.loc["annotated.mp4", "caption"] == "A blue square slides"
    assert manifest["caption_source"].to_dict() == {"red_ball-bounce.mp4": "filename", "IMG_0042.mp4": "filename",
                                                   "annotated.mp4": "annotation"}
    assert set(manifest["safety"]) == {"not checked (curate.safety: pass)"}
    kept = json.loads((tmp_path / "data" / "prepare_report.json").read_text())["kept"]
    assert {k["source"]: k["caption_source"] for k in kept}["red_ball-bounce.mp4"] == "filename"


def test_clip_zero_shot_captioner_from_a_local_folder(clips, tiny_clip_dir, tmp_path):
    labels = ["cats", "cars", "rain"]
    _, manifest = run(clips, tmp_path / "data", workers=2, captioner="clip", captioner_path=str(tiny_clip_dir),
                      caption_labels=tuple(labels))   # mapped per clip over 2 worker processes
    for source in ("red_ball-bounce.mp4", "IMG_0042.mp4"):
        assert manifest.loc[source, "caption"] in {f"a video of {label}" for label in labels}
        assert manifest.loc[source, "caption_source"] == f"clip-zero-shot:{tiny_clip_dir.name}"
    assert manifest.loc["annotated.mp4", "caption_source"] == "annotation"   # an annotation is never replaced


def build_tiny_classifier(folder) -> None:
    """A tiny randomly initialised ViT image classifier with labels safe / nsfw, saved locally."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=2, id2label={0: "safe", 1: "nsfw"},
                       label2id={"safe": 0, "nsfw": 1})
    ViTForImageClassification(config).save_pretrained(str(folder))
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))


def test_safety_classifier_skips_unsafe_clips_with_label_and_score_and_records_the_rest(clips, tmp_path):
    folder = tmp_path / "classifier"
    build_tiny_classifier(folder)
    strict, _ = run(clips, tmp_path / "strict", safety="classifier", safety_path=str(folder), safety_threshold=0.0)
    assert not strict.kept and len(strict.skipped) == 3
    assert all(s["reason"].startswith("unsafe: nsfw scored 0.") and s["reason"].endswith(
        ">= curate.safety_threshold 0.0") for s in strict.skipped)
    lenient, manifest = run(clips, tmp_path / "lenient", safety="classifier", safety_path=str(folder),
                            safety_threshold=1.0)
    assert len(lenient.kept) == 3 and all(s.startswith("classifier:classifier: nsfw 0.") for s in manifest["safety"])


def test_bad_curation_settings_are_one_clear_error(clips, tmp_path):
    with pytest.raises(UserError, match="curate.captioner_path: no CLIP folder"):
        run(clips, tmp_path / "a", captioner="clip", caption_labels=["x"])
    folder = tmp_path / "classifier"
    build_tiny_classifier(folder)
    with pytest.raises(UserError, match="curate.unsafe_labels: gore not among the classifier's labels"):
        run(clips, tmp_path / "b", safety="classifier", safety_path=str(folder), unsafe_labels=("gore",))
    with pytest.raises(UserError, match="curate.safety must be pass or classifier"):
        run(clips, tmp_path / "c", safety="strict")
