"""Shared benchmark helpers: random Llama checkpoints at the benchmark sizes, and interleaved timing."""

import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from workbench import models  # noqa: E402
from workbench.tiny import write_tiny_checkpoint  # noqa: E402

SIZE = dict(n_layers=8, d_model=512, n_heads=8, d_mlp=1376, n_ctx=256)
#: The sizes the scaling benchmarks run at: the shipped toy-m, a ~100M-parameter random Llama (d_model 1024 x 8
#: blocks) and the largest that runs each benchmark within 5 minutes on the 2-core machine (~0.4B).
SIZES: dict[str, "dict | None"] = {
    "toy-m": None,
    "d1024x8": dict(n_layers=8, d_model=1024, n_heads=16, d_mlp=2816, n_ctx=512),
    "d1536x12": dict(n_layers=12, d_model=1536, n_heads=16, d_mlp=4096, n_ctx=512),
}


def checkpoint(size: str) -> Path:
    """The Hugging Face folder of benchmark size ``size`` (a key of ``SIZES``): toy-m's shipped folder, or a random
    Llama written once per machine under the temp directory."""
    if size not in SIZES:
        raise SystemExit(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    shape = SIZES[size]
    if shape is None:
        return models.hf_folder(size)
    folder = Path(tempfile.gettempdir()) / f"wb-bench-{size}" / "llama"
    if not (folder / "config.json").exists():
        write_tiny_checkpoint(folder, "llama", tokenizer_from=models.hf_folder("toy-m"), **shape)
    return folder


def bench_model(backend=None):
    folder = Path(tempfile.mkdtemp(prefix="wb-bench-")) / "llama"
    write_tiny_checkpoint(folder, "llama", **SIZE)
    return models.load(folder, backend=backend)


def interleaved(fns: dict, reps: int = 7) -> dict:
    """Median wall seconds of each function, run alternately so machine noise hits all of them alike."""
    for f in fns.values():  # warm-up
        f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def header(title: str, model) -> None:
    print(f"## {title}")
    print(f"model: random Llama {SIZE}, backend {models.backend_of(model)}, torch threads {torch.get_num_threads()}")
