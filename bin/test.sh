#!/usr/bin/env bash
# Runs the test suite in the project's environment. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=25 "$@" tests
