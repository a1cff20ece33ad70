"""Deployment parity on the toy family: each attribute's best steering cell (from the model's card), exported and
run in every deployment path, compared with the TransformerLens-steered logits (max |logit difference| over all
positions and the whole vocabulary of 8 prompts).

    .venv/bin/python benchmarks/parity_toy.py [--models toy-s,toy-m,toy-l]

Rows: ``apply_hf`` (standalone applier on transformers), ``baked fp32`` / ``baked fp16`` (the checkpoint with
the vector in the down-projection bias, in float32 and in the toy checkpoints' own float16), ``llama.cpp``
(llama-cpp-python 0.3.36, the checkpoint converted to F32 GGUF + the exported control vector). ``effect`` is
max |steered - unsteered|, ``off by one`` the smallest max difference to the same edit one block earlier or later.
Sites llama.cpp cannot express (block 0's output, block 0's input) are reported as refused.
"""

import argparse
import dataclasses
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench import models  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from workbench.export.bake import bake_hf  # noqa: E402
from workbench.export.parity import check  # noqa: E402
from workbench.export.spec import spec_from_directions  # noqa: E402
from workbench.toy import card  # noqa: E402
from workbench.toy.measure import directions_for  # noqa: E402
from workbench.toy.prompts import STEER_TARGETS, prompts, random_attributes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="toy-s,toy-m,toy-l")
    args = ap.parse_args()
    texts = [p.text for p in prompts(random_attributes(random.Random(0)), 8, seed=3)]
    print("| model | attribute | site | scale | path | max abs diff | effect | off by one |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        m = models.load(name)
        steering = card(name)["measured"]["steering"]
        for attribute, (source, target) in STEER_TARGETS.items():
            best = steering[attribute]["best"]
            if best is None:
                continue
            kind, layer, scale = best["kind"], best["layer"], best["strength"]
            ds = directions_for(m, attribute, source, target, kind=kind, position=best["position"])
            spec = spec_from_directions(ds, layer, scale, kind=kind)
            site = f"{kind} L{layer}"
            with tempfile.TemporaryDirectory() as tmp:
                fp16 = bake_hf(spec, name, Path(tmp) / "fp16")
                rows = check(m, spec, texts, paths=("apply_hf", "baked"))
                rows += [
                    dataclasses.replace(r, path="baked fp16")
                    for r in check(m, spec, texts, paths=("baked",), artifacts={"baked": fp16})
                ]
                try:
                    rows += check(m, spec, texts, paths=("llama.cpp",))
                except WorkbenchError as e:
                    print(
                        f"| {name} | {attribute} | {site} | {scale} | llama.cpp | refused: {str(e).split(':')[0]} | | |"
                    )
            for r in rows:
                label = "baked fp32" if r.path == "baked" else r.path
                print(
                    f"| {name} | {attribute} | {site} | {scale} | {label} | {r.max_abs_diff:.1e} | "
                    f"{r.effect:.2f} | {r.off_by_one:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
