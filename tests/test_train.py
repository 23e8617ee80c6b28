"""Training: each stage lowers its loss, exact resume, kill -9 safety, NaN guard, frozen modules,
MLflow contents, and DDP with two processes. All on a tiny config over a small prepared dataset."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tasks.checkpoint import latest_checkpoint, load_state, load_weights
from tasks.params import load_params
from tasks.training import NonFiniteLossError

from conftest import TRAIN_OVERRIDES, train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_dir(prepared_data):
    """The session's prepared built-in clips (conftest), read-only here: training writes elsewhere."""
    return prepared_data


def tiny(*extra: str):
    return load_params(overrides=TRAIN_OVERRIDES + list(extra))


def first_last(losses: list[dict], key: str, k: int = 2) -> tuple[float, float]:
    values = [r[key] for r in losses if key in r]
    return sum(values[:k]) / k, sum(values[-k:]) / k


def test_each_stage_lowers_its_loss_and_writes_artifacts(data_dir, tmp_path):
    out = tmp_path / "ckpt"
    summary = train(data_dir, out, tiny("train.vae_steps=16", "train.denoiser_steps=16"))
    assert summary["vae"]["steps"] == 16 and summary["denoiser"]["steps"] == 16
    vae_losses = load_state(latest_checkpoint(out / "vae"))["losses"]
    den_losses = load_state(latest_checkpoint(out / "denoiser"))["losses"]
    for key in ("loss_video_base", "loss_audio_vae"):
        before, after = first_last(json.loads(vae_losses), key)
        assert after < before, key
    for key in ("loss_video", "loss_upsampler"):
        before, after = first_last(json.loads(den_losses), key, k=4)
        assert after < before, key
    for name in ("vae/video_vae.safetensors", "vae/audio_vae.safetensors", "vae/loss_vae.png", "vae/summary.json",
                 "denoiser/loss_denoiser.tsv", "denoiser/config.json", "denoiser/summary.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "denoiser" / "summary.json").read_text())["steps"] == 16
    assert float(load_weights(out / "vae", "video_vae")["scaling_factor"]) != 1.0  # set from the trained latents
    ckpt = latest_checkpoint(out / "denoiser")
    assert {p.name for p in ckpt.iterdir()} >= {"base.safetensors", "upsampler.safetensors", "base_ema.safetensors", "state.pt"}
    assert (out / "latents" / "latents.safetensors").exists()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_ends_with_the_same_weights(data_dir, tmp_path, precision):
    params = tiny(f"train.precision={precision}")
    train(data_dir, tmp_path / "straight", params)
    train(data_dir, tmp_path / "split", params, stop_after=3)               # vae 0 -> 3
    train(data_dir, tmp_path / "split", params, resume=True, stop_after=3)  # vae 3 -> 6
    train(data_dir, tmp_path / "split", params, resume=True, stop_after=5)  # vae 6 -> 8, den 0 -> 5
    train(data_dir, tmp_path / "split", params, resume=True)                # den 5 -> 8
    for stage, modules in (("vae", ("video_vae", "audio_vae")), ("denoiser", ("base", "upsampler", "base_ema"))):
        a, b = latest_checkpoint(tmp_path / "straight" / stage), latest_checkpoint(tmp_path / "split" / stage)
        assert a.name == b.name
        for m in modules:
            wa, wb = load_weights(a, m), load_weights(b, m)
            assert all(torch.equal(wa[k], wb[k]) for k in wa), (stage, m)


def test_nan_loss_stops_with_step_and_stage_and_keeps_the_checkpoint(data_dir, tmp_path, monkeypatch):
    params = tiny()
    out = tmp_path / "nan"
    train(data_dir, out, params, stages=("vae",))
    import model.diffusion as diffusion

    real = diffusion.F.mse_loss
    calls = {"n": 0}

    def poisoned(a, b, *args, **kw):
        calls["n"] += 1
        loss = real(a, b, *args, **kw)
        return loss * float("nan") if calls["n"] > 10 else loss

    monkeypatch.setattr(diffusion.F, "mse_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"denoiser stage: non-finite loss .* at step 4"):
        train(data_dir, out, params, stages=("denoiser",))
    kept = latest_checkpoint(out / "vae")
    assert kept is not None and load_state(kept)["step"] == 8
    assert latest_checkpoint(out / "denoiser") is None  # nothing after the NaN was saved


def test_kill_during_training_leaves_a_loadable_checkpoint(data_dir, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tasks.cli", "train-vae", "--data", str(data_dir), "--out", str(out)]
    for o in TRAIN_OVERRIDES + ["train.vae_steps=400", "train.checkpoint_every=1"]:
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while latest_checkpoint(out / "vae") is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # checkpointing every step: the kill lands in or near a write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = latest_checkpoint(out / "vae")
    assert folder is not None
    state = load_state(folder)
    assert state["step"] >= 1
    assert load_weights(folder, "video_vae") and load_weights(folder, "audio_vae")
    resumed = train(data_dir, out, tiny("train.vae_steps=" + str(state["step"] + 2)), resume=True, stages=("vae",))
    assert resumed["vae"]["steps"] == state["step"] + 2


def test_frozen_modules_stay_bit_identical(data_dir, tmp_path):
    out = tmp_path / "frozen"
    params = tiny()
    train(data_dir, out, params, stages=("vae",))
    before = {k: v.clone() for k, v in load_weights(out / "vae", "video_vae").items()}
    train(data_dir, out, params, stages=("denoiser",))
    after = load_weights(out / "vae", "video_vae")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_upsampler_trains_on_its_share_of_each_batch(data_dir, tmp_path, monkeypatch):
    import tasks.train_denoiser as stage

    seen: list[tuple[str, int]] = []
    real_base, real_up = stage.base_denoiser_loss, stage.upsampler_loss

    def base_spy(net, scheduler, video, audio, inputs, *args, **kwargs):
        seen.append(("base", video.shape[0]))
        return real_base(net, scheduler, video, audio, inputs, *args, **kwargs)

    def up_spy(net, scheduler, video, low_res, inputs, *args, **kwargs):
        assert low_res.shape[0] == inputs.batch_size == inputs.has_image.shape[0] == video.shape[0]
        seen.append(("upsampler", video.shape[0]))
        return real_up(net, scheduler, video, low_res, inputs, *args, **kwargs)

    monkeypatch.setattr(stage, "base_denoiser_loss", base_spy)
    monkeypatch.setattr(stage, "upsampler_loss", up_spy)
    out = tmp_path / "share"
    train(data_dir, out, tiny("train.vae_steps=2"), stages=("vae",))
    train(data_dir, out, tiny("train.denoiser_steps=3", "train.upsampler_batch_size=1"), stages=("denoiser",))
    assert seen == [("base", 4), ("upsampler", 1)] * 3


def test_mlflow_run_has_metrics_params_and_artifacts(data_dir, tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)  # artifacts land under the working folder
    summary = train(data_dir, tmp_path / "ml", tiny("train.mlflow=true"))["denoiser"]
    con = sqlite3.connect(db)
    runs = dict(con.execute("select run_uuid, name from runs").fetchall())
    digest = runs[summary["run_id"]][-6:]
    assert sorted(runs.values()) == [f"train_denoiser-{digest}", f"train_vae-{digest}"]
    keys = {k for (k,) in con.execute("select distinct key from metrics")}
    assert {"loss_video", "loss_audio", "loss_upsampler", "lr", "grad_norm", "samples_per_s", "vae_psnr_base"} <= keys
    params = dict(con.execute("select key, value from params where run_uuid = ?", (summary["run_id"],)).fetchall())
    assert params["denoiser.base.dim"] == "32"
    tags = dict(con.execute("select key, value from tags where run_uuid = ?", (summary["run_id"],)).fetchall())
    assert "git_commit" in tags and "dataset_hash" in tags
    artifact_uris = [u for (u,) in con.execute("select artifact_uri from runs")]
    pngs = [p for u in artifact_uris for p in Path(u.replace("file://", "")).glob("*.png")] if artifact_uris else []
    assert {p.name for p in pngs} >= {"loss_vae.png", "loss_denoiser.png"}


@pytest.mark.parametrize("self_condition", [False, True])
def test_ddp_two_processes_on_cpu(data_dir, tmp_path, self_condition):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tasks.cli", "train", "--data", str(data_dir), "--out", str(out)]
    steps = ["train.vae_steps=10", "train.denoiser_steps=12", "train.checkpoint_every=100",
             f"denoiser.base.self_condition={str(self_condition).lower()}"]
    for o in TRAIN_OVERRIDES + steps:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folders = [p.name for p in (out / "denoiser").glob("step-*")]
    assert folders == ["step-0000012"]
    losses = json.loads(load_state(out / "denoiser" / folders[0])["losses"])
    before, after = first_last(losses, "loss_video", k=4)
    assert after < before


def test_latents_of_another_cache_are_refused(data_dir, tmp_path):
    from tasks.checkpoint import read_latents
    from tasks.runtime import UserError

    out = tmp_path / "latents"
    train(data_dir, out, tiny("train.vae_steps=2", "train.denoiser_steps=1"))
    with pytest.raises(UserError, match="encoded from another tensor cache"):
        read_latents(out, ["some-other-item"])
