#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint, and run the whole test suite offline.
# The report tests drive headless Chromium; on Debian/Ubuntu as root the browser is installed if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install --quiet -e '.[test,quantization]'  # the quantization tests' backend
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
            || echo "warning: could not install chromium; the browser tests will be skipped" >&2
    else
        echo "note: chromium/chromedriver not found; the browser tests will be skipped" >&2
    fi
fi
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
.venv/bin/ruff check conceptspace tests analyses benchmarks
.venv/bin/lint-imports  # the layering contracts in pyproject.toml: no import cycles, layers from the CLI down
.venv/bin/python -m pytest -q "$@"
