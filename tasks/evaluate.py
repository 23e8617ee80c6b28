"""`tinyveo evaluate`: generate for held-out prompts and measure, into metrics.json and MLflow.

    tinyveo evaluate --checkpoint checkpoints --holdout data --out outputs/eval
    tinyveo evaluate --checkpoint checkpoints --prompts prompts.jsonl --out outputs/eval

With --holdout DATA (a folder written by `tinyveo prepare`) the prompts are the captions of the
held-out attribute combinations; their attributes are known, so the analytic detectors give
attribute accuracy per attribute and all-four-correct (chance levels beside them), and the held-out
clips give VAE reconstruction PSNR/SSIM and a reference for the audio/visual onset offset. Held-out
i2v items are also generated from their first frame, for LPIPS(first generated frame, input image).
With --prompts FILE (text or JSONL), accuracy is measured for JSONL lines that carry `attributes`.

Each metric family is one function over the generated set that returns its numbers or
{"status": "not computed", "reason": ...}. CLIP score needs local CLIP weights (eval.clip_path, or
conditioning.clip_path with the clip backend). LPIPS says which backbone ran: offline the ImageNet
backbone is usually absent and a random one is used, which is a plumbing check only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import mlflow
import numpy as np
import torch

from model import ConditioningEncoder, resize_image

from .cache import MultiModalDataset
from .checkpoint import DENOISER_DIR, load_pipeline, write_json
from .detect import CHANCE, detect_all
from .metrics import attribute_accuracy, av_offset_frames, clip_score, lpips_distance, psnr, ssim
from .params import Params, flatten
from .runtime import UserError
from .samples import PromptSpec, generate_batches, load_image, read_prompts, sample_settings, slug, write_sample
from .tracking import Tracker


def not_computed(reason: str) -> dict[str, str]:
    return {"status": "not computed", "reason": reason}


@dataclass
class EvalSet:
    """One evaluation's prompts and what was generated for them."""

    pipe: Any
    params: Params
    settings: dict[str, Any]
    specs: list[PromptSpec]
    samples_dir: Path
    cache: dict[str, torch.Tensor] | None = None   # the held-out items' cached tensors (--holdout)
    manifest: Any = None
    videos: list[torch.Tensor] = field(default_factory=list)
    audios: list[np.ndarray] = field(default_factory=list)
    detected: list[dict[str, str]] = field(default_factory=list)
    expected: list[dict[str, str]] = field(default_factory=list)


def holdout_specs(data_dir: str | Path, limit: int) -> tuple[list[PromptSpec], dict[str, torch.Tensor], Any, str]:
    """Held-out prompts from a prepared data folder: (specs, their cache tensors, manifest rows, split name)."""
    dataset = MultiModalDataset(Path(data_dir) / "cache")
    manifest, split = dataset.manifest, "holdout"
    rows = manifest.index[manifest["split"].fillna("train") == "holdout"].tolist()
    if not rows:  # a dataset without held-out combinations: evaluate on (seen) training prompts, and say so
        split, rows = "train", manifest.index.tolist()
    rows = rows[:limit]
    specs = []
    for r in rows:
        attrs = manifest.at[r, "attributes"]
        attrs = json.loads(attrs) if isinstance(attrs, str) and attrs else None
        specs.append(PromptSpec(str(manifest.at[r, "caption"]), None, attrs, {"row": int(r)}))
    selected = {k: v[torch.tensor(rows)] for k, v in dataset.tensors().items()}
    return specs, selected, manifest.loc[rows].reset_index(drop=True), split


def generate_t2v(run: EvalSet, progress: bool) -> None:
    """Every text-only prompt once; attributes detected where the prompt has them; the first few saved."""
    e = run.params.eval
    t2v = [PromptSpec(s.prompt, None, s.attributes, s.extra) for s in run.specs if not s.image]
    for group, result in generate_batches(run.pipe, t2v, run.settings, run.params.seed, e.batch_size, progress,
                                          "evaluate t2v"):
        for row, spec in enumerate(group):
            audio = result.audio[row].numpy()
            run.videos.append(result.video[row])
            run.audios.append(audio)
            if spec.attributes:
                run.detected.append(detect_all(result.video[row].permute(1, 2, 3, 0).numpy(), audio, result.sample_rate))
                run.expected.append(spec.attributes)
            if len(run.videos) <= e.num_saved_samples:
                write_sample(run.samples_dir, f"t2v-{len(run.videos):02d}-{slug(spec.prompt)}", result.video[row],
                             result.audio[row], result.sample_rate, result.fps, spec.prompt)


def attribute_metrics(run: EvalSet) -> dict[str, Any]:
    if not run.expected:
        return not_computed("no prompt carries attributes (use --holdout or JSONL with 'attributes')")
    return {**attribute_accuracy(run.detected, run.expected, CHANCE), "count": len(run.expected)}


def _summaries(values: list[float]) -> dict[str, float] | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return None
    return {"mean": float(np.mean(finite)), "mean_abs": float(np.mean(np.abs(finite))), "count": len(finite)}


def sync_metrics(run: EvalSet) -> dict[str, Any]:
    """Audio onset minus motion onset (frames): generated clips, and the real held-out clips for reference."""
    sr, fps = run.pipe.audio_vae.config.sample_rate, run.pipe.fps
    offsets = [av_offset_frames(v.permute(1, 2, 3, 0).numpy(), a, sr, fps) for v, a in zip(run.videos, run.audios)]
    out: dict[str, Any] = {"generated_offset_frames": _summaries([float(o) for o in offsets if o is not None])
                           or not_computed("no clip has both a motion and an audio onset")}
    if run.cache is not None:
        real = [av_offset_frames(run.cache["video_upsampled"][i].permute(1, 2, 3, 0).numpy(),
                                 run.cache["audio"][i, 0].float().numpy(), sr, fps) for i in range(len(run.manifest))]
        out["real_offset_frames"] = _summaries([float(o) for o in real if o is not None])
    out["note"] = ("audio onset (first frame at half the peak RMS) minus motion onset (first frame the foreground "
                   "centroid moves), in frames; the built-in clips start both at frame 0")
    return out


def clip_metrics(run: EvalSet) -> dict[str, Any]:
    e, c = run.params.eval, run.params.conditioning
    clip_path = e.clip_path or (c.clip_path if c.backend == "clip" else None)
    if not clip_path or not run.videos:
        return not_computed("no CLIP weights configured (set eval.clip_path, or conditioning.backend=clip with "
                            "conditioning.clip_path, to a local CLIP folder)")
    encoder = run.pipe.encoder
    clip = encoder if (encoder.backend == "clip" and not e.clip_path) else ConditioningEncoder("clip", clip_path, 77)
    prompts = [s.prompt for s in run.specs if not s.image]
    score = clip_score(clip, prompts, torch.stack(run.videos), e.clip_frames)
    return {"raw_cosine": score.raw, "torchmetrics": score.torchmetrics, "model": str(clip_path),
            "frames_per_clip": min(e.clip_frames or 10**9, run.videos[0].shape[1])}


def i2v_items(run: EvalSet) -> tuple[list[PromptSpec], list[torch.Tensor]]:
    """Held-out i2v items (their first frame from the cache) and prompts-file lines with an image."""
    limit = run.params.eval.num_i2v
    specs, images = [], []
    if run.cache is not None:
        for i in [i for i in range(len(run.manifest)) if run.manifest.at[i, "modality"] == "i2v"][:limit]:
            specs.append(run.specs[i])
            images.append(run.cache["image_upsampled"][i].float() / 255)
    for s in [s for s in run.specs if s.image][:limit]:
        specs.append(s)
        images.append(load_image(s.image))
    return specs, images


def i2v_metrics(run: EvalSet) -> dict[str, Any]:
    """LPIPS(first generated frame, input image), and attribute accuracy of i2v clips."""
    specs, images = i2v_items(run)
    if not specs:
        return not_computed("no image-to-video prompts")
    e, pipe = run.params.eval, run.pipe
    size = pipe.video_vae.config.spatial_downsample * pipe.upsampler.config.video_latent_shape[-1]
    firsts, inputs, detected, expected = [], [], [], []
    for k in range(0, len(specs), e.batch_size):
        group = specs[k:k + e.batch_size]
        imgs = torch.stack([resize_image(im[None], size)[0] for im in images[k:k + e.batch_size]])
        result = pipe.generate_content([s.prompt for s in group], imgs, seed=run.params.seed + 1000 + k, **run.settings)
        firsts.append(result.video[:, :, 0])
        inputs.append(imgs)
        for row, spec in enumerate(group):
            if spec.attributes:
                detected.append(detect_all(result.video[row].permute(1, 2, 3, 0).numpy(), result.audio[row].numpy(),
                                           result.sample_rate))
                expected.append(spec.attributes)
            if k + row < min(e.num_saved_samples, 4):
                write_sample(run.samples_dir, f"i2v-{k + row + 1:02d}-{slug(spec.prompt)}", result.video[row],
                             result.audio[row], result.sample_rate, result.fps, spec.prompt)
    distances, backbone = lpips_distance(torch.cat(firsts), torch.cat(inputs), e.lpips_net)
    out: dict[str, Any] = {"lpips" if backbone == "pretrained" else "lpips_random_backbone": float(np.mean(distances)),
                           "lpips_backbone": backbone, "lpips_net": e.lpips_net, "count": len(distances),
                           "first_frame_psnr": psnr(torch.cat(firsts), torch.cat(inputs))}
    if backbone != "pretrained":
        out["note"] = ("the ImageNet backbone weights are not in the torch hub cache, so LPIPS ran with a random "
                       "backbone: a plumbing check, not an LPIPS figure")
    if expected:
        out["attribute_accuracy"] = attribute_accuracy(detected, expected, CHANCE)
    return out


@torch.no_grad()
def vae_metrics(run: EvalSet) -> dict[str, Any]:
    """Reconstruction PSNR/SSIM of held-out clips through the VideoVAE; log-mel L1 through the AudioVAE."""
    if run.cache is None:
        return not_computed("needs --holdout (held-out clips)")
    n, vae, audio_vae = run.params.eval.num_vae_clips, run.pipe.video_vae, run.pipe.audio_vae
    out: dict[str, Any] = {}
    for name in ("base", "upsampled"):
        x = run.cache[f"video_{name}"][:n].float() / 255
        rec = torch.cat([vae.decode(vae.encode(x[i:i + 16])) for i in range(0, len(x), 16)])
        out[f"video_psnr_{name}"], out[f"video_ssim_{name}"] = psnr(rec, x), ssim(rec, x)
    a = run.cache["audio"][:n].float()
    out["audio_logmel_l1"] = float((audio_vae.decode_features(audio_vae.encode(a)) - audio_vae.features(a)).abs().mean())
    out["count"] = len(x)
    return {k: out[k] for k in ("video_psnr_base", "video_ssim_base", "video_psnr_upsampled", "video_ssim_upsampled",
                                "audio_logmel_l1", "count")}


METRICS: list[tuple[str, Callable[[EvalSet], dict[str, Any]]]] = [
    ("attribute_accuracy", attribute_metrics), ("av_sync", sync_metrics), ("clip_score", clip_metrics),
    ("i2v", i2v_metrics), ("vae_reconstruction", vae_metrics),
]


def evaluate(checkpoint: str | Path, out: str | Path, params: Params, *, holdout: str | Path | None = None,
             prompts: str | Path | None = None, device: str | None = None, progress: bool = True,
             track: bool | None = None) -> dict[str, Any]:
    """Generate, measure, write OUT/metrics.json (+ accuracy.tsv, samples/) and log to MLflow."""
    if (holdout is None) == (prompts is None):
        raise UserError("give exactly one of --holdout DATA_DIR or --prompts FILE")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = sample_settings(params.sample)
    pipe, _ = load_pipeline(checkpoint, device)
    run = EvalSet(pipe, params, settings, [], out / "samples")
    metrics: dict[str, Any] = {"checkpoint": str(checkpoint), "sampling": {**settings, "seed": params.seed}}
    if holdout is not None:
        run.specs, run.cache, run.manifest, split = holdout_specs(holdout, params.eval.num_prompts)
        metrics["prompts"] = {"source": f"{holdout} ({split} split)", "count": len(run.specs)}
    else:
        run.specs = read_prompts(prompts)[: params.eval.num_prompts]
        metrics["prompts"] = {"source": str(prompts), "count": len(run.specs)}
    generate_t2v(run, progress)
    metrics.update({name: fn(run) for name, fn in METRICS})
    write_outputs(out, metrics)
    if track if track is not None else params.train.mlflow:
        log_to_mlflow(checkpoint, out, metrics, params)
    return json.loads(json.dumps(metrics))


def write_outputs(out: Path, metrics: dict[str, Any]) -> None:
    acc = metrics["attribute_accuracy"]
    if "status" not in acc:
        lines = ["attribute\taccuracy\tchance"] + [f"{k}\t{v['accuracy']:.4f}\t{v['chance']:.4f}"
                                                   for k, v in acc.items() if isinstance(v, dict)]
        (out / "accuracy.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(out / "metrics.json", json.loads(json.dumps(metrics)))


def flatten_numbers(tree: dict[str, Any]) -> dict[str, float]:
    """Numeric leaves of a nested dict as a.b.c keys (MLflow metric names)."""
    return {k: float(v) for k, v in flatten(tree).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def log_to_mlflow(checkpoint: str | Path, out: Path, metrics: dict[str, Any], params: Params) -> str | None:
    """Log into the denoiser training run of this checkpoint when the tracking store has it (one run
    holds params, losses, metrics and samples for comparison), else into a new `evaluate` run."""
    t = params.train
    tracker = Tracker(True, t.tracking_uri, t.experiment)
    summary = Path(checkpoint) / DENOISER_DIR / "summary.json"
    run_id = json.loads(summary.read_text(encoding="utf-8")).get("run_id") if summary.exists() else None
    try:
        run = mlflow.start_run(run_id=run_id) if run_id else tracker.start("evaluate")
    except mlflow.exceptions.MlflowException:
        run = tracker.start("evaluate")
    with run:
        groups = params.to_dict()
        sample_eval = {"sample": groups["sample"], "eval": groups["eval"]}
        mlflow.log_params({f"eval_{k}": str(v)[:500] for k, v in flatten(sample_eval).items()})
        mlflow.log_metrics(flatten_numbers({k: v for k, v in metrics.items() if k not in ("sampling", "prompts")}))
        for name in ("metrics.json", "accuracy.tsv"):
            if (out / name).exists():
                mlflow.log_artifact(str(out / name), "evaluation")
        if (out / "samples").is_dir():
            mlflow.log_artifacts(str(out / "samples"), "evaluation/samples")
        return run.info.run_id


def print_report(metrics: dict[str, Any]) -> None:
    acc = metrics.get("attribute_accuracy", {})
    if "status" not in acc:
        print(f"attribute accuracy on {acc.get('count')} prompts ({metrics['prompts']['source']}):")
        for k, v in acc.items():
            if isinstance(v, dict):
                print(f"  {k:<10} {v['accuracy']:.3f}   (chance {v['chance']:.3f})")
    for key in ("clip_score", "i2v", "vae_reconstruction", "av_sync"):
        print(f"{key}: {json.dumps(metrics.get(key))}")
