#!/usr/bin/env bash
# Create .venv with everything the workbench, its tests and demo need. Idempotent: a stamp file records
# the hash of the inputs, so a second run costs nothing. CPU torch is pinned through constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.setup-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q -c constraints.txt "torch==2.13.0"
"${pip[@]}" install -q -c constraints.txt -e ".[test]"
# TransformerLens 3.9 (HookedTransformer) lives beside 4.x in its own folder; tests run once with it on
# PYTHONPATH (see scripts/test.sh). It shares every other dependency of the main environment.
"${pip[@]}" install -q --no-deps --target "$VENV/tl3" "transformer_lens==3.9.0" "better-abc"
rm -f "$VENV"/.setup-*
touch "$stamp"
