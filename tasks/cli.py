"""The `tinyveo` command, defined once: every step's arguments live here, beside one parent parser
for --params/--set/--device. A step's module is imported only when that step runs, so
`tinyveo --help` stays fast. DVC stages call these same commands.

    tinyveo synth --out data/raw
    tinyveo prepare --source data/raw --annotations data/raw/annotations.json --out data
    tinyveo train --data data --out checkpoints          # = train-vae, encode-latents, train-denoiser
    tinyveo generate --checkpoint checkpoints --prompt "A red circle moves left to right with a low tone" --out gen
    tinyveo evaluate --checkpoint checkpoints --data data --out outputs/eval
    torchrun --nproc_per_node 2 -m tasks.cli train --data data --out checkpoints   # DDP (gloo on CPU)
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

EPILOG = """\
examples:
  tinyveo synth --out data/raw --set data.synth_num_clips=600
  tinyveo prepare --source data/raw --annotations data/raw/annotations.json --out data
  tinyveo train --data data --out checkpoints [--resume] [--set train.denoiser_steps=500]
  tinyveo generate --checkpoint checkpoints --prompt "A red circle moves left to right with a low tone" --out gen
  tinyveo generate --checkpoint checkpoints --prompts prompts.txt --out gen --sampler ddim --steps 50
  tinyveo evaluate --checkpoint checkpoints --data data --out outputs/eval
  tinyveo report --outputs outputs   # one HTML page of the latest run
  tinyveo export --checkpoint checkpoints --out exported   # a diffusers-style pipeline folder
  tinyveo smoke                      # check the install: every model's loss goes down

Hyperparameters come from params.yaml; override any with --set group.key=value.
"""


@dataclass(frozen=True)
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: str                           # "module:function" taking (args, params) -> exit code


def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--params", default=None, help="params file (default: ./params.yaml, else the repository's)")
    parent.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. --set train.denoiser_steps=500 (repeatable)")
    parent.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return parent


def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for clips/, images/ and annotations.json")
    p.add_argument("--workers", type=int, default=2, help="parallel writer processes (default: 2)")
    p.add_argument("--world", default=None, help="events (v2) or shapes (v1); default: data.world in params")


def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="folder holding the clips (every annotation path must be inside)")
    p.add_argument("--annotations", required=True, help="JSON list or JSONL with video_path + summary per record")
    p.add_argument("--out", required=True, help="data folder: dataset/t2v_pairs, dataset/i2v_pairs, cache/, report")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: cache.workers)")


def _stage_args(p: argparse.ArgumentParser, resumable: bool = True) -> None:
    p.add_argument("--data", required=True, help="data folder written by `tinyveo prepare` (reads DATA/cache)")
    p.add_argument("--out", required=True, help="checkpoint folder: OUT/vae, OUT/latents, OUT/denoiser")
    if resumable:
        p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
        p.add_argument("--resume-anyway", action="store_true",
                       help="with --resume: continue even if params, dataset or code changed since the checkpoint")
        p.add_argument("--stop-after", type=int, default=None, metavar="N",
                       help="stop each stage after N more steps (checkpointed; continue later with --resume)")
        p.add_argument("--metrics-dir", default=None,
                       help="also copy each stage's summary.json (as STAGE_summary.json) and loss TSV here (DVC)")


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint folder written by `tinyveo train`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one text prompt")
    source.add_argument("--prompts", help="prompts file: plain text (one a line) or JSONL with a 'prompt' field")
    p.add_argument("--image", default=None, help="first-frame image for image-to-video (with --prompt)")
    p.add_argument("--allow-outside", action="store_true",
                   help="let a prompts file's 'image' paths point outside the file's folder")
    p.add_argument("--out", required=True, help="output folder (mp4 + wav + png per sample, samples.jsonl)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps per stage (default: sample.steps)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: params)")
    p.add_argument("--sampler", default=None, help="ddpm | ddim | dpm (default: sample.sampler)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: params seed)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per sampling batch (default: 8)")
    p.add_argument("--view-size", type=int, default=256, help="mp4 frame size, nearest-upscaled (default: 256)")
    p.add_argument("--formats", default="mp4,wav,png",
                   help="files written per sample, comma-separated from mp4, wav, png (default: all three; "
                        "wav alone is fastest for long prompt files)")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="checkpoint folder written by `tinyveo train`")
    p.add_argument("--reference", action="store_true",
                   help="score the real clips of --data instead of generating (what a perfect model scores)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="data folder written by `tinyveo prepare`: scores its eval.splits (val, test)")
    source.add_argument("--prompts", help="prompts file: text or JSONL ('prompt', optional 'attributes', 'image')")
    p.add_argument("--out", required=True, help="output folder: metrics.json, scores.tsv, samples/")
    p.add_argument("--allow-outside", action="store_true",
                   help="let a prompts file's 'image' paths point outside the file's folder")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint folder written by `tinyveo train`")
    p.add_argument("--out", required=True, help="folder for the saved pipeline (safetensors, configs, README.md)")
    p.add_argument("--metrics", default=None, help="an evaluate metrics.json to put in the model card")


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--outputs", default="outputs", help="the run's outputs folder (default: outputs)")
    p.add_argument("--out", default=None, help="the HTML page (default: OUTPUTS/report.html)")


def _smoke_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default: train.smoke_steps)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: train.smoke_batch_size)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: params seed)")
    p.add_argument("--random-context", action="store_true",
                   help="use random caption embeddings instead of the configured text encoder")
    p.add_argument("--out", default=None, help="write the losses as JSON here (DVC metrics)")


COMMANDS: dict[str, Command] = {
    "synth": Command("write the built-in synthetic dataset: mp4 clips with sound + annotations.json",
                     _synth_args, "tasks.cli:run_synth"),
    "prepare": Command("clips + annotations -> t2v/i2v pairs and the tensor cache (with a report of skipped files)",
                       _prepare_args, "tasks.cli:run_prepare"),
    "train-vae": Command("train the video and audio VAEs on the tensor cache (checkpoints, --resume)",
                         _stage_args, "tasks.cli:run_train_vae"),
    "encode-latents": Command("encode every cached item with the trained VAEs and the caption encoder",
                              lambda p: _stage_args(p, resumable=False), "tasks.cli:run_encode_latents"),
    "train-denoiser": Command("train the base + upsampler denoisers on the encoded latents (MLflow, --resume)",
                              _stage_args, "tasks.cli:run_train_denoiser"),
    "train": Command("train-vae, encode-latents and train-denoiser in one go", _stage_args, "tasks.cli:run_train"),
    "generate": Command("prompt(s) (+ optional first-frame image) -> mp4 with sound, wav and frame-grid png",
                        _generate_args, "tasks.cli:run_generate"),
    "evaluate": Command("generate for the val/test prompts and score them strictly -> metrics.json (+ CLIP, LPIPS, PSNR) + MLflow",
                        _evaluate_args, "tasks.cli:run_evaluate"),
    "export": Command("save a trained checkpoint as a diffusers-style pipeline folder with a model card",
                      _export_args, "tasks.cli:run_export"),
    "report": Command("one HTML page of the latest run: scores, training, plots, clips with sound",
                      _report_args, "tasks.cli:run_report"),
    "smoke": Command("run a few optimisation steps of every model on random tensors (checks an install)",
                     _smoke_args, "tasks.cli:run_smoke"),
}


# ---- handlers: each imports its step when it runs -----------------------------------------------

def run_synth(args: argparse.Namespace, params) -> int:
    from .synth import synth

    if args.world is not None:
        params = params.replace("data.world", args.world)
    path = synth(args.out, params.data, workers=args.workers)
    records = json.loads(path.read_text(encoding="utf-8"))
    splits = {s: sum(r["split"] == s for r in records) for s in ("train", "val", "test")}
    print(f"wrote {len(records)} {params.data.world} clips ({', '.join(f'{n} {s}' for s, n in splits.items())}; "
          f"{sum('image_path' in r for r in records)} with images) -> {path}")
    return 0


def run_prepare(args: argparse.Namespace, params) -> int:
    from .prepare import prepare

    report = prepare(args.source, args.annotations, args.out, params.cache, args.workers, curate=params.curate)
    for s in report.skipped:
        print(f"skipped {s['source']}: {s['reason']}")
    print(report.summary())
    print(f"report: {Path(args.out) / 'prepare_report.json'}")
    return 0 if report.kept else 1


def _copy_metrics(args: argparse.Namespace, stage: str) -> None:
    """CKPT/<stage>/summary.json's numbers (a DVC metrics file), its loss TSV and curve, beside DVC's
    other metrics (rank 0)."""
    if not getattr(args, "metrics_dir", None) or int(os.environ.get("RANK", "0")):
        return
    from .checkpoint import write_json

    target = Path(args.metrics_dir)
    target.mkdir(parents=True, exist_ok=True)
    folder = Path(args.out) / stage
    if (folder / "summary.json").exists():
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        write_json(target / f"{stage}_summary.json", {k: v for k, v in summary.items()
                                                       if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for name in (f"loss_{stage}.tsv", f"loss_{stage}.png"):
        if (folder / name).exists():
            shutil.copyfile(folder / name, target / name)


def _train_stage(args: argparse.Namespace, params, stage: str) -> int:
    from .training import NonFiniteLossError

    module = importlib.import_module(f"tasks.train_{stage}")
    try:
        summary = getattr(module, f"train_{stage}")(args.data, args.out, params, resume=args.resume,
                                                    stop_after=args.stop_after, device=args.device,
                                                    force_resume=args.resume_anyway)
    except NonFiniteLossError as exc:
        print(f"tinyveo train: error: {exc}")
        return 3
    _copy_metrics(args, stage)
    if summary:
        print(json.dumps(summary, indent=1))
    return 0


def run_train_vae(args: argparse.Namespace, params) -> int:
    return _train_stage(args, params, "vae")


def run_encode_latents(args: argparse.Namespace, params) -> int:
    from .encode_latents import encode_latents

    print(f"wrote {encode_latents(args.data, args.out, params, device=args.device)}")
    return 0


def run_train_denoiser(args: argparse.Namespace, params) -> int:
    return _train_stage(args, params, "denoiser")


def run_train(args: argparse.Namespace, params) -> int:
    """The three training steps in order; a --stop-after that ends the VAE stage early stops there."""
    code = run_train_vae(args, params)
    if code or (args.stop_after is not None and _stage_steps(args.out, "vae") < params.train.vae_stage_steps):
        return code
    run_encode_latents(args, params)
    return run_train_denoiser(args, params)


def _stage_steps(checkpoint: str, stage: str) -> int:
    summary = Path(checkpoint) / stage / "summary.json"
    return json.loads(summary.read_text(encoding="utf-8"))["steps"] if summary.exists() else 0


def run_generate(args: argparse.Namespace, params) -> int:
    from .generate import generate
    from .runtime import UserError
    from .samples import PromptSpec, read_prompts

    if args.prompt is not None:
        if not args.prompt.strip():
            raise UserError("--prompt is empty")
        specs = [PromptSpec(args.prompt.strip(), args.image)]
    else:
        if args.image:
            raise UserError("--image goes with --prompt; in a JSONL prompts file give each line an 'image' field")
        specs = read_prompts(args.prompts, allow_outside=args.allow_outside)
    records = generate(args.checkpoint, specs, args.out, params, steps=args.steps, guidance=args.guidance,
                       sampler=args.sampler, seed=args.seed, batch_size=args.batch_size, view_size=args.view_size,
                       device=args.device, formats=parse_formats(args.formats))
    for r in records:
        print(f"FAILED (line {r['line']}): {r['error']}" if "error" in r else
              f"{r.get('mp4') or r.get('wav') or r['png']}  <- {r['prompt']}")
    return 1 if any("error" in r for r in records) else 0


def parse_formats(text: str) -> tuple[str, ...]:
    from .runtime import UserError
    from .samples import SAMPLE_FORMATS

    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in SAMPLE_FORMATS]
    if not formats or unknown:
        raise UserError(f"--formats: {', '.join(unknown) or 'nothing given'}; choose from {', '.join(SAMPLE_FORMATS)}")
    return formats


def run_evaluate(args: argparse.Namespace, params) -> int:
    from .evaluate import evaluate, print_report

    metrics = evaluate(args.checkpoint, args.out, params, data=args.data, prompts=args.prompts,
                       reference=args.reference, device=args.device, track=False if args.no_mlflow else None,
                       allow_outside=args.allow_outside)
    print_report(metrics)
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


def run_export(args: argparse.Namespace, params) -> int:
    from .export import export

    print(f"wrote {export(args.checkpoint, args.out, args.metrics)}")
    return 0


def run_report(args: argparse.Namespace, params) -> int:
    from .report import build_report

    print(f"wrote {build_report(args.outputs, args.out)}")
    return 0


def run_smoke(args: argparse.Namespace, params) -> int:
    from .smoke import report_smoke, run_smoke

    t = params.train
    steps = args.steps if args.steps is not None else t.smoke_steps
    batch = args.batch_size if args.batch_size is not None else t.smoke_batch_size
    seed = args.seed if args.seed is not None else params.seed
    result = run_smoke(params, steps, batch, seed, use_text_encoder=not args.random_context, device=args.device)
    return report_smoke(result, steps, batch, args.out)


# ---- the parser and the entry point -------------------------------------------------------------

def _version() -> str:
    from tinyveo import __version__

    return __version__


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyveo", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="tinyveo: a small joint video + audio diffusion pipeline (text or image+text to clip with sound).",
    )
    parser.add_argument("--version", action="version", version=f"tinyveo {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common()
    for name, command in (commands or COMMANDS).items():
        p = sub.add_parser(name, help=command.help, description=command.help, parents=[common])
        command.arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def run_guarded(command: str, target: str, args: argparse.Namespace) -> int:
    """Run a subcommand; user errors become one line on stderr (naming the file and the reason), exit 2."""
    from model.conditioning import MissingCheckpointError

    from .params import ParamsError, load_params
    from .runtime import UserError

    module, function = target.split(":")
    try:
        params = load_params(args.params, args.overrides)
        return int(getattr(importlib.import_module(module), function)(args, params) or 0)
    except (ParamsError, UserError, MissingCheckpointError) as exc:
        print(f"tinyveo {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tinyveo {command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules and sys.modules["torch.distributed"].is_initialized():
            sys.modules["torch.distributed"].destroy_process_group()


def main(argv: Sequence[str] | None = None, commands: dict[str, Command] | None = None) -> int:
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return run_guarded(args.command, args._run, args)


if __name__ == "__main__":
    raise SystemExit(main())
