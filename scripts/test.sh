#!/usr/bin/env bash
# The test suite, with every set-up it needs: the pinned environment (scripts/env.sh) and headless
# Chromium (the MLflow UI comparison test drives it; Debian's package, installed once).
# Test files run on $TINYVEO_TEST_WORKERS processes (default 2; 0: one process), a file's tests on one
# of them, so module fixtures are built once (16.5 min on 2 cores against 29 in one process:
# bench/RESULTS.md). Extra arguments go to pytest (e.g. -k vae, -x).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  echo "tinyveo: installing headless Chromium for the browser test (one time)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  ($SUDO apt-get install -y --no-install-recommends chromium || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends chromium; }) >/tmp/tinyveo-chromium.log 2>&1 \
    || echo "tinyveo: could not install chromium (see /tmp/tinyveo-chromium.log); the MLflow UI test will fail" >&2
fi
exec "$(dirname "${BASH_SOURCE[0]}")/env.sh" python -m pytest -n "${TINYVEO_TEST_WORKERS:-2}" --dist loadfile "$@"
