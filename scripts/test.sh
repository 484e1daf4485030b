#!/usr/bin/env bash
# Command 2 of the README: set everything up and run the default test suite.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m slow`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
bash scripts/ensure_redis.sh
bash scripts/ensure_chromium.sh
VENV="${CTVIS_VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"
# Tests find the Redis the script provides here (never through the service's own CTVIS_REDIS_URL).
export CTVIS_TEST_REDIS_URL="${CTVIS_TEST_REDIS_URL:-redis://127.0.0.1:${CTVIS_REDIS_PORT:-6379}/0}"

echo "[test] ruff check"
ruff check .
echo "[test] ruff format --check"
ruff format --check .
echo "[test] import contracts"
lint-imports
echo "[test] mypy"
mypy model service
echo "[test] pytest"
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
