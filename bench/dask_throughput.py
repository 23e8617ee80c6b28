"""Benchmark: clips/s of the per-clip data work (probe, audio extraction, tensor cache) in one
process (`prepare`, workers=1) and as the Prefect data flow on a local dask.distributed cluster of 1
and 2 single-threaded worker processes (prefect-dask), measured side by side in one run on the same
clips, with the ratios. The Prefect API is started before the timings (it is not per-clip work) and
Prefect's task cache is refreshed, so every run probes and extracts every clip.
Not a test.

    scripts/env.sh python bench/dask_throughput.py [--clips 300]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=300)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"   # every run does the work: no result from an earlier run
    from dask.distributed import LocalCluster
    from prefect import flow

    from flows.pipeline import data_flow_on
    from tasks.params import load_params
    from tasks.prepare import prepare
    from tasks.synth import synth

    params = load_params()
    flow(lambda: None, name="warm-up")()   # starts the temporary Prefect API outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ann = synth(root / "raw", replace(params.data, synth_num_clips=args.clips, synth_seed=0), workers=2,
                    progress=False)
        rows = {"prepare, 1 process": timed(lambda: prepare(root / "raw", ann, root / "single", params.cache,
                                                             workers=1, progress=False))}
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address=":0") as cluster:
                run = data_flow_on(cluster.scheduler_address)
                rows[f"data flow, Dask {workers} worker(s)"] = timed(
                    lambda: run(source=str(root / "raw"), annotations=str(ann), data_dir=str(root / f"dask{workers}")))
    n = args.clips
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; {n} synthetic clips")
    print(f"{'what':<32}{'seconds':>9}{'clips/s':>9}")
    for what, seconds in rows.items():
        print(f"{what:<32}{seconds:>9.1f}{n / seconds:>9.2f}")
    one, two = rows["data flow, Dask 1 worker(s)"], rows["data flow, Dask 2 worker(s)"]
    print(f"Dask 2 workers vs 1: {one / two:.2f}x; vs prepare in 1 process: {rows['prepare, 1 process'] / two:.2f}x")


if __name__ == "__main__":
    main()
