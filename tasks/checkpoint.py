"""Checkpoints: weights in safetensors, training state in a file read with torch.load(weights_only=True).

A checkpoint folder holds vae/ (the final video_vae / audio_vae weights), latents/ (every training
item encoded once) and denoiser/ (step checkpoints with EMA weights), each with config.json and
summary.json: one folder per stage, so each is a separate DVC output.

Layout of one stage folder (CKPT_DIR/<stage>/):
    step-000500/  weights (*.safetensors) + state.pt   a complete checkpoint
    latest        the name of the newest complete checkpoint folder
    snapshots/step-0003000/  EMA weights + meta.json (step, training seconds): kept for the quality curve
A checkpoint is written into a temporary folder, renamed into place, and only then named in
`latest` (itself replaced atomically), so a kill -9 at any moment leaves the previous one loadable.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from model import (AudioVAE, ConditioningEncoder, JointDenoisingTransformer, TinyVeo, VideoVAE, from_params,
                   noise_schedulers, precision)
from model.config import saved_denoiser_settings

from .media import atomic_path, fault_point, fsync_path, write_text_atomic
from .params import Params, ParamsError
from .runtime import UserError, pick_device


def _write_weights_folder(final: Path, weights: dict[str, dict[str, torch.Tensor]], extra: Callable[[Path], None],
                         point: str | None = None) -> Path:
    """FINAL/<module>.safetensors for each of `weights` plus what `extra(tmp)` writes, fsynced under a
    temporary name and only then renamed into place (a replaced FINAL is removed first)."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for module, tensors in weights.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / f"{module}.safetensors"))
    extra(tmp)
    for f in tmp.iterdir():
        fsync_path(f)
    fsync_path(tmp, directory=True)
    if point:
        fault_point(point)  # complete under its temporary name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def save_checkpoint(stage_dir: str | Path, step: int, weights: dict[str, dict[str, torch.Tensor]],
                    state: dict[str, Any], keep: int = 2) -> Path:
    stage_dir = Path(stage_dir)
    name = f"step-{step:07d}"
    final = _write_weights_folder(stage_dir / name, weights, lambda tmp: torch.save(state, tmp / "state.pt"),
                                 "checkpoint")
    write_text_atomic(stage_dir / "latest", name + "\n")  # only now is the new checkpoint the one resumed
    for old in sorted(p for p in stage_dir.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """One training run per checkpoint folder: a second one is refused (flock, released on exit or kill)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".tinyveo.lock", "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise UserError(f"{folder}: another tinyveo run is training here (pid {holder}); wait for it to end "
                            "or give another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def clear_checkpoints(stage_dir: str | Path) -> None:
    """Remove every checkpoint of a stage folder (complete, half-written, snapshots, and the pointer)."""
    stage_dir = Path(stage_dir)
    for old in list(stage_dir.glob("step-*")) + list(stage_dir.glob(".step-*.tmp")) + [stage_dir / SNAPSHOTS_DIR]:
        shutil.rmtree(old, ignore_errors=True)
    (stage_dir / "latest").unlink(missing_ok=True)


SNAPSHOTS_DIR = "snapshots"


@dataclass(frozen=True)
class Snapshot:
    """EMA weights kept at one step of a stage, for the quality-vs-minutes curve."""

    step: int
    seconds: float    # the stage's training wall clock up to this step, over every resumed run
    folder: Path


def save_snapshot(stage_dir: str | Path, step: int, seconds: float,
                  weights: dict[str, dict[str, torch.Tensor]]) -> Path:
    """STAGE/snapshots/step-N/: `weights` (module -> tensors) and meta.json; a step replayed after a
    resume writes the same weights again."""
    meta = json.dumps({"step": step, "seconds": round(seconds, 1)}) + "\n"
    return _write_weights_folder(Path(stage_dir) / SNAPSHOTS_DIR / f"step-{step:07d}", weights,
                                lambda tmp: (tmp / "meta.json").write_text(meta, encoding="utf-8"))


def list_snapshots(stage_dir: str | Path) -> list[Snapshot]:
    """The stage's complete snapshots, oldest first."""
    out = []
    for folder in sorted((Path(stage_dir) / SNAPSHOTS_DIR).glob("step-*")):
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        out.append(Snapshot(int(meta["step"]), float(meta["seconds"]), folder))
    return out


def drop_snapshots_after(stage_dir: str | Path, step: int) -> None:
    """On resume from `step`: snapshots of the interrupted run past it are not this run's."""
    for snap in list_snapshots(stage_dir):
        if snap.step > step:
            shutil.rmtree(snap.folder, ignore_errors=True)


def latest_checkpoint(stage_dir: str | Path) -> Path | None:
    pointer = Path(stage_dir) / "latest"
    if not pointer.exists():
        return None
    folder = Path(stage_dir) / pointer.read_text(encoding="utf-8").strip()
    return folder if (folder / "state.pt").exists() else None


def load_weights(folder: str | Path, module: str) -> dict[str, torch.Tensor]:
    path = Path(folder) / f"{module}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint has no weights for {module}")
    return load_file(str(path))


def load_state(folder: str | Path) -> dict[str, Any]:
    """A checkpoint's training state (weights_only: no pickled code runs); an unreadable file is a UserError."""
    path = Path(folder) / "state.pt"
    try:
        state = torch.load(path, weights_only=True)
    except FileNotFoundError as exc:
        raise UserError(f"{path}: missing; the checkpoint folder is incomplete") from exc
    except Exception as exc:  # torch raises pickle, EOF, zip and runtime errors for a damaged file
        first_line = (str(exc).strip().splitlines() or ["no detail"])[0][:200]
        raise UserError(f"{path}: not a readable training state ({exc.__class__.__name__}: {first_line})") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise UserError(f"{path}: not a tinyveo training state (no step recorded)")
    return state


# ---- the checkpoint folder's layout ------------------------------------------------------------

VAE_DIR, LATENTS_DIR, DENOISER_DIR = "vae", "latents", "denoiser"
VAE_MODULES = ("video_vae", "audio_vae")
LATENTS_FILE = "latents.safetensors"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """JSON, written to a temporary name and renamed."""
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def write_stage_files(stage_dir: Path, params, summary: dict[str, Any], widths: dict[str, int] | None = None) -> None:
    """STAGE/config.json (the params the stage ran with, + encoder widths: enough to rebuild every
    model) and STAGE/summary.json (its metrics and MLflow run id)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json(stage_dir / "config.json", {"params": params.to_dict(), **(widths or {})})
    write_json(stage_dir / "summary.json", summary)


def save_vaes(checkpoint: str | Path, modules: dict[str, torch.nn.Module]) -> None:
    for name, module in modules.items():
        with atomic_path(Path(checkpoint) / VAE_DIR / f"{name}.safetensors") as tmp:
            save_file({k: v.contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp))


def load_vaes(checkpoint: str | Path, cfg, device) -> tuple[Any, Any]:
    """The trained (VideoVAE, AudioVAE) of a checkpoint folder, frozen, in eval mode."""
    video_vae, audio_vae = VideoVAE(cfg.video_vae).to(device), AudioVAE(cfg.audio_vae).to(device)
    for name, module in zip(VAE_MODULES, (video_vae, audio_vae)):
        path = Path(checkpoint) / VAE_DIR / f"{name}.safetensors"
        if not path.exists():
            raise UserError(f"{path}: no trained VAE (run `tinyveo train-vae` first)")
        load_module(module, path.parent, name)
    return video_vae.requires_grad_(False).eval(), audio_vae.requires_grad_(False).eval()


def load_module(module: torch.nn.Module, folder: str | Path, name: str, config_path: Path | None = None) -> None:
    """FOLDER/NAME.safetensors into `module`; a missing, unreadable or mismatched file is one UserError."""
    path = Path(folder) / f"{name}.safetensors"
    try:
        module.load_state_dict(load_weights(folder, name))
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    except SafetensorError as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from exc
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
        raise UserError(f"{path}: incompatible with {config_path or 'the configured model'} ({detail[:300]})") from exc


def read_config(checkpoint: str | Path) -> tuple[Any, dict[str, Any]]:
    """(Params, saved widths) of a finished checkpoint folder; errors name the missing file."""
    ckpt = Path(checkpoint)
    config_path = ckpt / DENOISER_DIR / "config.json"
    if not ckpt.is_dir():
        raise UserError(f"{ckpt}: no such checkpoint folder (train one with `tinyveo train --out {ckpt}`)")
    if not config_path.exists():
        raise UserError(f"{config_path}: missing; {ckpt} is not a finished tinyveo checkpoint (run `tinyveo train`)")
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        denoisers = saved["params"].get("denoiser", {})
        for name, settings in denoisers.items():   # a config older than a field gets the value it was trained with
            denoisers[name] = saved_denoiser_settings(settings) if isinstance(settings, dict) else settings
        return Params.from_dict(saved["params"]), saved
    except (json.JSONDecodeError, KeyError, AttributeError, ParamsError) as exc:
        raise UserError(f"{config_path}: not a tinyveo checkpoint config ({exc})") from exc


def training_summaries(checkpoint: str | Path) -> dict[str, dict[str, Any]]:
    """{stage: summary.json} of a checkpoint folder's vae and denoiser stages (those present)."""
    out = {}
    for stage in (VAE_DIR, DENOISER_DIR):
        path = Path(checkpoint) / stage / "summary.json"
        if path.exists():
            out[stage] = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k != "run_id"}
    return out


def load_pipeline(checkpoint: str | Path, device: str | None = None, snapshot: Snapshot | None = None):
    """A trained checkpoint folder -> (TinyVeo with the EMA denoisers, the params it was trained with);
    with `snapshot`, the EMA denoisers of that earlier step instead of the latest checkpoint's."""
    ckpt = Path(checkpoint)
    params, saved = read_config(ckpt)
    config_path = ckpt / DENOISER_DIR / "config.json"
    dev = pick_device(device or params.train.device)
    encoder = ConditioningEncoder.from_params(params.conditioning).to(dev)
    if encoder.text_dim != saved.get("context_dim", encoder.text_dim):
        raise UserError(f"{config_path}: the checkpoint was trained with {saved['context_dim']}-d text embeddings, "
                        f"the configured {params.conditioning.backend} encoder gives {encoder.text_dim}-d")
    cfg = from_params(params, context_dim=encoder.text_dim, image_feature_dim=encoder.image_dim)
    video_vae, audio_vae = load_vaes(ckpt, cfg, "cpu")
    folder = snapshot.folder if snapshot is not None else latest_checkpoint(ckpt / DENOISER_DIR)
    if folder is None:
        raise UserError(f"{ckpt / DENOISER_DIR}: no denoiser checkpoint (run `tinyveo train-denoiser`)")
    base, upsampler = JointDenoisingTransformer(cfg.base), JointDenoisingTransformer(cfg.upsampler)
    for module, name in ((base, "base_ema"), (upsampler, "upsampler_ema")):
        load_module(module, folder, name, config_path)
    scheduler, up_scheduler = noise_schedulers(params.diffusion)
    fps = params.cache.num_frames / params.cache.window_s
    pipe = TinyVeo(cfg, encoder, video_vae, audio_vae, base, upsampler, scheduler, fps, up_scheduler,
                   bf16_speedup=recorded_bf16_speedup)
    return pipe.to(dev), params


def speedup_record() -> Path:
    """Where this machine's bf16 measurement is kept: $TINYVEO_CACHE_DIR (default ~/.cache/tinyveo), one
    file per CPU model and flags, torch version and thread count."""
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    lines = sorted({line for line in cpu.splitlines() if line.startswith(("model name", "flags"))})
    key = hashlib.sha256("|".join([*lines, torch.__version__, str(torch.get_num_threads())]).encode()).hexdigest()
    root = os.environ.get("TINYVEO_CACHE_DIR") or Path.home() / ".cache" / "tinyveo"
    return Path(root) / f"bf16-speedup-{key[:12]}.json"


@functools.lru_cache(maxsize=1)
def recorded_bf16_speedup() -> float:
    """This machine's bf16 speed-up (model.precision): read from its record, else measured and
    recorded, so every process, rank and resumed run of the machine takes the same precision (a
    per-process measurement near the threshold could differ, and exact resume with it). The first
    record written wins (a hard link cannot replace a file), so processes measuring at once agree."""
    path = speedup_record()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"speedup": precision.measure_bf16_speedup(), "torch": torch.__version__}))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return float(json.loads(path.read_text())["speedup"])


def latents_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / LATENTS_DIR / LATENTS_FILE


def write_latents(checkpoint: str | Path, tensors: dict[str, torch.Tensor], encoder, keys: list[str]) -> Path:
    """CHECKPOINT/latents/latents.safetensors, with the encoder's identity and widths and the cache keys."""
    path = latents_path(checkpoint)
    meta = {"encoder": encoder.identity, "context_dim": str(encoder.text_dim),
            "image_feature_dim": str(encoder.image_dim), "keys": json.dumps(keys)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return path


def read_latents(checkpoint: str | Path, keys: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """(latent tensors, encoder widths) of a checkpoint folder, checked against the cache's item keys."""
    path = latents_path(checkpoint)
    if not path.exists():
        raise UserError(f"{path}: no encoded latents (run `tinyveo encode-latents` first)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    if json.loads(meta["keys"]) != list(keys):
        raise UserError(f"{path}: encoded from another tensor cache (run `tinyveo encode-latents` again)")
    widths = {"context_dim": int(meta["context_dim"]), "image_feature_dim": int(meta["image_feature_dim"])}
    return load_file(str(path)), widths
