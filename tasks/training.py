"""What both training stages share: the resumable `TrainState` and one loop.

A stage builds its modules and a loss function `loss_fn(rows, generator) -> {name: loss}`; the loop
runs AdamW + warmup/cosine + grad clipping (+ EMA) with deterministic batches and noise, atomic
checkpoints and a NaN/Inf guard. Resume restores weights, EMA, optimizer, LR schedule, RNG, data
position and step: on CPU a run interrupted and resumed ends with the same weights.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import subprocess
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as td
import torch.nn.functional as F
from tqdm import tqdm

from model.draws import BatchDraws
from model.precision import autocast, autocast_dtype

from .checkpoint import (clear_checkpoints, drop_snapshots_after, folder_lock, latest_checkpoint, load_module,
                         load_state, recorded_bf16_speedup, save_checkpoint, save_snapshot, write_stage_files)
from .params import flatten
from .runtime import UserError, pick_device, seed_everything, source_digest
from .plots import loss_curve_png
from .tracking import Tracker, write_loss_tsv


class NonFiniteLossError(RuntimeError):
    """Too many NaN or Inf losses or gradient norms in a row: training stops, the last good checkpoint stays."""


@dataclass
class Dist:
    world: int = 1
    rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """torchrun's environment -> this process's rank (gloo on CPU, NCCL on GPU); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not td.is_initialized():
        td.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(world, int(os.environ.get("RANK", "0")))


def wrap_ddp(modules: dict[str, torch.nn.Module], dist: Dist, **options: Any) -> dict[str, torch.nn.Module]:
    if dist.world == 1:
        return modules
    from torch.nn.parallel import DistributedDataParallel as DDP

    return {k: DDP(m, **options) for k, m in modules.items()}


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if hasattr(module, "module") else module


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent.parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def epoch_indices(n: int, epoch: int, seed: int) -> list[int]:
    """The shuffled item order of an epoch (torch.utils.data's DistributedSampler for one replica)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


class BatchCursor:
    """Deterministic global batches by (epoch, position): the data position is part of the resume
    state. Every DDP rank runs the same cursor and takes its share of each batch (`shard`)."""

    def __init__(self, n: int, batch: int, seed: int, epoch: int = 0, pos: int = 0):
        self.n, self.batch, self.seed = n, batch, seed
        self.epoch, self.pos = epoch, pos
        self._order = epoch_indices(n, epoch, seed)

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = epoch_indices(self.n, self.epoch, self.seed)
            take = self._order[self.pos : self.pos + self.batch - len(out)]
            out += take
            self.pos += len(take)
        return out


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to 0 (the article's CosineAnnealingLR, with a warmup)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return f


def make_optimizer(params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused: one kernel over all tensors instead of a Python loop over ~190 of them."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


@dataclass(frozen=True)
class StageSettings:
    """One stage's loop settings, read from the `train` params group by the stage."""

    steps: int
    batch_size: int
    lr: float
    warmup: int
    weight_decay: float
    grad_clip: float
    seed: int
    checkpoint_every: int
    log_every: int
    ema_decay: float | None = None
    max_nonfinite_steps: int = 10   # non-finite steps in a row (skipped) before the stage stops
    snapshot_every: int | None = None   # keep the EMA weights every this many steps (the quality curve)


@dataclass
class TrainState:
    """Everything a stage's checkpoint restores."""

    modules: dict[str, torch.nn.Module]
    emas: dict[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    cursor: BatchCursor
    step: int = 0
    losses: list[dict[str, float]] = field(default_factory=list)
    skipped: int = 0                 # steps skipped for a non-finite loss or gradient norm
    seconds: float = 0.0             # training wall clock before this process (resumed runs)
    fingerprint: dict[str, Any] = field(default_factory=dict)   # what the run trains on (see `fingerprint`)

    @classmethod
    def create(cls, modules: dict[str, torch.nn.Module], n_items: int, s: StageSettings, dist: Dist,
               module_steps: dict[str, int] | None = None) -> "TrainState":
        """`module_steps`: how many steps each module trains (the stage runs the longest), each module
        on a warmup/cosine schedule of its own length (one optimizer param group per module)."""
        if module_steps is None:
            groups = [[p for m in modules.values() for p in m.parameters() if p.requires_grad]]
            schedules = [lr_lambda(s.warmup, s.steps)]
        else:
            groups = [[p for p in m.parameters() if p.requires_grad] for m in modules.values()]
            schedules = [lr_lambda(s.warmup, module_steps.get(k, s.steps)) for k in modules]
        optimizer = make_optimizer([{"params": g} for g in groups], s.lr, s.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
        emas = {k: copy.deepcopy(unwrap(m)).requires_grad_(False) for k, m in modules.items()} if s.ema_decay else {}
        even_shares(dist, batch_size=s.batch_size)
        # One generator and one cursor over the global batch on every rank: see run_loop
        generator = torch.Generator().manual_seed(s.seed * 7919)
        cursor = BatchCursor(n_items, s.batch_size, s.seed)
        return cls(modules, emas, optimizer, scheduler, generator, cursor)

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def load(self, folder: Path, state: dict[str, Any] | None = None) -> None:
        state = state if state is not None else load_state(folder)
        for k, m in self.modules.items():
            load_module(unwrap(m), folder, k)
        for k, e in self.emas.items():
            load_module(e, folder, f"{k}_ema")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["rng"][0])   # one generator, the same on every rank
        c = self.cursor
        self.cursor = BatchCursor(c.n, c.batch, c.seed, state["epoch"], state["pos"])
        self.step, self.losses = int(state["step"]), json.loads(state["losses"])
        self.skipped = int(state.get("skipped", 0))
        self.seconds = float(state.get("seconds", 0.0))

    def save(self, stage_dir: Path, dist: Dist, seconds: float = 0.0) -> None:
        """A checkpoint of the stage; `seconds`: its training wall clock so far, over every run."""
        if dist.main:
            weights = {k: unwrap(m).state_dict() for k, m in self.modules.items()}
            weights.update({f"{k}_ema": e.state_dict() for k, e in self.emas.items()})
            bad = [f"{m}.{k}" for m, tensors in weights.items() for k, v in tensors.items()
                   if v.is_floating_point() and not bool(torch.isfinite(v).all())]
            if bad:  # never on disk: the previous checkpoint stays the one resumed
                raise NonFiniteLossError(f"non-finite weights at step {self.step} ({', '.join(bad[:3])}); "
                                         "not saved")
            save_checkpoint(stage_dir, self.step, weights, {
                "step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": [self.generator.get_state()], "epoch": self.cursor.epoch, "pos": self.cursor.pos,
                "losses": json.dumps(self.losses),
                "skipped": self.skipped, "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
                "seconds": seconds,
            })
        if dist.world > 1:
            td.barrier()


@dataclass
class StageResult:
    name: str
    steps: int
    losses: list[dict[str, float]]
    metrics: dict[str, float]
    seconds: float          # this process's training wall clock
    seconds_total: float    # over every run of the stage (resumed ones too)


# Keys a resumed run may change: how long it runs and what it logs, not what it computes.
RESUMABLE_CHANGES = ("train.vae_steps", "train.audio_vae_steps", "train.denoiser_steps", "train.checkpoint_every",
                     "train.snapshot_every", "train.log_every", "train.mlflow", "train.tracking_uri", "train.experiment",
                     "train.device", "train.smoke_steps", "train.smoke_batch_size")


def code_version() -> str:
    """Digest of the training code (model/ and tasks/ sources): a code edit changes it."""
    return source_digest(Path(__file__).resolve().parent.parent)[:16]


def fingerprint(params, manifest) -> dict[str, Any]:
    """What a checkpoint was trained with: the params that shape training, the dataset, the code."""
    flat = {k: v for k, v in flatten(params.to_dict()).items()
            if k.split(".")[0] not in ("eval", "sample") and k not in RESUMABLE_CHANGES}
    return {"params": json.loads(json.dumps(flat)), "dataset": dataset_hash(manifest), "code": code_version()}


def fingerprint_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's fingerprint and this run's, in words."""
    changes = []
    old, new = saved.get("params", {}), now["params"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    if saved.get("dataset") != now["dataset"]:
        changes.append(f"dataset: {saved.get('dataset')} -> {now['dataset']}")
    if saved.get("code") != now["code"]:
        changes.append(f"code (model/, tasks/): {saved.get('code')} -> {now['code']}")
    return changes


def move_aside(stage_dir: Path) -> Path:
    """A fresh run's predecessor, kept: STAGE -> STAGE.replaced-<time> beside it."""
    target = stage_dir.with_name(f"{stage_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target, n = target.with_name(f"{target.name.split('~')[0]}~{n}"), n + 1
    os.replace(stage_dir, target)
    return target


def start_or_resume(state: TrainState, stage_dir: Path, resume: bool, dist: Dist,
                    expected: dict[str, Any] | None = None, force_resume: bool = False) -> None:
    """Resume from the stage's latest checkpoint if its fingerprint matches (or `force_resume`); a
    fresh run moves an existing resumable run aside instead of deleting it."""
    state.fingerprint = expected or {}
    folder = latest_checkpoint(stage_dir) if resume else None
    if not resume and dist.main:
        if latest_checkpoint(stage_dir) is not None:
            print(f"tinyveo: {stage_dir} held a resumable run; moved to {move_aside(stage_dir)}", flush=True)
        clear_checkpoints(stage_dir)  # half-written leftovers of a run that never checkpointed
    if dist.world > 1:
        td.barrier()  # rank 0 has moved the folder before any rank looks for checkpoints
    if folder is None:
        return
    saved_state = load_state(folder)
    saved = json.loads(saved_state.get("fingerprint", "{}"))
    changes = fingerprint_changes(saved, expected) if expected else []
    if changes and not force_resume:
        listed = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise UserError(f"{folder}: cannot resume, the run changed since this checkpoint: {listed}. "
                        "Run without --resume for a fresh run (the old one is moved aside), or pass --resume-anyway")
    state.load(folder, saved_state)
    if dist.main:
        drop_snapshots_after(stage_dir, state.step)


def even_shares(dist: Dist, **sub_batches: int) -> None:
    """DDP averages the ranks' gradients, which equals the global batch's only when every rank holds
    as many items of each sub-batch: refuse counts that do not split evenly."""
    for name, count in sub_batches.items():
        if count % dist.world:
            raise UserError(f"{name}={count} per batch cannot be split evenly over {dist.world} processes; give a "
                            f"count divisible by {dist.world}")


def shard(batch: list[int], generator: torch.Generator, dist: Dist) -> tuple[list[int], BatchDraws]:
    """This rank's items of a global batch (positions rank, rank + world, ...) and their draws: every
    rank draws for the whole batch, so N processes train as one does with the same global batch."""
    return batch[dist.rank::dist.world], BatchDraws.shard(generator, len(batch), dist.rank, dist.world)


def global_losses(parts: dict[str, torch.Tensor], dist: Dist) -> dict[str, float]:
    """The step's losses over the global batch (the ranks' means averaged: their shares are equal)."""
    values = torch.stack([v.detach().float() for v in parts.values()])
    if dist.world > 1:
        td.all_reduce(values)
        values /= dist.world
    return dict(zip(parts, values.tolist()))


def run_loop(name: str, state: TrainState, loss_fn: Callable[[list[int], BatchDraws], dict[str, torch.Tensor]],
             s: StageSettings, stage_dir: Path, dist: Dist, tracker, *, stop_after: int | None = None,
             amp: tuple[str, torch.dtype | None] = ("cpu", None), progress: bool = True) -> StageResult:
    """The training loop of every stage; `amp` is (device type, autocast dtype or None for fp32)."""
    start, first = time.perf_counter(), state.step
    last = min(s.steps, state.step + stop_after if stop_after is not None else s.steps)

    def seconds() -> float:
        return state.seconds + time.perf_counter() - start

    bar = tqdm(total=s.steps, initial=state.step, desc=name, unit="step", disable=not (progress and dist.main))
    for m in state.modules.values():
        m.train()
    in_a_row = 0
    while state.step < last:
        state.optimizer.zero_grad(set_to_none=True)
        with autocast(*amp):
            parts = loss_fn(*shard(state.cursor.next(), state.generator, dist))
        loss = sum(parts.values())
        loss.backward()  # also for a non-finite loss: under DDP every rank then sees the same NaN gradient norm
        grad_norm = float(torch.nn.utils.clip_grad_norm_(state.parameters, s.grad_clip))
        if not math.isfinite(grad_norm):  # skip the update: the weights, EMA and LR schedule stay as they are
            state.skipped, in_a_row = state.skipped + 1, in_a_row + 1
            if in_a_row >= s.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{name} stage: {in_a_row} steps in a row with a non-finite loss ({float(loss.detach())}) or "
                    f"gradient norm ({grad_norm}) at step {state.step + 1}; the last good checkpoint in {stage_dir} is kept")
            continue
        in_a_row = 0
        state.optimizer.step()
        state.scheduler.step()
        for k, e in state.emas.items():
            update_ema(e, unwrap(state.modules[k]), s.ema_decay or 0.0)
        state.step += 1
        record = global_losses(parts, dist)
        state.losses.append({"step": state.step, **record})
        bar.update()
        if dist.main and (state.step % s.log_every == 0 or state.step == s.steps):
            rate = (state.step - first) * s.batch_size / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            tracker.metrics({**record, "lr": state.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                             "samples_per_s": rate}, state.step)
        if s.snapshot_every and state.step % s.snapshot_every == 0 and dist.main:
            save_snapshot(stage_dir, state.step, seconds(), {f"{k}_ema": e.state_dict() for k, e in state.emas.items()})
        if state.step % s.checkpoint_every == 0 or state.step == s.steps:
            state.save(stage_dir, dist, seconds())
    if state.step < s.steps and state.step % s.checkpoint_every:
        state.save(stage_dir, dist, seconds())  # an early stop (--stop-after) still leaves a checkpoint to resume from
    bar.close()
    return StageResult(name, state.step, state.losses, {"skipped_steps": state.skipped}, time.perf_counter() - start,
                       seconds())


@functools.lru_cache(maxsize=None)
def compiler_problem(device_type: str) -> str | None:
    """None when torch.compile builds and runs a small kernel on this device type, else why not
    (inductor needs a C++ compiler on the CPU, Triton on CUDA)."""
    try:
        torch.compile(lambda x: F.gelu(x) * x, dynamic=False)(torch.ones(8, device=device_type))
        return None
    except Exception as exc:  # any backend failure means: train eagerly
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {first_line[:200]}"


def compile_decision(train, steps: int, dist: Dist, device: torch.device) -> tuple[bool, str]:
    """(compile the denoisers' blocks?, why), from train.compile: true | false | auto. auto compiles
    when the stage is long enough to earn back the ~30 s build (train.compile_min_steps; see
    bench/RESULTS.md) and a compiler works. DDP training stays eager (not tested compiled)."""
    choice = train.compile
    if choice not in (True, False, "auto"):
        raise UserError(f"train.compile must be true, false or auto, got {choice!r}")
    if choice is False:
        return False, "train.compile is false"
    if choice == "auto" and steps < train.compile_min_steps:
        return False, f"{steps} steps, under train.compile_min_steps={train.compile_min_steps}"
    if dist.world > 1:
        return False, f"{dist.world} processes (compiled blocks under DDP are not tested: eager)"
    problem = compiler_problem(device.type)
    if problem is not None:
        if choice is True:
            raise UserError(f"train.compile is true but torch.compile does not work here: {problem}")
        return False, f"torch.compile does not work here ({problem})"
    return True, f"train.compile={choice}"


def training_precision(train, device: torch.device) -> torch.dtype | None:
    """train.precision on this device -> the autocast dtype of a stage (None: fp32)."""
    try:
        return autocast_dtype(train.precision, device, recorded_bf16_speedup)
    except ValueError as e:
        raise UserError(f"train.precision: {e}") from None


def dataset_hash(manifest) -> str:
    return hashlib.sha256("|".join(manifest["key"]).encode()).hexdigest()[:16]


HELD_OUT = ("val", "test")


def training_rows(manifest) -> list[int]:
    """Manifest rows the models train on: everything but the val and test splits (all rows when the
    dataset marks none as held out)."""
    return [i for i, s in enumerate(manifest["split"].fillna("train")) if s not in HELD_OUT] or list(range(len(manifest)))


@contextmanager
def stage_session(stage: str, params, manifest, device: str | None = None, checkpoint: str | Path | None = None):
    """One stage's process setup: ranks, device, seeds, determinism, the checkpoint folder's lock
    (rank 0) and its MLflow run (named by the stage and a digest of its params, so runs with other
    params stand apart in the MLflow UI). Yields (dist, device, tracker)."""
    dist = init_distributed()
    with folder_lock(checkpoint) if checkpoint is not None and dist.main else nullcontext():
        with _stage_run(stage, params, manifest, device, dist) as (dev, tracker):
            yield dist, dev, tracker


@contextmanager
def _stage_run(stage: str, params, manifest, device: str | None, dist: Dist):
    dev = pick_device(device or params.train.device)
    seed_everything(params.seed)
    torch.use_deterministic_algorithms(dev.type == "cpu", warn_only=True)
    t = params.train
    tracker = Tracker(dist.main and t.mlflow, t.tracking_uri, t.experiment)
    digest = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()[:6]
    tracker.start(f"{stage}-{digest}", tags={"git_commit": git_commit(), "dataset_hash": dataset_hash(manifest)})
    tracker.params(flatten(params.to_dict()))
    try:
        yield dev, tracker
    finally:
        tracker.end()  # the process group lives until the process ends: stages may follow under torchrun


def finish_stage(stage_dir: Path, result: StageResult, params, manifest, tracker, precision: torch.dtype | None,
                 widths: dict[str, int] | None = None) -> dict[str, Any]:
    """Loss table and curve, config.json and summary.json of a stage (rank 0); returns the summary."""
    last = {k: v for k, v in (result.losses[-1] if result.losses else {}).items() if k != "step"}
    summary = {"dataset_hash": dataset_hash(manifest), "items": len(manifest), "stage": result.name,
               "steps": result.steps, "seconds": round(result.seconds, 1),
               "seconds_total": round(result.seconds_total, 1),
               "precision": "fp32" if precision is None else "bf16", **last, **result.metrics, "run_id": tracker.run_id}
    if result.losses:
        write_loss_tsv(result.losses, stage_dir / f"loss_{result.name}.tsv")
        loss_curve_png(result.losses, stage_dir / f"loss_{result.name}.png", f"{result.name} stage")
        tracker.artifact(stage_dir / f"loss_{result.name}.png")
    write_stage_files(stage_dir, params, summary, widths)
    return summary
