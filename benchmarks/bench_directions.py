"""All-layer direction extraction from N pairs vs one bare forward pass over the same tokens (target <= 1.10x).

The extraction side is the whole user-facing call: tokenising, padding, hooks at every layer, reducing to one
vector per example, early stop, then fitting mean-difference directions with held-out quality. The baseline is a
plain forward over the same padded batches with no hooks.
"""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import bench_model, header, interleaved  # noqa: E402

from workbench.activations import collect_pairs, pair_spans  # noqa: E402
from workbench.directions import compute_directions  # noqa: E402
from workbench.pairs import ContrastPairs  # noqa: E402
from workbench.tokens import batched, make_batch, pad_id_of  # noqa: E402

N_PAIRS, BATCH = 128, 32
WORDS = "the a cat dog bird fish car bus tree house sun moon sky sea big small red blue green very".split()


def main() -> None:
    model = bench_model()
    g = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(N_PAIRS):
        n = int(torch.randint(8, 40, (1,), generator=g))
        ctx = " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=g))
        pairs.append({"prompt": ctx + " is", "positive": "good", "negative": "bad"})
    pairs = ContrastPairs.from_list(pairs)
    pos, neg, _, _ = pair_spans(model, pairs, "last")
    seqs = sorted(pos + neg, key=len)
    batches = [make_batch([seqs[i] for i in c], pad_id_of(model), "right") for c in batched(len(seqs), BATCH)]

    def extract():
        acts = collect_pairs(model, pairs, position="last", batch_size=BATCH, progress=False)
        compute_directions(acts, "mean")

    def bare():
        with torch.no_grad():
            for b in batches:
                model(b.tokens, attention_mask=b.attention_mask)

    t = interleaved({"extract": extract, "bare": bare})
    header(f"direction extraction, {N_PAIRS} pairs ({sum(len(s) for s in seqs)} tokens), all layers", model)
    print(f"bare forward      {t['bare'] * 1000:8.1f} ms")
    print(f"extract + fit     {t['extract'] * 1000:8.1f} ms")
    print(f"ratio extract/bare = {t['extract'] / t['bare']:.3f}x  (target <= 1.10x)")


if __name__ == "__main__":
    main()
