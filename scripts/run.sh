#!/usr/bin/env bash
# The main job: set-up (idempotent), then the agent on this host with its embedded default config,
# observing real traffic between sandbox pods. Ctrl-C stops it and removes everything it created.
# Extra arguments go to `retina-otel demo` (e.g. --duration 60).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/retina-otel demo "$@"
