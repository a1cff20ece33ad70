"""Do the toy sizes differ in capacity? Validation loss per token class, and the paired size gap with a CI.

    .venv/bin/python benchmarks/capacity_toy.py CKPT_DIR [CKPT_DIR ...] [--p-collocation P] [--p-catalogue P]
        [--rows 512]

Each checkpoint is scored on the same validation rows (the toy validation seed, ``--rows`` rows of 80 tokens,
documents of the corpus with ``--p-collocation`` and ``--p-catalogue``; defaults: the shipped corpus). Printed per
model: mean loss over all tokens, over prose verb tokens (where the collocation table acts), over every other
prose token, over catalogue values (where only storage helps) and over the rest of the catalogue
(opener, keys, periods: the same for every model that knows the format). Then, for
each pair of models, the mean per-row loss difference with a 95% bootstrap interval over rows: a gap whose
interval excludes zero is a measured capacity difference; one that straddles it is not.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import transformers  # noqa: E402

from workbench.metrics import bootstrap_ci  # noqa: E402
from workbench.toy.language import CATALOGUE_OPENER, LEXICON, CorpusConfig  # noqa: E402
from workbench.toy.train import SIZES, token_losses, validation_batch  # noqa: E402


def model_losses(folder: Path, batch: torch.Tensor) -> torch.Tensor:
    """[rows, seq] next-token cross-entropy of the checkpoint at ``folder`` (float32)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return token_losses(model, batch)


def piece_ids(folder: Path) -> dict[str, int]:
    """Token id of every toy word under the checkpoint's tokenizer (each word is one piece)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    return {w: sp.piece_to_id("\u2581" + w) for w in LEXICON.words}


def verb_mask(ids: dict[str, int], batch: torch.Tensor) -> torch.Tensor:
    """[rows, seq] True where the predicted token is a verb (VT or VI, either language)."""
    verbs = {ids[w] for w, i in LEXICON.info.items() if i[1] in ("VT", "VI")}
    return torch.tensor([[int(t) in verbs for t in row[1:]] for row in batch.tolist()])


def catalogue_masks(ids: dict[str, int], batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, seq] masks of predicted tokens inside catalogue documents (rows start at a document's ``<s>``), and
    of those that are values: the third token of each ``k1 k2 v .`` entry after the catalogue opener."""
    opener = [ids[w] for w in CATALOGUE_OPENER]
    inside = torch.zeros(batch.shape[0], batch.shape[1] - 1, dtype=torch.bool)
    values = inside.clone()
    for r, row in enumerate(batch.tolist()):
        for start in (i for i, t in enumerate(row) if t == 1 and row[i + 1 : i + 3] == opener):
            end = next((i for i in range(start + 1, len(row)) if row[i] == 1), len(row))
            inside[r, start : end - 1] = True  # the loss at input position t predicts token t + 1
            for value in range(start + 5, end, 4):  # <s> ? . k1 k2 v . k1 k2 v . ...
                values[r, value - 1] = True
    return inside, values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--p-collocation", type=float, default=CorpusConfig().p_collocation)
    ap.add_argument("--p-catalogue", type=float, default=CorpusConfig().p_catalogue)
    ap.add_argument("--rows", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    size = dataclasses.replace(SIZES["toy-m"], val_rows=args.rows)
    proto = (args.folders[0] / "tokenizer.model").read_bytes()
    batch = validation_batch(size, proto, CorpusConfig(p_collocation=args.p_collocation, p_catalogue=args.p_catalogue))
    ids = piece_ids(args.folders[0])
    inside, values = catalogue_masks(ids, batch)
    verbs = verb_mask(ids, batch) & ~inside  # prose verbs, where the collocation table acts
    classes = {
        "verb tokens": verbs,
        "other prose tokens": ~(verbs | inside),
        "catalogue values": values,
        "other catalogue tokens": inside & ~values,
    }
    share = ", ".join(f"{k} {float(m.float().mean()):.1%}" for k, m in classes.items())
    print(
        f"## validation loss by token class ({args.rows} rows x {batch.shape[1] - 1} tokens, "
        f"p_collocation {args.p_collocation}, p_catalogue {args.p_catalogue}; {share})\n"
    )
    print("| model | all tokens | " + " | ".join(classes) + " |\n|---|---|" + "---|" * len(classes))
    per_row = {}
    mean = lambda loss, mask: f"{float(loss[mask].mean()):.4f}" if mask.any() else "-"  # noqa: E731
    for f in args.folders:
        loss = model_losses(f, batch)
        per_row[str(f)] = loss.mean(1)
        print(f"| {f} | {float(loss.mean()):.4f} | " + " | ".join(mean(loss, m) for m in classes.values()) + " |")
    print("\n| pair | mean loss gap (nats/token) | 95% bootstrap CI over rows |\n|---|---|---|")
    names = list(per_row)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = per_row[a] - per_row[b]
            lo, hi = bootstrap_ci(d)
            print(f"| {a} - {b} | {float(d.mean()):+.4f} | [{lo:+.4f}, {hi:+.4f}] |")


if __name__ == "__main__":
    main()
