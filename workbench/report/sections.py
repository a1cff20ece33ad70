"""Report sections: recognise a result file by its shape and write its text from its numbers, with its figures.

Every section's prose is generated from the result (best layer and strength with intervals, saturation point,
reversal rate, ...); nothing is canned. Figures come from each analysis's own ``plot``.
"""

__all__ = ["Section", "section_for", "KINDS"]

from dataclasses import dataclass, field

from workbench.metrics import wilson


@dataclass
class Section:
    kind: str
    title: str
    markdown: str
    figures: dict = field(default_factory=dict)
    order: int = 50
    source: str = ""  # the result file, relative to the results folder (set by collect_sections)


def _who(r: dict) -> str:
    m = r.get("model") or {}
    return (m.get("name") if isinstance(m, dict) else m) or "the model"


def _rate_ci(rate: float, n: int) -> str:
    lo, hi = wilson(rate * n, n)
    return f"{rate:.2f} [{lo:.2f}, {hi:.2f}]"


def _demo(r: dict) -> Section:
    fp = r["fingerprint"]
    lines = [f"Model **{r['model']}** ({fp['architecture']}, {fp['n_layers']} layers x d_model {fp['d_model']}, "
             f"vocabulary {fp['d_vocab']}; weights sha256 `{fp['weights_sha256'][:16]}...`), {r['backend']} backend. "
             f"Per attribute, mean-difference directions from 200 minimal pairs at every layer, and steered sampled "
             f"continuations of prompts with the opposite value (grammar floor {r['grammar_floor']}).", "",
             "| attribute | site | best layer | strength | target rate [95% CI] | grammaticality | best probe accuracy |",
             "|---|---|---|---|---|---|---|"]
    for attribute, grids in r["attributes"].items():
        for g in grids:
            b = g["best"]
            probe = max((v for v in g["probe_accuracy"].values() if v is not None), default=None)
            if b is None:
                lines.append(f"| {attribute} | {g['kind']} | none within the floor | | | | "
                             f"{'n/a' if probe is None else f'{probe:.2f}'} |")
            else:
                lines.append(f"| {attribute} | {g['kind']} | {b['layer']} | x{b['strength']:g} | "
                             f"{_rate_ci(b['target_rate'], g['n_prompts'])} | {b['grammaticality']:.2f} | "
                             f"{'n/a' if probe is None else f'{probe:.2f}'} |")
    from workbench.plotting import heatmap_grid

    panels, layers, strengths = [], None, None
    for attribute, grids in r["attributes"].items():
        g = grids[0]
        strengths = sorted({c["strength"] for c in g["cells"]})
        layers = sorted({c["layer"] for c in g["cells"]})
        at = {(c["layer"], c["strength"]): c["target_rate"] for c in g["cells"]}
        panels.append((f"{attribute}: {g['target']} rate", [[at[(lay, s)] for s in strengths] for lay in layers],
                       "Viridis", None))
    figs = {"demo_grids": heatmap_grid(panels, strengths, layers, title=f"{r['model']}: steering per attribute "
                                       f"(layer x strength)", x_title="strength", y_title="layer")} if panels else {}
    return Section("demo", f"Model and steering overview: {r['model']}", "\n".join(lines), figs, order=0)


def _card(r: dict) -> Section:
    checks = (r.get("measured") or {}).get("checks") or {}
    met = sum(bool(v) for v in checks.values())
    missed = [k for k, v in checks.items() if not v]
    bars = ("properties not measured" if not checks else f"bars met {met} of {len(checks)}"
            + (f" (missed: {', '.join(missed)})" if missed else ""))
    t = r["training"]
    name = r["size"]["name"] if isinstance(r.get("size"), dict) else r.get("name", "")
    lines = [f"Toy checkpoint card: {name} trained {t['steps']} steps at learning rate {t['lr']:g}; validation loss "
             f"{r['validation_loss']:.3f} nats/token; {bars}."]
    return Section("card", "Model card", "\n".join(lines), order=1)


def _layer_sweep(r: dict) -> Section:
    from analyses import layer_sweep

    c, b = r["config"], r["best"]
    n = c["n_prompts"]
    best = ("no cell beats the unsteered rate within the fluency bound" if b is None else
            f"the best cell is layer {b['layer']} (relative depth {b['depth']:.2f}) at strength {b['strength']:g} "
            f"({b['relative_strength']:.2f} of the residual norm): {c['target']} rate {_rate_ci(b['target_rate'], n)} "
            f"at grammaticality {b['grammaticality']:.2f} and KL {b['kl']:.3f} nats/token")
    reading = max(r["reading"], key=lambda x: x["probe_accuracy"] or 0)
    cost = r["cost"]
    text = (f"Steering {c['attribute']} from {c['source']} to {c['target']} on {_who(r)} over {len(set(x['layer'] for x in r['cells']))} "
            f"layers x {len(c['strengths'])} strengths ({n} prompts per cell): {best}. The property reads best at layer "
            f"{reading['layer']} (held-out probe accuracy {reading['probe_accuracy']:.2f}). All generations of the "
            f"sweep cost {cost['ratio_generation_to_unsteered']}x one unsteered generation pass.")
    return Section("layer_sweep", f"Layer sensitivity: {c['attribute']} ({_who(r)})", text, layer_sweep.plot(r), 10)


def _heads(r: dict) -> Section:
    from analyses import heads

    c, t, a = r["config"], r["top"], r["agreement"]
    fmt = lambda cells: ", ".join(f"L{x[0]}H{x[1]} ({x[2]:+.2f})" for x in cells[:3])  # noqa: E731
    text = (f"Heads carrying {c['attribute']} on {_who(r)} ({r['clean']['n_pairs']} minimal pairs; clean log-odds "
            f"gap {r['clean']['m_pos'] - r['clean']['m_neg']:.2f}). Direct attribution: {fmt(t['direct'])}. "
            f"Activation patching (fraction of the gap): {fmt(t['patching'])}. Attribution patching: "
            f"{fmt(t['attribution'])} (Pearson r with real patching {a['pearson']:.2f}, top-{c['top_k']} overlap "
            f"{a['top_k_overlap']}). Steering through one head: {fmt(t.get('steering', []))}.")
    return Section("heads", f"Head sensitivity: {c['attribute']} ({_who(r)})", text, heads.plot(r), 20)


def _spectral(r: dict) -> Section:
    from analyses import spectral_study

    rows = ["| method | MC accuracy, liar items [95% CI] | honest items | perplexity |", "|---|---|---|---|"]
    for m in r["methods"]:
        a = m["mc_liar"]
        rows.append(f"| {m['method']} | {a['accuracy']:.2f} [{a['accuracy_ci'][0]:.2f}, {a['accuracy_ci'][1]:.2f}] | "
                    f"{m['mc_honest']['accuracy']:.2f} | {m['perplexity']:.3f} |")
    base = r["methods"][0]["mc_liar"]["accuracy"]
    best = max(r["methods"], key=lambda m: m["mc_liar"]["accuracy"])
    verdict = (f"no method lifts truthful multiple-choice accuracy on liar-persona items above the unsteered {base:.2f}"
               if best["mc_liar"]["accuracy"] <= base else
               f"the highest truthful multiple-choice accuracy on liar-persona items is {best['method']}'s "
               f"{best['mc_liar']['accuracy']:.2f} (unsteered {base:.2f})")
    text = (f"SEA on toy truthfulness, {_who(r)}, edited layers {r['config']['layers']} ({r['config']['site']}): "
            f"{verdict}.\n\n" + "\n".join(rows))
    return Section("spectral", f"Spectral editing (SEA): {_who(r)}", text, spectral_study.plot(r), 30)


def _sample_size(r: dict) -> Section:
    from analyses import sample_size

    sat = r["saturation_n"]
    text = (f"{r['config']['attribute']} on {_who(r)} at layer {r['site']['layer']} x{r['site']['strength']:g}: the "
            f"full {r['full']['n']}-pair direction moves the target rate by {r['full']['effect']:+.2f}; "
            + ("no N reached 90% of it with cosine >= 0.9." if sat is None else
               f"returns diminish at N = {sat} pairs (mean effect >= 90% of the full effect, cosine >= 0.9; "
               f"{r['config']['resamples']} draws per N)."))
    return Section("sample_size", f"Sample size: {r['config']['attribute']} ({_who(r)})", text, sample_size.plot(r), 40)


def _distribution_shift(r: dict) -> Section:
    from analyses import distribution_shift

    ood = [x for x in r["families"] if x["family"] != "id" and x["ratio_to_id"] is not None]
    worst = min(ood, key=lambda x: x["ratio_to_id"], default=None)
    mean = sum(x["ratio_to_id"] for x in ood) / len(ood) if ood else float("nan")
    text = (f"{r['config']['attribute']} on {_who(r)}: the in-distribution effect carries to the other prompt families "
            f"at a mean OOD/ID ratio of {mean:.2f}" + ("" if worst is None else
                                                        f"; the weakest is {worst['family']} ({worst['ratio_to_id']:.2f})") + ".")
    return Section("distribution_shift", f"In- vs out-of-distribution: {r['config']['attribute']} ({_who(r)})", text,
                   distribution_shift.plot(r), 41)


def _model_size(r: dict) -> Section:
    from analyses import model_size

    parts = [f"{m['name']} KL slope {m['slopes']['kl']:.3f}, grammaticality-drop slope "
             f"{m['slopes']['grammaticality_drop']:.3f}" for m in r["models"]]
    text = f"{r['config']['attribute']}: harm per unit of strength relative to the residual norm: " + "; ".join(parts) + "."
    return Section("model_size", f"Fluency harm across sizes: {r['config']['attribute']}", text, model_size.plot(r), 42)


def _adversarial(r: dict) -> Section:
    from analyses import adversarial

    h = r["heldout"]
    n_pos = h["steered_logodds_positive"]
    text = (f"{r['config']['method'].upper()} search on {_who(r)} ({r['config']['attribute']}): suffix "
            f"`{r['suffix']['text']}` ({r['suffix']['length']} tokens, cross-entropy {r['suffix']['ce']:.2f} nats/token). "
            f"Held-out reversal rate {_rate_ci(h['reversal_rate'], max(n_pos, 1))} of {n_pos} prompts; sampled target "
            f"rate {h['target_rate']['steered']:.2f} steered, {h['target_rate']['steered_with_suffix']:.2f} with the "
            f"suffix. Negated-vector symmetry: log-odds shift {r['symmetry']['logodds_shift_plus']:+.2f} at +s vs "
            f"{r['symmetry']['logodds_shift_minus']:+.2f} at -s.")
    return Section("adversarial", f"Adversarial reversal: {r['config']['attribute']} ({_who(r)}, "
                   f"{r['config']['method']})", text, adversarial.plot(r), 43)


def _composition(r: dict) -> Section:
    from analyses import composition

    rows = ["| properties | strategy | alpha | accuracy | grammaticality | delta ppl |", "|---|---|---|---|---|---|"]
    for x in r["single"] + r["composed"]:
        acc = ", ".join(f"{k} {v:.2f}" for k, v in x["accuracy"].items())
        rows.append(f"| {'+'.join(x['properties'])} | {x['strategy']} | {x['alpha']:g} | {acc} | "
                    f"{x['grammaticality']:.2f} | {x['delta_ppl']:+.2f} |")
    text = f"Dynamic Activation Composition on {_who(r)} (greedy, {r['config']['steps']} tokens).\n\n" + "\n".join(rows)
    return Section("composition", f"DAC: composing properties ({_who(r)})", text, composition.plot(r), 50)


def _tuning(r: dict) -> Section:
    from analyses import tuning

    keys = [k for k in r["settings"][0] if isinstance(r["settings"][0][k], dict)]
    rows = ["| setting | " + " | ".join(keys) + " | perplexity | grammaticality |", "|---" * (len(keys) + 3) + "|"]
    for x in r["settings"]:
        rows.append(f"| {x['setting']} | " + " | ".join(
            f"{x[k]['accuracy']:.2f} [{x[k]['accuracy_ci'][0]:.2f}, {x[k]['accuracy_ci'][1]:.2f}]" for k in keys)
            + f" | {x['perplexity']:.3f} | {x['grammaticality']:.2f} |")
    best = max(r["settings"], key=lambda x: x["liar_id"]["accuracy"])
    text = (f"Representation tuning on {_who(r)} (layers {r['config']['layers']}): truthful multiple-choice accuracy "
            f"on liar-persona items is highest for {best['setting']} ({best['liar_id']['accuracy']:.2f}); columns are "
            f"item sets (liar_* under the liar persona in each prompt family, *_opposed under opposite-sign "
            f"steering).\n\n" + "\n".join(rows))
    return Section("tuning", f"Representation tuning: {_who(r)}", text, tuning.plot(r), 55)


def _parity(r: dict) -> Section:
    rows = ["| path | max abs logit diff | edit effect | one block off |", "|---|---|---|---|"]
    for x in r["rows"]:
        obo = "n/a" if x["off_by_one"] is None else f"{x['off_by_one']:.2f}"
        rows.append(f"| {x['path']} | {x['max_abs_diff']:.1e} | {x['effect']:.2f} | {obo} |")
    worst = max(r["rows"], key=lambda x: x["max_abs_diff"])
    text = (f"Export of `{r.get('spec', 'the edit')}` checked where it deploys: every path reproduces the "
            f"TransformerLens-steered logits to {worst['max_abs_diff']:.1e} or better"
            + ("; not run: " + "; ".join(r["refused"]) if r.get("refused") else "") + ".\n\n" + "\n".join(rows))
    return Section("parity", f"Export and deployment parity: {r.get('spec', '')}", text, {}, 60)


#: (kind, keys that identify it, writer)
KINDS = [
    ("demo", {"attributes", "grammar_floor", "fingerprint"}, _demo),
    ("card", {"training", "validation_loss"}, _card),
    ("layer_sweep", {"cells", "reading", "best", "cost"}, _layer_sweep),
    ("heads", {"direct", "patching", "attribution"}, _heads),
    ("spectral", {"methods", "by_demos", "fit"}, _spectral),
    ("sample_size", {"rows", "saturation_n", "full"}, _sample_size),
    ("distribution_shift", {"families", "site"}, _distribution_shift),
    ("model_size", {"models", "config"}, _model_size),
    ("adversarial", {"suffix", "heldout", "symmetry"}, _adversarial),
    ("composition", {"single", "composed", "traces"}, _composition),
    ("tuning", {"settings", "training"}, _tuning),
    ("parity", {"rows", "format"}, _parity),
]


def section_for(result: dict) -> "Section | None":
    """The section of a result dict, or None when it is not a workbench result."""
    if not isinstance(result, dict):
        return None
    for kind, keys, writer in KINDS:
        if keys <= set(result):
            return writer(result)
    return None

