"""Layer and head sensitivity for every toy attribute on every toy size: the runs behind results/sensitivity.

    .venv/bin/python -m analyses.sensitivity_study [--out results/sensitivity] [--models toy-s,toy-m,toy-l]

Writes ``<model>-<attribute>-{layer_sweep,heads}.json`` (each analysis's ``Result``; ``plot`` rebuilds the
figures from them) and ``SUMMARY.md``: best layer (rule of ``analyses.layer_sweep``), best head per method, the
attribution-vs-patching agreement and the sweep's cost relative to one unsteered generation pass.
"""

__all__ = ["run_all", "summary_markdown"]

import argparse
import json
from pathlib import Path

from analyses import heads, layer_sweep
from analyses.common import once
from workbench import models
from workbench.toy.prompts import STEER_TARGETS


def run_all(out: Path, names: "list[str]") -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        model = models.load(name)
        for attribute in STEER_TARGETS:
            once(
                out / f"{name}-{attribute}-layer_sweep.json",  # resumable: finished results are kept
                lambda: layer_sweep.run(model, layer_sweep.Config(attribute), name=name),
            )
            once(out / f"{name}-{attribute}-heads.json", lambda: heads.run(model, heads.Config(attribute), name=name))
    (out / "SUMMARY.md").write_text(summary_markdown(out, names))


def _head(cells: list) -> str:
    return "-" if not cells else f"L{cells[0][0]}H{cells[0][1]} ({cells[0][2]:+.2f})"


def summary_markdown(folder: Path, names: "list[str]") -> str:
    rows = [
        "| model | attribute | best layer (depth), strength (relative) | target rate / gram / KL | probe acc by layer "
        "| direct attribution | patching (gap fraction) | attribution patching | attr. vs patching r | "
        "head steering (log-odds change) | best sampled head steering | sweep cost (x unsteered pass) |",
        "|---" * 12 + "|",
    ]
    for name in names:
        for attribute in STEER_TARGETS:
            s = json.loads((folder / f"{name}-{attribute}-layer_sweep.json").read_text())
            h = json.loads((folder / f"{name}-{attribute}-heads.json").read_text())
            b = s["best"]
            best = (
                "none within the floor"
                if b is None
                else (f"L{b['layer']} ({b['depth']:.2f}), x{b['strength']:g} ({b['relative_strength']:.2f})")
            )
            rate = "-" if b is None else f"{b['target_rate']:.2f} / {b['grammaticality']:.2f} / {b['kl']:.2f}"
            probe = " ".join(f"{x['probe_accuracy']:.2f}" for x in s["reading"])
            hs = h["steering"].get("best")
            sampled = "-" if not hs else f"L{hs['layer']}H{hs['head']} x{hs['strength']:g}: {hs['target_rate']:.2f}"
            rows.append(
                f"| {name} | {attribute} | {best} | {rate} | {probe} | {_head(h['top']['direct'])} | "
                f"{_head(h['top']['patching'])} | {_head(h['top']['attribution'])} | "
                f"{h['agreement']['pearson']:.2f} | {_head(h['top']['steering'])} | {sampled} | "
                f"{s['cost']['ratio_generation_to_unsteered']:.1f} ({s['cost']['cells']} cells; "
                f"{s['cost']['ratio_total_to_unsteered']:.0f} with scoring) |"
            )
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/sensitivity")
    ap.add_argument("--models", default="toy-s,toy-m,toy-l")
    args = ap.parse_args()
    run_all(Path(args.out), args.models.split(","))
    print((Path(args.out) / "SUMMARY.md").read_text())


if __name__ == "__main__":
    main()
