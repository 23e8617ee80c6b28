"""Load params.yaml (the one source of hyperparameters) with `group.key=value` overrides."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

DEFAULT_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


class ParamsError(ValueError):
    """A params file or override is unusable; the message names which and why."""


def apply_override(params: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in place. The key must already exist (typos fail loudly); the value is YAML."""
    import yaml

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


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    import yaml

    path = Path(path) if path else DEFAULT_PARAMS
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read params file ({exc.strerror or exc})") from exc
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of parameter groups at the top level")
    params = copy.deepcopy(params)
    for override in overrides:
        apply_override(params, override)
    return params


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
