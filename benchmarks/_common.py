"""Shared benchmark helpers: a random mid-size Llama checkpoint and interleaved timing."""

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
