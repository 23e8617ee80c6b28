"""Small shared helpers for tasks: device choice, seeding, user-facing errors, per-clip process pools."""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: printed as one line naming the file and the reason, exit code 2."""


def pick_device(requested: str | None = None):
    """CUDA when present (or when asked), else CPU; under torchrun each process of a node takes the
    GPU of its LOCAL_RANK."""
    import torch

    device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % max(torch.cuda.device_count(), 1))
    return device


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


class WorkerPool:
    """A process pool whose workers start on first use, and say whether they have.

    Forking a process whose OpenMP/intra-op thread pools are live can deadlock the child, so
    workers are spawned fresh instead of forked."""

    def __init__(self, workers: int):
        self.workers = workers
        self.executor = None

    @property
    def started(self) -> bool:
        return self.executor is not None

    def submit(self, fn, *args):
        if self.executor is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self.executor.submit(fn, *args)

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def process_pool(workers: int) -> WorkerPool:
    return WorkerPool(workers)


POOL_WORTH_S = 4.0   # work left (s, as measured inline) above which worker processes pay for their start
STARTED_WORTH_S = 0.5  # the same once they have started (an earlier step of the run started them)
PROBE_JOBS = 3       # jobs run inline before deciding (the first one pays this process's imports)


def map_clips(fn, jobs: list[tuple], workers: int, desc: str, progress: bool = True, pool=None) -> list:
    """fn(*job) for every job, in order, with a progress bar. The first jobs run inline; when the
    rest would take more than POOL_WORTH_S at the last one's pace (STARTED_WORTH_S once `pool` has
    started), it goes to `pool` (one pool serves every step of a run) or a fresh pool of `workers`:
    starting workers costs about a second, more than a small folder's whole step (bench/RESULTS.md)."""
    import time

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="clip", disable=not progress or not jobs)
    parallel = pool is not None or workers > 1
    out: list = []
    try:
        for i, job in enumerate(jobs):
            worth = STARTED_WORTH_S if pool is not None and pool.started else POOL_WORTH_S
            if parallel and i >= PROBE_JOBS and last * (len(jobs) - i) > worth:
                if pool is None:
                    with process_pool(workers) as own:
                        return out + _collect(own, fn, jobs[i:], bar)
                return out + _collect(pool, fn, jobs[i:], bar)
            start = time.perf_counter()
            out.append(fn(*job))
            last = time.perf_counter() - start
            bar.update()
        return out
    finally:
        bar.close()


def _collect(pool, fn, jobs: list[tuple], bar) -> list:
    futures = [pool.submit(fn, *job) for job in jobs]
    out = []
    for future in futures:
        out.append(future.result())
        bar.update()
    return out


def source_digest(root: Path) -> str:
    """sha256 over every .py file of tasks/ and model/ under `root` (path and bytes): the code version."""
    h = hashlib.sha256()
    for path in sorted(p for package in ("tasks", "model") for p in (root / package).rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()
