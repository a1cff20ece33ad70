"""Model load at a real size: ``workbench.models.load`` with the fingerprint cache cold and warm, against a bare
Hugging Face ``from_pretrained`` of the same checkpoint (the floor), on a random Llama checkpoint written here.

    .venv/bin/python benchmarks/load_size.py [--layers 20 --d-model 2048 --d-mlp 5632]   # ~1.0B parameters, bf16

A cold load hashes every weight as float32 (the fingerprint); a warm one reads the hash from the cache, keyed by
the weight files' names, sizes and mtimes, so its cost over the floor is the wrap and the self-check forward.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from workbench import models  # noqa: E402
from workbench.tiny import write_tiny_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--d-model", type=int, default=2048)
    ap.add_argument("--d-mlp", type=int, default=5632)
    ap.add_argument("--backend", default=None)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        folder = write_tiny_checkpoint(
            Path(tmp) / "llama",
            "llama",
            n_layers=args.layers,
            d_model=args.d_model,
            n_heads=16,
            n_kv_heads=8,
            d_mlp=args.d_mlp,
            dtype=torch.bfloat16,
            max_shard_size="1GB",
        )
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        print(
            f"wrote a random Llama ({args.layers} x {args.d_model}, {size / 2**30:.2f} GiB bf16) in "
            f"{time.perf_counter() - t:.0f} s"
        )
        os.environ["WORKBENCH_CACHE_DIR"] = str(Path(tmp) / "cache")
        rows = {}
        bare = []
        for _ in range(3):  # the first also warms imports and the page cache; the fastest is the floor
            t = time.perf_counter()
            hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
            bare.append(time.perf_counter() - t)
        rows["bare HF from_pretrained (float32), fastest of 3"] = min(bare)
        n_params = sum(p.numel() for p in hf.parameters())
        t = time.perf_counter()
        models.weights_hash(list(hf.state_dict().items()))
        rows["fingerprint hash alone"] = time.perf_counter() - t
        del hf
        for label in ("workbench load, cache cold", "workbench load, cache warm"):
            t = time.perf_counter()
            m = models.load(folder, backend=args.backend)
            rows[label] = time.perf_counter() - t
            del m
        floor = rows["bare HF from_pretrained (float32), fastest of 3"]
        print(
            f"{n_params / 1e9:.2f}B parameters, backend {args.backend or 'default'}, "
            f"torch threads {torch.get_num_threads()}"
        )
        print("| step | seconds | x bare HF load |\n|---|---|---|")
        for k, v in rows.items():
            print(f"| {k} | {v:.1f} | {v / floor:.2f} |")


if __name__ == "__main__":
    main()
