"""Markdown tables of the SEA, DAC and representation-tuning studies, rebuilt from their saved ``result.json``.

    .venv/bin/python -m analyses.study_tables spectral results/spectral/toy-m results/spectral/toy-l
    .venv/bin/python -m analyses.study_tables composition results/composition/toy-m
    .venv/bin/python -m analyses.study_tables tuning results/tuning/toy-m

Prints the tables that open ``results/{spectral,composition,tuning}/SUMMARY.md``; each SUMMARY's "What this shows"
is written by hand below them. Reading only the JSON, so a table never drifts from the numbers it reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workbench.toy.language import ATTRIBUTES

__all__ = ["STUDIES", "markdown", "spectral_markdown", "composition_markdown", "tuning_markdown"]

STUDIES = ("spectral", "composition", "tuning")


def _ci(x: dict) -> str:
    lo, hi = x["accuracy_ci"]
    return f"{x['accuracy']:.2f} [{lo:.4g}, {hi:.4g}]"


def spectral_markdown(results: "list[dict]") -> str:
    """The SEA study's tables, one per model (``analyses.spectral_study.Result`` as saved)."""
    cfg = results[0]["config"]
    lines = [f"# SEA on toy truthfulness (`workbench analyze spectral`, defaults: {cfg['site']} of the last half of "
             f"the blocks, ratio {cfg['ratio']}, {'centred' if cfg['center'] else 'uncentred'} fit, "
             f"{cfg['n_demos']} demonstrations, {cfg['n_eval']} liar-persona and {cfg['n_eval']} honest-persona "
             f"items)"]
    for r in results:
        fit = r["fit"]
        lines += ["", f"## {r['model']['name']} (edited layers {r['config']['layers']}, k (k+, k-) per layer "
                      f"{fit['k_linear']}, Phi-SEA k {fit['k_phi']}; {r['cost']['seconds']} s)", "",
                  "| method | MC accuracy, liar items [95% CI] | liar-answer rate | MC accuracy, honest items [95% CI] "
                  "| open-generation factual accuracy (liar items) | grammaticality | perplexity (corpus) "
                  "| keeps sentiment/topic/register/language |",
                  "|---|---|---|---|---|---|---|---|"]
        for m in r["methods"]:
            keep = m["keeps_attributes"]
            keeps = "-" if keep is None else " / ".join(f"{keep[a]:.2f}" for a in ATTRIBUTES if a in keep)
            lines.append(f"| {m['method']} | {_ci(m['mc_liar'])} | {m['mc_liar']['liar_rate']:.2f} | "
                         f"{_ci(m['mc_honest'])} | {m['open_factual_accuracy']:.2f} | {m['open_grammaticality']:.2f} "
                         f"| {m['perplexity']:.3f} | {keeps} |")
        by = ", ".join(f"{d['n_demos']}: {_ci(d)}" for d in r["by_demos"])
        lines += ["", f"Linear SEA vs number of demonstrations (MC accuracy on liar items): {by}"]
    return "\n".join(lines) + "\n"


def composition_markdown(r: dict) -> str:
    """The DAC study's table and alpha traces (``analyses.composition.Result`` as saved)."""
    cfg = r["config"]
    lines = [f"# DAC on {r['model']['name']} (`workbench analyze composition --model {r['model']['name']}`: "
             f"{cfg['n_icl']} parallel 4-shot ICL prompts per property, {cfg['n_test']} short test prompts with the "
             f"source value, greedy {cfg['steps']} tokens, hook_{cfg['kind']} at every layer, alpha_max "
             f"{cfg['alpha_max']}, top-p {cfg['top_p']}, KL normalisation '{cfg['normalisation']}')", "",
             "`dynamic` is the exact method (two forwards per step); `dynamic-lagged` runs unsteered, probe and "
             "steered rows in one batched forward per step, using the previous step's alpha (alpha_max at step 0).",
             "", "| properties | strategy | alpha | accuracy (target value) | grammaticality | delta ppl vs ICL "
             "reference | mean alpha used |", "|---|---|---|---|---|---|---|"]
    for row in r["single"] + r["composed"]:
        acc = ", ".join(f"{p} {a:.2f}" for p, a in row["accuracy"].items())
        alphas = ", ".join(f"{a:.2f}" for a in row["mean_alpha"])
        lines.append(f"| {'+'.join(row['properties'])} | {row['strategy']} | {row['alpha']:g} | {acc} | "
                     f"{row['grammaticality']:.2f} | {row['delta_ppl']:+.2f} | {alphas} |")
    lines += ["", "Dynamic (exact) alpha per step (mean over prompts):", ""]
    for key, traces in sorted(r["traces"].items()):
        for prop, trace in zip(key.split("+"), traces):
            lines.append(f"- {key} / {prop}: " + " ".join(f"{a:.2f}" for a in trace))
    lines += ["", f"({r['cost']['seconds']} s on 2 CPU cores.)"]
    return "\n".join(lines) + "\n"


def tuning_markdown(r: dict) -> str:
    """The representation-tuning study's table (``analyses.tuning.Result`` as saved)."""
    cfg, name = r["config"], r["model"]["name"]
    cols = [k for k in r["settings"][0] if k.startswith(("honest_", "liar_"))]
    lines = [f"# Representation tuning on {name} (`workbench analyze tuning --model {name}`; layers {cfg['layers']}, "
             f"{cfg['n_train']} training items (fact stems, both personas, labelled with the true value), "
             f"{cfg['n_eval']} items per evaluation set, max {cfg['max_steps']} steps, early stopping)", "",
             "| setting | " + " | ".join(cols) + " | corpus perplexity | grammaticality |",
             "|---|" + "---|" * (len(cols) + 2)]
    for s in r["settings"]:
        cells = " | ".join(f"{s[c]['accuracy']:.2f} [{s[c]['accuracy_ci'][0]:.2f}, {s[c]['accuracy_ci'][1]:.2f}]"
                           for c in cols)
        lines.append(f"| {s['setting']} | {cells} | {s['perplexity']:.3f} | {s['grammaticality']:.2f} |")
    lines += ["", "Columns: truthful multiple-choice accuracy (the true value has the highest log-probability among "
              "the six KB values) with 95% Wilson intervals; liar_* = liar-persona items in the in-distribution (id) "
              "and out-of-distribution prompt families; liar_id_opposed = the same ID items under opposite-sign "
              f"steering at the card's truth cell (x-{cfg['oppose_strength']:g}); honest_id = honest-persona items.",
              ""]
    for label, t in sorted(r["training"].items()):
        first, last = t["trace"][0], t["trace"][-1]
        lines.append(f"- {label}: stopped after {t['steps']} steps; validation cosine to v {first['val_cos']:.3f} -> "
                     f"{last['val_cos']:.3f}, validation token loss {first['val_token']:.3f} -> "
                     f"{last['val_token']:.3f}")
    return "\n".join(lines) + "\n"


def markdown(study: str, results: "list[dict]") -> str:
    """The tables of ``study`` (one of ``STUDIES``): SEA over every model's result, DAC and tuning over one."""
    if study == "spectral":
        return spectral_markdown(results)
    if len(results) != 1:
        raise ValueError(f"{study} takes one result; got {len(results)}.")
    return (composition_markdown if study == "composition" else tuning_markdown)(results[0])


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=STUDIES)
    ap.add_argument("folders", nargs="+", help="study output folders, each holding result.json")
    args = ap.parse_args(argv)
    results = []
    for folder in args.folders:
        path = Path(folder) / "result.json"
        if not path.is_file():
            ap.error(f"{path} does not exist; run `workbench analyze {args.study} --out {folder}` first.")
        results.append(json.loads(path.read_text()))
    if args.study != "spectral" and len(results) != 1:
        ap.error(f"{args.study} takes one folder; got {len(results)}.")
    print(markdown(args.study, results), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
