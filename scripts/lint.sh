#!/usr/bin/env bash
# The habits CI keeps: ruff lint and format check on the whole tree, mypy on the core package.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== lint: ruff check, ruff format --check, mypy workbench =="
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy --no-error-summary workbench
