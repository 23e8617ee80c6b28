"""`tinyveo evaluate`: generate for held-out prompts and score them, into metrics.json and MLflow.

metrics.json holds numbers only (the headline per split, for `dvc metrics show`); details.json
beside it holds every figure with its notes, statuses and baselines (what `evaluate` returns).

    tinyveo evaluate --checkpoint checkpoints --data data --out outputs/eval          # splits in eval.splits
    tinyveo evaluate --reference --data data --out outputs/eval_reference            # the real clips, scored
    tinyveo evaluate --checkpoint checkpoints --prompts prompts.jsonl --out outputs/eval

With --data DATA (a folder written by `tinyveo prepare`) every split in `eval.splits` (val, test) is
one group: its captions are generated and the strict scorer (`tasks/score/`) scores each clip
against the split's ground-truth scene, per object (color, shape, motion, pitch), per clip (count,
all correct) and per event (impact sound within one frame), with the majority-guess and
shuffled-prompt baselines beside, and again per object count (`by_count`) and per kind of unseen
composition (`by_novelty`). Tune on val; the test split is what a run reports. --reference
feeds the cached real clips through the same scorer instead of generating (a perfect model's
score: the scorer's own check). With --prompts FILE, JSONL lines with `attributes` are scored.

Each metric family is one function over a group that returns its numbers or {"status": "not
computed", "reason": ...}: scene scores, CLIP score (local CLIP weights only), i2v (LPIPS to the
input image; scored on motion and pitch only, which the first frame does not give away), VAE
reconstruction (test clips), and the scene scores of the split's real clips through both VAEs (the
ceiling of any denoiser on them). LPIPS says which backbone ran: offline a random one is a plumbing check.
With --data, the denoiser's snapshots (`train.snapshot_every`) are scored too, into the
quality-vs-minutes curve (`quality_curve`).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from model import ConditioningEncoder, resize_image

from .cache import MultiModalDataset
from .checkpoint import DENOISER_DIR, list_snapshots, load_pipeline, training_summaries, write_json
from .media import write_text_atomic, write_tsv
from .metrics import clip_score, color_statistics, lpips_distance, psnr, ssim
from .params import Params, flatten
from .plots import ACCURACY_COLUMNS, accuracy_png, quality_curve_png, samples_grid_png
from .runtime import UserError
from .samples import PromptSpec, generate_batches, load_image, read_prompts, sample_settings, slug, write_sample
from .score import ATTRIBUTES, score_tensors
from .tracking import Tracker
from .worlds import scene_from_attributes

I2V_ATTRIBUTES = ("motion", "pitch")   # the input image shows color, shape and where the object starts
NOVELTY_PAIRS = (("color", "shape"), ("shape", "motion"), ("color", "motion"))   # compositions a world holds out


def not_computed(reason: str) -> dict[str, str]:
    return {"status": "not computed", "reason": reason}


@dataclass
class EvalSet:
    """One group of prompts (a split, or a prompts file) and what was generated for them."""

    name: str
    pipe: Any                              # None with --reference
    params: Params
    settings: dict[str, Any]
    specs: list[PromptSpec]
    samples_dir: Path
    cache: dict[str, torch.Tensor] | None = None   # the split's cached tensors (--data)
    manifest: Any = None
    videos: list[torch.Tensor] = field(default_factory=list)
    audios: list[np.ndarray] = field(default_factory=list)


SplitItems = tuple[list[PromptSpec], dict[str, torch.Tensor], Any]   # prompts, their cached tensors, manifest rows


def pair_keys(obj: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(attribute, attribute, value, value) for each of NOVELTY_PAIRS."""
    return [(a, b, obj.get(a), obj.get(b)) for a, b in NOVELTY_PAIRS]


def seen_pairs(scenes) -> set[tuple[str, str, Any, Any]]:
    """Every pair key that some object of `scenes` shows."""
    return {key for scene in scenes if scene for o in scene["objects"] for key in pair_keys(o)}


def tag_novelty(scene: dict[str, Any] | None, seen: set) -> dict[str, Any] | None:
    """A copy of `scene` whose objects carry "novelty": the attribute pairs training never showed, or "seen"."""
    if scene is None:
        return None
    objects = [{**o, "novelty": " and ".join(f"{key[0]}_{key[1]}" for key in pair_keys(o) if key not in seen)
                or "seen"} for o in scene["objects"]]
    return {**scene, "objects": objects}


def split_specs(data_dir: str | Path, splits, limit: int) -> dict[str, SplitItems]:
    """Per split, its first `limit` items of a prepared data folder; the cache is read once for all.
    Each object of a scene is tagged with the compositions the train split never shows (`tag_novelty`)."""
    dataset = MultiModalDataset(Path(data_dir) / "cache")
    manifest, names = dataset.manifest, dataset.manifest["split"].fillna("train")
    chosen = {split: manifest.index[names == split].tolist()[:limit] for split in splits}
    for split, rows in chosen.items():
        if not rows:
            raise UserError(f"{data_dir}: no items in split {split!r} (splits there: {', '.join(sorted(set(names)))})")
    tensors = dataset.tensors()
    seen = seen_pairs(scene_from_attributes(a) for a in manifest.loc[names == "train", "attributes"])

    def items(rows: list[int]) -> SplitItems:
        specs = [PromptSpec(str(manifest.at[r, "caption"]), None,
                            tag_novelty(scene_from_attributes(manifest.at[r, "attributes"]), seen),
                            {"row": int(r)}) for r in rows]
        return specs, {k: v[torch.tensor(rows)] for k, v in tensors.items()}, manifest.loc[rows].reset_index(drop=True)

    return {split: items(rows) for split, rows in chosen.items()}


def generate_t2v(run: EvalSet, progress: bool, saved: int | None = None) -> None:
    """Every text-only prompt once (or, with --reference, the real clip); the first `saved`
    (default eval.num_saved_samples) written to the samples folder."""
    e = run.params.eval
    saved = e.num_saved_samples if saved is None else saved
    if run.pipe is None:
        run.videos = [v.float() / 255 for v in run.cache["video_upsampled"]]
        run.audios = [a[0].float().numpy() for a in run.cache["audio"]]
        return
    t2v = [PromptSpec(s.prompt, None, s.attributes, s.extra) for s in run.specs if not s.image]
    for group, result in generate_batches(run.pipe, t2v, run.settings, run.params.seed, e.batch_size, progress,
                                          f"evaluate {run.name}"):
        for row, spec in enumerate(group):
            run.videos.append(result.video[row])
            run.audios.append(result.audio[row].numpy())
            if len(run.videos) <= saved:
                write_sample(run.samples_dir, f"{run.name}-t2v-{len(run.videos):02d}-{slug(spec.prompt)}",
                             result.video[row], result.audio[row], result.sample_rate, result.fps, spec.prompt)


def score_videos(run: EvalSet, videos, audios, specs, attributes=ATTRIBUTES) -> dict[str, Any]:
    """The strict scorer over (video (3, F, H, W), audio) pairs whose prompts carry a scene."""
    pairs = [(v, a, scene_from_attributes(s.attributes)) for v, a, s in zip(videos, audios, specs)]
    pairs = [p for p in pairs if p[2] is not None]
    if not pairs:
        return not_computed("no prompt carries a scene (use --data, or JSONL lines with 'attributes')")
    v, a, scenes = zip(*pairs)
    c = run.params.cache
    return {**score_tensors(v, a, scenes, c.window_s, c.sample_rate, attributes, run.params.seed),
            "attributes": list(attributes)}


def scene_metrics(run: EvalSet) -> dict[str, Any]:
    return score_videos(run, run.videos, run.audios, [s for s in run.specs if not s.image])


def clip_metrics(run: EvalSet) -> dict[str, Any]:
    e, c = run.params.eval, run.params.conditioning
    clip_path = e.clip_path or (c.clip_path if c.backend == "clip" else None)
    if run.pipe is None:
        return not_computed("reference run: nothing generated")
    if not clip_path or not run.videos:
        return not_computed("no CLIP weights configured (set eval.clip_path, or conditioning.backend=clip with "
                            "conditioning.clip_path, to a local CLIP folder)")
    encoder = run.pipe.encoder
    clip = encoder if (encoder.backend == "clip" and not e.clip_path) else ConditioningEncoder("clip", clip_path, 77)
    prompts = [s.prompt for s in run.specs if not s.image]
    score = clip_score(clip, prompts, torch.stack(run.videos), e.clip_frames)
    return {"raw_cosine": score.raw, "torchmetrics": score.torchmetrics, "model": str(clip_path),
            "frames_per_clip": min(e.clip_frames or 10**9, run.videos[0].shape[1])}


def color_metrics(run: EvalSet) -> dict[str, Any]:
    """Generated clips' colour against the split's real clips (the check that holds for any footage)."""
    if run.pipe is None or run.cache is None or not run.videos:
        return not_computed("needs --data (real clips of the split) and a checkpoint")
    real = run.cache["video_upsampled"][:len(run.videos)].float() / 255
    return {**color_statistics(torch.stack(run.videos), real), "count": len(run.videos)}


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
    """LPIPS(first generated frame, input image), and the scene score on what the image does not show."""
    specs, images = i2v_items(run) if run.pipe is not None else ([], [])
    if not specs:
        return not_computed("no image-to-video prompts" if run.pipe is not None else "reference run: nothing generated")
    e, pipe = run.params.eval, run.pipe
    size = pipe.video_vae.config.spatial_downsample * pipe.upsampler.config.video_latent_shape[-1]
    firsts, inputs, videos, audios = [], [], [], []
    for k in range(0, len(specs), e.batch_size):
        group = specs[k:k + e.batch_size]
        imgs = torch.stack([resize_image(im[None], size)[0] for im in images[k:k + e.batch_size]])
        result = pipe.generate_content([s.prompt for s in group], imgs, seed=run.params.seed + 1000 + k, **run.settings)
        firsts.append(result.video[:, :, 0])
        inputs.append(imgs)
        videos += list(result.video)
        audios += [a.numpy() for a in result.audio]
        for row, spec in enumerate(group):
            if k + row < min(e.num_saved_samples, 4):
                write_sample(run.samples_dir, f"{run.name}-i2v-{k + row + 1:02d}-{slug(spec.prompt)}", result.video[row],
                             result.audio[row], result.sample_rate, result.fps, spec.prompt)
    distances, backbone = lpips_distance(torch.cat(firsts), torch.cat(inputs), e.lpips_net)
    out: dict[str, Any] = {"lpips" if backbone == "pretrained" else "lpips_random_backbone": float(np.mean(distances)),
                           "lpips_backbone": backbone, "lpips_net": e.lpips_net, "count": len(distances),
                           "first_frame_psnr": psnr(torch.cat(firsts), torch.cat(inputs))}
    if backbone != "pretrained":
        out["note"] = ("the ImageNet backbone weights are not in the torch hub cache, so LPIPS ran with a random "
                       "backbone: a plumbing check, not an LPIPS figure")
    out["scene"] = score_videos(run, videos, audios, specs, I2V_ATTRIBUTES)
    out["scene_note"] = "scored on motion, pitch and impacts only: the input image shows color, shape and the start"
    return out


@torch.no_grad()
def through_vaes(pipe, cache: dict[str, torch.Tensor], batch: int = 8) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """Cached clips encoded and decoded by both VAEs: the upsampled video (3, F, H, W) in [0, 1] and
    the audio (mono, through Griffin-Lim), in cache order."""
    vae, audio_vae, dev = pipe.video_vae, pipe.audio_vae, pipe.device
    videos: list[torch.Tensor] = []
    audios: list[np.ndarray] = []
    for k in range(0, len(cache["audio"]), batch):
        x = cache["video_upsampled"][k:k + batch].to(dev).float() / 255
        videos += list(vae.decode(vae.encode(x)).clamp(0, 1).cpu())
        a = cache["audio"][k:k + batch].to(dev).float()
        audios += [w.numpy() for w in audio_vae.decode(audio_vae.encode(a))[:, 0].cpu()]
    return videos, audios


def ceiling_metrics(run: EvalSet) -> dict[str, Any]:
    """The split's real clips through both VAEs, scored like generated clips: what a perfect
    denoiser on these VAEs would score."""
    if run.cache is None or run.pipe is None:
        return not_computed("needs --data (real clips of the split) and a checkpoint")
    return score_videos(run, *through_vaes(run.pipe, run.cache), run.specs)


@torch.no_grad()
def vae_metrics(run: EvalSet) -> dict[str, Any]:
    """Reconstruction PSNR/SSIM of held-out clips through the VideoVAE; log-mel L1 through the AudioVAE."""
    if run.cache is None or run.pipe is None:
        return not_computed("needs --data (held-out clips) and a checkpoint")
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
    ("scene", scene_metrics), ("clip_score", clip_metrics), ("color", color_metrics), ("i2v", i2v_metrics),
    ("scene_through_vaes", ceiling_metrics), ("vae_reconstruction", vae_metrics),
]


def evaluate(checkpoint: str | Path | None, out: str | Path, params: Params, *, data: str | Path | None = None,
             prompts: str | Path | None = None, reference: bool = False, device: str | None = None,
             progress: bool = True, track: bool | None = None, allow_outside: bool = False) -> dict[str, Any]:
    """Generate (or, with `reference`, take the real clips), score, write OUT/metrics.json (numbers),
    details.json (all), scores.tsv, accuracy.png, samples_grid.png, samples/, the quality curve
    (curve/<split>.tsv and curve.png, with `data`), and log to MLflow.
    One group per split in `eval.splits` (with `data`) or one for `prompts`."""
    if (data is None) == (prompts is None):
        raise UserError("give exactly one of --data DATA_DIR or --prompts FILE")
    if reference and data is None:
        raise UserError("--reference scores the real clips of --data DATA_DIR")
    if checkpoint is None and not reference:
        raise UserError("give --checkpoint (or --reference to score the real clips)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = sample_settings(params.sample)
    pipe = None if reference else load_pipeline(checkpoint, device)[0]
    metrics: dict[str, Any] = {"checkpoint": None if reference else str(checkpoint), "reference": reference,
                               "sampling": None if reference else {**settings, "seed": params.seed}, "splits": {}}
    grid: tuple[list, list[str]] = ([], [])
    runs = []
    for run in _groups(pipe, params, settings, out, data, prompts, allow_outside):
        runs.append(run)
        generate_t2v(run, progress)
        shown = min(params.eval.num_saved_samples, len(run.videos))
        grid[0].extend(run.videos[:shown])
        grid[1].extend(f"{run.name}: {s.prompt}" for s in [s for s in run.specs if not s.image][:shown])
        group = {"prompts": {"source": str(data or prompts), "count": len(run.specs)}}
        group.update({name: fn(run) for name, fn in METRICS if name != "vae_reconstruction"})
        metrics["splits"][run.name] = group
        if run.name == "test" or run.name == "prompts":
            metrics["vae_reconstruction"] = vae_metrics(run)
    if not reference and data is not None:
        metrics["curve"] = quality_curve(checkpoint, runs, metrics, device, progress)
    write_outputs(out, metrics, grid)
    if not reference and (track if track is not None else params.train.mlflow):
        log_to_mlflow(checkpoint, out, metrics, params)
    return json.loads(json.dumps(metrics))


CURVE_KEYS = ("color", "shape", "motion", "pitch", "count", "all_correct")


def curve_row(minutes: float, steps: int, split: str, scene: dict[str, Any]) -> dict[str, Any]:
    """One point of the quality-vs-minutes curve. `steps`, not `step`: DVC plots own that name."""
    return {"minutes": round(minutes, 2), "steps": steps, "split": split, **{k: scene[k] for k in CURVE_KEYS},
            "sync_recall": scene["sync"]["recall"], "sync_precision": scene["sync"]["precision"],
            "shuffled_all_correct": scene["baselines"]["shuffled"]["all_correct"]}


def stage_seconds(summary: dict[str, Any]) -> float:
    """A stage's training wall clock over every resumed run (summaries before `seconds_total`: the last run's)."""
    return summary.get("seconds_total", summary.get("seconds", 0.0))


def quality_curve(checkpoint: str | Path, runs: list[EvalSet], metrics: dict[str, Any], device: str | None,
                  progress: bool) -> list[dict[str, Any]]:
    """Quality against training minutes: each denoiser snapshot (`train.snapshot_every`) before the
    final step generates the prompts of the evaluated `runs` and is scored like them (scene scores
    only, no samples kept), then the final checkpoint's own figures from `metrics`. Minutes are the
    VAE stage's and the denoiser's training wall clock up to that step (evaluation not counted)."""
    summaries = training_summaries(checkpoint)
    if "denoiser" not in summaries:
        return []
    vae_s, final = stage_seconds(summaries.get("vae", {})), summaries["denoiser"]
    rows = []
    for snap in [s for s in list_snapshots(Path(checkpoint) / DENOISER_DIR) if s.step < final["steps"]]:
        pipe = load_pipeline(checkpoint, device, snapshot=snap)[0]
        for run in runs:   # the same prompts and cached clips, read once
            again = replace(run, pipe=pipe, samples_dir=Path(), videos=[], audios=[])
            generate_t2v(again, progress, saved=0)
            rows.append(curve_row((vae_s + snap.seconds) / 60, snap.step, run.name, scene_metrics(again)))
    final_minutes = (vae_s + stage_seconds(final)) / 60
    rows += [curve_row(final_minutes, final["steps"], split, group["scene"])
             for split, group in metrics["splits"].items() if "status" not in group.get("scene", {})]
    return rows


def _groups(pipe, params: Params, settings: dict[str, Any], out: Path, data, prompts, allow_outside: bool = False):
    """One EvalSet per split of `data` named in eval.splits, or one for the prompts file."""
    e = params.eval
    if prompts is not None:
        yield EvalSet("prompts", pipe, params, settings, read_prompts(prompts, allow_outside)[: e.num_prompts], out / "samples")
        return
    for split, (specs, cache, manifest) in split_specs(data, e.splits, e.num_prompts).items():
        yield EvalSet(split, pipe, params, settings, specs, out / "samples", cache, manifest)


SCORE_COLUMNS = ACCURACY_COLUMNS
HEADLINE = ("all_correct", "object_all", "color", "shape", "motion", "pitch", "count")


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json: numbers only, one group per split (+ vae), the few a reader compares first.
    Everything else, with notes and statuses, is in details.json beside it."""
    out: dict[str, Any] = {}
    for split, group in metrics["splits"].items():
        scene, row = group.get("scene", {}), {}
        if "status" not in scene:
            row = {k: scene[k] for k in HEADLINE if scene.get(k) is not None}
            sync = scene.get("sync", {})
            row.update({f"sync_{k}": sync[k] for k in ("recall", "precision", "offset_ms_median_abs")
                        if sync.get(k) is not None})
            for kind, values in scene.get("baselines", {}).items():
                if values.get("all_correct") is not None:
                    row[f"{kind}_all_correct"] = values["all_correct"]
        ceiling = group.get("scene_through_vaes", {})
        if "status" not in ceiling and ceiling.get("all_correct") is not None:
            row["through_vaes_all_correct"] = ceiling["all_correct"]
        if "torchmetrics" in group.get("clip_score", {}):
            row["clip_score"] = group["clip_score"]["torchmetrics"]
        if "histogram_l1" in group.get("color", {}):
            row["color_histogram_l1"] = group["color"]["histogram_l1"]
        i2v = group.get("i2v", {})
        if "lpips" in i2v:
            row["i2v_lpips"] = i2v["lpips"]
        if "status" not in i2v.get("scene", {"status": None}) and i2v["scene"].get("object_all") is not None:
            row["i2v_object_all"] = i2v["scene"]["object_all"]
        out[split] = row
    vae = metrics.get("vae_reconstruction", {})
    if "status" not in vae and vae:
        out["vae"] = {"psnr": vae["video_psnr_upsampled"], "ssim": vae["video_ssim_upsampled"],
                      "audio_logmel_l1": vae["audio_logmel_l1"]}
    return out


def write_outputs(out: Path, metrics: dict[str, Any], grid: tuple[list, list[str]] = ([], [])) -> None:
    """details.json (everything), metrics.json (numbers only: `headline`), scores.tsv (one row per
    split and kind: the DVC plot), accuracy.png and samples_grid.png (a row per saved sample)."""
    lines = ["split\tkind\t" + "\t".join(SCORE_COLUMNS) + "\tsync_recall\tsync_precision\tsync_offset_ms"]
    for split, group in metrics["splits"].items():
        scene = group.get("scene", {})
        if "status" in scene:
            continue
        rows = [("model", scene)] + list(scene.get("baselines", {}).items())
        for kind, values in rows:
            sync = values.get("sync", {})
            cells = [values.get(c) for c in SCORE_COLUMNS] + [sync.get("recall"), sync.get("precision"),
                                                              sync.get("offset_ms_mean_abs")]
            lines.append(f"{split}\t{kind}\t" + "\t".join("" if v is None else f"{v:.4f}" for v in cells))
    write_text_atomic(out / "scores.tsv", "\n".join(lines) + "\n")
    write_curve(out, metrics.get("curve", []))
    write_json(out / "details.json", json.loads(json.dumps(metrics)))
    write_json(out / "metrics.json", headline(metrics))
    accuracy_png(metrics["splits"], out / "accuracy.png")
    samples_grid_png(*grid, out / "samples_grid.png")


def write_curve(out: Path, rows: list[dict[str, Any]], title: str = "quality vs training minutes") -> None:
    """OUT/curve/<split>.tsv (a DVC plot each: minutes against every score) and OUT/curve.png."""
    shutil.rmtree(out / "curve", ignore_errors=True)   # a split no longer evaluated leaves no old file
    if not rows:
        return
    (out / "curve").mkdir(parents=True)
    keys = [k for k in rows[0] if k != "split"]
    for split in dict.fromkeys(r["split"] for r in rows):
        write_tsv(out / "curve" / f"{split}.tsv", [r for r in rows if r["split"] == split], keys)
    quality_curve_png(rows, CURVE_KEYS + ("sync_recall", "sync_precision"), out / "curve.png", title)


def flatten_numbers(tree: dict[str, Any]) -> dict[str, float]:
    """Numeric leaves of a nested dict as a.b.c keys (MLflow metric names)."""
    return {k: float(v) for k, v in flatten(tree).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def log_to_mlflow(checkpoint: str | Path, out: Path, metrics: dict[str, Any], params: Params) -> str | None:
    """Log into the denoiser training run of this checkpoint when the tracking store has it (one run
    holds params, losses, metrics and samples for comparison), else into a new `evaluate` run."""
    import mlflow  # deferred: an untracked evaluation does not pay its import

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
        mlflow.log_metrics(flatten_numbers({k: v for k, v in metrics.items() if k not in ("sampling", "curve")}))
        for row in metrics.get("curve", []):   # MLflow's own chart of each score against the step
            mlflow.log_metrics({f"curve.{row['split']}.{k}": float(row[k]) for k in (*CURVE_KEYS, "minutes")
                                if row[k] is not None}, step=row["steps"])
        for name in ("metrics.json", "details.json", "scores.tsv", "accuracy.png", "samples_grid.png", "curve.png"):
            if (out / name).exists():
                mlflow.log_artifact(str(out / name), "evaluation")
        for folder in ("samples", "curve"):
            if (out / folder).is_dir():
                mlflow.log_artifacts(str(out / folder), f"evaluation/{folder}")
        return run.info.run_id


def print_report(metrics: dict[str, Any]) -> None:
    """Per split: the scores beside the majority and shuffled baselines, then the other metrics."""
    for split, group in metrics["splits"].items():
        scene = group.get("scene", {})
        print(f"{split} ({group['prompts']['count']} prompts):")
        if "status" in scene:
            print(f"  scene: {scene['reason']}")
        else:
            base = scene.get("baselines", {})
            print(f"  {'':<12}{'model':>8}{'majority':>10}{'shuffled':>10}")
            for key in SCORE_COLUMNS:
                cells = [scene.get(key), base.get("majority", {}).get(key), base.get("shuffled", {}).get(key)]
                print(f"  {key:<12}" + "".join(f"{'-' if v is None else f'{v:.3f}':>{w}}" for v, w in zip(cells, (8, 10, 10))))
            print(f"  sync: {json.dumps(scene['sync'])}")
            if scene.get("drawn"):
                print("  objects drawn: " + ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in scene["drawn"].items()))
            for n, part in scene.get("by_count", {}).items():
                print(f"  {n} object(s), {part['clips']} clips: object all {part['object_all']:.3f}, "
                      f"all correct {part['all_correct']:.3f}")
            for tag, part in scene.get("by_novelty", {}).items():
                print(f"  novelty {tag}, {part['objects']} objects: " + ", ".join(
                    f"{a} {part[a]:.2f}" for a in (*scene["attributes"], "object_all")))
        ceiling = group.get("scene_through_vaes", {})
        if "status" not in ceiling and ceiling:
            print(f"  real clips through the VAEs: object all {ceiling['object_all']:.3f}, all correct "
                  f"{ceiling['all_correct']:.3f}, sync recall {ceiling['sync']['recall']}")
        color = group.get("color", {})
        if "histogram_l1" in color:
            rgb = " / ".join(f"{g:.3f} vs {r:.3f}" for g, r in zip(color["generated_mean_rgb"], color["real_mean_rgb"]))
            print(f"  colour: histogram L1 {color['histogram_l1']:.3f} (0 same, 2 disjoint); mean R / G / B, "
                  f"generated vs real: {rgb}")
        for key in ("clip_score", "i2v"):
            print(f"  {key}: {json.dumps(group.get(key))}")
        for row in [r for r in metrics.get("curve", []) if r["split"] == split]:
            print(f"  curve: step {row['steps']} ({row['minutes']:.1f} min): " + ", ".join(
                f"{k} {row[k]:.2f}" for k in CURVE_KEYS))
    print(f"vae_reconstruction: {json.dumps(metrics.get('vae_reconstruction'))}")
