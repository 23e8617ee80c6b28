"""tinyveo's model: pure PyTorch modules, noise-schedule glue and the sampler.

Names follow the reference article so it reads as documentation. Nothing here imports tasks/ or
flows/, reads files, or downloads anything. Names load on first use (PEP 562), so reading the
config (`model.config`) does not import the modules.
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> the module of this package that defines it
_EXPORTS = {
    "ConditioningEncoder": "conditioning", "MissingCheckpointError": "conditioning", "TextEmbedding": "conditioning",
    "AudioVAEConfig": "config", "DenoiserConfig": "config", "ModelConfig": "config", "VideoVAEConfig": "config",
    "build_config": "config", "from_params": "config",
    "BatchDraws": "draws",
    "FinalLayer": "denoiser", "InputProjector": "denoiser", "JointDenoisingTransformer": "denoiser",
    "OutputProjector": "denoiser", "PatchTransformer": "denoiser", "TimestepEmbedding": "denoiser",
    "TokenBuilder": "denoiser", "TransformerBlock": "denoiser",
    "SAMPLERS": "diffusion", "base_denoiser_loss": "diffusion", "make_noise_scheduler": "diffusion",
    "noise_schedulers": "diffusion", "make_sampler": "diffusion", "sample_latents": "diffusion",
    "upsampler_loss": "diffusion",
    "CaptionState": "inputs", "DenoiserInputs": "inputs", "TokenLayout": "inputs",
    "GeneratedContent": "pipeline", "TinyVeo": "pipeline", "resize_image": "pipeline",
    "AudioVAE": "vae", "DiagonalGaussian": "vae", "VideoVAE": "vae", "video_reconstruction_loss": "vae",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return __all__
