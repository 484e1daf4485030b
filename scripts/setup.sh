#!/usr/bin/env bash
# Create .venv and install the project for CPU (idempotent; fast when nothing changed).
#
# The CPU build of PyTorch is pinned here (torch==2.13.0 resolves to a local CPU wheel on the
# project's machines); a plain `torch` requirement would pull a multi-GB CUDA build. GPU images
# install their own CUDA torch instead (see Dockerfile).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${CTVIS_VENV:-$ROOT/.venv}"
TORCH_SPEC="${CTVIS_TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${CTVIS_EXTRAS:-dev,onnx}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# Re-install only when the dependency declaration (or the extras) changed.
STAMP="$VENV/.ctvis-installed"
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $EXTRAS $TORCH_SPEC"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$PY" -c "import torch, model" 2>/dev/null; then
  exit 0
fi
echo "[setup] installing dependencies (CPU PyTorch: $TORCH_SPEC, extras: $EXTRAS)"
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$PY" -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
# The torch pin is repeated so that no extra can replace the CPU build with a CUDA one.
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[$EXTRAS]" "$TORCH_SPEC"
echo "$WANT" > "$STAMP"
echo "[setup] done"
