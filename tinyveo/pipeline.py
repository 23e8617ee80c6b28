"""TinyVeoPipeline: a trained tinyveo in diffusers' pipeline idiom.

    from tinyveo import TinyVeoPipeline
    pipe = TinyVeoPipeline.from_pretrained("checkpoints")        # the folder `dvc repro` trains, or an export
    out = pipe("A red circle bounces with a high tone", num_inference_steps=20, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(0))
    out.frames[0]        # (F, H, W, 3) in [0, 1];  out.audio[0]: (N,) at out.sample_rate;  out.fps
    pipe.save_pretrained("exported")                             # safetensors + configs + README.md model card

It is a real `diffusers.DiffusionPipeline`: each denoiser and VAE is a `TinyVeoModel` (diffusers'
ModelMixin + ConfigMixin around tinyveo's torch module), the text encoder and tokenizer are
transformers' own, the schedulers diffusers' own, so `save_pretrained` / `from_pretrained` / `.to()`
are diffusers' code. Sampling is model.TinyVeo's `generate_content` on those same modules.
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput

from model import AudioVAE, ConditioningEncoder, JointDenoisingTransformer, TinyVeo, VideoVAE
from model.config import AudioVAEConfig, DenoiserConfig, ModelConfig, VideoVAEConfig, saved_denoiser_settings

ARCHITECTURES = {"VideoVAE": (VideoVAE, VideoVAEConfig), "AudioVAE": (AudioVAE, AudioVAEConfig),
                 "JointDenoisingTransformer": (JointDenoisingTransformer, DenoiserConfig)}


def _config_from_json(cls, settings: dict[str, Any]):
    """A model config dataclass from its JSON form (lists back to tuples)."""
    known = {f.name for f in fields(cls)}
    if cls is DenoiserConfig:
        settings = saved_denoiser_settings(settings)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in known})


def _own_copies(module: torch.nn.Module) -> None:
    """Give the module's tensors memory of their own. Loaded from safetensors they may be views into the
    file at its offsets, not 64-byte aligned, and CPU kernels then sum in another order: the samples
    differed from the saved model's in the last bits."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()


class TinyVeoModel(ModelMixin, ConfigMixin):
    """One of tinyveo's torch modules (VideoVAE, AudioVAE, JointDenoisingTransformer) as a diffusers
    model: its config dataclass goes to config.json, its weights to diffusion_pytorch_model.safetensors."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, architecture: str = "JointDenoisingTransformer", settings: dict | None = None):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown tinyveo architecture {architecture!r} (one of {', '.join(ARCHITECTURES)})")
        module_cls, config_cls = ARCHITECTURES[architecture]
        self.model = module_cls(_config_from_json(config_cls, settings or {}))

    @classmethod
    def wrap(cls, module: torch.nn.Module) -> "TinyVeoModel":
        """Wrap an existing module without copying its weights."""
        wrapper = cls(type(module).__name__, json.loads(json.dumps(asdict(module.config))))
        wrapper.model = module
        return wrapper

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


class TinyVeoPipelineOutput(BaseOutput):
    """frames: (B, F, H, W, 3) in [0, 1] (np) or (B, F, 3, H, W) (pt); audio: (B, N) in [-1, 1]."""

    frames: np.ndarray | torch.Tensor
    audio: np.ndarray | torch.Tensor
    fps: float
    sample_rate: int


class TinyVeoPipeline(DiffusionPipeline):
    """Text (+ an optional first-frame image) -> a video with its sound, by tinyveo's cascade:
    base JointDenoisingTransformer (video + audio latents) -> upsampler -> VideoVAE / AudioVAE."""

    model_cpu_offload_seq = "text_encoder->base->upsampler->video_vae->audio_vae"
    _optional_components = ["image_processor"]

    def __init__(self, text_encoder, tokenizer, video_vae: TinyVeoModel, audio_vae: TinyVeoModel,
                 base: TinyVeoModel, upsampler: TinyVeoModel, scheduler, upsampler_scheduler,
                 image_processor=None, encoder_backend: str = "minilm", max_text_tokens: int = 32,
                 token_layer: int = -1, fps: float = 16.0, sample_defaults: dict | None = None,
                 training: dict | None = None):
        super().__init__()
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer, video_vae=video_vae,
                              audio_vae=audio_vae, base=base, upsampler=upsampler, scheduler=scheduler,
                              upsampler_scheduler=upsampler_scheduler, image_processor=image_processor)
        self.register_to_config(encoder_backend=encoder_backend, max_text_tokens=max_text_tokens,
                                token_layer=token_layer, fps=float(fps), sample_defaults=dict(sample_defaults or {}),
                                training=dict(training or {}))

    # ---- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device | None = None, **kwargs):
        """A saved pipeline (model_index.json) or a tinyveo training checkpoint folder (CKPT/denoiser,
        CKPT/vae as `tinyveo train` writes them). Local folders only: nothing is downloaded."""
        folder = Path(folder)
        if (folder / "model_index.json").exists():
            pipe = super().from_pretrained(str(folder), local_files_only=True, **kwargs)
            for module in (pipe.text_encoder, pipe.base, pipe.upsampler, pipe.video_vae, pipe.audio_vae):
                _own_copies(module)
        else:
            pipe = cls.from_checkpoint(folder)
        return pipe.to(device) if device is not None else pipe

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path) -> "TinyVeoPipeline":
        """The pipeline of a training checkpoint folder, with its EMA denoisers and training summaries."""
        from tasks.checkpoint import load_pipeline, training_summaries

        tinyveo, params = load_pipeline(checkpoint, "cpu")
        return cls.from_tinyveo(tinyveo, asdict(params.sample), training_summaries(checkpoint))

    @classmethod
    def from_tinyveo(cls, tinyveo: TinyVeo, sample_defaults: dict | None = None,
                     training: dict | None = None) -> "TinyVeoPipeline":
        encoder = tinyveo.encoder
        return cls(encoder.model, encoder.tokenizer, TinyVeoModel.wrap(tinyveo.video_vae),
                   TinyVeoModel.wrap(tinyveo.audio_vae), TinyVeoModel.wrap(tinyveo.base),
                   TinyVeoModel.wrap(tinyveo.upsampler), tinyveo.train_scheduler, tinyveo.upsampler_scheduler,
                   getattr(encoder, "image_processor", None), encoder.backend, encoder.max_length,
                   encoder.token_layer, tinyveo.fps, sample_defaults, training)

    # ---- sampling --------------------------------------------------------------------------

    @property
    def tinyveo(self) -> TinyVeo:
        """model.TinyVeo over this pipeline's modules (no copies): what samples."""
        c = self.config
        encoder = ConditioningEncoder(c.encoder_backend, max_length=c.max_text_tokens, token_layer=c.token_layer,
                                      model=self.text_encoder, tokenizer=self.tokenizer,
                                      image_processor=self.image_processor)
        video_vae, audio_vae = self.video_vae.model, self.audio_vae.model
        base, upsampler = self.base.model, self.upsampler.model
        scale = video_vae.config.spatial_downsample
        config = ModelConfig(video_vae.config, audio_vae.config, base.config, upsampler.config,
                             num_frames=base.config.video_latent_shape[1] * video_vae.config.temporal_downsample,
                             base_size=base.config.video_latent_shape[-1] * scale,
                             upsampled_size=upsampler.config.video_latent_shape[-1] * scale)
        from tasks.checkpoint import recorded_bf16_speedup   # "auto" decides as training did on this machine

        return TinyVeo(config, encoder, video_vae, audio_vae, base, upsampler, self.scheduler, self.config.fps,
                       self.upsampler_scheduler, bf16_speedup=recorded_bf16_speedup)

    def generate_content(self, prompt, input_image=None, **settings):
        """model.TinyVeo.generate_content (tinyveo's own keyword names): `tinyveo generate` calls this."""
        return self.tinyveo.generate_content(prompt, input_image, **settings)

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], image: torch.Tensor | np.ndarray | Any | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 generator: torch.Generator | None = None, *, sampler: str | None = None,
                 output_type: str = "np", return_dict: bool = True, **settings):
        """prompt(s) (+ an optional first frame: a PIL image, an (H, W, 3) array in [0, 1] or a
        (3, H, W) / (B, 3, H, W) tensor in [0, 1]) -> TinyVeoPipelineOutput. Unset settings take the
        values the model was trained to sample with (`sample_defaults`). generator None: drawn from
        torch's global RNG, so torch.manual_seed makes a call reproducible. Other keywords go to
        generate_content (upsampler_steps, guidance_interval, precision, ...)."""
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        defaults = dict(self.config.sample_defaults)
        steps = int(num_inference_steps or defaults.get("steps", 20))
        options = {k: defaults[k] for k in ("upsampler_noise_level", "upsampler_steps", "precision")
                   if defaults.get(k) is not None}
        interval = defaults.get("guidance_interval")
        options["guidance_interval"] = tuple(interval) if interval else None
        options.update(settings)
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        total = steps + int(options.get("upsampler_steps") or steps)
        with self.progress_bar(total=total) as bar:
            content = self.generate_content(
                prompt, as_image_tensor(image), steps=steps, sampler=sampler or defaults.get("sampler", "dpm"),
                guidance=float(guidance_scale if guidance_scale is not None else defaults.get("guidance", 4.0)),
                generator=generator, on_step=lambda: bar.update(1), **options)
        frames = content.video.permute(0, 2, 1, 3, 4)            # (B, F, 3, H, W)
        audio = content.audio
        if output_type == "np":
            frames, audio = frames.permute(0, 1, 3, 4, 2).numpy(), audio.numpy()
        output = TinyVeoPipelineOutput(frames=frames, audio=audio, fps=content.fps, sample_rate=content.sample_rate)
        return output if return_dict else output.to_tuple()

    # ---- saving ----------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """diffusers' save (safetensors per component, configs, model_index.json) + README.md, a model card."""
        super().save_pretrained(str(save_directory), **kwargs)
        (Path(save_directory) / "README.md").write_text(model_card(self), encoding="utf-8")


def as_image_tensor(image) -> torch.Tensor | None:
    """A PIL image, (H, W, 3) array in [0, 1] (uint8 in 0-255) or a tensor in [0, 1] -> (..., 3, H, W) float."""
    if image is None or isinstance(image, torch.Tensor):
        return image
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image must be RGB (H, W, 3), got shape {array.shape}")
    array = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def numbers(tree: dict) -> dict[str, float]:
    """The numeric leaves of a nested dict, as dotted keys."""
    from tasks.params import flatten

    return {k: v for k, v in flatten(tree).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def model_card(pipe: TinyVeoPipeline) -> str:
    """README.md of a saved pipeline: what it is, what it was trained on, its metrics and its limits."""
    c, training = pipe.config, dict(pipe.config.training)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    base, up = pipe.base.model.config, pipe.upsampler.model.config
    lines = [
        "---", "library_name: diffusers", "pipeline_tag: text-to-video",
        "tags: [tinyveo, text-to-video, text-to-audio, joint-audio-video]", "---", "",
        "# tinyveo: joint video + audio diffusion", "",
        "A small Veo-3-style cascade: a base JointDenoisingTransformer makes video and audio latents together, "
        "an upsampler doubles the video's resolution, VideoVAE and AudioVAE decode them.", "",
        "```python", "from tinyveo import TinyVeoPipeline",
        "pipe = TinyVeoPipeline.from_pretrained(\"THIS_FOLDER\")",
        "out = pipe(\"A red circle bounces with a high tone\", generator=torch.Generator().manual_seed(0))", "```", "",
        "## Model", "",
        f"- base denoiser: {params(pipe.base) / 1e6:.2f} M parameters, width {base.dim}, depth {base.depth}, "
        f"video patch {list(base.video_patch)}",
        f"- upsampler: {params(pipe.upsampler) / 1e6:.2f} M parameters, width {up.dim}, depth {up.depth}",
        f"- text encoder: {c.encoder_backend} (frozen), {c.max_text_tokens} tokens",
        f"- output: {c.fps:g} fps video with sound at {pipe.audio_vae.model.config.sample_rate} Hz, "
        f"{up.video_seconds:g} s per clip",
        f"- sampling defaults: {json.dumps(c.sample_defaults)}", "",
        "## Training", "",
    ]
    evaluation = training.pop("evaluation", None)
    for stage, summary in training.items():
        lines.append(f"- {stage}: " + ", ".join(f"{k} {v:g}" for k, v in numbers(summary).items()))
        if summary.get("dataset_hash"):
            lines.append(f"  (dataset {summary['dataset_hash']}, precision {summary.get('precision', '?')})")
    if not training:
        lines.append("- no training summary was saved with these weights")
    lines += ["", "## Evaluation", ""]
    lines += [f"- {k}: {v:g}" for k, v in numbers(evaluation or {}).items()] or [
        "- not evaluated (export with `tinyveo export --metrics outputs/eval/metrics.json`)"]
    lines += ["", "## Limits", "",
              "- Trained from scratch on a small dataset (by default tinyveo's synthetic worlds of coloured "
              "shapes with tones and impact sounds): it knows those words and scenes, not the open world.",
              f"- {up.video_seconds:g} s clips at low resolution; audio is decoded by Griffin-Lim from a "
              "log-mel latent, so it sounds buzzy and smears sharp onsets.",
              "- Not for people, faces or any claim about real events; no safety filter runs at sampling.", ""]
    return "\n".join(lines)
