"""Prefect flows: the tinyveo pipeline and its sub-flows. Composition only: every step is a plain
function in tasks/, wrapped here as a Prefect task (names, retries, mapping, caching).

    pipeline = data_flow -> train_flow -> evaluate_flow
    data_flow:     synth (or your clips) -> tasks.prepare.prepare, its per-clip work mapped as tasks:
                   probe, curate, extract-audio, cache-clip (one task run per clip, for all its windows)
    train_flow:    train-vae -> encode-latents -> train-denoiser
    evaluate_flow: generate (demo prompts) -> evaluate (held-out prompts) -> report (outputs/report.html)

Who decides that work runs: DVC for the stages (`dvc repro`); inside a flow, Prefect caches the
per-clip probe and audio-extraction results on their inputs, the content of the files they read and
the source code of tasks/ and model/ (flows.caching.CodeAndInputs), so a code edit re-runs them.
The stage tasks always run when the flow runs. Per-clip tasks run on the data flow's task runner:
threads by default, or a Dask cluster through prefect-dask (`dask`: a scheduler address, or "local"
for a temporary cluster of `cache.workers` processes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.curate import curate_clip
from tasks.encode_latents import encode_latents
from tasks.evaluate import evaluate
from tasks.extract_audio import extract_clip_audio
from tasks.generate import generate
from tasks.params import Params, load_params
from tasks.prepare import prepare
from tasks.report import build_report
from tasks.preprocess import compute_clip
from tasks.probe import probe_clip
from tasks.samples import read_prompts
from tasks.synth import synth
from tasks.train_denoiser import train_denoiser
from tasks.train_vae import train_vae

from .caching import CodeAndInputs

PER_CLIP = {
    "probe": task(probe_clip, name="probe", retries=2, retry_delay_seconds=[1, 4], cache_policy=CodeAndInputs(files=("path",)), persist_result=True),
    "curate": task(curate_clip, name="curate", retries=1, retry_delay_seconds=[2], cache_policy=NO_CACHE),
    "audio": task(extract_clip_audio, name="extract-audio", retries=2, retry_delay_seconds=[1, 4],
                  cache_policy=CodeAndInputs(files=("video",)), persist_result=True),
    # The tensor cache's manifest already skips unchanged items; the tensors are too big to persist twice.
    "cache": task(compute_clip, name="cache-clip", cache_policy=NO_CACHE),
}
synth_task = task(synth, name="synth", retries=1, retry_delay_seconds=[2], cache_policy=NO_CACHE)
STAGES = {fn.__name__: task(fn, name=fn.__name__.replace("_", "-"), cache_policy=NO_CACHE)
          for fn in (train_vae, encode_latents, train_denoiser, generate, evaluate, build_report)}


def map_per_clip(fn: Callable, jobs: list[tuple], desc: str) -> list:
    """prepare()'s map function: one Prefect task run per job, on the flow's task runner."""
    if not jobs:
        return []
    return PER_CLIP[desc].map(*[list(column) for column in zip(*jobs)]).result()


def dask_runner(dask: str, workers: int = 2):
    """A Dask task runner: on the scheduler at `dask`, or ("local") on a temporary cluster of
    `workers` single-threaded processes on 127.0.0.1."""
    from prefect_dask import DaskTaskRunner

    if dask == "local":
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "host": "127.0.0.1", "dashboard_address": ":0"})
    return DaskTaskRunner(address=dask)


def _params(overrides: list[str] | None, params_file: str | None) -> Params:
    return load_params(params_file, list(overrides or []))


@flow(name="tinyveo-data", task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=True)
def data_flow(source: str | None = None, annotations: str | None = None, data_dir: str = "data",
              overrides: list[str] | None = None, params_file: str | None = None) -> str:
    """Clips (yours, or the built-in dataset when `source` is None) -> pairs + tensor cache in data_dir."""
    params = _params(overrides, params_file)
    data = Path(data_dir)
    if source is None:
        annotations = str(synth_task(data / "raw", params.data, workers=params.cache.workers, progress=False))
        source = str(data / "raw")
    elif annotations is None:
        raise ValueError("annotations is required with source")
    report = prepare(source, annotations, data, params.cache, progress=False, map_fn=map_per_clip,
                     curate=params.curate)
    get_run_logger().info(report.summary())
    return str(data)


@flow(name="tinyveo-train", log_prints=True)
def train_flow(data_dir: str = "data", checkpoint_dir: str = "checkpoints", overrides: list[str] | None = None,
               params_file: str | None = None) -> dict[str, Any]:
    """The VAE stage, the latent encoding, then the denoiser stage."""
    params = _params(overrides, params_file)
    vae = STAGES["train_vae"](data_dir, checkpoint_dir, params, progress=False)
    STAGES["encode_latents"](data_dir, checkpoint_dir, params)
    denoiser = STAGES["train_denoiser"](data_dir, checkpoint_dir, params, progress=False)
    return {"vae": vae, "denoiser": denoiser, "run_id": denoiser.get("run_id")}


@flow(name="tinyveo-evaluate", log_prints=True)
def evaluate_flow(checkpoint_dir: str = "checkpoints", data_dir: str = "data", output_dir: str = "outputs",
                  prompts: str | None = "data/prompts.txt", overrides: list[str] | None = None,
                  params_file: str | None = None) -> dict[str, Any]:
    """Samples for the demo prompts, metrics on the held-out prompts of data_dir, the run's report page."""
    params = _params(overrides, params_file)
    out = Path(output_dir)
    if prompts:
        STAGES["generate"](checkpoint_dir, read_prompts(prompts), out / "samples", params, progress=False)
    metrics = STAGES["evaluate"](checkpoint_dir, out / "eval", params, data=data_dir, progress=False)
    for split, group in metrics["splits"].items():
        scene = group["scene"]
        if "status" not in scene:
            shuffled = scene.get("baselines", {}).get("shuffled", {}).get("all_correct")
            get_run_logger().info(f"{split}: all correct {scene['all_correct']:.2f} (shuffled prompts {shuffled}), "
                                  f"objects {scene['object_all']:.2f}")
    get_run_logger().info(f"report: {STAGES['build_report'](out)}")
    return metrics


def data_flow_on(dask: str | None, overrides: list[str] | None = None, params_file: str | None = None):
    """The data flow with its per-clip work on its threads, or on a Dask cluster (see `dask_runner`)."""
    if not dask:
        return data_flow
    return data_flow.with_options(task_runner=dask_runner(dask, _params(overrides, params_file).cache.workers))


@flow(name="tinyveo-pipeline", log_prints=True)
def pipeline(source: str | None = None, annotations: str | None = None, data_dir: str = "data",
             checkpoint_dir: str = "checkpoints", output_dir: str = "outputs", prompts: str | None = "data/prompts.txt",
             overrides: list[str] | None = None, params_file: str | None = None, dask: str | None = None,
             ) -> dict[str, Any]:
    """The whole pipeline: data -> train -> generate + evaluate. Returns the evaluation metrics.
    `dask`: run the per-clip work on a Dask cluster (a scheduler address, or "local")."""
    data = data_flow_on(dask, overrides, params_file)(source, annotations, data_dir, overrides, params_file)
    trained = train_flow(data, checkpoint_dir, overrides, params_file)
    metrics = evaluate_flow(checkpoint_dir, data, output_dir, prompts, overrides, params_file)
    return {"train": trained, "metrics": metrics}
