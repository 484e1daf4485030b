#!/usr/bin/env bash
# Command 1 of the README: set everything up and start the service with its embedded defaults
# (in-process session store, bundled model). Extra arguments go to `ctvis serve`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CTVIS_EXTRAS="${CTVIS_EXTRAS:-dev,onnx}" bash scripts/setup.sh
VENV="${CTVIS_VENV:-$ROOT/.venv}"
exec "$VENV/bin/ctvis" serve "$@"
