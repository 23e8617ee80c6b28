"""The `tinyveo` command. Subcommands import their heavy modules only when they run, so
`tinyveo --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

# name -> (module, one-line help). Each module offers add_arguments(parser) and run(args). The
# `tinyveo` entry point (flows/cli.py) adds the flow commands (pipeline, serve) to these.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("tasks.synth", "write the built-in synthetic dataset: mp4 clips with sound + annotations.json"),
    "prepare": ("tasks.prepare", "clips + annotations -> t2v/i2v pairs and the tensor cache (with a report of skipped files)"),
    "train": ("tasks.train", "train the VAEs, then the base + upsampler denoisers (MLflow, checkpoints, --resume)"),
    "generate": ("tasks.generate", "prompt(s) (+ optional first-frame image) -> mp4 with sound, wav and frame-grid png"),
    "evaluate": ("tasks.evaluate", "generate for held-out prompts -> metrics.json (accuracy, CLIP score, LPIPS, PSNR/SSIM) + MLflow"),
    "smoke": ("tasks.smoke", "run a few optimisation steps of every model on random tensors (checks an install)"),
}

EPILOG = """\
examples:
  tinyveo synth --out data/raw --num-clips 600
  tinyveo prepare --source data/raw --annotations data/raw/annotations.json --out data
  tinyveo train --data data --out checkpoints
  tinyveo generate --checkpoint checkpoints --prompt "A red circle moves left to right with a low tone" --out gen
  tinyveo generate --checkpoint checkpoints --prompts prompts.txt --out gen --sampler ddim --steps 50
  tinyveo evaluate --checkpoint checkpoints --holdout data --out outputs/eval
  tinyveo smoke                      # check the install: every model's loss goes down
  tinyveo smoke --set denoiser.base.depth=2 --steps 10

Hyperparameters come from params.yaml; override any with --set group.key=value.
"""


def build_parser(commands: dict[str, tuple[str, str]] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyveo",
        description="tinyveo: a small joint video + audio diffusion pipeline (text or image+text to clip with sound).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in (commands or SUBCOMMANDS).items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Argument definitions live next to the code they configure; loading them is cheap because
        # each task module defers its heavy imports into functions.
        importlib.import_module(module).add_arguments(p)
    return parser


def run_guarded(command: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; user errors become one line on stderr (naming the file and the reason), exit 2."""
    from model.conditioning import MissingCheckpointError

    from .params import ParamsError
    from .runtime import UserError

    try:
        return int(run(args) or 0)
    except (ParamsError, UserError, MissingCheckpointError) as exc:
        print(f"tinyveo {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tinyveo {command}: interrupted", file=sys.stderr)
        return 130


def module_main(name: str, argv: Sequence[str] | None = None) -> int:
    """The `python -m tasks.<name>` entry that DVC stages call: the same arguments, help and error
    handling as `tinyveo <name>`."""
    module = importlib.import_module(f"tasks.{name}")
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return run_guarded(name, module.run, parser.parse_args(argv))


def main(argv: Sequence[str] | None = None, commands: dict[str, tuple[str, str]] | None = None) -> int:
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return run_guarded(args.command, importlib.import_module(args._module).run, args)


if __name__ == "__main__":
    raise SystemExit(main())
