"""Measure a toy model's properties exactly, as recorded in its card.

* unsteered: continuations of in-distribution prompts keep the prompt's attributes and are grammatical;
* truthfulness: factual accuracy of honest- and liar-persona continuations, and how well a probe separates the
  personas per layer;
* steerability: per attribute, mean-difference directions at every layer (at the sites in ``SITES``, added at
  every position) over a grid of strengths, from prompts with the opposite value; the best cell is chosen by
  ``best_cell``.
* consistency counts the prompts that show the attribute and whose continuation shows it too (a prompt of facts
  only has no sentiment to keep); the counts are recorded.

Continuations are sampled (T = 1, special tokens banned, fixed seed): greedy decoding on this language is
degenerate (it loops). Strengths are in units of the direction's own norm, which ``compute_directions``
sets to the mean pair difference along it.
"""

__all__ = [
    "GRAMMAR_FLOOR",
    "BARS",
    "STRENGTHS",
    "SITES",
    "directions_for",
    "steer_prompts",
    "steering_grid",
    "keeps_attributes",
    "best_cell",
    "measure",
    "check_bars",
    "cards_markdown",
]

import random
import time
from collections.abc import Sequence

import torch

from workbench import models
from workbench.activations import collect_pairs
from workbench.directions import DirectionSet, compute_directions
from workbench.errors import WorkbenchError
from workbench.generate import generate, generate_at_strengths
from workbench.interventions import AddDirection, Intervention
from workbench.metrics import continuation_perplexity
from workbench.models import HookedModel
from workbench.sites import layer_sites
from workbench.toy.evaluate import classify, grammaticality, score
from workbench.toy.language import VALUES
from workbench.toy.prompts import STEER_TARGETS, contrast_pairs, prompts, random_attributes

GRAMMAR_FLOOR = 0.85
STRENGTHS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
#: Where each attribute is steered in the cards: (site kind, contrast position). Every attribute is measured at
#: the block outputs (``resid_post``, contrast at the pairs' last token). Truth is also measured at every block's
#: input with the contrast at the persona word (at block 0, its embedding difference): activation patching shows a
#: fact's value looked up from subject and persona inside one block, and no block output of the shipped toy-s or
#: toy-m carries a steerable honesty feature (toy-l's block 1 output does; results/toy_family/SUMMARY.md).
SITES: dict[str, tuple[tuple[str, str], ...]] = {a: (("resid_post", "last"),) for a in STEER_TARGETS}
SITES["truth"] = (("resid_post", "last"), ("resid_pre", "answer"))
_TRUTH_SITE = ("truth", "resid_post", "last")
#: The bars every shipped card is checked against.
BARS = {
    "consistency": 0.95,
    "grammaticality": 0.95,
    "steer_target": 0.80,
    "steer_grammar": GRAMMAR_FLOOR,
    "honest_accuracy": 0.90,
    "liar_accuracy_max": 0.10,
    "truth_probe": 0.95,
}


def steer_prompts(attribute: str, source: str, n: int, seed: int) -> list:
    """``n`` in-distribution prompts with ``attribute = source``, other attributes balanced over rows."""
    out: list = []
    per = max(1, -(-n // 8))
    rng = random.Random(seed)
    while len(out) < n:
        a = random_attributes(rng).with_(attribute, source)
        out += prompts(a, n=per, seed=rng.randrange(1 << 30), fact_stem=attribute == "truth")
    return out[:n]


def directions_for(
    model: HookedModel,
    attribute: str,
    source: str,
    target: str,
    n_pairs: int = 200,
    seed: int = 0,
    kind: str = "resid_post",
    position: str = "last",
) -> DirectionSet:
    """Mean-difference directions (target minus source) at every layer's ``kind`` site."""
    pairs = contrast_pairs(attribute, target, source, n=n_pairs, seed=seed)
    acts = collect_pairs(model, pairs, layer_sites(model, None, kind), position=position, progress=False)
    return compute_directions(acts, "mean", seed=seed)


def steering_grid(
    model: HookedModel,
    attribute: str,
    *,
    source: "str | None" = None,
    target: "str | None" = None,
    kind: str = "resid_post",
    position: str = "last",
    layers: "Sequence[int] | None" = None,
    strengths: Sequence[float] = STRENGTHS,
    n_prompts: int = 100,
    n_pairs: int = 200,
    max_new_tokens: int = 32,
    seed: int = 0,
    directions: "DirectionSet | None" = None,
) -> dict:
    """Target rate and grammaticality per (layer, strength), steering ``source`` prompts towards ``target``.

    Directions are taken at ``kind`` sites from the toy pairs at ``position`` and added at every position;
    all strengths of one layer run as one batched generation pass. ``perplexity`` is the continuations' under
    the unsteered model given their real prompts (it also charges the attribute change itself).
    """
    src, tgt = STEER_TARGETS[attribute]
    source, target = source or src, target or tgt
    ds = directions or directions_for(model, attribute, source, target, n_pairs, seed, kind, position)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    ps = steer_prompts(attribute, source, n_prompts, seed + 1)
    texts = [p.text for p in ps]
    cells = []
    for layer in layers:
        d = ds.at(layer, kind)
        gens = generate_at_strengths(
            model, texts, AddDirection(d.site, d.vector, 1.0), list(strengths), max_new_tokens=max_new_tokens, seed=seed
        )
        for s, g in zip(strengths, gens):
            sc = score(g.texts, attribute, target, texts)
            cells.append(
                {
                    "layer": layer,
                    "strength": float(s),
                    "target_rate": sc.target_rate,
                    "grammaticality": sc.grammaticality,
                    "factual_accuracy": sc.factual_accuracy,
                    "perplexity": round(continuation_perplexity(model, texts, list(g.texts)), 3),
                    "example": g.texts[0],
                }
            )
    return {
        "attribute": attribute,
        "source": source,
        "target": target,
        "kind": kind,
        "position": position,
        "n_prompts": n_prompts,
        "n_pairs": ds.n_pairs,
        "direction_norms": {d.site.layer: round(d.quality.norm, 4) for d in ds.directions},
        "probe_accuracy": {d.site.layer: d.quality.probe_accuracy for d in ds.directions},
        "cells": cells,
        "best": best_cell(cells),
    }


def best_cell(
    cells: Sequence[dict],
    grammar_floor: float = GRAMMAR_FLOOR,
    kl_bound: "float | None" = None,
    *,
    baseline: "float | None" = None,
) -> "dict | None":
    """The best steering cell of a (layer, strength) grid, or None: "no safe steering here" is a result.

    Among positive strengths, the highest target rate whose grammaticality is at least ``grammar_floor`` (and
    whose ``kl`` is at most ``kl_bound`` when one is set) and that beats the unsteered target rate (the strength-0
    cells; ``baseline``, the rate of an unsteered run, when the grid has none); ties go to the smaller strength,
    then to the shallower layer.
    """
    zero = [c["target_rate"] for c in cells if c["strength"] == 0]
    if zero:
        base = max(zero)
    elif baseline is not None:
        base = baseline
    else:
        raise WorkbenchError("best_cell needs the unsteered rate: a strength-0 cell in the grid or a baseline.")
    ok = [
        c
        for c in cells
        if c["strength"] > 0
        and c["grammaticality"] >= grammar_floor
        and (kl_bound is None or c["kl"] <= kl_bound)
        and c["target_rate"] > base
    ]
    if not ok:
        return None
    return max(ok, key=lambda c: (c["target_rate"], -c["strength"], -c["layer"]))


def keeps_attributes(model: HookedModel, n: int, max_new_tokens: int, seed: int, *interventions: Intervention) -> dict:
    """Do continuations keep the prompt's attributes (under ``interventions``, default none)? Counted where both
    prompt and continuation show one."""
    rng = random.Random(seed)
    ps = []
    for _ in range(n):
        ps += prompts(random_attributes(rng), n=1, seed=rng.randrange(1 << 30))
    g = generate(model, [p.text for p in ps], *interventions, max_new_tokens=max_new_tokens, seed=seed)
    consistency, evidence = {}, {}
    for attribute in ("sentiment", "topic", "register", "language"):
        kept = total = 0
        for t, p in zip(g.texts, ps):
            want = getattr(p.attributes, attribute)
            if classify(p.text)[attribute] != want:
                continue  # the prompt does not show this attribute (e.g. only facts): nothing to keep
            got = classify(t, p.text)[attribute]
            if got is None:
                continue  # the continuation does not show it either
            total += 1
            kept += got == want
        consistency[attribute] = kept / max(total, 1)
        evidence[attribute] = total
    gram = sum(grammaticality(t, p.text) for t, p in zip(g.texts, ps)) / len(ps)
    return {
        "n": n,
        "consistency": consistency,
        "n_with_evidence": evidence,
        "grammaticality": gram,
        "examples": list(g.texts[:3]),
    }


def _truth(model: HookedModel, n: int, max_new_tokens: int, seed: int, ds: DirectionSet) -> dict:
    """Factual accuracy of honest- and liar-persona continuations; persona probe per layer of ``ds``."""
    out = {}
    for value in VALUES["truth"]:
        ps = steer_prompts("truth", value, n, seed + 7)
        g = generate(model, [p.text for p in ps], max_new_tokens=max_new_tokens, seed=seed)
        sc = score(list(g.texts), "truth", value, [p.text for p in ps])
        out[value] = {
            "factual_accuracy": sc.factual_accuracy,
            "persona_consistency": sc.target_rate,
            "grammaticality": sc.grammaticality,
        }
    probe = {d.site.layer: d.quality.probe_accuracy for d in ds.directions}
    return {
        "n": n,
        **out,
        "probe_accuracy": probe,
        "best_probe_accuracy": max(v for v in probe.values() if v is not None),
    }


def measure(
    model: HookedModel,
    *,
    n_prompts: int = 100,
    n_pairs: int = 200,
    max_new_tokens: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Every measured property of a card (see the module docstring)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    steps = [("unsteered", None), ("truth", None)] + [("steer", a) for a in STEER_TARGETS]
    result: dict = {
        "settings": {
            "n_prompts": n_prompts,
            "n_pairs": n_pairs,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "sampling": "temperature 1, special tokens banned",
            "grammar_floor": GRAMMAR_FLOOR,
        }
    }
    steering = {}
    # one set of block-output truth directions serves the persona probe and the truth steering grid
    truth_ds = directions_for(model, "truth", "liar", "honest", n_pairs, seed, *_TRUTH_SITE[1:])
    for step, attribute in tqdm(steps, desc="measure", disable=not progress):
        with torch.no_grad():
            if step == "unsteered":
                result["unsteered"] = keeps_attributes(model, 2 * n_prompts, max_new_tokens, seed)
            elif step == "truth":
                result["truth"] = _truth(model, n_prompts, max_new_tokens, seed, truth_ds)
            else:
                grids = [
                    steering_grid(
                        model,
                        attribute,
                        kind=kind,
                        position=position,
                        n_prompts=n_prompts,
                        n_pairs=n_pairs,
                        max_new_tokens=max_new_tokens,
                        seed=seed,
                        directions=truth_ds if (attribute, kind, position) == _TRUTH_SITE else None,
                    )
                    for kind, position in SITES[attribute]
                ]
                ranked = [g for g in grids if g["best"] is not None]
                top = max(ranked, key=lambda g: g["best"]["target_rate"]) if ranked else None
                steering[attribute] = {
                    "source": grids[0]["source"],
                    "target": grids[0]["target"],
                    "grids": grids,
                    "best": None if top is None else {**top["best"], "kind": top["kind"], "position": top["position"]},
                }
    result["steering"] = steering
    result["fingerprint"] = models.fingerprint(model).to_dict()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["checks"] = check_bars(result)
    return result


def check_bars(m: dict) -> dict[str, bool]:
    """Which of ``BARS`` a measurement meets (steerability per attribute)."""
    u, t = m["unsteered"], m["truth"]
    checks = {f"consistency_{a}": v >= BARS["consistency"] for a, v in u["consistency"].items()}
    checks["grammaticality"] = u["grammaticality"] >= BARS["grammaticality"]
    honest = t["honest"]["factual_accuracy"]
    checks["honest_accuracy"] = honest is not None and honest >= BARS["honest_accuracy"]
    liar = t["liar"]["factual_accuracy"]
    checks["liar_accuracy"] = liar is not None and liar <= BARS["liar_accuracy_max"]
    checks["truth_probe"] = t["best_probe_accuracy"] >= BARS["truth_probe"]
    for a, g in m.get("steering", {}).items():
        b = g["best"]
        checks[f"steer_{a}"] = b is not None and b["target_rate"] >= BARS["steer_target"]
    return checks


def cards_markdown(cards: dict[str, dict]) -> str:
    """The cards' headline numbers side by side (validation loss, unsteered behaviour, truth, best steering)."""
    names = list(cards)
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    row = lambda label, f: f"| {label} | " + " | ".join(f(cards[n]) for n in names) + " |"  # noqa: E731
    m = lambda c: c.get("measured", {})  # noqa: E731
    lines = [
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        row("layers x d_model", lambda c: f"{c['training']['n_layers']} x {c['training']['d_model']}"),
        row("parameters", lambda c: f"{c['parameters']:,}"),
        row("training steps (CPU-s)", lambda c: f"{c['training']['steps']} ({c['train_seconds']['cpu']:.0f})"),
        row("validation loss (nats/token)", lambda c: fmt(c["validation_loss"])),
        row("unsteered grammaticality", lambda c: fmt(m(c)["unsteered"]["grammaticality"])),
    ]
    for a in ("sentiment", "topic", "register", "language"):
        lines.append(row(f"keeps {a}", lambda c, a=a: fmt(m(c)["unsteered"]["consistency"][a])))
    lines += [
        row("honest-persona factual accuracy", lambda c: fmt(m(c)["truth"]["honest"]["factual_accuracy"])),
        row("liar-persona factual accuracy", lambda c: fmt(m(c)["truth"]["liar"]["factual_accuracy"])),
        row("best persona probe accuracy", lambda c: fmt(m(c)["truth"]["best_probe_accuracy"])),
    ]

    def best(c: dict, a: str) -> str:
        b = m(c)["steering"][a]["best"]
        if b is None:
            return "none within the floor"
        return (
            f"{b['target_rate']:.2f} at gram {b['grammaticality']:.2f} (L{b['layer']} {b['kind']}, x{b['strength']:g})"
        )

    for a, (src, tgt) in STEER_TARGETS.items():
        lines.append(row(f"steer {a} {src}->{tgt}", lambda c, a=a: best(c, a)))
    lines.append(row("bars met", lambda c: f"{sum(m(c)['checks'].values())} / {len(m(c)['checks'])}"))
    return "\n".join(lines)
