"""params.yaml as one typed, frozen tree: loaded with `group.key=value` overrides and validated once.

Each group is a dataclass; unknown keys and wrong types are errors that name the key. The model's
groups are model/config.py's own dataclasses, so their defaults are the shipped model.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from model.config import UPSAMPLER, AudioVAEConfig, DenoiserConfig, VideoVAEConfig, settable_fields

DEFAULT_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


def default_params_file() -> Path:
    """./params.yaml where there is one (a DVC project runs its stages there), else the repository's."""
    here = Path.cwd() / "params.yaml"
    return here if here.is_file() else DEFAULT_PARAMS


class ParamsError(ValueError):
    """A params file or override is unusable; the message names which and why."""


@dataclass(frozen=True)
class DataParams:
    world: str = "events"
    synth_num_clips: int = 600
    synth_seed: int = 0
    synth_size: int = 128
    synth_fps: int = 32
    synth_duration_s: float = 2.5
    synth_sample_rate: int = 44100
    synth_i2v_fraction: float = 0.25
    synth_held_out_fraction: float = 0.1


@dataclass(frozen=True)
class CacheParams:
    num_frames: int = 32
    window_s: float = 2.0
    base_size: int = 32
    upsampled_size: int = 64
    sample_rate: int = 16000
    window_start_s: float = 0.0
    max_windows_per_clip: int = 16
    shard_size: int = 256
    min_duration_s: float = 0.25
    max_clip_mb: float = 4096.0
    max_clip_pixels: int = 7680 * 4320
    min_brightness: float = 20.0
    min_motion: float = 0.2
    skip_no_audio: bool = False
    skip_truncated: bool = True
    workers: int = 2


@dataclass(frozen=True)
class CurateParams:
    captioner: str = "filename"
    captioner_path: str | None = None
    caption_labels: tuple[str, ...] = ()
    safety: str = "pass"
    safety_path: str | None = None
    unsafe_labels: tuple[str, ...] = ("nsfw",)
    safety_threshold: float = 0.5
    near_duplicates: str = "auto"
    near_duplicate_video: float = 2.0
    near_duplicate_audio_db: float = 6.0


@dataclass(frozen=True)
class VAEParams:
    video: VideoVAEConfig = field(default_factory=VideoVAEConfig)
    audio: AudioVAEConfig = field(default_factory=AudioVAEConfig)


@dataclass(frozen=True)
class ConditioningParams:
    backend: str = "minilm"
    minilm_path: str | None = None
    clip_path: str | None = None
    max_text_tokens: int = 48
    token_layer: int = 2


@dataclass(frozen=True)
class DenoiserParams:
    base: DenoiserConfig = field(default_factory=DenoiserConfig)
    upsampler: DenoiserConfig = UPSAMPLER


@dataclass(frozen=True)
class DiffusionParams:
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "sample"
    upsampler_prediction_type: str | None = None
    flow_shift: float = 1.0
    timestep_logit_mean: float | None = None
    timestep_logit_std: float = 1.0
    cond_dropout: float = 0.1
    upsampler_max_noise_aug: int = 250


@dataclass(frozen=True)
class TrainParams:
    vae_steps: int = 400
    audio_vae_steps: int | None = 1200
    vae_batch_size: int = 16
    vae_upsampled_batch_size: int = 4
    vae_lr: float = 2e-3
    denoiser_steps: int = 9000
    batch_size: int = 16
    upsampler_batch_size: int | None = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    max_nonfinite_steps: int = 10
    checkpoint_every: int = 250
    snapshot_every: int | None = 3000
    log_every: int = 25
    device: str | None = None
    precision: str = "auto"
    compile: bool | str = "auto"
    compile_min_steps: int = 2000
    mlflow: bool = True
    tracking_uri: str | None = None
    experiment: str = "tinyveo"
    smoke_steps: int = 30
    smoke_batch_size: int = 4

    @property
    def vae_module_steps(self) -> dict[str, int]:
        """Steps each VAE trains in the VAE stage (audio_vae_steps null: as vae_steps)."""
        return {"video_vae": self.vae_steps, "audio_vae": self.audio_vae_steps or self.vae_steps}

    @property
    def vae_stage_steps(self) -> int:
        """Steps of the VAE stage: the longer of the two VAEs'."""
        return max(self.vae_module_steps.values())


@dataclass(frozen=True)
class SampleParams:
    sampler: str = "dpm"
    steps: int = 20
    guidance: float = 4.0
    guidance_interval: tuple[int, int] | None = (700, 1000)
    upsampler_noise_level: int = 100
    upsampler_steps: int | None = None
    precision: str = "auto"


@dataclass(frozen=True)
class EvalParams:
    splits: tuple[str, ...] = ("val", "test")
    num_prompts: int = 48
    num_i2v: int = 8
    num_vae_clips: int = 48
    num_saved_samples: int = 8
    batch_size: int = 8
    clip_path: str | None = None
    clip_frames: int | None = None
    lpips_net: str = "alex"


@dataclass(frozen=True)
class Params:
    seed: int = 0
    data: DataParams = field(default_factory=DataParams)
    cache: CacheParams = field(default_factory=CacheParams)
    curate: CurateParams = field(default_factory=CurateParams)
    vae: VAEParams = field(default_factory=VAEParams)
    conditioning: ConditioningParams = field(default_factory=ConditioningParams)
    denoiser: DenoiserParams = field(default_factory=DenoiserParams)
    diffusion: DiffusionParams = field(default_factory=DiffusionParams)
    train: TrainParams = field(default_factory=TrainParams)
    sample: SampleParams = field(default_factory=SampleParams)
    eval: EvalParams = field(default_factory=EvalParams)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Params":
        return _build(cls, values, "")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def replace(self, dotted: str, value: Any) -> "Params":
        """A copy with one `group.key` changed (validated like a --set override)."""
        raw = self.to_dict()
        apply_override(raw, f"{dotted}={yaml.safe_dump(value, default_flow_style=True).strip()}")
        return Params.from_dict(raw)


def to_dict(config: Any) -> dict[str, Any]:
    """A params dataclass as plain YAML/JSON values (tuples as lists), settable fields only."""
    out: dict[str, Any] = {}
    for name in settable_fields(type(config)):
        value = getattr(config, name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def _check(kind: Any, value: Any, where: str) -> Any:
    """`value` as the annotated type `kind`, or ParamsError naming `where`."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None:
        if type(None) in options:
            return None
        raise ParamsError(f"{where}: must not be null")
    errors = []
    for option in (o for o in options if o is not type(None)):
        try:
            return _coerce(option, value, where)
        except ParamsError as exc:
            errors.append(str(exc))
    raise ParamsError(errors[0])


def _coerce(kind: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(kind):
        raise ParamsError(f"{where}: expected a group of keys, got {value!r}")
    if typing.get_origin(kind) is tuple:
        items = typing.get_args(kind)
        if len(items) == 2 and items[1] is Ellipsis:  # tuple[X, ...]: any length; "a,b" from --set
            value = value.split(",") if isinstance(value, str) else value
            if not isinstance(value, (list, tuple)):
                raise ParamsError(f"{where}: expected a list, got {value!r}")
            items = (items[0],) * len(value)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise ParamsError(f"{where}: expected a list of {len(items)} values, got {value!r}")
        return tuple(_coerce(k, v, f"{where}[{i}]") for i, (k, v) in enumerate(zip(items, value)))
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and isinstance(value, kind):
        return value
    raise ParamsError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def _default(cls: Any, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _build(cls: Any, values: dict[str, Any], prefix: str, base: Any = None) -> Any:
    """A `cls` from a raw dict: missing keys keep `base`'s (or the class's) values; nested groups likewise."""
    hints = typing.get_type_hints(cls)
    known = settable_fields(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ParamsError(f"unknown parameter {prefix}{unknown[0]!r}; known here: {', '.join(known)}")
    checked = {}
    for key, value in values.items():
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            inner = getattr(base, key) if base is not None else _default(cls, key)
            checked[key] = _build(hints[key], value, f"{prefix}{key}.", inner)
        else:
            checked[key] = _check(hints[key], value, prefix + key)
    return dataclasses.replace(base, **checked) if base is not None else cls(**checked)


def apply_override(params: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a raw params dict. The key must already exist (typos fail loudly); the value is YAML."""
    if "=" not in override:
        raise ParamsError(f"override {override!r} is not of the form group.key=value")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    node: Any = params
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a group)"
            raise ParamsError(f"unknown parameter {'.'.join(keys[: i + 1])!r} in override {override!r}; known here: {known}")
        if i == len(keys) - 1:
            node[key] = yaml.safe_load(raw)
        else:
            node = node[key]


def read_params_file(path: str | Path | None = None) -> dict[str, Any]:
    """The raw params dict of a YAML file (default: the repository's params.yaml)."""
    path = Path(path) if path else default_params_file()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read params file ({exc.strerror or exc})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of parameter groups at the top level")
    return raw


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Params:
    raw = copy.deepcopy(read_params_file(path))
    for override in overrides:
        apply_override(raw, override)
    try:
        return Params.from_dict(raw)
    except ParamsError as exc:
        raise ParamsError(f"{Path(path) if path else default_params_file()}: {exc}") from None


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: for MLflow params and reports."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
