"""tinyveo's model: pure PyTorch modules, noise-schedule glue and the sampler.

Names follow the reference article so it reads as documentation. Nothing here imports tasks/ or
flows/, reads files, or downloads anything.
"""
from .conditioning import ConditioningEncoder, MissingCheckpointError, TextEmbedding
from .config import AudioVAEConfig, DenoiserConfig, ModelConfig, VideoVAEConfig, build_config, from_params
from .denoiser import (
    FinalLayer,
    InputProjector,
    JointDenoisingTransformer,
    OutputProjector,
    PatchTransformer,
    TimestepEmbedding,
    TokenBuilder,
    TransformerBlock,
)
from .diffusion import (
    SAMPLERS,
    base_denoiser_loss,
    make_noise_scheduler,
    noise_schedulers,
    make_sampler,
    sample_latents,
    upsampler_loss,
)
from .inputs import CaptionState, DenoiserInputs, TokenLayout
from .pipeline import GeneratedContent, TinyVeo, resize_image
from .vae import AudioVAE, DiagonalGaussian, VideoVAE

__all__ = [
    "AudioVAE", "AudioVAEConfig", "CaptionState", "ConditioningEncoder", "DenoiserConfig", "DenoiserInputs",
    "TokenLayout", "build_config", "resize_image", "DiagonalGaussian", "FinalLayer", "GeneratedContent",
    "InputProjector", "JointDenoisingTransformer", "MissingCheckpointError", "ModelConfig", "OutputProjector",
    "PatchTransformer", "SAMPLERS", "TextEmbedding", "TimestepEmbedding", "TinyVeo", "TokenBuilder", "TransformerBlock",
    "VideoVAE", "VideoVAEConfig", "base_denoiser_loss", "from_params", "make_noise_scheduler", "make_sampler", "noise_schedulers",
    "sample_latents", "upsampler_loss",
]
