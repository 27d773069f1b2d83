#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint, and run the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
.venv/bin/ruff check conceptspace tests analyses benchmarks
.venv/bin/python -m pytest -q "$@"
