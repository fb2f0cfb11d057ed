#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: lint, types, unit, integration, e2e.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -k discovery`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python scripts/gen_protos.py --check
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest -n "${PYTEST_WORKERS:-4}" -p no:cacheprovider -m "not slow" "$@"
