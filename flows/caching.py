"""One cache policy for the per-clip tasks: Prefect's own input hashing, plus the content of every
input that names an existing file, plus the source code of tasks/ and model/ (a code edit re-runs)."""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, CachePolicy

from tasks.media import file_sha256
from tasks.runtime import source_digest

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """The digest of this checkout's code, read once per process."""
    return source_digest(ROOT)


@dataclass
class CodeAndInputs(CachePolicy):
    """`files`: the parameters that name files the task reads (outputs it writes are not hashed)."""

    files: tuple[str, ...] = ()

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        base = INPUTS.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        contents = [file_sha256(inputs[name]) if Path(inputs[name]).is_file() else "missing"
                    for name in self.files if name in inputs]
        return hashlib.sha256("|".join([code_digest(), base or "", *contents]).encode()).hexdigest()
