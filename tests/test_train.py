"""Training: each stage lowers its loss, exact resume, kill -9 safety, NaN guard, frozen modules,
MLflow contents, and DDP with two processes. All on a tiny config over a small prepared dataset."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasks.checkpoint import latest_checkpoint, list_snapshots, load_state, load_weights
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


def test_the_audio_vae_trains_on_alone_after_the_video_vae_stops_and_resumes_exactly(data_dir, tmp_path):
    both = tiny("train.vae_steps=3")
    longer = tiny("train.vae_steps=3", "train.audio_vae_steps=6")
    train(data_dir, tmp_path / "both", both, stages=("vae",))
    summary = train(data_dir, tmp_path / "longer", longer, stages=("vae",))["vae"]
    train(data_dir, tmp_path / "split", longer, stages=("vae",), stop_after=4)   # resumed in the audio-only part
    train(data_dir, tmp_path / "split", longer, stages=("vae",), resume=True)
    assert summary["steps"] == 6
    ckpt = {name: latest_checkpoint(tmp_path / name / "vae") for name in ("both", "longer", "split")}
    video = {name: load_weights(c, "video_vae") for name, c in ckpt.items()}
    audio = {name: load_weights(c, "audio_vae") for name, c in ckpt.items()}
    assert all(torch.equal(video["both"][k], video["longer"][k]) for k in video["both"])  # stopped at its 3 steps
    assert not all(torch.equal(audio["both"][k], audio["longer"][k]) for k in audio["both"])
    for weights in (video, audio):
        assert all(torch.equal(weights["longer"][k], weights["split"][k]) for k in weights["longer"])
    losses = json.loads(load_state(ckpt["longer"])["losses"])
    assert [sorted(r) for r in losses[2:4]] == [["loss_audio_vae", "loss_video_base", "loss_video_upsampled", "step"],
                                                ["loss_audio_vae", "step"]]
    table = (tmp_path / "longer" / "vae" / "loss_vae.tsv").read_text().splitlines()
    assert len(table) == 7 and table[-1].split("\t")[1:3] == ["", ""]   # video columns blank after step 3


def test_the_video_vae_trains_on_the_motion_weighted_loss(data_dir, tmp_path):
    """vae.video.motion_weight reaches the VAE stage: from the same weights on the same first batch, the
    loss weights the moving pixels up, and the VideoVAE trains to other weights (the AudioVAE does not)."""
    runs = {w: tmp_path / f"w{w}" for w in (0, 10)}
    for w, out in runs.items():
        train(data_dir, out, tiny("train.vae_steps=2", f"vae.video.motion_weight={w}"), stages=("vae",))
    ckpt = {w: latest_checkpoint(out / "vae") for w, out in runs.items()}
    first = {w: json.loads(load_state(c)["losses"])[0] for w, c in ckpt.items()}
    assert first[10]["loss_video_base"] > first[0]["loss_video_base"]
    assert first[10]["loss_audio_vae"] == first[0]["loss_audio_vae"]
    video = {w: load_weights(c, "video_vae") for w, c in ckpt.items()}
    assert not all(torch.equal(video[0][k], video[10][k]) for k in video[0])


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
    with pytest.raises(NonFiniteLossError, match=r"denoiser stage: 3 steps in a row with a non-finite loss .* at step 4"):
        train(data_dir, out, load_params(overrides=TRAIN_OVERRIDES + ["train.max_nonfinite_steps=3"]),
              stages=("denoiser",))
    kept = latest_checkpoint(out / "vae")
    assert kept is not None and load_state(kept)["step"] == 8
    assert latest_checkpoint(out / "denoiser") is None  # nothing after the NaN was saved


class InfGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose step would poison the weights."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_an_infinite_gradient_skips_the_step_and_nothing_non_finite_is_saved(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "inf"
    train(data_dir, out, tiny(), stages=("vae",))
    import model.diffusion as diffusion

    real, calls = diffusion.F.mse_loss, {"n": 0}

    def poisoned(a, b, *args, **kw):  # three losses a step: steps 2 and 5 get an infinite gradient
        calls["n"] += 1
        loss = real(a, b, *args, **kw)
        return InfGradient.apply(loss) if calls["n"] in (4, 13) else loss

    monkeypatch.setattr(diffusion.F, "mse_loss", poisoned)
    summary = train(data_dir, out, tiny("train.checkpoint_every=1"), stages=("denoiser",))["denoiser"]
    assert summary["steps"] == 8 and summary["skipped_steps"] == 2
    saved = [f for step in (out / "denoiser").glob("step-*") for f in step.glob("*.safetensors")]
    assert saved
    for f in saved:
        tensors = load_weights(f.parent, f.stem)
        assert all(bool(torch.isfinite(v).all()) for v in tensors.values() if v.is_floating_point()), f


def train_denoiser_cli(data, out, *args: str, fault: str | None = None, extra: tuple[str, ...] = ()) -> int:
    cmd = [sys.executable, "-m", "tasks.cli", "train-denoiser", "--data", str(data), "--out", str(out), *args]
    for o in TRAIN_OVERRIDES + ["train.checkpoint_every=2", *extra]:
        cmd += ["--set", o]
    env = {**os.environ, "TINYVEO_FAULT_AT": fault} if fault else None
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


@pytest.fixture(scope="module")
def straight_denoiser(prepared_data, tmp_path_factory):
    """VAE + latents, and the denoiser stage run through without interruption (8 steps)."""
    out = tmp_path_factory.mktemp("straight")
    train(prepared_data, out, tiny(), stages=("vae",))
    from tasks.encode_latents import encode_latents

    encode_latents(prepared_data, out, tiny())
    assert train_denoiser_cli(prepared_data, out) == 0
    return out


@pytest.fixture(scope="module")
def stopped_denoiser(prepared_data, straight_denoiser, tmp_path_factory):
    """The straight run's VAE + latents, and its denoiser stage stopped after step 4 (checkpoints 2 and 4)."""
    import shutil

    out = tmp_path_factory.mktemp("stopped")
    for stage in ("vae", "latents"):
        shutil.copytree(straight_denoiser / stage, out / stage)
    assert train_denoiser_cli(prepared_data, out, "--stop-after", "4") == 0
    return out


@pytest.mark.parametrize("point", ["checkpoint", "latest", "loss_denoiser.tsv", "summary.json"])
def test_kill_at_a_write_point_keeps_the_previous_file_and_resume_is_exact(data_dir, straight_denoiser,
                                                                           stopped_denoiser, tmp_path, point):
    """kill -9 at a named write point (fault injection, not timing): the reader sees the previous
    complete file, and resuming ends with the weights of the run that was never interrupted."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(stopped_denoiser, out)   # each kill starts from its own copy of the run stopped at step 4
    stage = out / "denoiser"
    before = {name: (stage / name).read_bytes() for name in ("summary.json", "loss_denoiser.tsv", "latest")}
    assert train_denoiser_cli(data_dir, out, "--resume", fault=point) == -signal.SIGKILL
    if point in ("checkpoint", "latest"):   # killed while saving step 6: step 4 stays the one resumed
        assert latest_checkpoint(stage).name == "step-0000004" and load_state(latest_checkpoint(stage))["step"] == 4
    else:                                   # killed at the stage's last writes: checkpoints of step 8 complete
        assert load_state(latest_checkpoint(stage))["step"] == 8
    unwritten = ("summary.json",) if point == "summary.json" else ("summary.json", "loss_denoiser.tsv")
    for name in unwritten:  # killed at or before their writes: the previous complete file, not half a new one
        assert (stage / name).read_bytes() == before[name], name
    assert json.loads((stage / "summary.json").read_text())["steps"] == 4
    assert train_denoiser_cli(data_dir, out, "--resume") == 0
    assert json.loads((stage / "summary.json").read_text())["steps"] == 8
    a, b = latest_checkpoint(straight_denoiser / "denoiser"), latest_checkpoint(stage)
    for module in ("base", "upsampler", "base_ema", "upsampler_ema"):
        wa, wb = load_weights(a, module), load_weights(b, module)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), module


def test_snapshots_hold_the_ema_weights_and_a_resume_drops_the_interrupted_runs_later_ones(
        data_dir, straight_denoiser, stopped_denoiser, tmp_path):
    """train.snapshot_every=4 of 8 steps: snapshots 4 and 8 hold the EMA weights of their step and
    the training seconds up to it; resuming from step 4 drops a snapshot the interrupted run left past
    it, and the training seconds carry over the resume."""
    import shutil

    snaps = list_snapshots(straight_denoiser / "denoiser")
    assert [s.step for s in snaps] == [4, 8]
    stopped_at_4 = latest_checkpoint(stopped_denoiser / "denoiser")   # the same run up to step 4
    for snap, ckpt in ((snaps[0], stopped_at_4), (snaps[1], latest_checkpoint(straight_denoiser / "denoiser"))):
        for module in ("base", "upsampler"):
            kept, ema, raw = (load_weights(snap.folder, f"{module}_ema"), load_weights(ckpt, f"{module}_ema"),
                              load_weights(ckpt, module))
            assert all(torch.equal(kept[k], ema[k]) for k in ema), (snap.step, module)
            assert not all(torch.equal(kept[k], raw[k]) for k in raw), (snap.step, module)
    summary = json.loads((straight_denoiser / "denoiser" / "summary.json").read_text())
    assert 0 < snaps[0].seconds < snaps[1].seconds <= summary["seconds_total"]

    out = tmp_path / "run"
    shutil.copytree(stopped_denoiser, out)
    shutil.copytree(snaps[1].folder, out / "denoiser" / "snapshots" / snaps[1].folder.name)   # left by a killed run
    assert train_denoiser_cli(data_dir, out, "--resume", "--stop-after", "2") == 0
    assert [s.step for s in list_snapshots(out / "denoiser")] == [4]
    resumed = load_state(latest_checkpoint(out / "denoiser"))
    assert resumed["step"] == 6 and resumed["seconds"] > load_state(stopped_at_4)["seconds"]


def test_bf16_killed_at_a_checkpoint_and_resumed_ends_as_the_uninterrupted_run(data_dir, straight_denoiser, tmp_path):
    """The same fault injection under bf16 autocast: kill -9 while saving step 6, resume, and the
    weights equal those of a bf16 run that was never interrupted."""
    import shutil

    bf16 = ("train.precision=bf16",)
    runs = {name: tmp_path / name for name in ("straight", "killed")}
    for out in runs.values():
        for stage in ("vae", "latents"):
            shutil.copytree(straight_denoiser / stage, out / stage)
    assert train_denoiser_cli(data_dir, runs["straight"], extra=bf16) == 0
    assert train_denoiser_cli(data_dir, runs["killed"], "--stop-after", "4", extra=bf16) == 0
    assert train_denoiser_cli(data_dir, runs["killed"], "--resume", fault="checkpoint", extra=bf16) == -signal.SIGKILL
    assert load_state(latest_checkpoint(runs["killed"] / "denoiser"))["step"] == 4
    assert train_denoiser_cli(data_dir, runs["killed"], "--resume", extra=bf16) == 0
    a, b = (latest_checkpoint(runs[name] / "denoiser") for name in ("straight", "killed"))
    assert json.loads((runs["killed"] / "denoiser" / "summary.json").read_text())["precision"] == "bf16"
    for module in ("base", "upsampler", "base_ema", "upsampler_ema"):
        wa, wb = load_weights(a, module), load_weights(b, module)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), module


def test_an_atomic_write_killed_midway_leaves_the_old_file(tmp_path):
    """Every output goes through tasks.media.atomic_path: killed between the write and the rename,
    the target still holds the old content (the new one stays under a temporary name no reader opens)."""
    target = tmp_path / "metrics.json"
    target.write_text('{"old": true}\n')
    code = "from tasks.media import write_text_atomic; import sys; write_text_atomic(sys.argv[1], '{\"new\": true}')"
    env = {**os.environ, "TINYVEO_FAULT_AT": "metrics.json"}
    proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=ROOT, env=env)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads(target.read_text()) == {"old": True}
    assert subprocess.run([sys.executable, "-c", code, str(target)], cwd=ROOT).returncode == 0
    assert json.loads(target.read_text()) == {"new": True}



def test_resume_refuses_a_changed_run_and_names_what_changed(data_dir, tmp_path, monkeypatch):
    import tasks.training as training
    from tasks.runtime import UserError

    out = tmp_path / "changed"
    train(data_dir, out, tiny(), stages=("vae",), stop_after=2)
    with pytest.raises(UserError, match=r"cannot resume.*vae\.video\.kl_weight: 1e-06 -> 0\.001.*--resume-anyway"):
        train(data_dir, out, tiny("vae.video.kl_weight=1e-3"), stages=("vae",), resume=True)
    longer = train(data_dir, out, tiny("train.vae_steps=10"), stages=("vae",), resume=True, stop_after=1)
    assert longer["vae"]["steps"] == 3   # a longer run may resume: step counts are not part of the fingerprint
    monkeypatch.setattr(training, "code_version", lambda: "edited")
    with pytest.raises(UserError, match=r"code \(model/, tasks/\): \w+ -> edited"):
        train(data_dir, out, tiny(), stages=("vae",), resume=True, stop_after=1)
    from tasks.train_vae import train_vae

    forced = train_vae(data_dir, out, tiny(), resume=True, stop_after=1, progress=False, force_resume=True)
    assert forced["steps"] == 4


def test_resume_from_a_damaged_or_foreign_checkpoint_is_one_line_naming_the_file(data_dir, tmp_path, capsys):
    """An empty or garbage state.pt, and weights of another model shape (forced past the fingerprint),
    each end `tinyveo train-vae --resume` with exit 2 and one line naming the file and the reason."""
    from tasks.cli import main as cli_main

    out = tmp_path / "damaged"
    train(data_dir, out, tiny(), stages=("vae",), stop_after=2)
    state = latest_checkpoint(out / "vae") / "state.pt"
    intact = state.read_bytes()

    def resume_error(*extra: str, anyway: bool = False) -> str:
        argv = ["train-vae", "--data", str(data_dir), "--out", str(out), "--resume"] + ["--resume-anyway"] * anyway
        for o in TRAIN_OVERRIDES + list(extra):
            argv += ["--set", o]
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    for damage in (b"", b"\x80\x02garbage" * 20, intact[: len(intact) // 2]):
        state.write_bytes(damage)
        assert "state.pt: not a readable training state" in resume_error()
    state.write_bytes(intact)
    assert "vae.video.hidden_channels: 8 -> 16" in resume_error("vae.video.hidden_channels=16")
    assert "video_vae.safetensors: incompatible with" in resume_error("vae.video.hidden_channels=16", anyway=True)


def test_a_fresh_run_moves_the_resumable_one_aside(data_dir, tmp_path, capsys):
    out = tmp_path / "fresh"
    train(data_dir, out, tiny(), stages=("vae",), stop_after=2)
    first = load_weights(latest_checkpoint(out / "vae"), "video_vae")
    train(data_dir, out, tiny(), stages=("vae",), stop_after=1)
    aside = [p for p in out.iterdir() if p.name.startswith("vae.replaced-")]
    assert len(aside) == 1 and str(aside[0]) in capsys.readouterr().out
    kept = latest_checkpoint(aside[0])
    assert load_state(kept)["step"] == 2
    assert all(torch.equal(first[k], v) for k, v in load_weights(kept, "video_vae").items())
    assert load_state(latest_checkpoint(out / "vae"))["step"] == 1


def test_a_second_run_in_the_same_folder_is_refused(data_dir, tmp_path):
    import fcntl

    from tasks.runtime import UserError

    out = tmp_path / "locked"
    out.mkdir()
    with open(out / ".tinyveo.lock", "a+") as held:   # what a running `tinyveo train` holds
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        with pytest.raises(UserError, match=r"locked: another tinyveo run is training here \(pid 4242\)"):
            train(data_dir, out, tiny(), stages=("vae",), stop_after=1)
    assert train(data_dir, out, tiny(), stages=("vae",), stop_after=1)["vae"]["steps"] == 1   # free again


def test_the_frozen_vaes_and_text_encoder_are_not_even_built_by_the_denoiser_stage(data_dir, tmp_path, monkeypatch):
    """The denoiser stage trains on cached latents and caption states: with the VAEs and the text
    encoder out of reach (building one fails), it still trains, so nothing can update them."""
    out = tmp_path / "frozen"
    params = tiny()
    train(data_dir, out, params, stages=("vae",))
    from tasks.encode_latents import encode_latents

    encode_latents(data_dir, out, params)
    vae_files = {p.name: p.read_bytes() for p in (out / "vae").glob("*.safetensors")}
    import model
    from tasks.train_denoiser import train_denoiser

    def unreachable(*args, **kwargs):
        raise AssertionError("the denoiser stage built a frozen module")

    for cls in (model.VideoVAE, model.AudioVAE):
        monkeypatch.setattr(cls, "__init__", unreachable)
    monkeypatch.setattr(model.ConditioningEncoder, "from_params", unreachable)
    assert train_denoiser(data_dir, out, params, progress=False)["steps"] == 8
    assert {p.name: p.read_bytes() for p in (out / "vae").glob("*.safetensors")} == vae_files


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


def ddp_train_denoiser(data, out, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tasks.cli", "train-denoiser", "--data", str(data), "--out", str(out), *args]
    for o in TRAIN_OVERRIDES + ["train.checkpoint_every=2"]:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"TINYVEO_FAULT_AT": fault} if fault else {})}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_ddp_killed_at_a_checkpoint_and_resumed_ends_as_the_uninterrupted_run(data_dir, straight_denoiser, tmp_path):
    import shutil

    for name in ("straight", "killed"):
        for stage in ("vae", "latents"):
            shutil.copytree(straight_denoiser / stage, tmp_path / name / stage)
    done = ddp_train_denoiser(data_dir, tmp_path / "straight")
    assert done.returncode == 0, done.stderr[-3000:]
    killed = ddp_train_denoiser(data_dir, tmp_path / "killed", fault="checkpoint:2")   # rank 0, saving step 4
    assert killed.returncode != 0
    assert load_state(latest_checkpoint(tmp_path / "killed" / "denoiser"))["step"] == 2
    resumed = ddp_train_denoiser(data_dir, tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = latest_checkpoint(tmp_path / "straight" / "denoiser"), latest_checkpoint(tmp_path / "killed" / "denoiser")
    assert a.name == b.name == "step-0000008"
    for module in ("base", "upsampler", "base_ema", "upsampler_ema"):
        wa, wb = load_weights(a, module), load_weights(b, module)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), module


def test_latents_of_another_cache_are_refused(data_dir, tmp_path):
    from tasks.checkpoint import read_latents
    from tasks.runtime import UserError

    out = tmp_path / "latents"
    train(data_dir, out, tiny("train.vae_steps=2", "train.denoiser_steps=1"))
    with pytest.raises(UserError, match="encoded from another tensor cache"):
        read_latents(out, ["some-other-item"])


def test_compile_auto_compiles_only_long_single_process_runs_with_a_working_compiler(monkeypatch):
    from tasks import training
    from tasks.runtime import UserError

    one, two, cpu = training.Dist(1, 0), training.Dist(2, 0), torch.device("cpu")
    auto = load_params(overrides=["train.compile_min_steps=2000"]).train
    monkeypatch.setattr(training, "compiler_problem", lambda device_type: None)
    assert training.compile_decision(auto, 2000, one, cpu)[0]
    assert not training.compile_decision(auto, 1999, one, cpu)[0]      # the build would not pay back
    off, on = (load_params(overrides=[f"train.compile={v}"]).train for v in ("false", "true"))
    assert not any(training.compile_decision(p, 9000, two, cpu)[0] for p in (auto, on))   # DDP stays eager
    assert not training.compile_decision(off, 9000, one, cpu)[0]
    assert training.compile_decision(on, 10, one, cpu)[0]
    monkeypatch.setattr(training, "compiler_problem", lambda device_type: "no C++ compiler")
    compiled, why = training.compile_decision(auto, 9000, one, cpu)
    assert not compiled and "no C++ compiler" in why                   # auto falls back to eager
    with pytest.raises(UserError, match="no C\\+\\+ compiler"):        # true says why it cannot
        training.compile_decision(on, 10, one, cpu)
    with pytest.raises(UserError, match="train.compile"):
        training.compile_decision(load_params(overrides=["train.compile=yes"]).train, 10, one, cpu)


def test_compiled_blocks_compute_what_eager_blocks_do_and_keep_the_checkpoint_names(tiny_params):
    from model import JointDenoisingTransformer, base_denoiser_loss, from_params, make_noise_scheduler
    from tasks.training import compiler_problem

    from test_model import _perturbed, base_inputs

    if compiler_problem("cpu") is not None:
        pytest.fail(f"torch.compile does not work on this machine: {compiler_problem('cpu')}")
    cfg = from_params(tiny_params)

    def loss_and_grads(compiled: bool):
        torch.manual_seed(0)
        model = _perturbed(JointDenoisingTransformer(cfg.base))
        names = list(model.state_dict())
        if compiled:
            model.compile_blocks()
            torch._dynamo.utils.counters.clear()
        video, audio, _, ctx = base_inputs(cfg, batch=3)
        loss = base_denoiser_loss(model, make_noise_scheduler(), video, audio, ctx, 0.3,
                                  torch.Generator().manual_seed(0)).total
        loss.backward()
        assert list(model.state_dict()) == names
        assert not compiled or torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1   # it did compile
        return loss.detach(), [p.grad for p in model.parameters()]

    (eager_loss, eager_grads), (loss, grads) = loss_and_grads(False), loss_and_grads(True)
    assert torch.allclose(loss, eager_loss, rtol=1e-4)
    assert all(torch.allclose(g, e, rtol=1e-3, atol=1e-5) for g, e in zip(grads, eager_grads))
