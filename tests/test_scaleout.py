"""Scale-out on the real engines, on loopback, each started and stopped by its test: the per-clip
data work on a dask.distributed cluster through prefect-dask, training as two torchrun "nodes", an
MLflow tracking server shared by two concurrent training runs. (The DVC remote round trip lives in
tests/test_dvc_mlflow.py, beside the repository copy it pushes.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TRAIN_OVERRIDES, free_port, stop_process_group, synth_clips, wait_for_health

pytestmark = pytest.mark.slow   # real engines and servers: minutes (`pytest -m 'not slow'` skips them)

ROOT = Path(__file__).resolve().parent.parent
DASK_CLIPS = 24


def cache_contents(data: Path):
    """(shard bytes by name, the manifest with the pair paths relative to the data folder)."""
    import pandas as pd

    shards = {p.name: p.read_bytes() for p in sorted((data / "cache").glob("*.safetensors"))}
    manifest = pd.read_parquet(data / "cache" / "manifest.parquet")
    for column in ("video", "wav", "image"):
        manifest[column] = manifest[column].map(lambda v: str(Path(v).relative_to(data)) if isinstance(v, str) else v)
    return shards, manifest


def test_the_data_flow_on_a_dask_cluster_writes_the_single_process_cache(tmp_path):
    """A LocalCluster of 2 worker processes on 127.0.0.1 runs the per-clip tasks of the Prefect data
    flow (`tinyveo pipeline --dask ADDRESS` does the same); the tensor cache it writes is the one a
    single-process `prepare` writes (shards byte for byte, the manifest row for row), and both
    workers did part of the work."""
    from dask.distributed import Client, LocalCluster

    from tasks.params import load_params
    from tasks.prepare import prepare

    ann = synth_clips(tmp_path / "raw", DASK_CLIPS, 3)
    prepare(tmp_path / "raw", ann, tmp_path / "single", load_params().cache, workers=1, progress=False)
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", PYTHONPATH=str(ROOT))
    env.pop("PREFECT_API_URL", None)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.get_task_stream()   # installs the scheduler's task-stream plugin: it records from now on
        start = time.time()
        code = ("import sys; from flows.pipeline import data_flow_on; "
                "data_flow_on(sys.argv[1])(source=sys.argv[2], annotations=sys.argv[3], data_dir=sys.argv[4])")
        proc = subprocess.run([sys.executable, "-c", code, cluster.scheduler_address, str(tmp_path / "raw"), str(ann),
                               str(tmp_path / "dask")], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        stream = client.get_task_stream(start=start)
    workers = {t["worker"] for t in stream}
    assert len(workers) == 2 and len(stream) >= 3 * DASK_CLIPS, (workers, len(stream))   # probe, audio, cache item
    (single, single_manifest), (dask, dask_manifest) = (cache_contents(tmp_path / d) for d in ("single", "dask"))
    assert single.keys() == dask.keys() and single and all(single[name] == dask[name] for name in single)
    assert single_manifest.equals(dask_manifest) and len(single_manifest) == DASK_CLIPS


def _tiny_train_args(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["--data", str(data), "--out", str(out)]
    for o in TRAIN_OVERRIDES + list(extra):
        args += ["--set", o]
    return args


def _launch(*launch: str, stage_args: list[str]) -> subprocess.Popen:
    """`python -m torch.distributed.run LAUNCH -m tasks.cli train-vae ...`, or one plain process without LAUNCH."""
    runner = [sys.executable, "-m", "torch.distributed.run", *launch] if launch else [sys.executable]
    cmd = [*runner, "-m", "tasks.cli", "train-vae", *stage_args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    try:
        logs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                stop_process_group(p)
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-2000:] for log in logs)
    return logs


def test_two_torchrun_nodes_on_loopback_train_as_one_process_with_the_same_global_batch(prepared_data, tmp_path):
    """`torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d` launched twice (two "nodes" on
    127.0.0.1, gloo, each with LOCAL_RANK 0): each global rank takes its share of every global batch
    and the draws of its items (every rank draws for the whole batch), and rank 0 alone logs and
    saves, so the weights equal one plain process's with the same global batch, and one node of 2
    processes'. (Sharding by the local rank feeds both nodes the same items; per-rank noise would
    make the runs equal only in distribution.)"""
    from tasks.checkpoint import latest_checkpoint, load_weights

    # fp32: bf16 kernels round differently for a batch of 2 and one of 4; the AudioVAE's last 2 steps
    # run without the VideoVAE (its DDP module then sits out)
    steps = ("train.vae_steps=4", "train.audio_vae_steps=6", "train.vae_batch_size=4",
             "train.vae_upsampled_batch_size=2", "train.precision=fp32")
    port = free_port()
    nodes = [_launch("--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
                     f"127.0.0.1:{port}", "--rdzv_id", "tinyveo-test",
                     stage_args=_tiny_train_args(prepared_data, tmp_path / "nodes", *steps)) for _ in range(2)]
    _finish(nodes)
    _finish([_launch("--standalone", "--nproc_per_node", "2",
                     stage_args=_tiny_train_args(prepared_data, tmp_path / "one-node", *steps))])
    _finish([_launch(stage_args=_tiny_train_args(prepared_data, tmp_path / "one-process", *steps))])
    runs = {name: latest_checkpoint(tmp_path / name / "vae") for name in ("nodes", "one-node", "one-process")}
    assert {folder.name for folder in runs.values()} == {"step-0000006"}
    for other in ("one-node", "one-process"):
        for module in ("video_vae", "audio_vae"):
            wa, wb = load_weights(runs["nodes"], module), load_weights(runs[other], module)
            worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
            assert worst < 1e-6, (other, module, worst)
    summaries = [json.loads((tmp_path / n / "vae" / "summary.json").read_text()) for n in ("nodes", "one-process")]
    assert summaries[0]["steps"] == 6 and abs(summaries[0]["loss_audio_vae"] - summaries[1]["loss_audio_vae"]) < 1e-4


def test_a_batch_that_does_not_split_evenly_over_the_processes_is_refused(prepared_data, tmp_path):
    logs = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "tasks.cli", "train-vae", *_tiny_train_args(prepared_data, tmp_path / "odd",
                                                                            "train.vae_batch_size=4",
                                                                            "train.vae_upsampled_batch_size=1")],
                          cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=300)
    assert logs.returncode != 0
    assert "vae_upsampled_batch_size=1 per batch cannot be split evenly over 2 processes" in logs.stdout + logs.stderr


def test_an_mlflow_server_records_two_concurrent_training_runs_completely(prepared_data, tmp_path):
    """One `mlflow server` (SQLite backend) on 127.0.0.1, two `tinyveo train-vae` runs at the same
    time logging to it: both runs are there, finished, with every logged step of every metric."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--default-artifact-root",
         str(tmp_path / "artifacts")], cwd=tmp_path, stdout=open(tmp_path / "server.log", "w"),
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_health(f"{url}/health", server, tmp_path / "server.log", 150)
        env = dict(os.environ, MLFLOW_TRACKING_URI=url, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        runs = [subprocess.Popen([sys.executable, "-m", "tasks.cli", "train-vae",
                                  *_tiny_train_args(prepared_data, tmp_path / f"run{i}", "train.mlflow=true",
                                                    "train.vae_steps=12", "train.log_every=1", f"seed={i}")],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for i in range(2)]
        logs = [r.communicate(timeout=600)[0] for r in runs]
        assert all(r.returncode == 0 for r in runs), "\n".join(log[-2000:] for log in logs)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(url)
        ids = [json.loads((tmp_path / f"run{i}" / "vae" / "summary.json").read_text())["run_id"] for i in range(2)]
        assert len(set(ids)) == 2
        for run_id in ids:
            run = client.get_run(run_id)
            assert run.info.status == "FINISHED"
            history = client.get_metric_history(run_id, "loss_video_base")
            assert sorted(m.step for m in history) == list(range(1, 13)), run_id
    finally:
        stop_process_group(server)
