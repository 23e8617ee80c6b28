"""Prefect: `tinyveo pipeline` end to end, then the same pipeline as a served deployment driven by
`prefect deployment run` against a real `prefect server` on 127.0.0.1, reusing the first run's
per-clip work from Prefect's cache. Every process a test starts is stopped by it."""
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


def test_pipeline_cli_runs_end_to_end_then_a_served_deployment_reruns_it_reusing_per_clip_work(tmp_path):
    """`tinyveo pipeline` (its own temporary Prefect server), then the same pipeline in the same folder
    as a served deployment, started by `prefect deployment run` against a real `prefect server`: the
    per-clip results come from Prefect's cache (inputs + file content + code) across the two flow
    runs, while the stages run again (skipping them is DVC's job)."""
    cmd = [sys.executable, "-m", "flows.cli", "pipeline", "--prompts", str(ROOT / "data" / "prompts.txt")]
    for o in TINY:
        cmd += ["--set", o]
    first = subprocess.run(cmd, cwd=tmp_path, env=prefect_env(tmp_path), capture_output=True, text=True, timeout=600)
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

    (tmp_path / "outputs" / "eval" / "details.json").unlink()
    log = run_served_deployment(tmp_path)
    for task in ("probe", "extract-audio"):
        assert re.search(rf"Task run '{task}-\w+' - Finished in state Cached", log), task
        assert not re.search(rf"Task run '{task}-\w+' - Finished in state Completed", log), task
    assert re.search(r"Task run 'train-denoiser-\w+' - Finished in state Completed", log)
    metrics = json.loads((tmp_path / "outputs" / "eval" / "details.json").read_text())
    assert "scene" in metrics["splits"]["test"] and (tmp_path / "checkpoints" / "vae" / "video_vae.safetensors").exists()


def run_served_deployment(folder: Path) -> str:
    """Start `prefect server` on 127.0.0.1 and `python -m flows.deploy` in `folder`, run the pipeline
    deployment with `prefect deployment run --watch`, stop both; the serving process's log."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(folder, PREFECT_API_URL=api)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=folder, env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
                              stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    served = None
    try:
        wait_for_health(f"{api}/health", server, folder / "server.log", 120)
        served = subprocess.Popen([sys.executable, "-m", "flows.deploy"], cwd=folder, env=env,
                                  stdout=open(folder / "serve.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        prefect = [sys.executable, "-m", "prefect"]
        deadline = time.time() + 120
        while True:
            ls = subprocess.run(prefect + ["deployment", "ls"], env=env, capture_output=True, text=True, timeout=60)
            if "tinyveo-pipeline/local" in ls.stdout:
                break
            assert time.time() < deadline and served.poll() is None, (folder / "serve.log").read_text()[-3000:]
            time.sleep(2)
        run = subprocess.run(prefect + ["deployment", "run", "tinyveo-pipeline/local", "-p", f"overrides={json.dumps(TINY)}",
                                        "-p", f"prompts={ROOT / 'data' / 'prompts.txt'}", "--watch", "--watch-timeout", "540"],
                             env=env, capture_output=True, text=True, timeout=600)
        out = run.stdout + run.stderr
        assert run.returncode == 0 and "Completed" in out, out[-3000:] + (folder / "serve.log").read_text()[-3000:]
        assert "temporary server" not in out  # the CLI talked to the server started here
    finally:
        if served is not None:
            stop_process_group(served)
        stop_process_group(server)
    assert server.poll() is not None and (served is None or served.poll() is not None)
    return (folder / "serve.log").read_text()


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
