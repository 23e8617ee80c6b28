#!/usr/bin/env bash
# Run a command inside tinyveo's environment, creating or updating it first.
#
#   scripts/env.sh tinyveo --help
#
# The heavy dependencies (~6 GB, ~4 min cold) live in one shared virtual environment keyed by the
# hash of requirements.txt, under $TINYVEO_ENV_HOME (default ~/.cache/tinyveo): every clone and
# every CI run on this machine reuses it, and a changed pin builds a new one. Each clone gets a
# light .venv of its own that sees the shared packages through a .pth file and holds only the
# editable install of this checkout (so two clones never fight over one install).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PY=${TINYVEO_PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$candidate; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "tinyveo: Python 3.11 not found (set TINYVEO_PYTHON to its path)" >&2
  exit 2
fi

KEY=$(sha256sum requirements.txt | cut -c1-12)
ENV_HOME=${TINYVEO_ENV_HOME:-$HOME/.cache/tinyveo}
DEPS="$ENV_HOME/deps-$KEY"
mkdir -p "$ENV_HOME"

if [ ! -f "$DEPS/.complete" ]; then
  (
    flock 9  # two clones bootstrapping at once: the second waits for the first
    if [ ! -f "$DEPS/.complete" ]; then
      echo "tinyveo: installing the pinned dependencies into $DEPS (one time, ~4 min, ~6 GB)" >&2
      rm -rf "$DEPS"
      "$PY" -m venv "$DEPS"
      log="$DEPS.install.log"
      if ! { "$DEPS/bin/python" -m pip install --upgrade pip && "$DEPS/bin/python" -m pip install -r requirements.txt; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "tinyveo: dependency install failed; full log: $log" >&2
        exit 1
      fi
      touch "$DEPS/.complete"
    fi
  ) 9>"$DEPS.lock"
fi

SITE=$("$DEPS/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The editable install is redone when the shared environment or pyproject.toml (entry points) changes.
STAMP="$DEPS $(sha256sum pyproject.toml | cut -c1-12)"
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.tinyveo-deps 2>/dev/null)" != "$STAMP" ]; then
  rm -rf .venv
  "$PY" -m venv --without-pip .venv
  LOCAL_SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$SITE" > "$LOCAL_SITE/tinyveo-deps.pth"
  if ! .venv/bin/python -m pip install --no-deps --no-build-isolation --disable-pip-version-check -e . >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    echo "tinyveo: editable install of $ROOT failed" >&2
    exit 1
  fi
  echo "$STAMP" > .venv/.tinyveo-deps
fi

export PATH="$ROOT/.venv/bin:$DEPS/bin:$PATH"
export VIRTUAL_ENV="$ROOT/.venv"
# Offline by design: no hub downloads, no telemetry.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-90}
export TOKENIZERS_PARALLELISM=false
exec "$@"
