"""MLflow tracking from one process: a run per `train` invocation with a nested run per stage.
Ranks other than 0, and runs with tracking switched off, get a tracker that does nothing."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .media import write_tsv


def tracking_uri(configured: str | None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


class Tracker:
    def __init__(self, enabled: bool, uri: str | None = None, experiment: str = "tinyveo"):
        self.enabled = enabled
        self._mlflow = None
        if enabled:
            import logging

            import mlflow

            logging.getLogger("mlflow").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
            mlflow.set_tracking_uri(tracking_uri(uri))
            mlflow.set_experiment(experiment)
            self._mlflow = mlflow

    def start(self, name: str, nested: bool = False, tags: dict[str, str] | None = None):
        if not self.enabled:
            return None
        return self._mlflow.start_run(run_name=name, nested=nested, tags=tags)

    def end(self) -> None:
        if self.enabled:
            self._mlflow.end_run()

    def params(self, values: dict[str, Any]) -> None:
        if self.enabled:
            self._mlflow.log_params({k: str(v)[:500] for k, v in values.items()})

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.enabled:
            self._mlflow.log_metrics({k: float(v) for k, v in values.items()}, step=step)

    def artifact(self, path: str | Path) -> None:
        if self.enabled:
            self._mlflow.log_artifact(str(path))

    @property
    def run_id(self) -> str | None:
        if not self.enabled:
            return None
        run = self._mlflow.active_run()
        return run.info.run_id if run else None


def write_loss_tsv(losses: list[dict[str, float]], path: Path) -> None:
    write_tsv(path, losses, None if losses else ["step"])  # a loss may stop before the stage
