"""The `tinyveo` command. Subcommands import their heavy modules only when they run, so
`tinyveo --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module under tasks/, one-line help). Each module offers add_arguments(parser) and run(args).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "smoke": ("smoke", "run a few optimisation steps of every model on random tensors (checks an install)"),
}

EPILOG = """\
examples:
  tinyveo smoke                      # check the install: every model's loss goes down
  tinyveo smoke --set denoiser.base.depth=2 --steps 10

Hyperparameters come from params.yaml; override any with --set group.key=value.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyveo",
        description="tinyveo: a small joint video + audio diffusion pipeline (text or image+text to clip with sound).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Argument definitions live next to the code they configure; loading them is cheap because
        # each task module defers its heavy imports into functions.
        importlib.import_module(f"tasks.{module}").add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from model.conditioning import MissingCheckpointError

    from .params import ParamsError
    from .runtime import UserError

    try:
        return int(importlib.import_module(f"tasks.{args._module}").run(args) or 0)
    except (ParamsError, UserError, MissingCheckpointError) as exc:
        print(f"tinyveo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tinyveo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
