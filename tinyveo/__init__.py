"""tinyveo: a small Veo-3-style joint video + audio diffusion pipeline that trains on a laptop CPU.

    from tinyveo import TinyVeoPipeline       # diffusers-style: from_pretrained, __call__, save_pretrained
    python -m tinyveo --help                   # the `tinyveo` command

The package is the public face; the code lives in model/ (PyTorch), tasks/ (pipeline steps) and
flows/ (Prefect). Names load on first use, so `import tinyveo` stays light.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = ["TinyVeoModel", "TinyVeoPipeline", "TinyVeoPipelineOutput", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("TinyVeoModel", "TinyVeoPipeline", "TinyVeoPipelineOutput"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'tinyveo' has no attribute {name!r}")
