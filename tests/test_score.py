"""World v2 and the strict scorer: the generator is deterministic, the splits hold compositions
out, real clips score 1.00 after the cache round trip, and broken clips never score correct."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from tasks.evaluate import evaluate, seen_pairs, tag_novelty
from tasks.params import load_params
from tasks.preprocess import frame_times
from tasks.prepare import prepare
from tasks.score import analyse_clip, score_clip, score_set
from tasks.score.sound import analyse_sound
from tasks.worlds import scene_from_attributes, world
from tasks.worlds.common import COLORS, PITCHES, SHAPES, impact_sound
from tasks.worlds.events import MOTIONS, SPLITS, split_of

from conftest import synth_clips

FRAMES, WINDOW, SR = 32, 2.0, 16000
TIMES = frame_times(FRAMES, WINDOW)
PERIOD = WINDOW / FRAMES


def rendered(spec, size: int = 64):
    """A spec's frames as the cache holds them (32 instants over 2 s, area-downsampled to 64 px), its audio and scene."""
    w = world(spec.world)
    frames = w.render_frames(spec, 128, 32, 2.5)[np.arange(FRAMES) * 2]
    frames = frames.reshape(FRAMES, size, 128 // size, size, 128 // size, 3).mean((2, 4)).astype(np.uint8)
    audio = w.render_audio(spec, SR, 2.5)[: int(WINDOW * SR), 0]
    scene = spec.scene(TIMES, lambda o, t: w.position(o, t, 2.5 - 1 / 32))
    return frames, audio, scene


def score(frames, audio, scene):
    return score_clip(analyse_clip(frames, audio, SR, TIMES), scene, PERIOD)


def one_object(motion: str, seed: int = 0):
    specs = world("events").plan(400, seed, 0.0)
    return next(s for s in specs if len(s.objects) == 1 and s.objects[0].motion == motion)


# --- the generator ------------------------------------------------------------------------------

def test_events_plan_is_deterministic_and_varied():
    a, b, c = (world("events").plan(200, s, 0.25) for s in (3, 3, 4))
    assert a == b and a != c
    assert {len(s.objects) for s in a} == {1, 2}
    assert {o.motion for s in a for o in s.objects} == set(MOTIONS)
    bounces = [o for s in a for o in s.objects if o.motion == "bounce"]
    assert {len(o.impacts_s) for o in bounces} == {1, 2, 3}
    assert len({o.impacts_s for o in bounces}) == len(bounces)            # impact times vary per clip
    assert len({s.caption for s in a}) > 0.9 * len(a)
    for s in a:                                                           # every object named in its caption
        for o in s.objects:
            assert o.color in s.caption and o.shape in s.caption
        if len(s.objects) == 2:
            assert len({o.color for o in s.objects}) == 2 and len({o.pitch for o in s.objects}) == 2


def test_synth_events_annotations_carry_the_ground_truth(tmp_path):
    ann = synth_clips(tmp_path / "a", 6, 5)
    again = synth_clips(tmp_path / "b", 6, 5)
    assert ann.read_bytes() == again.read_bytes()
    for r in json.loads(ann.read_text()):
        scene = r["attributes"]
        assert scene["world"] == "events" and r["split"] in {"train", "val", "test"}
        for o in scene["objects"]:
            assert {"color", "shape", "motion", "pitch", "impacts_s", "trajectory"} <= set(o)
            assert (o["motion"] == "bounce") == bool(o["impacts_s"])
            assert len(o["trajectory"]) == 80 and all(0 <= v <= 1 for _, x, y in o["trajectory"] for v in (x, y))


# --- splits -------------------------------------------------------------------------------------

def _compositions(spec):
    objs = spec.objects
    out = {("cs", o.color, o.shape) for o in objs} | {("sm", o.shape, o.motion) for o in objs}
    if len(objs) == 2:
        out.add(("pair", frozenset(o.color for o in objs)))
    return out


def _held(split):
    h = SPLITS[split]
    return ({("cs", *p) for p in h["color_shape"]} | {("sm", *p) for p in h["shape_motion"]}
            | {("pair", p) for p in h["color_pair"]})


def test_events_splits_hold_compositions_out_and_every_value_in():
    specs = world("events").plan(2000, 0, 0.25)
    by_split = {s: [c for c in specs if c.split == s] for s in ("train", "val", "test")}
    assert all(len(v) >= 150 for v in by_split.values())
    seen = {s: set().union(*(_compositions(c) for c in v)) for s, v in by_split.items()}
    assert not seen["train"] & _held("test") and not seen["val"] & _held("test")
    assert not seen["train"] & _held("val")
    for split in ("val", "test"):      # every kind of held-out composition is actually evaluated
        assert {k[0] for k in seen[split] & _held(split)} == {"cs", "sm", "pair"}
    train_objects = [o for c in by_split["train"] for o in c.objects]
    assert {o.color for o in train_objects} == set(COLORS) and {o.shape for o in train_objects} == set(SHAPES)
    assert {o.motion for o in train_objects} == set(MOTIONS) and {o.pitch for o in train_objects} == set(PITCHES)
    assert all(split_of(c.objects) == c.split for c in specs)


def test_shapes_world_has_disjoint_val_and_test_combinations():
    specs = world("shapes").plan(600, 0, 0.25)
    combos = {s: {(o.color, o.shape, o.motion, o.pitch) for c in specs if c.split == s for o in c.objects}
              for s in ("train", "val", "test")}
    assert len(combos["test"]) == 12 and len(combos["val"]) == 12
    assert not combos["train"] & combos["test"] and not combos["train"] & combos["val"]
    assert not combos["val"] & combos["test"]


def test_v1_flat_attributes_read_as_a_one_object_scene():
    scene = scene_from_attributes('{"color": "red", "shape": "circle", "direction": "left-to-right", "pitch": "low"}')
    assert scene["objects"] == [{"color": "red", "shape": "circle", "motion": "left-to-right", "pitch": "low",
                                 "sound": "steady", "impacts_s": []}]
    assert scene_from_attributes(None) is None and scene_from_attributes({"mood": "calm"}) is None


# --- ground truth scores 1.00 after the cache round trip ------------------------------------------

@pytest.mark.parametrize("world_name,clips", [("events", 40), ("shapes", 24)])
def test_reference_run_scores_real_clips_perfectly(tmp_path, world_name, clips):
    params = load_params(overrides=[f"data.world={world_name}", "eval.splits=train,val,test", "train.mlflow=false"])
    ann = synth_clips(tmp_path / "raw", clips, 2, world=world_name)
    prepare(tmp_path / "raw", ann, tmp_path / "data", params.cache, workers=2, progress=False)
    metrics = evaluate(None, tmp_path / "eval", params, data=tmp_path / "data", reference=True, progress=False)
    impacts = 0
    for split, group in metrics["splits"].items():
        scene = group["scene"]
        for key in ("color", "shape", "motion", "pitch", "object_all", "count", "all_correct"):
            assert scene[key] == 1.0, (split, key, scene)
        sync = scene["sync"]
        impacts += sync["visual_impacts"]
        if sync["visual_impacts"]:
            assert sync["recall"] == sync["precision"] == 1.0
            assert sync["offset_ms_p90_abs"] <= 1000 * PERIOD
        if scene["clips"] > 2:
            assert scene["baselines"]["shuffled"]["all_correct"] < 0.5
    assert (impacts > 0) == (world_name == "events")
    rows = [line.split("\t")[:2] for line in (tmp_path / "eval" / "scores.tsv").read_text().splitlines()[1:]]
    assert [split for split, kind in rows if kind == "model"] == ["train", "val", "test"]


def test_scores_are_also_given_per_object_count():
    """One- and two-object scenes fail differently: by_count splits the set by the expected count."""
    specs = world("events").plan(60, 3, 0.0)
    one = next(s for s in specs if len(s.objects) == 1)
    two = [s for s in specs if len(s.objects) == 2][:2]
    clips = [rendered(s) for s in (one, two[0])]
    analyses = [analyse_clip(frames, audio, SR, TIMES) for frames, audio, _ in clips]
    expected = [clips[0][2], rendered(two[1])[2]]      # the two-object clip against another scene
    result = score_set(analyses, expected, PERIOD)
    assert result["by_count"]["1"]["clips"] == result["by_count"]["2"]["clips"] == 1
    assert result["by_count"]["1"]["all_correct"] == 1.0 and result["by_count"]["2"]["all_correct"] == 0.0
    assert result["all_correct"] == 0.5


def test_held_out_objects_are_tagged_with_the_compositions_training_never_shows():
    """by_novelty needs every held-out (color, shape) and (shape, motion) pair tagged, and seen ones not."""
    specs = world("events").plan(600, 0, 0.0)
    scene = lambda s: s.scene(TIMES, lambda o, t: (0.5, 0.5))    # noqa: E731 - positions play no part here
    seen = seen_pairs(scene(s) for s in specs if s.split == "train")
    for s in (s for s in specs if s.split == "val"):
        for obj, tagged in zip(s.objects, tag_novelty(scene(s), seen)["objects"]):
            tags = tagged["novelty"].split(" and ")
            assert ("color_shape" in tags) == ((obj.color, obj.shape) in SPLITS["val"]["color_shape"])
            assert ("shape_motion" in tags) == ((obj.shape, obj.motion) in SPLITS["val"]["shape_motion"])


def test_scores_are_also_given_per_novelty_tag():
    one = next(s for s in world("events").plan(60, 3, 0.0) if len(s.objects) == 1)
    frames, audio, scene = rendered(one)
    analyses = [analyse_clip(frames, audio, SR, TIMES)] * 2
    wrong = {**scene, "objects": [{**scene["objects"][0], "color": "none-such", "novelty": "color_shape"}]}
    right = {**scene, "objects": [{**scene["objects"][0], "novelty": "seen"}]}
    result = score_set(analyses, [right, wrong], PERIOD)
    assert result["by_novelty"]["seen"]["object_all"] == 1.0 and result["by_novelty"]["seen"]["objects"] == 1
    assert result["by_novelty"]["color_shape"]["object_all"] == 0.0
    assert "by_novelty" not in score_set(analyses[:1], [scene], PERIOD)


def test_every_expected_object_is_told_how_it_was_drawn():
    frames, audio, scene = rendered(one_object("left-to-right"))
    obj = scene["objects"][0]
    other = next(shape for shape in SHAPES if shape != obj["shape"])
    analysis = analyse_clip(frames, audio, SR, TIMES)
    def blurred(sigma: float):
        out = np.stack([ndimage.gaussian_filter(f.astype(np.float32), (sigma, sigma, 0)) for f in frames])
        return analyse_clip(out.astype(np.uint8), audio, SR, TIMES)

    cases = {"right": (analysis, obj), "wrong_shape": (analysis, {**obj, "shape": other}),
             "absent": (analysis, {**obj, "color": "none-such"}),
             "messy": (blurred(1.0), obj),          # the shape still fits, the edge is soft
             "blob": (blurred(4.0), obj)}           # no shape fits
    for kind, (a, o) in cases.items():
        assert score_clip(a, {**scene, "objects": [o]}, PERIOD).drawn == [kind], kind
    result = score_set([a for a, _ in cases.values()], [{**scene, "objects": [o]} for _, o in cases.values()], PERIOD)
    assert result["drawn"] == {"right": 1, "messy": 1, "wrong_shape": 1, "blob": 1, "absent": 1}


# --- broken clips are never correct --------------------------------------------------------------

def test_noise_and_specks_are_no_objects():
    frames, audio, scene = rendered(one_object("left-to-right"))
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, frames.shape, dtype=np.uint8)
    assert not score(noise, audio, scene).all_correct
    speck = np.broadcast_to(frames[0, 0, 0], frames.shape).copy()           # background everywhere ...
    speck[:, 30:32, 30:32] = COLORS[scene["objects"][0]["color"]]           # ... and a 2x2 speck
    s = score(speck, audio, scene)
    assert not s.all_correct and not s.objects[0]["color"]


def test_two_blobs_of_one_color_and_speckle_are_wrong():
    frames, audio, scene = rendered(one_object("left-to-right"))
    assert score(frames, audio, scene).all_correct
    color = COLORS[scene["objects"][0]["color"]]
    split = frames.copy()
    split[:, 2:10, 2:10] = color                                            # a second blob of the object's color
    assert not score(split, audio, scene).all_correct
    speckled = frames.copy()
    rng = np.random.default_rng(1)
    ys, xs = rng.integers(0, 64, (2, 40))
    speckled[:, ys, xs] = color                                             # scattered pixels of its color
    assert not score(speckled, audio, scene).all_correct


def test_an_object_of_the_wrong_size_is_wrong():
    frames, audio, scene = rendered(one_object("left-to-right"))
    obj = scene["objects"][0]
    huge = frames.copy()
    huge[:, 4:60, 4:60] = COLORS[obj["color"]]                              # a square filling most of the frame
    assert not score(huge, audio, scene).objects[0]["color"]


def test_static_and_smeared_objects_are_wrong():
    frames, audio, scene = rendered(one_object("top-to-bottom"))
    static = np.repeat(frames[:1], FRAMES, axis=0)
    s = score(static, audio, scene)
    assert not s.all_correct and not s.objects[0]["motion"]
    blurred = np.stack([ndimage.gaussian_filter(f.astype(np.float32), (2.5, 2.5, 0)) for f in frames]).astype(np.uint8)
    s = score(blurred, audio, scene)
    assert not s.all_correct and not s.objects[0]["shape"]


def test_silence_noise_and_nan_audio_have_no_pitch():
    frames, audio, scene = rendered(one_object("right-to-left"))
    rng = np.random.default_rng(2)
    for bad in (np.zeros_like(audio), rng.uniform(-1, 1, audio.shape), np.full_like(audio, np.nan)):
        s = score(frames, bad, scene)
        assert not s.all_correct and not s.objects[0]["pitch"]


def test_impacts_need_their_sound_at_the_right_time_and_pitch():
    spec = one_object("bounce")
    frames, audio, scene = rendered(spec)
    obj = scene["objects"][0]
    assert score(frames, audio, scene).all_correct
    n = len(audio)
    late = sum(impact_sound(PITCHES[obj["pitch"]], t + 0.15, n, SR, 0.8) for t in obj["impacts_s"])
    s = score(frames, late, scene)                                          # every ping 150 ms late
    assert not s.all_correct and s.impacts_matched == 0 and s.offsets_ms and min(s.offsets_ms) > 100
    other = next(p for p in PITCHES if p != obj["pitch"])
    wrong = sum(impact_sound(PITCHES[other], t, n, SR, 0.8) for t in obj["impacts_s"])
    assert not score(frames, wrong, scene).all_correct                      # on time, but the wrong pitch
    extra = audio + impact_sound(PITCHES[obj["pitch"]], 1.9, n, SR, 0.8)
    s = score(frames, extra, scene)                                         # a ping with no impact on screen
    assert not s.all_correct and s.onsets_matched < s.onsets


def test_onsets_are_found_within_a_few_ms():
    n = int(WINDOW * SR)
    times = [0.31, 0.77, 1.42]
    audio = sum(impact_sound(440.0, t, n, SR, 0.8) for t in times) + impact_sound(220.0, 1.05, n, SR, 0.4)
    found = analyse_sound(audio, SR)
    assert found.steady == [] and set(found.onsets) == {"mid", "low"}
    assert np.allclose(found.onsets["mid"], times, atol=0.005) and np.allclose(found.onsets["low"], [1.05], atol=0.005)


def test_a_glide_may_pause_but_not_jump_back_and_forth():
    from tasks.score.motion import classify

    ts = np.arange(16) / 8
    stairs = np.repeat(np.linspace(0.25, 0.65, 8), 2)             # moves every second frame (frame-pair latents)
    still = np.full(16, 0.5)
    assert classify(ts, stairs, still)[0] == "left-to-right"
    jitter = stairs + np.tile([0.0, -0.06], 8)                     # the same net travel, jumping back every frame
    assert classify(ts, jitter, still)[0] == "none"


def test_synth_cli_picks_the_world(tmp_path, capsys):
    from tasks.cli import main as cli_main

    assert cli_main(["synth", "--out", str(tmp_path / "bad"), "--world", "nope"]) == 2
    assert "unknown world 'nope'; known: shapes, events" in capsys.readouterr().err
    assert cli_main(["synth", "--out", str(tmp_path / "v1"), "--world", "shapes", "--set", "data.synth_num_clips=2"]) == 0
    records = json.loads((tmp_path / "v1" / "annotations.json").read_text())
    assert {r["attributes"]["world"] for r in records} == {"shapes"}
