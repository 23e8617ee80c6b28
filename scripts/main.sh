#!/usr/bin/env bash
# The main job on the built-in dataset. Extra arguments go to `tinyveo smoke`.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/env.sh" tinyveo smoke "$@"
