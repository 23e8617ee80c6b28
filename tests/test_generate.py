"""Generation and evaluation on a tiny trained checkpoint: tensors, files, determinism, i2v, prompt
files, every metric, and an error message for each bad input."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.cli import main as cli_main
from model.precision import autocast_dtype
from tasks.checkpoint import latest_checkpoint, load_pipeline
from tasks.generate import generate
from tasks.runtime import UserError
from tasks.samples import PromptSpec, load_image, read_prompts
from tasks.params import load_params
from tasks.runtime import UserError

FAST = ["sample.steps=3", "eval.num_prompts=4", "eval.num_i2v=2", "eval.num_saved_samples=1", "eval.num_vae_clips=4"]
PROMPTS = ["A red circle moves from left to right with a low tone", "A blue square drifts upward; a high note rings"]


@pytest.fixture(scope="module")
def pipe(trained_checkpoint):
    return load_pipeline(trained_checkpoint)[0]


def test_generate_content_shapes_ranges_and_seed(pipe):
    a = pipe.generate_content(PROMPTS, steps=3, guidance=4.0, sampler="dpm", seed=1, decode_base=True)
    b = pipe.generate_content(PROMPTS, steps=3, guidance=4.0, sampler="dpm", seed=1)
    c = pipe.generate_content(PROMPTS, steps=3, guidance=4.0, sampler="dpm", seed=2)
    assert a.video.shape == (2, 3, 32, 64, 64) and a.base_video.shape == (2, 3, 32, 32, 32)
    assert a.audio.shape == (2, 32000) and a.sample_rate == 16000 and a.fps == 16.0
    assert 0 <= float(a.video.min()) and float(a.video.max()) <= 1
    assert -1 <= float(a.audio.min()) and float(a.audio.max()) <= 1 and float(a.audio.abs().max()) > 0.5
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    assert b.base_video is None  # decoded only when asked
    assert not torch.equal(a.video, c.video)


def test_bf16_sampling_is_reproducible_and_close_to_fp32(pipe):
    full = pipe.generate_content(PROMPTS, steps=3, seed=1, precision="fp32")
    half = pipe.generate_content(PROMPTS, steps=3, seed=1, precision="bf16")
    again = pipe.generate_content(PROMPTS, steps=3, seed=1, precision="bf16")
    assert half.video.dtype == half.audio.dtype == torch.float32
    assert torch.equal(half.video, again.video) and torch.equal(half.audio, again.audio)
    assert not torch.equal(half.video, full.video)
    assert float((half.video - full.video).abs().mean()) < 0.02
    # "auto" follows the machine's recorded measurement (tasks/checkpoint.py), as training does
    from tasks.checkpoint import recorded_bf16_speedup

    assert pipe.bf16_speedup is recorded_bf16_speedup
    auto = pipe.generate_content(PROMPTS, steps=3, seed=1, precision="auto")
    picked = half if autocast_dtype("auto", "cpu", recorded_bf16_speedup) is torch.bfloat16 else full
    assert torch.equal(auto.video, picked.video)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_every_sampler_gives_finite_clips(pipe, sampler):
    out = pipe.generate_content(PROMPTS[:1], steps=3, sampler=sampler, seed=0)
    assert torch.isfinite(out.video).all() and torch.isfinite(out.audio).all()


def test_image_to_video_uses_the_image(pipe):
    red, blue = torch.zeros(3, 64, 64), torch.zeros(3, 64, 64)
    red[0, 16:48, 8:40], blue[2, 16:48, 8:40] = 1.0, 1.0
    with_red = pipe.generate_content(PROMPTS[:1], red, steps=3, seed=0)
    with_blue = pipe.generate_content(PROMPTS[:1], blue, steps=3, seed=0)
    text_only = pipe.generate_content(PROMPTS[:1], steps=3, seed=0)
    assert not torch.equal(with_red.video, with_blue.video)
    assert not torch.equal(with_red.video, text_only.video)
    with pytest.raises(ValueError, match="input images for"):
        pipe.generate_content(PROMPTS, torch.zeros(3, 3, 64, 64), steps=2)


def _probe(path: Path) -> dict:
    import av

    with av.open(str(path)) as c:
        video, audio = c.streams.video, c.streams.audio
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        return {"n_video": len(video), "n_audio": len(audio), "vcodec": video[0].codec_context.name,
                "acodec": audio[0].codec_context.name, "duration": float(c.duration) / 1e6, "frames": frames,
                "rate": audio[0].rate}


def test_generate_writes_mp4_with_aac_wav_png_and_is_reproducible(trained_checkpoint, tmp_path):
    import soundfile as sf

    params = load_params(overrides=FAST)
    first = generate(trained_checkpoint, [PromptSpec(PROMPTS[0])], tmp_path / "a", params, seed=7, progress=False)
    again = generate(trained_checkpoint, [PromptSpec(PROMPTS[0])], tmp_path / "b", params, seed=7, progress=False)
    rec = first[0]
    info = _probe(Path(rec["mp4"]))
    assert (info["n_video"], info["n_audio"]) == (1, 1)
    assert (info["vcodec"], info["acodec"]) == ("h264", "aac")
    assert abs(info["duration"] - 2.0) < 0.15, info["duration"]
    assert info["frames"].shape == (32, 256, 256, 3)
    assert np.array_equal(info["frames"], _probe(Path(again[0]["mp4"]))["frames"])
    wave, sr = sf.read(rec["wav"])
    assert sr == 16000 and wave.shape == (32000,)
    assert Path(rec["png"]).stat().st_size > 1000
    lines = (tmp_path / "a" / "samples.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["prompt"] == PROMPTS[0]
    assert json.loads(lines[0])["guidance_interval"] == list(params.sample.guidance_interval)


def test_prompt_files_text_and_jsonl(tmp_path):
    txt = tmp_path / "MovieGenVideoBench.txt"
    txt.write_text("A red circle moves left to right\n\n  A blue square moves upward  \n", encoding="utf-8")
    assert [s.prompt for s in read_prompts(txt)] == ["A red circle moves left to right", "A blue square moves upward"]
    jl = tmp_path / "bench.jsonl"
    jl.write_text(json.dumps({"prompt": "a dog barks", "id": 3}) + "\n"
                  + json.dumps({"prompt": "a red circle", "image": "first.png", "attributes": {"color": "red"}}) + "\n")
    specs = read_prompts(jl)
    assert specs[0].prompt == "a dog barks" and specs[0].extra == {"id": 3}
    assert specs[1].image == str(tmp_path / "first.png") and specs[1].attributes == {"color": "red"}
    for content, message in [("", "empty"), ('{"prompt": "ok"}\n{"text": "x"}\n', r"bench2.jsonl:2: .*'prompt'"),
                             ('{"prompt": "ok"}\n{nope\n', r"bench2.jsonl:2: not a JSON object"),
                             ('{"prompt": "  "}\n', r"bench2.jsonl:1: empty prompt")]:
        (tmp_path / "bench2.jsonl").write_text(content)
        with pytest.raises(UserError, match=message):
            read_prompts(tmp_path / "bench2.jsonl")


def test_prompt_file_images_stay_in_the_files_folder_and_are_size_capped(tmp_path, monkeypatch):
    import tasks.samples as samples
    from PIL import Image

    folder = tmp_path / "prompts"
    folder.mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(folder / "inside.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    jl = folder / "p.jsonl"
    for image in ("../outside.png", str(tmp_path / "outside.png"), "/etc/passwd"):
        jl.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": "a", "image": image}) + "\n")
        with pytest.raises(UserError, match=r"p.jsonl:2: image .* is outside the prompts file's folder .*--allow-outside"):
            read_prompts(jl)
    jl.write_text(json.dumps({"prompt": "a", "image": "../outside.png"}) + "\n")
    assert read_prompts(jl, allow_outside=True)[0].image == str(tmp_path / "outside.png")
    jl.write_text(json.dumps({"prompt": "a", "image": "inside.png"}) + "\n")
    assert load_image(read_prompts(jl)[0].image).shape == (3, 48, 64)
    monkeypatch.setattr(samples, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UserError, match=r"inside.png: image of 64x48 pixels is over the limit"):
        load_image(folder / "inside.png")
    monkeypatch.setattr(samples, "MAX_IMAGE_BYTES", 10)
    with pytest.raises(UserError, match=r"inside.png: image of \d+ bytes is over the limit of 10 bytes"):
        load_image(folder / "inside.png")


def _cli_error(capsys, *argv: str) -> str:
    assert cli_main(list(argv)) == 2
    return capsys.readouterr().err


def test_generate_errors_name_the_problem(trained_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "out")
    err = _cli_error(capsys, "generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x", "--out", out)
    assert "nope: no such checkpoint folder" in err
    (tmp_path / "empty").mkdir()
    err = _cli_error(capsys, "generate", "--checkpoint", str(tmp_path / "empty"), "--prompt", "x", "--out", out)
    assert "config.json: missing" in err
    err = _cli_error(capsys, "generate", "--checkpoint", str(trained_checkpoint), "--prompt", "  ", "--out", out)
    assert "--prompt is empty" in err
    bad_image = tmp_path / "frame.png"
    bad_image.write_bytes(b"not an image at all")
    err = _cli_error(capsys, "generate", "--checkpoint", str(trained_checkpoint), "--prompt", "x", "--image",
                     str(bad_image), "--out", out)
    assert "frame.png: unreadable image" in err
    err = _cli_error(capsys, "generate", "--checkpoint", str(trained_checkpoint), "--prompt", "x", "--image",
                     str(tmp_path / "missing.png"), "--out", out)
    assert "missing.png: image not found" in err
    err = _cli_error(capsys, "generate", "--checkpoint", str(trained_checkpoint), "--prompt", "x", "--out", out,
                     "--set", "sample.guidance_interval=[900,100]")
    assert "sample.guidance_interval must be [lo, hi]" in err and "[900, 100]" in err

    def edited_copy(name: str, edit) -> str:
        copy = tmp_path / name
        shutil.copytree(trained_checkpoint, copy)
        config = json.loads((copy / "denoiser" / "config.json").read_text())
        edit(config["params"])
        (copy / "denoiser" / "config.json").write_text(json.dumps(config))
        return str(copy)

    wider = edited_copy("wider", lambda p: p["denoiser"]["base"].update(dim=48))
    err = _cli_error(capsys, "generate", "--checkpoint", wider, "--prompt", "x", "--out", out)
    assert "base_ema.safetensors: incompatible with" in err and "config.json" in err
    clip = edited_copy("clip", lambda p: p["conditioning"].update(backend="clip", clip_path=str(tmp_path / "no-clip")))
    err = _cli_error(capsys, "generate", "--checkpoint", clip, "--prompt", "x", "--out", out)
    assert "conditioning.clip_path: no checkpoint at" in err and "no-clip" in err
    garbage = edited_copy("garbage", lambda p: None)
    (latest_checkpoint(Path(garbage) / "denoiser") / "base_ema.safetensors").write_bytes(b"\x00garbage" * 10)
    err = _cli_error(capsys, "generate", "--checkpoint", garbage, "--prompt", "x", "--out", out)
    assert "base_ema.safetensors: not a readable safetensors file" in err and len(err.strip().splitlines()) == 1
    for step in (Path(wider) / "denoiser").glob("step-*"):
        shutil.rmtree(step)
    err = _cli_error(capsys, "generate", "--checkpoint", wider, "--prompt", "x", "--out", out)
    assert "no denoiser checkpoint" in err


def test_a_long_prompts_file_streams_and_a_bad_line_loses_nothing_else(trained_checkpoint, tmp_path, monkeypatch,
                                                                        capsys):
    from PIL import Image

    import tasks.samples as samples

    folder = tmp_path / "p"
    folder.mkdir()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(folder / "ok.png")
    (folder / "broken.png").write_bytes(b"not a png")
    lines = [{"prompt": f"a red circle moves from left to right, take {i}"} for i in range(24)]   # 3 batches
    lines[5] = {"prompt": "a green square", "image": "broken.png"}
    lines[6] = {"prompt": "a green square", "image": "ok.png"}
    (folder / "many.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    loaded: list[str] = []
    real_load = samples.load_image
    monkeypatch.setattr(samples, "load_image", lambda p: loaded.append(p) or real_load(p))
    seen: list[int] = []   # how many images were read when each batch started: streamed, not all up front
    from model.pipeline import TinyVeo

    real_generate = TinyVeo.generate_content

    def spy(self, prompts, image=None, **kw):
        seen.append(len(loaded))
        return real_generate(self, prompts, image, **kw)

    monkeypatch.setattr(TinyVeo, "generate_content", spy)
    argv = ["generate", "--checkpoint", str(trained_checkpoint), "--prompts", str(folder / "many.jsonl"),
            "--out", str(tmp_path / "out"), "--batch-size", "8", "--steps", "2", "--set", "sample.upsampler_steps=1"]
    assert cli_main(argv) == 1   # one line failed: non-zero, the rest written
    out = capsys.readouterr()
    assert "FAILED (line 6): " in out.out and "broken.png: unreadable image" in out.out
    index = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(index) == 24 and [r["line"] for r in index if "error" in r] == [6]
    assert all(Path(r["mp4"]).exists() for r in index if "error" not in r)
    assert index[6]["image"].endswith("ok.png")   # the good image in the bad line's batch still ran
    assert seen[0] == 0 and seen[-1] == 2   # the first batch ran before any image was read


def test_a_thousand_line_prompts_file_streams_with_flat_memory(trained_checkpoint, tmp_path, monkeypatch, capsys):
    """1,000 prompts (MovieGenBench's size), three with a broken image: every line is accounted for
    in samples.jsonl, the three are reported and the rest written, a progress bar counts to 1000,
    and no batch's output outlives the next batch (memory stays flat however long the file)."""
    import gc
    import weakref

    from PIL import Image

    from model.pipeline import TinyVeo

    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    lines = [{"prompt": f"a {c} circle moves from left to right with a low tone, take {i}"}
             for i, c in zip(range(1000), ["red", "green", "blue", "yellow"] * 250)]
    for bad in (99, 499, 899):
        lines[bad] = {"prompt": "a green square falls", "image": "broken.png"}
    (folder / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    alive_at_each_batch: list[int] = []
    outputs: list[weakref.ref] = []
    real_generate = TinyVeo.generate_content

    def spy(self, prompts, image=None, **kw):
        gc.collect()
        alive_at_each_batch.append(sum(ref() is not None for ref in outputs))
        result = real_generate(self, prompts, image, **kw)
        outputs.append(weakref.ref(result))
        return result

    monkeypatch.setattr(TinyVeo, "generate_content", spy)
    argv = ["generate", "--checkpoint", str(trained_checkpoint), "--prompts", str(folder / "bench.jsonl"),
            "--out", str(tmp_path / "out"), "--batch-size", "50", "--steps", "1", "--formats", "wav",
            "--set", "sample.upsampler_steps=1"]
    assert cli_main(argv) == 1
    captured = capsys.readouterr()
    index = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(index) == 1000 and sorted(r["line"] for r in index) == list(range(1, 1001))
    assert [r["line"] for r in index if "error" in r] == [100, 500, 900]
    assert captured.out.count("FAILED") == 3 and "broken.png: unreadable image" in captured.out
    written = [r for r in index if "error" not in r]
    assert all(Path(r["wav"]).exists() and "mp4" not in r for r in written) and len(written) == 997
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 0
    assert "1000/1000" in captured.err   # the progress bar
    assert len(alive_at_each_batch) >= 20 and max(alive_at_each_batch) <= 1, alive_at_each_batch


def test_formats_are_checked(trained_checkpoint, tmp_path, capsys):
    err = _cli_error(capsys, "generate", "--checkpoint", str(trained_checkpoint), "--prompt", "x", "--out",
                     str(tmp_path), "--formats", "wav,gif")
    assert "--formats: gif; choose from mp4, wav, png" in err


def test_evaluate_reports_every_metric(trained_checkpoint, prepared_data, tiny_clip_dir, tmp_path, monkeypatch):
    import tasks.evaluate
    from tasks.evaluate import evaluate

    loaded = []

    def spy(checkpoint, device=None, snapshot=None):
        loaded.append(snapshot)
        return load_pipeline(checkpoint, device, snapshot)

    monkeypatch.setattr(tasks.evaluate, "load_pipeline", spy)
    params = load_params(overrides=FAST + [f"eval.clip_path={tiny_clip_dir}"])
    m = evaluate(trained_checkpoint, tmp_path / "eval", params, data=prepared_data, progress=False, track=False)
    # the quality curve: snapshot 4 generated and scored, then the final step 8's own figures
    assert [None if s is None else s.step for s in loaded] == [None, 4]
    assert [(r["split"], r["steps"]) for r in m["curve"]] == [("val", 4), ("test", 4), ("val", 8), ("test", 8)]
    for row in m["curve"][2:]:
        scene = m["splits"][row["split"]]["scene"]
        assert all(row[k] == scene[k] for k in ("color", "shape", "motion", "pitch", "count", "all_correct"))
    assert 0 < m["curve"][0]["minutes"] < m["curve"][2]["minutes"]
    for split in ("val", "test"):
        lines = (tmp_path / "eval" / "curve" / f"{split}.tsv").read_text().splitlines()
        assert lines[0].split("\t")[:2] == ["minutes", "steps"]
        assert [ln.split("\t")[1] for ln in lines[1:]] == ["4", "8"]
    assert json.loads((tmp_path / "eval" / "details.json").read_text()) == json.loads(json.dumps(m))
    numbers = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(numbers) == {"val", "test", "vae"} and numbers["test"]["all_correct"] == m["splits"]["test"]["scene"]["all_correct"]
    assert all(type(v) in (int, float) for group in numbers.values() for v in group.values())
    assert numbers["test"]["clip_score"] == m["splits"]["test"]["clip_score"]["torchmetrics"]
    for png in ("accuracy.png", "samples_grid.png", "curve.png"):
        with Image.open(tmp_path / "eval" / png) as im:
            assert im.width > 400 and im.height > 200, png
    assert list(m["splits"]) == ["val", "test"]
    for split, group in m["splits"].items():
        scene = group["scene"]
        assert scene["clips"] == group["prompts"]["count"] > 0 and scene["objects"] >= scene["clips"]
        for key in ("color", "shape", "motion", "pitch", "object_all", "count", "all_correct"):
            assert 0.0 <= scene[key] <= 1.0
            assert 0.0 <= scene["baselines"]["majority"][key] <= 1.0
            assert 0.0 <= scene["baselines"]["shuffled"][key] <= 1.0
        assert {"recall", "precision", "offset_ms_mean_abs"} <= set(scene["sync"])
        clip = group["clip_score"]
        assert -1.0 <= clip["raw_cosine"] <= 1.0 and clip["torchmetrics"] >= 0 and clip["frames_per_clip"] == 32
        color = group["color"]
        assert color["count"] == scene["clips"] and 0 <= color["histogram_l1"] <= 2
        assert numbers[split]["color_histogram_l1"] == color["histogram_l1"]
    tsv = (tmp_path / "eval" / "scores.tsv").read_text().splitlines()
    assert tsv[0].startswith("split\tkind\tcolor") and len(tsv) == 1 + 2 * 3
    i2v = next(g["i2v"] for g in m["splits"].values() if "status" not in g["i2v"])
    assert i2v["count"] >= 1 and i2v["lpips_backbone"] in ("pretrained", "random")
    name = "lpips" if i2v["lpips_backbone"] == "pretrained" else "lpips_random_backbone"
    assert i2v[name] >= 0 and ("lpips" not in i2v or i2v["lpips_backbone"] == "pretrained")
    assert i2v["scene"]["attributes"] == ["motion", "pitch"] and "color" not in i2v["scene"]
    for group in m["splits"].values():
        assert group["scene_through_vaes"]["clips"] == group["prompts"]["count"]
    vae = m["vae_reconstruction"]
    assert vae["video_psnr_base"] > 5 and -1 <= vae["video_ssim_base"] <= 1 and vae["audio_logmel_l1"] >= 0
    assert any(p.suffix == ".mp4" for p in (tmp_path / "eval" / "samples").iterdir())

    no_clip = evaluate(trained_checkpoint, tmp_path / "eval2", load_params(overrides=FAST + ["eval.num_i2v=0"]),
                       data=prepared_data, progress=False, track=False)
    for group in no_clip["splits"].values():
        assert group["clip_score"]["status"] == "not computed" and "clip_path" in group["clip_score"]["reason"]
        assert group["i2v"]["status"] == "not computed"
    with pytest.raises(UserError, match="no items in split 'nope'"):
        evaluate(trained_checkpoint, tmp_path / "eval3", load_params(overrides=FAST + ["eval.splits=nope"]),
                 data=prepared_data, progress=False, track=False)


def test_the_vae_ceiling_scores_the_real_clips_through_the_vaes(prepared_data, tmp_path):
    """With VAEs that change nothing, the round trip gives back every cached clip in order and the
    ceiling is exactly the real clips' score (--reference); the per-count parts add up to the whole."""
    from types import SimpleNamespace

    from tasks.evaluate import EvalSet, ceiling_metrics, generate_t2v, scene_metrics, split_specs, through_vaes

    class Unchanged:
        def encode(self, x):
            return x

        def decode(self, z):
            return z

    params = load_params(overrides=FAST)
    specs, cache, manifest = split_specs(prepared_data, ["train"], 8)["train"]   # clips whose sounds differ
    pipe = SimpleNamespace(video_vae=Unchanged(), audio_vae=Unchanged(), device=torch.device("cpu"))
    videos, audios = through_vaes(pipe, cache, batch=3)
    assert len(videos) == len(audios) == len(specs) > 1
    for i, (video, audio) in enumerate(zip(videos, audios)):
        assert torch.equal(video, cache["video_upsampled"][i].float() / 255)
        assert np.array_equal(audio, cache["audio"][i, 0].float().numpy())
    ceiling = ceiling_metrics(EvalSet("train", pipe, params, {}, specs, tmp_path, cache, manifest))
    reference = EvalSet("train", None, params, {}, specs, tmp_path, cache, manifest)
    generate_t2v(reference, False)
    assert ceiling == scene_metrics(reference) and ceiling["clips"] == len(specs)
    parts = ceiling["by_count"].values()
    assert sum(p["clips"] for p in parts) == ceiling["clips"]
    assert math.isclose(sum(p["clips"] * p["all_correct"] for p in parts), ceiling["clips"] * ceiling["all_correct"])


def test_evaluate_from_a_prompts_file_logs_to_mlflow(trained_checkpoint, tmp_path, monkeypatch):
    import mlflow

    from tasks.evaluate import evaluate

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPTS[0], "attributes": {"color": "red", "shape": "circle",
                                                                        "direction": "left-to-right", "pitch": "low"}}) + "\n")
    m = evaluate(trained_checkpoint, tmp_path / "eval", load_params(overrides=FAST),
                 prompts=prompts, progress=False, track=True)
    assert m["splits"]["prompts"]["scene"]["clips"] == 1
    assert m["vae_reconstruction"]["status"] == "not computed"
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tinyveo").experiment_id])
    assert len(runs) == 1
    assert "splits.prompts.scene.all_correct" in runs[0].data.metrics
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/samples"} <= logged


def test_clip_score_convention_on_identical_embeddings():
    from tasks.metrics import clip_score_from_features

    text = torch.randn(3, 16)
    same = clip_score_from_features(text, text[:, None].expand(-1, 5, -1))
    assert same.raw == pytest.approx(1.0, abs=1e-6) and same.torchmetrics == pytest.approx(100.0, abs=1e-4)
    opposite = clip_score_from_features(text, -text[:, None])
    assert opposite.raw == pytest.approx(-1.0, abs=1e-6) and opposite.torchmetrics == 0.0
    ortho = clip_score_from_features(torch.tensor([[1.0, 0.0]]), torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    assert ortho.raw == pytest.approx(0.5) and ortho.torchmetrics == pytest.approx(50.0)


def test_reconstruction_metrics():
    from tasks.metrics import psnr, ssim

    x = torch.rand(2, 3, 4, 32, 32)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-5) and psnr(x, x) >= 99
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert ssim(x, noisy) < 0.95 and 15 < psnr(x, noisy) < 25
    assert psnr(torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.1)) == pytest.approx(20.0, abs=1e-4)


def test_color_statistics_compare_generated_with_real_clips():
    from tasks.metrics import color_statistics

    x = torch.rand(2, 3, 4, 16, 16)
    same = color_statistics(x, x)
    assert same["histogram_l1"] == 0 and same["generated_mean_rgb"] == same["real_mean_rgb"]
    red = torch.zeros(1, 3, 2, 8, 8)
    red[:, 0] = 1
    apart = color_statistics(red, 1 - red)   # every channel's mass in the other end bin
    assert apart["histogram_l1"] == pytest.approx(2.0) and apart["generated_mean_rgb"] == [1.0, 0.0, 0.0]
    assert 0 < color_statistics(x, x.clamp(0, 0.5))["histogram_l1"] < 2
