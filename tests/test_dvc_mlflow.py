"""DVC drives the pipeline in a temporary copy of the repository (tiny params): `dvc repro` end to
end, a second repro does nothing, a training param set by `dvc exp run -S` re-runs only training
and what follows, `dvc metrics show` prints the metrics. The two trained runs then appear as
comparable runs in the MLflow UI: a real `mlflow server` on 127.0.0.1 (its whole process group
stopped after), checked through the REST API and opened in headless Chromium (screenshot saved to
test-artifacts/)."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import TRAIN_OVERRIDES, chromium, free_port, stop_process_group, wait_for_health
from tasks.params import apply_override

pytestmark = pytest.mark.slow   # real engines and servers: minutes (`pytest -m 'not slow'` skips them)

ROOT = Path(__file__).resolve().parent.parent
TINY = TRAIN_OVERRIDES + ["train.mlflow=true", "data.synth_num_clips=24", "data.synth_seed=1", "sample.steps=2",
                          "eval.num_prompts=4", "eval.num_i2v=1", "eval.num_saved_samples=1", "eval.num_vae_clips=4",
                          "train.smoke_steps=3", "train.smoke_batch_size=2"]


def sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git + DVC copy of the repository with tiny params, after one full `dvc repro`."""
    root = tmp_path_factory.mktemp("dvc") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, root / f)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for o in TINY:
        apply_override(params, o)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.lock").unlink(missing_ok=True)
    env = dict(os.environ, DVC_NO_ANALYTICS="1", MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env["PYTHONPATH"] = str(root)  # `tinyveo` runs this copy's code, as it would in its own clone
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        sh(cmd, root, env)
    first = sh(["dvc", "repro"], root, env, timeout=900)
    return root, env, first


def assert_metrics_are_numbers_only(root) -> None:
    """Every metrics file dvc.yaml declares holds numbers only (notes and statuses live beside them)."""
    def leaves(tree, prefix=""):
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]

    declared = [next(iter(m)) if isinstance(m, dict) else m for stage in yaml.safe_load(
        (root / "dvc.yaml").read_text())["stages"].values() for m in stage.get("metrics", [])]
    assert len(declared) >= 5
    for path in declared:
        bad = [(k, v) for k, v in leaves(json.loads((root / path).read_text()))
               if isinstance(v, bool) or not isinstance(v, (int, float))]
        assert not bad, (path, bad)


def test_dvc_repro_runs_every_stage_then_only_what_changed(project):
    root, env, first = project
    for stage in ("synth", "prepare", "train_vae", "encode_latents", "train_denoiser", "generate", "evaluate", "smoke",
                  "report"):
        assert f"Running stage '{stage}'" in first, stage
    metrics = json.loads((root / "outputs" / "eval" / "details.json").read_text())
    assert metrics["splits"]["test"]["scene"]["clips"] >= 1
    assert (root / "checkpoints" / "denoiser" / "latest").exists() and (root / "outputs" / "samples" / "samples.jsonl").exists()
    again = sh(["dvc", "repro"], root, env)
    assert "Running stage" not in again and ("up to date" in again or "didn't change" in again), again
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "first repro"], root, env)

    changed = sh(["dvc", "exp", "run", "-S", "train.denoiser_steps=10"], root, env, timeout=900)
    ran = {s for s in ("synth", "prepare", "train_vae", "encode_latents", "train_denoiser", "generate", "evaluate",
                       "smoke", "report") if f"Running stage '{s}'" in changed}
    assert ran == {"train_denoiser", "generate", "evaluate", "report"}, changed
    status = sh(["dvc", "status"], root, env)
    assert "up to date" in status or "Data and pipelines are up to date" in status, status
    precision = root / "model" / "precision.py"
    precision.write_text(precision.read_text() + "\n# edited\n")
    status = sh(["dvc", "status"], root, env)
    assert "train_vae:" in status and "synth:" not in status, status
    precision.write_text(precision.read_text().removesuffix("\n# edited\n"))
    shown = sh(["dvc", "metrics", "show"], root, env)
    assert "test.all_correct" in shown and "outputs/eval/metrics.json" in shown
    plots = json.loads(sh(["dvc", "plots", "show", "--json"], root, env))["data"]
    curve = plots["outputs/eval/curve/test.tsv"][0]["content"]   # the 10-step run: snapshots 4 and 8, then 10
    assert curve["encoding"]["x"]["field"] == "minutes"
    assert sorted({int(v["steps"]) for v in curve["data"]["values"]}) == [4, 8, 10]
    assert_metrics_are_numbers_only(root)
    rows = list(csv.DictReader(io.StringIO(sh(["dvc", "exp", "show", "--no-pager", "--csv"], root, env))))
    steps = {row["train.denoiser_steps"] for row in rows if row["Experiment"]}
    assert steps == {"10"}, rows
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "denoiser_steps"], root, env)


def test_dvc_push_then_pull_into_a_fresh_clone_restores_everything_and_repro_is_a_no_op(project, tmp_path):
    """A local-folder DVC remote (the same commands serve s3:// or ssh:// remotes): `dvc push`, a git
    clone, `dvc pull` there restores the data and checkpoints byte for byte, and `dvc repro` there
    has nothing to run."""
    root, env, _ = project
    sh(["dvc", "repro"], root, env)   # the workspace as the last test left it, complete
    sh(["dvc", "remote", "add", "-d", "store", str(tmp_path / "remote")], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "remote", "--allow-empty"], root, env)
    sh(["dvc", "push"], root, env)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    assert not (clone / "checkpoints").exists() and not (clone / "data" / "cache").exists()
    pulled = sh(["dvc", "pull"], clone, {**env, "PYTHONPATH": str(clone)})
    for folder in ("data/cache", "checkpoints/vae", "checkpoints/denoiser", "checkpoints/latents", "outputs/samples"):
        files = sorted(p.relative_to(root) for p in (root / folder).rglob("*") if p.is_file())
        assert files, folder
        for f in files:
            assert (clone / f).read_bytes() == (root / f).read_bytes(), f
    again = sh(["dvc", "repro"], clone, {**env, "PYTHONPATH": str(clone)})
    assert "Running stage" not in again, again + pulled


def test_mlflow_ui_compares_the_two_pipeline_runs(project):
    root, env, _ = project
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "mlruns")],
        cwd=root, env=env, stdout=open(root / "mlflow-server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_health(f"{url}/health", server, root / "mlflow-server.log", 150)

        def api(path: str, body: dict | None = None) -> dict:
            req = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode() if body else None,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())

        exp = api("experiments/get-by-name?experiment_name=tinyveo")["experiment"]
        runs = api("runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        evaluated = [r for r in runs if any(m["key"] == "splits.test.scene.all_correct" for m in r["data"].get("metrics", []))]
        # The first repro (8 denoiser steps) and the 10-step experiment.
        assert len(evaluated) >= 2, [r["info"]["run_name"] for r in runs]
        pair = evaluated[:2]
        steps = {next(p["value"] for p in r["data"]["params"] if p["key"] == "train.denoiser_steps") for r in pair}
        assert len(steps) == 2, steps
        for r in pair:
            run_id = r["info"]["run_id"]
            files = api(f"artifacts/list?run_id={run_id}&path=evaluation/samples")["files"]
            assert any(f["path"].endswith(".mp4") for f in files)
            curve = api(f"metrics/get-history?run_id={run_id}&metric_key=curve.test.all_correct")["metrics"]
            last = int(next(p["value"] for p in r["data"]["params"] if p["key"] == "train.denoiser_steps"))
            assert sorted(p["step"] for p in curve) == ([4, 8] if last == 8 else [4, 8, last]), curve
            files = api(f"artifacts/list?run_id={run_id}&path=evaluation")["files"]
            assert {"evaluation/curve.png", "evaluation/curve"} <= {f["path"] for f in files}
        names = [r["info"]["run_name"] for r in pair]
        assert names[0] != names[1]

        ids = json.dumps([r["info"]["run_id"] for r in pair])
        page = f"{url}/#/compare-runs?runs={urllib.parse.quote(ids)}&experiments={urllib.parse.quote(json.dumps([exp['experiment_id']]))}"
        shots = ROOT / "test-artifacts"
        shots.mkdir(exist_ok=True)
        base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--virtual-time-budget=20000", "--window-size=1400,1000", f"--user-data-dir={root / '.chromium'}"]
        subprocess.run(base + [f"--screenshot={shots / 'mlflow-compare.png'}", page], capture_output=True, timeout=180)
        dom = subprocess.run(base + ["--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
        assert (shots / "mlflow-compare.png").stat().st_size > 10_000
        for name in names:
            assert name in dom, f"{name} not in the comparison page"
    finally:
        stop_process_group(server)  # huey workers outlive a SIGTERM to the parent


def stopped_descendant(parent: subprocess.Popen, timeout: float = 600):
    """The first process under `parent` that has stopped itself (a `:stop` fault point), waited for."""
    import time

    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert parent.poll() is None, f"exited ({parent.returncode}) before reaching the fault point"
        for child in psutil.Process(parent.pid).children(recursive=True):
            try:
                if child.status() == psutil.STATUS_STOPPED:
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise AssertionError("no process reached the fault point in time")


def test_a_concurrent_dvc_repro_or_train_in_the_same_folder_is_refused(project):
    """While one `dvc repro` is mid-way through writing a checkpoint (held there by a `:stop` fault
    point, not by timing), a second `dvc repro` is refused by DVC's lock and a `tinyveo train-vae`
    on the same checkpoint folder by tinyveo's; the first then finishes and its checkpoint loads."""
    root, env, _ = project
    first = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "train_vae"], cwd=root,
                             env={**env, "TINYVEO_FAULT_AT": "checkpoint:1:stop"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        held = stopped_descendant(first)
        second = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        refusal = second.stdout + second.stderr   # DVC's read/write lock on the stage's deps and outs
        assert second.returncode != 0 and "is being blocked by" in refusal and f"PID {first.pid}" in refusal, refusal
        train = subprocess.run([sys.executable, "-m", "tasks.cli", "train-vae", "--data", "data", "--out",
                                "checkpoints"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert train.returncode == 2 and f"another tinyveo run is training here (pid {held.pid})" in train.stderr
        held.resume()
        out, _ = first.communicate(timeout=900)
        assert first.returncode == 0, out[-3000:]
    finally:
        if first.poll() is None:   # a failed assertion above: end the held run and everything under it
            import psutil

            for child in psutil.Process(first.pid).children(recursive=True):
                child.kill()
            first.kill()
    from tasks.checkpoint import latest_checkpoint, load_state

    assert load_state(latest_checkpoint(root / "checkpoints" / "vae"))["step"] > 0
