#!/usr/bin/env bash
# The main job on the built-in dataset: `dvc repro` (synth -> prepare -> train, plus the model smoke run).
# Extra arguments go to `dvc repro` (e.g. --force).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/env.sh" dvc repro "$@"
