"""Prefect: `tinyveo pipeline` end to end (a second run skips cached steps across flow runs), and the
served deployment driven by `prefect deployment run` against a real `prefect server` on 127.0.0.1.
Every process a test starts is stopped by it."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TRAIN_OVERRIDES, free_port, stop_process_group, wait_for_health

pytestmark = pytest.mark.slow   # real engines and servers: minutes (`pytest -m 'not slow'` skips them)

ROOT = Path(__file__).resolve().parent.parent
TINY = TRAIN_OVERRIDES + ["data.synth_num_clips=24", "data.synth_seed=1", "sample.steps=2", "eval.num_prompts=4",
                          "eval.num_i2v=1", "eval.num_saved_samples=1", "eval.num_vae_clips=4", "cache.workers=1"]


def prefect_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PREFECT_HOME=str(tmp / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
               PYTHONPATH=str(ROOT))
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


def test_pipeline_cli_runs_end_to_end_and_the_second_run_reuses_per_clip_work(tmp_path):
    cmd = [sys.executable, "-m", "flows.cli", "pipeline", "--prompts", str(ROOT / "data" / "prompts.txt")]
    for o in TINY:
        cmd += ["--set", o]
    env = prefect_env(tmp_path)
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    metrics = json.loads((tmp_path / "outputs" / "eval" / "details.json").read_text())
    assert metrics["splits"]["test"]["scene"]["clips"] >= 1
    assert len(list((tmp_path / "outputs" / "samples").glob("*.mp4"))) == 6
    assert (tmp_path / "checkpoints" / "denoiser" / "latest").exists()
    log = first.stdout + first.stderr
    assert (tmp_path / "outputs" / "report.html").exists()
    for task in ("synth", "probe", "extract-audio", "cache-clip", "train-vae", "encode-latents", "train-denoiser",
                 "generate", "evaluate", "build-report"):
        assert re.search(rf"Task run '{task}-\w+' - Finished in state Completed", log), task

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    log = second.stdout + second.stderr
    # Per-clip results come from Prefect's cache (inputs + file content + code); stages are DVC's to skip.
    for task in ("probe", "extract-audio"):
        assert re.search(rf"Task run '{task}-\w+' - Finished in state Cached", log), task
        assert not re.search(rf"Task run '{task}-\w+' - Finished in state Completed", log), task
    assert re.search(r"Task run 'train-denoiser-\w+' - Finished in state Completed", log)


def test_the_per_clip_cache_key_follows_code_and_file_content(tmp_path):
    import shutil

    from flows.caching import CodeAndInputs
    from tasks.runtime import source_digest

    root = tmp_path / "repo"
    for package in ("tasks", "model"):
        shutil.copytree(ROOT / package, root / package)
    before = source_digest(root)
    (root / "tasks" / "probe.py").write_text((root / "tasks" / "probe.py").read_text() + "\n# edited\n")
    assert source_digest(root) != before
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"one")
    policy = CodeAndInputs(files=("path",))
    first = policy.compute_key(None, {"path": str(clip), "min_duration": 0.25}, {})
    assert policy.compute_key(None, {"path": str(clip), "min_duration": 0.25}, {}) == first
    clip.write_bytes(b"two")  # same path, new content: a new key
    assert policy.compute_key(None, {"path": str(clip), "min_duration": 0.25}, {}) != first


def test_served_deployment_runs_through_a_real_prefect_server(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(tmp_path, PREFECT_API_URL=api)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=tmp_path, env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
                              stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    served = None
    try:
        wait_for_health(f"{api}/health", server, tmp_path / "server.log", 120)
        served = subprocess.Popen([sys.executable, "-m", "flows.deploy"], cwd=tmp_path, env=env,
                                  stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        prefect = [sys.executable, "-m", "prefect"]
        deadline = time.time() + 120
        while True:
            ls = subprocess.run(prefect + ["deployment", "ls"], env=env, capture_output=True, text=True, timeout=60)
            if "tinyveo-pipeline/local" in ls.stdout:
                break
            assert time.time() < deadline and served.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(2)
        run = subprocess.run(prefect + ["deployment", "run", "tinyveo-pipeline/local", "-p", f"overrides={json.dumps(TINY)}",
                                        "-p", f"prompts={ROOT / 'data' / 'prompts.txt'}", "--watch", "--watch-timeout", "540"],
                             env=env, capture_output=True, text=True, timeout=600)
        out = run.stdout + run.stderr
        assert run.returncode == 0 and "Completed" in out, out[-3000:] + (tmp_path / "serve.log").read_text()[-3000:]
        assert "temporary server" not in out  # the CLI talked to the server this test started
        metrics = json.loads((tmp_path / "outputs" / "eval" / "details.json").read_text())
        assert "scene" in metrics["splits"]["test"] and (tmp_path / "checkpoints" / "vae" / "video_vae.safetensors").exists()
    finally:
        if served is not None:
            stop_process_group(served)
        stop_process_group(server)
    assert server.poll() is not None and (served is None or served.poll() is not None)
