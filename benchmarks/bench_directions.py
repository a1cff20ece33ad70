"""All-layer direction extraction from N pairs vs a bare Hugging Face forward over the same tokens (target <= 1.10x).

    .venv/bin/python benchmarks/bench_directions.py [--sizes toy-m,d1024x8,d1536x12] [--pairs 128]

The extraction side is the whole user-facing call: tokenising, padding, hooks at every layer, reducing to one
vector per example, early stop, then fitting mean-difference directions with held-out quality (probe accuracy,
AUROC, effect size). The baseline is the physical limit: a plain transformers model's forward (no TransformerLens,
no hooks) over the same padded batches. Interleaved repeats, medians.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import SIZES, checkpoint, interleaved  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from workbench import models  # noqa: E402
from workbench.activations import collect_pairs, pair_spans  # noqa: E402
from workbench.directions import compute_directions  # noqa: E402
from workbench.pairs import ContrastPairs  # noqa: E402
from workbench.tokens import batched, make_batch, pad_id_of  # noqa: E402

BATCH = 32
WORDS = "the a cat dog bird fish car bus tree house sun moon sky sea big small red blue green very".split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(args.pairs):
        n = int(torch.randint(8, 40, (1,), generator=g))
        ctx = " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=g))
        rows.append({"prompt": ctx + " is", "positive": "good", "negative": "bad"})
    pairs = ContrastPairs.from_list(rows)
    print(f"## All-layer direction extraction ({args.pairs} pairs, mean difference + quality) vs a bare HF forward")
    print()
    print("| size | tokens | bare HF forward (ms) | extraction + fit (ms) | ratio | target |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        folder = checkpoint(size)
        model = models.load(folder)
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        pos, neg, _, _ = pair_spans(model, pairs, "last")
        seqs = sorted(pos + neg, key=len)
        batches = [make_batch([seqs[i] for i in c], pad_id_of(model), "right") for c in batched(len(seqs), BATCH)]

        def extract():
            acts = collect_pairs(model, pairs, position="last", batch_size=BATCH, progress=False)
            compute_directions(acts, "mean")

        def bare():
            with torch.no_grad():
                for b in batches:
                    hf(input_ids=b.tokens, attention_mask=b.attention_mask)

        t = interleaved({"extract": extract, "bare": bare}, reps=args.reps)
        n = sum(len(s) for s in seqs)
        print(f"| {size} | {n} | {t['bare'] * 1000:.1f} | {t['extract'] * 1000:.1f} | "
              f"{t['extract'] / t['bare']:.3f}x | <= 1.10x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
