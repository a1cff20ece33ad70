#!/usr/bin/env bash
# The peer libraries benchmarks/bench_peers.py runs side by side with the workbench (./dev bench installs them on
# demand; tests never need them). Idempotent: a stamp file per set of pins.
#   .venv/peers/         steering-vectors (its releases pin transformers < 5: installed --no-deps, imported by the
#                        benchmark from the main venv) with scikit-learn, which it imports, in .venv/peers/deps/
#   .venv/repeng/        repeng in a venv of its own (it pins numpy < 2, which breaks pyarrow for transformer_lens),
#                        with the same torch and transformers as the main venv; the benchmark drives it as a worker
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STEERING_VECTORS=0.12.2
REPENG=0.4.0
pip=(-m pip install -q --disable-pip-version-check)
if [ ! -f ".venv/peers/.stamp-$STEERING_VECTORS" ]; then
  rm -rf .venv/peers
  .venv/bin/python "${pip[@]}" --no-deps --target .venv/peers "steering-vectors==$STEERING_VECTORS"
  .venv/bin/python "${pip[@]}" --target .venv/peers/deps -c constraints.txt scikit-learn
  touch ".venv/peers/.stamp-$STEERING_VECTORS"
fi
if [ ! -f ".venv/repeng/.stamp-$REPENG" ]; then
  rm -rf .venv/repeng
  "$PY" -m venv .venv/repeng
  .venv/repeng/bin/python "${pip[@]}" -c constraints.txt "torch==2.13.0" "transformers" "repeng==$REPENG" "numpy<2"
  touch ".venv/repeng/.stamp-$REPENG"
fi
