#!/usr/bin/env bash
# The test command: set-up (idempotent), then lint, type-check and the whole test suite.
# Kernel tests need root; CI runs as root and a skipped kernel test there is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# Azurite (Microsoft's Azure Blob emulator) for the capture upload tests.
if ! command -v azurite-blob >/dev/null 2>&1; then
  echo "[test] installing azurite (npm)" >&2
  npm install -g --silent azurite >/dev/null 2>&1 || echo "[test] WARNING: npm install azurite failed" >&2
fi
# Leftovers of an earlier run that was killed (namespaces named rotel-*).
.venv/bin/python -c 'from retina_otel.sandbox import remove_stale; remove_stale()'
.venv/bin/ruff check retina_otel tests benchmarks
.venv/bin/mypy
exec .venv/bin/pytest -p no:cacheprovider "$@"
