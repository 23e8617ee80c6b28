"""Serve the tinyveo deployments from this process (Prefect's `serve`: no work pool needed).

    tinyveo serve                    # or: python -m flows.deploy
    prefect deployment run 'tinyveo-pipeline/local' -p overrides='["train.denoiser_steps=300"]' --watch
    prefect deployment run 'tinyveo-train/local'

Deployments: tinyveo-pipeline/local, tinyveo-data/local, tinyveo-train/local, tinyveo-evaluate/local.
Flows run in the serving process's working folder, so relative paths (data, checkpoints, outputs)
resolve there. On a cluster, use `flow.deploy(work_pool_name=...)` with a process/docker/k8s work
pool instead (see the README).
"""
from __future__ import annotations

import argparse
from typing import Sequence


def deployments(name: str = "local") -> list:
    from flows.pipeline import data_flow, evaluate_flow, pipeline, train_flow

    tags = ["tinyveo"]
    return [f.to_deployment(name=name, tags=tags) for f in (pipeline, data_flow, train_flow, evaluate_flow)]


def run(args: argparse.Namespace, params=None) -> int:
    from prefect import serve

    serve(*deployments(args.name), limit=args.limit)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from flows.cli import serve_arguments

    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    serve_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
