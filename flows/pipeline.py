"""Prefect flows: the tinyveo pipeline and its sub-flows. Composition only; every step is a task in
tasks/ (a plain function with a Prefect wrapper), so tests reach the logic without Prefect.

    pipeline = data_flow -> train_flow -> evaluate_flow
    data_flow:     synth (or your clips) -> ingest -> probe (mapped per clip) -> filter
                   -> extract audio (mapped per clip) -> reorganize pairs -> tensor cache -> report
    train_flow:    VAE stage -> denoiser stage
    evaluate_flow: generate (demo prompts) -> evaluate (held-out prompts)

Per-clip tasks run on the flow's task runner (threads here; on a cluster swap in
prefect-dask's DaskTaskRunner or prefect-ray's RayTaskRunner, see the README). I/O-bound tasks retry
with backoff. Expensive tasks are cached across flow runs, keyed on their inputs' content and the
params they read, with results persisted: a second run over unchanged inputs skips them
(`refresh=True` runs everything again).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.cache import CacheSettings, cache_task
from tasks.evaluate import evaluate_task
from tasks.generate import generate_task, read_prompts
from tasks.ingest import ingest_task
from tasks.params import load_params
from tasks.prepare import (PrepareReport, audio_jobs, cache_items, extract_clip_audio_task, extracted_clips,
                           note_ingest, pair_inputs, select_clips, write_report)
from tasks.probe import probe_task
from tasks.reorganize import reorganize_task
from tasks.synth import synth_task
from tasks.train import train_task


def _params(overrides: list[str] | None, params_file: str | None) -> dict[str, Any]:
    return load_params(params_file, list(overrides or []))


@flow(name="tinyveo-data", task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=True)
def data_flow(source: str | None = None, annotations: str | None = None, data_dir: str = "data",
              overrides: list[str] | None = None, params_file: str | None = None, refresh: bool = False) -> str:
    """Clips (yours, or the built-in dataset when `source` is None) -> pairs + tensor cache in data_dir."""
    params = _params(overrides, params_file)
    data = Path(data_dir)
    if source is None:
        d = params["data"]
        annotations = str(synth_task.with_options(refresh_cache=refresh)(
            data / "raw", int(d["synth_num_clips"]), int(d["synth_seed"]), int(d["synth_size"]), int(d["synth_fps"]),
            float(d["synth_duration_s"]), int(d["synth_sample_rate"]), float(d["synth_i2v_fraction"]),
            workers=int(params["cache"]["workers"]), progress=False))
        source = str(data / "raw")
    elif annotations is None:
        raise ValueError("annotations is required with source")
    report = PrepareReport()
    ingested = ingest_task(source, annotations)
    note_ingest(ingested, report)
    min_duration = float(params["cache"]["min_duration_s"])
    probes = probe_task.with_options(refresh_cache=refresh).map(
        [str(r.video_path) for r in ingested.records], unmapped(min_duration)).result()
    accepted = select_clips(ingested.records, probes, params, report)
    jobs = audio_jobs(accepted, data, params)
    errors = extract_clip_audio_task.map(*[list(column) for column in zip(*jobs)]).result() if jobs else []
    extracted = extracted_clips(accepted, jobs, errors, report)
    pairs = reorganize_task(pair_inputs(extracted), data)
    items = cache_items(extracted, pairs)
    result = cache_task.with_options(refresh_cache=refresh)(
        items, data / "cache", CacheSettings.from_params(params), int(params["cache"]["workers"]), False)
    report = write_report(items, result, data, report)
    get_run_logger().info(report.summary())
    return str(data)


@flow(name="tinyveo-train", log_prints=True)
def train_flow(data_dir: str = "data", checkpoint_dir: str = "checkpoints", overrides: list[str] | None = None,
               params_file: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """VAE stage, then the denoiser stage (each cached on the data, its params and its inputs)."""
    params = _params(overrides, params_file)
    task = train_task.with_options(refresh_cache=refresh)
    vae = task(data_dir, checkpoint_dir, params, stages=["vae"], progress=False)
    denoiser = task(data_dir, checkpoint_dir, params, stages=["denoiser"], progress=False)
    return {"vae": vae["stages"].get("vae"), "denoiser": denoiser["stages"].get("denoiser"),
            "run_id": denoiser.get("run_id")}


@flow(name="tinyveo-evaluate", log_prints=True)
def evaluate_flow(checkpoint_dir: str = "checkpoints", data_dir: str = "data", output_dir: str = "outputs",
                  prompts: str | None = "data/prompts.txt", overrides: list[str] | None = None,
                  params_file: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Samples for the demo prompts, then metrics on the held-out prompts of data_dir."""
    params = _params(overrides, params_file)
    out = Path(output_dir)
    if prompts:
        generate_task.with_options(refresh_cache=refresh)(checkpoint_dir, read_prompts(prompts), out / "samples", params,
                                                          progress=False)
    metrics = evaluate_task.with_options(refresh_cache=refresh)(checkpoint_dir, out / "eval", params, holdout=data_dir,
                                                                progress=False)
    acc = metrics.get("attribute_accuracy", {})
    get_run_logger().info("attribute accuracy: " + ", ".join(
        f"{k} {v['accuracy']:.2f} (chance {v['chance']:.2f})" for k, v in acc.items() if isinstance(v, dict)))
    return metrics


@flow(name="tinyveo-pipeline", log_prints=True)
def pipeline(source: str | None = None, annotations: str | None = None, data_dir: str = "data",
             checkpoint_dir: str = "checkpoints", output_dir: str = "outputs", prompts: str | None = "data/prompts.txt",
             overrides: list[str] | None = None, params_file: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """The whole pipeline: data -> train -> generate + evaluate. Returns the evaluation metrics."""
    data = data_flow(source, annotations, data_dir, overrides, params_file, refresh)
    trained = train_flow(data, checkpoint_dir, overrides, params_file, refresh)
    metrics = evaluate_flow(checkpoint_dir, data, output_dir, prompts, overrides, params_file, refresh)
    return {"train": trained, "metrics": metrics}
