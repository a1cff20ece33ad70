"""Run a checkpoint and its control vectors in a real llama.cpp (llama-cpp-python, CPU) to prove parity.

Optional: needs ``llama-cpp-python`` (built from source; ``./dev test`` installs 0.3.36) and llama.cpp's
``convert_hf_to_gguf.py`` from the same source release (``scripts/setup.sh`` puts it in ``.venv/llama.cpp/``; or
set ``$WORKBENCH_LLAMA_CONVERTER``). llama-cpp-python has no binding for llama.cpp's GGUF control-vector loader
(``common_control_vector_load`` lives in the C++ ``common`` library), so ``control_vector_data`` ports it line
for line; it was checked against the C++ loader to 5e-9. Contexts use an F32
KV cache and no flash attention: llama.cpp's defaults (F16 KV) cost three orders of magnitude of agreement.
"""

__all__ = ["available", "converter_path", "convert_checkpoint", "control_vector_data", "llama_logits"]

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from workbench.errors import WorkbenchError

_VENV_CONVERTER = Path(sys.prefix) / "llama.cpp" / "convert_hf_to_gguf.py"


def available() -> bool:
    """Whether llama-cpp-python and the converter are installed here."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return converter_path(required=False) is not None


def converter_path(required: bool = True) -> "Path | None":
    """``$WORKBENCH_LLAMA_CONVERTER`` or ``<venv>/llama.cpp/convert_hf_to_gguf.py``."""
    env = os.environ.get("WORKBENCH_LLAMA_CONVERTER")
    path = Path(env) if env else _VENV_CONVERTER
    if path.is_file():
        return path
    if required:
        raise WorkbenchError(
            f"llama.cpp's convert_hf_to_gguf.py was not found at {path}; run `./dev test` once (it installs it from "
            f"the llama-cpp-python 0.3.36 source release) or set WORKBENCH_LLAMA_CONVERTER."
        )
    return None


def convert_checkpoint(hf_dir: "str | Path", out: "str | Path") -> Path:
    """Convert a Hugging Face checkpoint folder to an F32 GGUF model with llama.cpp's own converter (run through
    ``workbench.export._convert``, which restores config keys transformers 5 renames; see there)."""
    out = Path(out)
    cmd = [
        sys.executable,
        "-m",
        "workbench.export._convert",
        str(converter_path()),
        str(hf_dir),
        "--outtype",
        "f32",
        "--outfile",
        str(out),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")])
        ),
    }
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0 or not out.is_file():
        lines = (r.stderr or r.stdout).strip().splitlines()
        tail = [ln for ln in lines if "Error" in ln or "error" in ln][-1:] or lines[-1:] or ["no output"]
        raise WorkbenchError(f"llama.cpp's convert_hf_to_gguf.py failed on {hf_dir}: {tail[0]}")
    return out


def control_vector_data(files: "list[tuple[str | Path, float]]") -> tuple[int, np.ndarray]:
    """Port of llama.cpp's ``common_control_vector_load``: ``direction.k`` (k >= 1) of each file, times its
    strength, summed into ``data[(k-1)*n_embd : k*n_embd]``. Returns ``(n_embd, data)``.

    Like llama.cpp it rejects ``direction.0``, non-F32 and non-1-D tensors and mixed widths (llama.cpp then
    runs unsteered; here it raises).
    """
    import gguf

    n_embd, data = -1, np.zeros(0, np.float32)
    for path, strength in files:
        for t in gguf.GGUFReader(str(path)).tensors:
            if not t.name.startswith("direction."):
                continue
            k = int(t.name.split(".", 1)[1])
            v = np.asarray(t.data, np.float32).reshape(-1)
            if k < 1 or t.tensor_type != gguf.GGMLQuantizationType.F32 or (n_embd != -1 and v.size != n_embd):
                raise WorkbenchError(f"{path}: {t.name} would make llama.cpp skip the file.")
            n_embd = v.size
            if data.size < n_embd * k:
                data = np.pad(data, (0, n_embd * k - data.size))
            data[(k - 1) * n_embd : k * n_embd] += strength * v
    return n_embd, data


_LOG_CALLBACK = None


def _silence(L) -> None:
    """Route llama.cpp's log lines (hundreds per model load) to nowhere."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = L.llama_log_callback(lambda level, text, user_data: None)
        L.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p())


def llama_logits(
    model_gguf: "str | Path",
    tokens: "list[int]",
    cvec: "tuple[int, np.ndarray] | None" = None,
    *,
    layer_range: "tuple[int, int] | None" = None,
) -> np.ndarray:
    """All-position logits [len(tokens), n_vocab] from llama.cpp, optionally with control-vector data applied
    to blocks ``layer_range`` (inclusive; default 1..n_layer, llama.cpp's CLI default)."""
    import llama_cpp as L

    _silence(L)
    L.llama_backend_init()
    model = L.llama_model_load_from_file(str(model_gguf).encode(), L.llama_model_default_params())
    if not model:
        raise WorkbenchError(f"llama.cpp could not load {model_gguf}.")
    cp = L.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = max(64, len(tokens))
    cp.type_k = cp.type_v = L.GGML_TYPE_F32
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = L.llama_init_from_model(model, cp)
    batch = L.llama_batch_init(len(tokens), 0, 1)
    try:
        if cvec is not None:
            n_embd, data = cvec
            lo, hi = layer_range or (1, L.llama_model_n_layer(model))
            data = np.ascontiguousarray(data, np.float32)
            rc = L.llama_set_adapter_cvec(
                ctx, data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), data.size, n_embd, lo, hi
            )
            if rc != 0:
                raise WorkbenchError(
                    f"llama.cpp refused the control vector (n_embd {n_embd}); it was made for another model."
                )
        for i, t in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = int(t), i, 1, 1
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(tokens)
        if L.llama_decode(ctx, batch) != 0:
            raise WorkbenchError("llama_decode failed.")
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
        return np.stack(
            [np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy() for i in range(len(tokens))]
        )
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)
