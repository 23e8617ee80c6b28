"""The `tinyveo` command: every task step (tasks/cli.py) plus the flow commands.

    tinyveo pipeline [--set train.denoiser_steps=500]   # the whole Prefect flow, locally
    tinyveo serve                                       # serve the deployments (then `prefect deployment run`)
    tinyveo demo --checkpoint checkpoints               # the Gradio page on http://127.0.0.1:7860

Argument definitions import nothing heavy, so `tinyveo --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from tasks import cli as task_cli
from tasks.cli import Command


def pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """`tinyveo pipeline` arguments: the pipeline flow's parameters."""
    parser.add_argument("--source", default=None, help="folder of your clips (default: build the built-in dataset)")
    parser.add_argument("--annotations", default=None, help="annotations file for --source (JSON list or JSONL)")
    parser.add_argument("--data", default="data", help="data folder (default: data)")
    parser.add_argument("--checkpoints", default="checkpoints", help="checkpoint folder (default: checkpoints)")
    parser.add_argument("--outputs", default="outputs", help="samples and evaluation (default: outputs)")
    parser.add_argument("--prompts", default="data/prompts.txt", help="prompts for the generate step")
    parser.add_argument("--dask", default=None, metavar="ADDRESS",
                        help="run the per-clip work (probe, audio, tensor cache) on a Dask cluster: a scheduler "
                             "address (tcp://host:8786), or 'local' for a temporary cluster of cache.workers processes")


def serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="local", help="deployment name (default: local)")
    parser.add_argument("--limit", type=int, default=1,
                        help="flow runs at a time in this process (default: 1; training uses every core)")


def demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="checkpoints",
                        help="checkpoint folder or exported pipeline (default: checkpoints)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")


def run_demo(args: argparse.Namespace, params) -> int:
    from tinyveo.demo import launch

    launch(args.checkpoint, args.host, args.port, args.device or params.train.device)
    return 0


COMPLETION = """# tinyveo's bash completion: eval "$(tinyveo completion)" (e.g. in ~/.bashrc)
_tinyveo() {
  local cur=${COMP_WORDS[COMP_CWORD]}
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "%s --help --version" -- "$cur"))
  elif [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$(tinyveo "${COMP_WORDS[1]}" --help 2>/dev/null | grep -o -- '--[a-z][a-z-]*' | sort -u)" -- "$cur"))
  else
    COMPREPLY=($(compgen -f -- "$cur"))
  fi
}
complete -o filenames -F _tinyveo tinyveo
"""


def run_completion(args: argparse.Namespace, params) -> int:
    print(COMPLETION % " ".join(COMMANDS), end="")
    return 0


def run_pipeline(args: argparse.Namespace, params) -> int:
    from flows.pipeline import pipeline

    result = pipeline(source=args.source, annotations=args.annotations, data_dir=args.data,
                      checkpoint_dir=args.checkpoints, output_dir=args.outputs, prompts=args.prompts,
                      overrides=list(args.overrides), params_file=args.params, dask=args.dask)
    print(json.dumps(result, indent=1, default=str))
    return 0


COMMANDS: dict[str, Command] = {
    **task_cli.COMMANDS,
    "pipeline": Command("run the whole Prefect pipeline flow: data -> train -> generate -> evaluate",
                        pipeline_arguments, "flows.cli:run_pipeline"),
    "demo": Command("a local demo page (Gradio): prompt, image, steps, guidance, seed -> clip with sound",
                    demo_arguments, "flows.cli:run_demo"),
    "completion": Command("print bash completion for tinyveo: eval \"$(tinyveo completion)\"",
                          lambda parser: None, "flows.cli:run_completion"),
    "serve": Command("serve the tinyveo-pipeline, -data, -train and -evaluate deployments (prefect deployment run)",
                     serve_arguments, "flows.deploy:run"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return task_cli.main(argv, COMMANDS)


if __name__ == "__main__":
    raise SystemExit(main())
