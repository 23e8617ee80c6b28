#!/usr/bin/env bash
# The test suite. Extra arguments go to pytest (e.g. -k vae, -x).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/env.sh" python -m pytest "$@"
