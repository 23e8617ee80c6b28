"""`tinyveo evaluate`: generate for held-out prompts and measure, into metrics.json and MLflow.

    tinyveo evaluate --checkpoint checkpoints --holdout data --out outputs/eval
    tinyveo evaluate --checkpoint checkpoints --prompts prompts.jsonl --out outputs/eval

With --holdout DATA (a folder written by `tinyveo prepare`) the prompts are the captions of the
held-out attribute combinations; their attributes are known, so the analytic detectors give
attribute accuracy per attribute and all-four-correct (chance levels beside them), and the held-out
clips give VAE reconstruction PSNR/SSIM and a reference for the audio/visual onset offset. Held-out
i2v items are also generated from their first frame, for LPIPS(first generated frame, input image).
With --prompts FILE (text or JSONL, as `tinyveo generate`), accuracy is measured for JSONL lines
that carry `attributes`.

CLIP score needs CLIP weights (eval.clip_path, or conditioning.clip_path with the clip backend);
without them metrics.json says "not computed" and why. LPIPS says which backbone ran: offline the
ImageNet backbone is usually absent and a random one is used, which is a plumbing check only.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

from .runtime import LazyPrefectTask, UserError, persistent_cache


def holdout_specs(data_dir: str | Path, limit: int) -> tuple[list, Any, Any, str]:
    """Held-out prompts from a prepared data folder: (specs, cache tensors, manifest rows, split name)."""
    import torch

    from .generate import PromptSpec
    from .train import load_cache_tensors

    data, manifest = load_cache_tensors(Path(data_dir) / "cache")
    split = "holdout"
    rows = manifest.index[manifest["split"].fillna("train") == "holdout"].tolist()
    if not rows:  # a dataset without held-out combinations: evaluate on (seen) training prompts, and say so
        split, rows = "train", manifest.index.tolist()
    rows = rows[:limit]
    specs = []
    for r in rows:
        attrs = manifest.at[r, "attributes"]
        attrs = json.loads(attrs) if isinstance(attrs, str) and attrs else None
        specs.append(PromptSpec(str(manifest.at[r, "caption"]), None, attrs, {"row": int(r)}))
    selected = {k: v[torch.tensor(rows)] for k, v in data.items()}
    return specs, selected, manifest.loc[rows].reset_index(drop=True), split


def _summaries(values: list[float]) -> dict[str, float] | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return None
    import numpy as np

    return {"mean": float(np.mean(finite)), "mean_abs": float(np.mean(np.abs(finite))), "count": len(finite)}


def flatten_numbers(tree: dict[str, Any]) -> dict[str, float]:
    """Numeric leaves of a nested dict as a.b.c keys (MLflow metric names)."""
    from .params import flatten

    return {k: float(v) for k, v in flatten(tree).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def evaluate(checkpoint: str | Path, out: str | Path, params: dict[str, Any], *, holdout: str | Path | None = None,
             prompts: str | Path | None = None, device: str | None = None, progress: bool = True,
             track: bool | None = None) -> dict[str, Any]:
    """Generate, measure, write OUT/metrics.json (+ accuracy.tsv, samples/) and log to MLflow."""
    import numpy as np
    import torch

    from .detect import CHANCE, detect_all
    from .generate import PromptSpec, generate_batches, load_image, load_pipeline, read_prompts, sample_settings, slug, write_sample
    from .metrics import (attribute_accuracy, av_offset_frames, clip_score, lpips_distance, psnr, ssim)

    if (holdout is None) == (prompts is None):
        raise UserError("give exactly one of --holdout DATA_DIR or --prompts FILE")
    e = params["eval"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples_dir = out / "samples"
    pipe, _ = load_pipeline(checkpoint, device)
    settings = sample_settings(params)
    seed = int(params["seed"])
    batch = int(e["batch_size"])
    limit = int(e["num_prompts"])
    metrics: dict[str, Any] = {"checkpoint": str(checkpoint), "sampling": {**settings, "seed": seed}}

    cache = manifest = None
    if holdout is not None:
        specs, cache, manifest, split = holdout_specs(holdout, limit)
        metrics["prompts"] = {"source": f"{holdout} ({split} split)", "count": len(specs)}
    else:
        specs = read_prompts(prompts)[:limit]
        split = "prompts"
        metrics["prompts"] = {"source": str(prompts), "count": len(specs)}

    # ---- text-to-video generation for every prompt
    t2v_specs = [PromptSpec(s.prompt, None, s.attributes, s.extra) for s in specs if not s.image]
    i2v_from_file = [s for s in specs if s.image]
    videos, audios, detected, expected = [], [], [], []
    saved = 0
    keep = int(e["num_saved_samples"])
    for group, result in generate_batches(pipe, t2v_specs, settings, seed, batch, progress, "evaluate t2v"):
        for row, spec in enumerate(group):
            frames = result.video[row].permute(1, 2, 3, 0).numpy()
            audio = result.audio[row].numpy()
            videos.append(result.video[row])
            audios.append(audio)
            if spec.attributes:
                detected.append(detect_all(frames, audio, result.sample_rate))
                expected.append(spec.attributes)
            if saved < keep:
                saved += 1
                write_sample(samples_dir, f"t2v-{saved:02d}-{slug(spec.prompt)}", result.video[row], result.audio[row],
                             result.sample_rate, result.fps, spec.prompt)
    sr, fps = pipe.audio_vae.config.sample_rate, pipe.fps
    if expected:
        metrics["attribute_accuracy"] = attribute_accuracy(detected, expected, CHANCE)
        metrics["attribute_accuracy"]["count"] = len(expected)
        with open(out / "accuracy.tsv", "w", encoding="utf-8") as f:
            f.write("attribute\taccuracy\tchance\n")
            for k, v in metrics["attribute_accuracy"].items():
                if isinstance(v, dict):
                    f.write(f"{k}\t{v['accuracy']:.4f}\t{v['chance']:.4f}\n")
    else:
        metrics["attribute_accuracy"] = {"status": "not computed",
                                         "reason": "no prompt carries attributes (use --holdout or JSONL with 'attributes')"}

    # ---- audio/visual onset offset (frames): generated clips, and the real held-out clips for reference
    gen_offsets = [av_offset_frames(v.permute(1, 2, 3, 0).numpy(), a, sr, fps) for v, a in zip(videos, audios)]
    metrics["av_sync"] = {"generated_offset_frames": _summaries([float(o) for o in gen_offsets if o is not None])
                          or {"status": "not computed", "reason": "no clip has both a motion and an audio onset"}}
    if cache is not None:
        real = [av_offset_frames(cache["video_upsampled"][i].permute(1, 2, 3, 0).numpy(), cache["audio"][i, 0].float().numpy(),
                                 sr, fps) for i in range(len(manifest))]
        metrics["av_sync"]["real_offset_frames"] = _summaries([float(o) for o in real if o is not None])
    metrics["av_sync"]["note"] = ("audio onset (first frame at half the peak RMS) minus motion onset (first frame the "
                                  "foreground centroid moves), in frames; the built-in clips start both at frame 0")

    # ---- CLIP score
    clip_path = e.get("clip_path") or (params["conditioning"].get("clip_path")
                                       if params["conditioning"]["backend"] == "clip" else None)
    if clip_path and videos:
        from model import ConditioningEncoder

        clip = pipe.encoder if (pipe.encoder.backend == "clip" and not e.get("clip_path")) else \
            ConditioningEncoder("clip", clip_path, 77)
        score = clip_score(clip, [s.prompt for s in t2v_specs], torch.stack(videos), e.get("clip_frames"))
        metrics["clip_score"] = {"raw_cosine": score.raw, "torchmetrics": score.torchmetrics,
                                 "model": str(clip_path), "frames_per_clip": min(e.get("clip_frames") or 10**9,
                                                                                 videos[0].shape[1])}
    else:
        metrics["clip_score"] = {"status": "not computed",
                                 "reason": "no CLIP weights configured (set eval.clip_path, or conditioning.backend=clip "
                                           "with conditioning.clip_path, to a local CLIP folder)"}

    # ---- image-to-video: LPIPS(first generated frame, input image)
    i2v_specs, i2v_images = [], []
    if cache is not None:
        rows = [i for i in range(len(manifest)) if manifest.at[i, "modality"] == "i2v"][: int(e["num_i2v"])]
        for i in rows:
            i2v_specs.append(specs[i])
            i2v_images.append(cache["image_upsampled"][i].float() / 255)
    for s in i2v_from_file[: int(e["num_i2v"])]:
        i2v_specs.append(s)
        i2v_images.append(load_image(s.image))
    if i2v_specs:
        firsts, inputs, i2v_det, i2v_exp = [], [], [], []
        for k in range(0, len(i2v_specs), batch):
            group = i2v_specs[k:k + batch]
            size = pipe.video_vae.config.spatial_downsample * pipe.upsampler.config.video_latent_shape[-1]
            imgs = torch.stack([torch.nn.functional.interpolate(im[None], size=(size, size), mode="bilinear",
                                                                align_corners=False, antialias=True)[0]
                                for im in i2v_images[k:k + batch]])
            result = pipe.generate_content([s.prompt for s in group], imgs, seed=seed + 1000 + k, **settings)
            firsts.append(result.video[:, :, 0])
            inputs.append(imgs)
            for row, spec in enumerate(group):
                if spec.attributes:
                    i2v_det.append(detect_all(result.video[row].permute(1, 2, 3, 0).numpy(), result.audio[row].numpy(), sr))
                    i2v_exp.append(spec.attributes)
                if k + row < min(keep, 4):
                    write_sample(samples_dir, f"i2v-{k + row + 1:02d}-{slug(spec.prompt)}", result.video[row],
                                 result.audio[row], result.sample_rate, result.fps, spec.prompt)
        distances, backbone = lpips_distance(torch.cat(firsts), torch.cat(inputs), str(e["lpips_net"]))
        name = "lpips" if backbone == "pretrained" else "lpips_random_backbone"
        metrics["i2v"] = {
            name: float(np.mean(distances)), "lpips_backbone": backbone, "lpips_net": str(e["lpips_net"]),
            "count": len(distances),
            "first_frame_psnr": psnr(torch.cat(firsts), torch.cat(inputs)),
        }
        if backbone != "pretrained":
            metrics["i2v"]["note"] = ("the ImageNet backbone weights are not in the torch hub cache, so LPIPS ran with a "
                                      "random backbone: a plumbing check, not an LPIPS figure")
        if i2v_exp:
            metrics["i2v"]["attribute_accuracy"] = attribute_accuracy(i2v_det, i2v_exp, CHANCE)
    else:
        metrics["i2v"] = {"status": "not computed", "reason": "no image-to-video prompts"}

    # ---- VAE reconstruction on held-out clips
    if cache is not None:
        with torch.no_grad():
            vae_metrics = {}
            for field in ("video_base", "video_upsampled"):
                x = cache[field][: int(e["num_vae_clips"])].float() / 255
                rec = torch.cat([pipe.video_vae.decode(pipe.video_vae.encode(x[i:i + 16])) for i in range(0, len(x), 16)])
                vae_metrics[field.replace("video_", "video_psnr_")] = psnr(rec, x)
                vae_metrics[field.replace("video_", "video_ssim_")] = ssim(rec, x)
            a = cache["audio"][: int(e["num_vae_clips"])].float()
            feats = pipe.audio_vae.features(a)
            vae_metrics["audio_logmel_l1"] = float((pipe.audio_vae.decode_features(pipe.audio_vae.encode(a)) - feats).abs().mean())
            vae_metrics["count"] = len(x)
        metrics["vae_reconstruction"] = vae_metrics
    else:
        metrics["vae_reconstruction"] = {"status": "not computed", "reason": "needs --holdout (held-out clips)"}

    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    if track if track is not None else bool(params["train"]["mlflow"]):
        log_to_mlflow(checkpoint, out, metrics, params)
    return metrics


def log_to_mlflow(checkpoint: str | Path, out: Path, metrics: dict[str, Any], params: dict[str, Any]) -> str | None:
    """Log into the training run of this checkpoint when the tracking store has it (so one run holds
    params, losses, metrics and samples for comparison), else into a new `evaluate` run."""
    import mlflow

    from .params import flatten
    from .tracking import Tracker

    t = params["train"]
    tracker = Tracker(True, t.get("tracking_uri"), str(t["experiment"]))
    run_id = None
    summary = Path(checkpoint) / "denoiser" / "summary.json"
    if summary.exists():
        run_id = json.loads(summary.read_text(encoding="utf-8")).get("run_id")
    try:
        run = mlflow.start_run(run_id=run_id) if run_id else tracker.start("evaluate")
    except mlflow.exceptions.MlflowException:
        run = tracker.start("evaluate")
    with run:
        mlflow.log_params({f"eval_{k}": str(v)[:500] for k, v in flatten({"sample": params["sample"], "eval": params["eval"]}).items()})
        mlflow.log_metrics(flatten_numbers({k: v for k, v in metrics.items() if k not in ("sampling", "prompts")}))
        mlflow.log_artifact(str(out / "metrics.json"), "evaluation")
        if (out / "accuracy.tsv").exists():
            mlflow.log_artifact(str(out / "accuracy.tsv"), "evaluation")
        if (out / "samples").is_dir():
            mlflow.log_artifacts(str(out / "samples"), "evaluation/samples")
        return run.info.run_id


def evaluate_key(parameters: dict) -> str:
    from .runtime import checkpoint_files, content_digest, manifest_digest

    p = parameters["params"]
    holdout, prompts = parameters.get("holdout"), parameters.get("prompts")
    return content_digest("evaluate", {k: p[k] for k in ("seed", "sample", "eval")}, str(parameters["out"]),
                          manifest_digest(holdout) if holdout else None, Path(prompts) if prompts else None,
                          *checkpoint_files(parameters["checkpoint"]))


evaluate_task = LazyPrefectTask(evaluate, name="evaluate", **persistent_cache(evaluate_key))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder written by `tinyveo train`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--holdout", help="data folder written by `tinyveo prepare` (uses its held-out combinations)")
    source.add_argument("--prompts", help="prompts file: text (one a line) or JSONL ('prompt', optional 'attributes', 'image')")
    parser.add_argument("--out", required=True, help="output folder: metrics.json, accuracy.tsv, samples/")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--params", default=None, help="params file (default: the repository's params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. --set sample.steps=10 --set eval.num_prompts=12")


def print_report(metrics: dict[str, Any]) -> None:
    acc = metrics.get("attribute_accuracy", {})
    if "status" not in acc:
        print(f"attribute accuracy on {acc.get('count')} prompts ({metrics['prompts']['source']}):")
        for k, v in acc.items():
            if isinstance(v, dict):
                print(f"  {k:<10} {v['accuracy']:.3f}   (chance {v['chance']:.3f})")
    for key in ("clip_score", "i2v", "vae_reconstruction", "av_sync"):
        print(f"{key}: {json.dumps(metrics.get(key))}")


def run(args: argparse.Namespace) -> int:
    from .params import load_params

    params = load_params(args.params, args.overrides)
    metrics = evaluate(args.checkpoint, args.out, params, holdout=args.holdout, prompts=args.prompts,
                       device=args.device, track=False if args.no_mlflow else None)
    print_report(metrics)
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import module_main

    return module_main("evaluate", argv)


if __name__ == "__main__":
    raise SystemExit(main())
