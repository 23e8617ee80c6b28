"""Small shared helpers for tasks: device choice, seeding, user-facing errors."""
from __future__ import annotations

import os
import random


class UserError(Exception):
    """Bad input from the user: printed as one line naming the file and the reason, exit code 2."""


def pick_device(requested: str | None = None):
    """CUDA when present (or when asked), else CPU."""
    import torch

    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


class LazyPrefectTask:
    """A thin Prefect @task around a plain function, built on first use.

    Importing prefect costs seconds; building the task lazily keeps `tinyveo --help` and plain
    function calls (tests, `python -m tasks.<step>`) free of it. Flows call it like the task itself:
    `ingest_task(...)`, `ingest_task.submit(...)`, `ingest_task.map(...)`.
    """

    def __init__(self, fn, **options):
        self.fn = fn
        self.options = options
        self._task = None

    @property
    def task(self):
        if self._task is None:
            from prefect import task

            self._task = task(self.fn, **self.options)
        return self._task

    def __call__(self, *args, **kwargs):
        return self.task(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.task, name)


def process_pool(workers: int):
    """A process pool that is safe after torch has run in the parent.

    Forking a process whose OpenMP/intra-op thread pools are live can deadlock the child, so
    workers are spawned fresh instead of forked.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def map_clips(fn, jobs: list[tuple], workers: int, desc: str, progress: bool = True, pool=None) -> list:
    """fn(*job) for every job, in order, with a progress bar: in `pool` when given (one pool serves
    every step of a run, so workers start once), else in a fresh pool of `workers`, else inline."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="clip", disable=not progress or not jobs)
    try:
        if len(jobs) > 1 and (pool is not None or workers > 1):
            if pool is None:
                with process_pool(workers) as own:
                    return _collect(own, fn, jobs, bar)
            return _collect(pool, fn, jobs, bar)
        out = []
        for job in jobs:
            out.append(fn(*job))
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


def content_digest(*parts) -> str:
    """sha256 over files (their bytes), folders (every file's relative path and bytes, sorted) and
    JSON-able values: the cache key of a Prefect task is its inputs' content plus the params it reads."""
    import hashlib
    import json
    from pathlib import Path

    from .media import file_sha256

    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            if part.is_file():
                h.update(b"F" + file_sha256(part).encode())
            elif part.is_dir():
                h.update(b"D")
                for child in sorted(p for p in part.rglob("*") if p.is_file()):
                    h.update(str(child.relative_to(part)).encode() + file_sha256(child).encode())
            else:
                h.update(b"missing:" + str(part).encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def persistent_cache(key_fn):
    """Prefect task options for caching across flow runs: the key from `key_fn(parameters)`, results
    persisted (Prefect's default policy hashes inputs per run only and keeps nothing)."""
    return {"cache_key_fn": lambda context, parameters: key_fn(parameters), "persist_result": True}


def checkpoint_files(checkpoint) -> list:
    """The files a trained checkpoint folder is made of, for cache keys: the VAE weights and the
    latest denoiser step's weights (not the whole history)."""
    from pathlib import Path

    ckpt = Path(checkpoint)
    files = [ckpt / "vae" / "video_vae.safetensors", ckpt / "vae" / "audio_vae.safetensors", ckpt / "denoiser" / "config.json"]
    pointer = ckpt / "denoiser" / "latest"
    if pointer.exists():
        step = ckpt / "denoiser" / pointer.read_text(encoding="utf-8").strip()
        files += [step / "base_ema.safetensors", step / "upsampler_ema.safetensors"]
    return files


def manifest_digest(data_dir) -> str:
    """What a prepared data folder holds, by content: the cache manifest's item keys, splits and captions."""
    from pathlib import Path

    path = Path(data_dir) / "cache" / "manifest.parquet"
    if not path.exists():
        return "no-manifest:" + str(path)
    import pandas as pd

    m = pd.read_parquet(path, columns=["key", "split", "caption"])
    return content_digest(m["key"].tolist(), m["split"].fillna("").tolist(), m["caption"].fillna("").tolist())
