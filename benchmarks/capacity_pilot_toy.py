"""Can a memorised table separate the toy sizes on a CPU budget? How fast each size stores a seeded fact table.

    .venv/bin/python benchmarks/capacity_pilot_toy.py [--keys 48000] [--steps 1500] [--sizes toy-s,toy-m,toy-l]
        [--lr LR] [--layers N] [--embed-std STD] [--language FRACTION]

Each toy architecture of ``workbench.toy.train.SIZES`` (layers, width, learning rate, warm-up and cosine schedule,
batch of 32 rows x 80 tokens, AdamW, clipping) is trained from scratch on rows of facts ``k1 k2 v ;``: a seeded
table maps each of ``--keys`` two-token keys (over 390 key tokens) to one of 256 value tokens. Every size sees the
same rows in the same order, so tokens and exposures per fact are equal across sizes. After each quarter of the
schedule every table entry is scored once: the mean cross-entropy on its value token (ln 256 = 5.55 nats is
knowing nothing, 0 the whole table) and the table bits the model holds, sum over entries of (8 - cross-entropy in
bits), clipped at 0 per entry.

Why a two-token key: the toy language's collocation table is keyed by five features computed from context, and
every size picks it up by optimisation speed, not storage (results/toy_v5_pilot/SUMMARY.md). A key read off
two tokens isolates storage. With ``--language F`` a fraction F of every batch's rows are the toy corpus's own
training rows (the rest facts), and each quarter also reports the size's validation loss on the corpus: a
language with a storage-bound component, where capacity shows in validation loss.
"""

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from workbench.toy.tokenizer import train_tokenizer  # noqa: E402
from workbench.toy.train import (  # noqa: E402
    INIT_STD,
    SIZES,
    build_model,
    encoder,
    optimiser,
    packed_rows,
    train_step,
    validation_batch,
    validation_loss,
)

KEY_TOKENS = range(10, 400)
VALUE_TOKENS = range(400, 656)
SEP, BOS = 700, 1
FACTS_PER_ROW = 20  # 20 facts x 4 tokens = 80 tokens, the toy sizes' seq_len
VALUE_BITS = math.log2(len(VALUE_TOKENS))
_VALUE_AT = torch.arange(2, 4 * FACTS_PER_ROW, 4)  # input positions (after BOS) whose next token is a value


def table(n_keys: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_keys`` distinct (k1, k2) keys and their values, as token ids: [n_keys, 2] and [n_keys]."""
    g = torch.Generator().manual_seed(seed)
    n_key = len(KEY_TOKENS)
    flat = torch.randperm(n_key * n_key, generator=g)[:n_keys]
    keys = torch.stack([flat // n_key, flat % n_key], 1) + KEY_TOKENS.start
    values = torch.randint(len(VALUE_TOKENS), (n_keys,), generator=g) + VALUE_TOKENS.start
    return keys, values


def rows(keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``BOS`` then facts ``k1 k2 v ;`` for the entries in ``index`` [rows, FACTS_PER_ROW]."""
    facts = torch.cat([keys[index], values[index, None], torch.full_like(values[index, None], SEP)], -1)
    body = facts.flatten(1)
    return torch.cat([torch.full((len(body), 1), BOS), body], 1)


@torch.no_grad()
def score(model, keys: torch.Tensor, values: torch.Tensor, chunk: int = 64) -> tuple[float, float]:
    """Mean value-token cross-entropy (nats) over the whole table, and the table bits held."""
    model.eval()
    index = torch.arange(len(keys)).view(-1, FACTS_PER_ROW)  # every entry once (``--keys`` is a multiple)
    ce = []
    for i in range(0, len(index), chunk):
        x = rows(keys, values, index[i : i + chunk])
        logits = model(x[:, :-1]).logits.float()
        ce.append(
            torch.nn.functional.cross_entropy(
                logits[:, _VALUE_AT].flatten(0, 1), x[:, _VALUE_AT + 1].flatten(), reduction="none"
            )
        )
    ce = torch.cat(ce).double()
    bits = (VALUE_BITS - ce / math.log(2)).clamp(min=0).sum()
    model.train()
    return float(ce.mean()), float(bits)


@torch.no_grad()
def identity_at_init(model, x: torch.Tensor) -> float:
    """Mean cosine between each token's input embedding and the last block's residual: how much of the token's
    identity survives the random blocks of a freshly initialised model."""
    hidden = model.model(x, output_hidden_states=True).hidden_states
    return float(torch.nn.functional.cosine_similarity(hidden[0], hidden[-1], dim=-1).mean())


def run(
    name: str,
    keys: torch.Tensor,
    values: torch.Tensor,
    steps: int,
    lr: "float | None" = None,
    layers: "int | None" = None,
    embed_std: "float | None" = None,
    corpus_rows: int = 0,
    data_seed: int = 0,
) -> dict:
    """Train size ``name`` on the table (``corpus_rows`` of each batch from the toy corpus instead) and score it."""
    base = SIZES[name]
    size = dataclasses.replace(
        base, steps=steps, lr=lr or base.lr, n_layers=layers or base.n_layers, embed_std=embed_std or base.embed_std
    )
    torch.set_num_threads(size.threads)
    model = build_model(size)
    opt, sched = optimiser(model, size)
    g = torch.Generator().manual_seed(data_seed)
    n_facts = size.batch_size - corpus_rows
    if corpus_rows:
        proto = train_tokenizer(size.data_seed)
        corpus = packed_rows(size.data_seed, encoder(proto), size.seq_len, bos=1)
        val = validation_batch(size, proto)
    identity = identity_at_init(model, rows(keys, values, torch.arange(8 * FACTS_PER_ROW).view(8, -1) % len(keys)))
    curve, t0 = [], time.perf_counter()
    model.train()
    for step in range(steps):
        x = rows(keys, values, torch.randint(len(keys), (n_facts, FACTS_PER_ROW), generator=g))
        if corpus_rows:
            x = torch.cat([torch.tensor([next(corpus) for _ in range(corpus_rows)]), x])
        train_step(model, opt, sched, x)
        if (step + 1) % max(1, steps // 4) == 0:
            lang = validation_loss(model, val) if corpus_rows else float("nan")
            curve.append((step + 1, *score(model, keys, values), lang))
    return {
        "name": f"{name} ({size.n_layers} x {size.d_model})",
        "params": sum(p.numel() for p in model.parameters()),
        "lr": size.lr,
        "embed_std": size.embed_std or INIT_STD,
        "curve": curve,
        "seconds": time.perf_counter() - t0,
        "identity": identity,
        "exposures": steps * n_facts * FACTS_PER_ROW / len(keys),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=48_000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--sizes", default="toy-s,toy-m,toy-l")
    ap.add_argument("--lr", type=float, default=None, help="learning rate for every size (default: each size's own)")
    ap.add_argument("--layers", type=int, default=None, help="blocks for every size (default: each size's own)")
    ap.add_argument(
        "--embed-std",
        type=float,
        default=None,
        help="input-embedding init std for every size (default: each size's own)",
    )
    ap.add_argument(
        "--language",
        type=float,
        default=0.0,
        help="fraction of each batch's rows taken from the toy corpus (default 0: facts only)",
    )
    args = ap.parse_args()
    if not FACTS_PER_ROW <= args.keys <= len(KEY_TOKENS) ** 2 or args.keys % FACTS_PER_ROW:
        ap.error(f"--keys must be a multiple of {FACTS_PER_ROW} in [{FACTS_PER_ROW}, {len(KEY_TOKENS) ** 2}]")
    if args.steps < 4 or any(v is not None and v <= 0 for v in (args.lr, args.layers, args.embed_std)):
        ap.error("need --steps >= 4 (one score per quarter), --lr > 0, --layers >= 1 and --embed-std > 0")
    batch = SIZES["toy-s"].batch_size  # every toy size trains on batches of 32 rows
    corpus_rows = round(batch * args.language)
    if not 0 <= args.language <= 1 or (args.language and not 1 <= corpus_rows < batch):
        ap.error(
            f"--language must be 0, or give 1 to {batch - 1} of a batch's {batch} rows "
            f"(a fraction in [{1 / batch / 2:.3f}, {1 - 1 / batch / 2:.3f}))"
        )
    unknown = [n for n in args.sizes.split(",") if n not in SIZES]
    if unknown:
        ap.error(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    keys, values = table(args.keys)
    table_bits = args.keys * VALUE_BITS
    print(
        f"## table of {args.keys} two-token keys x 8-bit values ({table_bits / 1e3:.0f}K bits), "
        f"{args.steps} steps, {corpus_rows} corpus rows of each batch's {batch}\n"
    )
    print(
        "| size | parameters | lr | embedding init std | identity at init | exposures per fact "
        "| value loss by quarter (nats) | bits held by quarter (K) | bits per parameter "
        "| corpus validation loss by quarter | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.sizes.split(","):
        r = run(name, keys, values, args.steps, args.lr, args.layers, args.embed_std, corpus_rows)
        losses = " / ".join(f"{c[1]:.3f}" for c in r["curve"])
        held = " / ".join(f"{c[2] / 1e3:.0f}" for c in r["curve"])
        corpus = " / ".join(f"{c[3]:.4f}" for c in r["curve"]) if corpus_rows else "-"
        print(
            f"| {r['name']} | {r['params']:,} | {r['lr']:g} | {r['embed_std']:g} | {r['identity']:.2f} "
            f"| {r['exposures']:.1f} | {losses} | {held} | {r['curve'][-1][2] / r['params']:.3f} | {corpus} "
            f"| {r['seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
