"""The architecture support matrix: every family of ``workbench.tiny.FAMILIES`` (3 blocks, width 32, random
weights, each family's own BOS convention) measured through every workbench path on each backend installed
(``analyses.architectures.measure``), written as JSON and as the Markdown table the README carries.

    .venv/bin/python benchmarks/architectures.py [--families llama,gpt2] [--out results/architectures]
    PYTHONPATH=.venv/tl3 .venv/bin/python benchmarks/architectures.py --backends hooked   # TransformerLens 3.9
"""

import argparse
import json
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.architectures import measure  # noqa: E402
from workbench import models  # noqa: E402
from workbench.tiny import FAMILIES, write_tiny_checkpoint  # noqa: E402

TOY_TOKENIZER = Path(__file__).resolve().parents[1] / "workbench" / "toy" / "checkpoints" / "toy-s"
COLUMNS = ("load", "activations", "directions", "steer", "apply_hf", "llama.cpp", "baked")


def cell(name: str, r: "dict | None") -> str:
    if r is None:
        return "-"
    if "refused" in r:  # the reason's first clause, without temp paths
        why = re.sub(r"'?/tmp/[^' ]*'?", "the checkpoint", r["refused"]).split(". ")[0].split("; ")[0]
        return "refused: " + why.split(": ", 1)[-1].replace("|", "/")
    if "skipped" in r:
        return "skipped"
    if name == "load":
        return f"self-check {r['self_check']:.1e}"
    if name == "activations":
        return f"{r['blocks']:.1e} (last {r['last_after_final_norm']:.1e})"
    if name == "directions":
        return f"cos {r['min_cosine']:.7f}" + ("" if r["first_token_is_bos"] else " (no BOS)")
    if name == "steer":
        return f"{'equal' if r['tokens_equal'] else 'DIFFERENT'} ({r['max_logit_diff']:.1e})"
    return f"{r['max_abs_diff']:.1e} (effect {r['effect']:.1f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--backends", default=",".join(models.available_backends()))
    ap.add_argument("--out", default="results/architectures")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md tables from the saved .json")
    args = ap.parse_args()
    if args.render:
        for f in sorted(Path(args.out).glob("matrix-*.json")):
            f.with_suffix(".md").write_text(render(json.loads(f.read_text())))
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("WORKBENCH_LLAMA_PRE_TOKENIZER", "gpt-2")  # the tiny BPE tokenizers are not published ones
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families.split(","):
            kw = dict(n_layers=3, d_model=32, n_heads=4, n_kv_heads=2)
            folder = write_tiny_checkpoint(Path(tmp) / name, name, **kw)
            # (named apart: llama.cpp reads the folder name as the model's, and a "phi3" name makes it look up
            # Phi-3's own <|end|> token, which the toy vocabulary lacks)
            gguf = (
                folder
                if FAMILIES[name].tokenizer == "bpe"
                else write_tiny_checkpoint(Path(tmp) / f"spm-{len(table)}", name, tokenizer_from=TOY_TOKENIZER, **kw)
            )
            for backend in args.backends.split(","):
                table[f"{name}/{backend}"] = r = measure(folder, backend, gguf_folder=gguf, workdir=tmp)
                print(f"{name:<10} {backend:<7} " + " | ".join(cell(c, r.get(c)) for c in COLUMNS), flush=True)
    suffix = "-" + args.backends.replace(",", "-")
    (out / f"matrix{suffix}.json").write_text(json.dumps(table, indent=1) + "\n")
    (out / f"matrix{suffix}.md").write_text(render(table))


def render(table: dict) -> str:
    lines = ["| family | backend | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    lines += [
        f"| {k.split('/')[0]} | {k.split('/')[1]} | " + " | ".join(cell(c, r.get(c)) for c in COLUMNS) + " |"
        for k, r in table.items()
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
