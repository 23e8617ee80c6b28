"""The `tinyveo` command: every task step (tasks/cli.py) plus the flow commands.

    tinyveo pipeline [--set train.denoiser_steps=500]   # the whole Prefect flow, locally
    tinyveo serve                                       # serve the deployments (then `prefect deployment run`)

Argument definitions import nothing heavy, so `tinyveo --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from tasks import cli as task_cli

COMMANDS: dict[str, tuple[str, str]] = {
    **task_cli.SUBCOMMANDS,
    "pipeline": ("flows.cli", "run the whole Prefect pipeline flow: data -> train -> generate -> evaluate"),
    "serve": ("flows.deploy", "serve the tinyveo-pipeline, -data, -train and -evaluate deployments (prefect deployment run)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`tinyveo pipeline` arguments: the pipeline flow's parameters."""
    parser.add_argument("--source", default=None, help="folder of your clips (default: build the built-in dataset)")
    parser.add_argument("--annotations", default=None, help="annotations file for --source (JSON list or JSONL)")
    parser.add_argument("--data", default="data", help="data folder (default: data)")
    parser.add_argument("--checkpoints", default="checkpoints", help="checkpoint folder (default: checkpoints)")
    parser.add_argument("--outputs", default="outputs", help="samples and evaluation (default: outputs)")
    parser.add_argument("--prompts", default="data/prompts.txt", help="prompts for the generate step")
    parser.add_argument("--refresh", action="store_true", help="ignore cached task results and run every step")
    parser.add_argument("--params", default=None, help="params file (default: the repository's params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter (repeatable), e.g. --set train.denoiser_steps=500")


def run(args: argparse.Namespace) -> int:
    from tasks.params import load_params

    load_params(args.params, args.overrides)  # fail fast, with one clear line, on a bad override
    from flows.pipeline import pipeline

    result = pipeline(source=args.source, annotations=args.annotations, data_dir=args.data,
                      checkpoint_dir=args.checkpoints, output_dir=args.outputs, prompts=args.prompts,
                      overrides=list(args.overrides), params_file=args.params, refresh=args.refresh)
    print(json.dumps(result, indent=1, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return task_cli.main(argv, COMMANDS)


if __name__ == "__main__":
    raise SystemExit(main())
