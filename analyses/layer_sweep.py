"""Layer sensitivity: where a property can be read and where adding its direction steers, at what fluency cost.

For one toy attribute (steering ``source`` prompts towards ``target``) and a direction per layer (mean difference
of minimal pairs, or any ``DirectionSet``), every (layer, strength) cell gets:

* behaviour: ``target_rate`` / ``source_rate`` (exact classifier on sampled continuations);
* fluency cost: ``grammaticality`` (strict parse), ``perplexity`` of the continuation under the unsteered model,
  ``kl``: mean KL(unsteered || steered) of next-token distributions over prompt + continuation (nats/token); the
  last two need two more forwards over every generated row (``metrics.fluency_at_strengths``), so the sweep costs
  2-3x its generations with them and about its generations without (``fluency=False``: both are None);
* comparable units: ``relative_strength`` = strength x |direction| / mean residual norm at that site (prompt
  tokens, BOS excluded), and ``depth`` = (layer + 1) / n_layers, so models of different sizes line up.

All strengths of one layer (both signs) run as **one** batched generation pass (per-row scales). The reading
side is the direction set's held-out quality per layer (probe accuracy, AUROC, effect size).

The best cell is the toy cards' rule, ``workbench.toy.measure.best_cell``, with the config's ``grammar_floor``
and ``kl_bound``: among positive strengths, the highest target rate within the fluency bounds that beats the
unsteered rate, else ``None``.
"""

__all__ = ["Config", "Result", "run", "plot", "section", "summary", "residual_norms", "STUDY"]

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from analyses.common import Attribute, require_positive, resolve_steer
from workbench import models
from workbench.directions import DirectionSet
from workbench.errors import WorkbenchError
from workbench.forward import batch_logits
from workbench.generate import generate, generate_at_strengths
from workbench.hooks import Capture
from workbench.interventions import AddDirection
from workbench.metrics import fluency_at_strengths
from workbench.models import HookedModel
from workbench.report.sections import Section, rate_ci, who
from workbench.schema import MAX_SCALE
from workbench.sites import SITE_KINDS, HookSite
from workbench.studies import Study, StudyResult, on_model, register
from workbench.tokens import make_batch, pad_id_of, tokenize
from workbench.toy.evaluate import score
from workbench.toy.measure import GRAMMAR_FLOOR, best_cell, directions_for, steer_prompts

STRENGTHS = (-2.0, -1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class Config:
    attribute: Attribute = "sentiment"
    """Toy attribute to steer."""
    source: "str | None" = None
    """Value the prompts carry (default: the attribute's usual source, e.g. neg for sentiment)."""
    target: "str | None" = None
    """Value to steer towards (default: the attribute's usual target, e.g. pos)."""
    kind: str = "resid_post"
    """Site kind of the directions and the edit (resid_post = output of the block)."""
    position: Literal["last", "answer", "mean"] = "last"
    """Token position the directions are read at."""
    layers: "tuple[int, ...] | None" = field(default=None, metadata={"none": "all"})
    """0-based blocks to sweep: '2,4', '1-3' or 'all'."""
    strengths: "tuple[float, ...]" = STRENGTHS
    """Strengths in units of the mean pair difference, both signs; write negative lists as --strengths=-1,0.5,2."""
    n_prompts: int = 48
    """Steered prompts per cell."""
    n_pairs: int = 200
    """Minimal pairs the directions are computed from."""
    max_new_tokens: int = 24
    """Tokens generated per prompt."""
    grammar_floor: float = GRAMMAR_FLOOR
    """Best-cell rule: the least grammaticality a cell may have."""
    kl_bound: "float | None" = None
    """Best-cell rule: the most KL(unsteered || steered) a cell may have, nats/token (default: no bound)."""
    fluency: bool = True
    """Per cell, the perplexity under the unsteered model and the KL (two more forwards over every generated row, as
    much as the generations cost again or more); off, cells carry neither and the sweep costs its generations."""
    temperature: float = 1.0
    """Sampling temperature; 0 is greedy (then one batched pass equals one run per strength exactly)."""
    seed: int = 0
    """Seed of pairs, prompts and sampling."""

    def __post_init__(self) -> None:
        resolve_steer(self)
        if not self.strengths or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and abs(s) <= MAX_SCALE
            for s in self.strengths
        ):
            raise WorkbenchError(
                f"strengths must be a non-empty tuple of finite numbers with |s| <= {MAX_SCALE:g}, got "
                f"{self.strengths!r}."
            )
        if self.kind not in SITE_KINDS:
            raise WorkbenchError(f"kind must be one of {', '.join(SITE_KINDS)}, got {self.kind!r}.")
        object.__setattr__(self, "strengths", tuple(float(s) for s in self.strengths))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
            if not self.layers or min(self.layers) < 0:
                raise WorkbenchError(f"layers must name blocks >= 0 (or be None: every block), got {self.layers!r}.")
        require_positive(self, "n_prompts", "n_pairs", "max_new_tokens")
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 100):
            raise WorkbenchError(f"temperature must be in [0, 100] (0: greedy), got {self.temperature!r}.")
        if self.kl_bound is not None and not self.kl_bound >= 0:
            raise WorkbenchError(f"kl_bound must be >= 0 nats/token, got {self.kl_bound!r}.")
        if not isinstance(self.fluency, bool):
            raise WorkbenchError(f"fluency must be True or False, got {self.fluency!r}.")
        if self.kl_bound is not None and not self.fluency:
            raise WorkbenchError(
                "kl_bound bounds the KL, which is not computed with fluency off (fluency=False, --no-fluency); "
                "drop one of them."
            )
        if not 0.0 <= self.grammar_floor <= 1.0:
            raise WorkbenchError(f"grammar_floor must be in [0, 1], got {self.grammar_floor}.")


@dataclass(frozen=True)
class Result(StudyResult):
    KIND = "layer_sweep"

    config: dict
    model: dict  # name, fingerprint, n_layers, d_model
    cells: list  # one dict per (layer, strength)
    reading: list  # per layer: probe accuracy, AUROC, effect size, direction norm, residual norm, depth
    best: "dict | None"
    cost: dict  # seconds and the ratio to one unsteered generation pass
    examples: dict = field(default_factory=dict)


def residual_norms(model: HookedModel, texts: "list[str]", sites: "list[HookSite]") -> dict[int, float]:
    """Mean L2 norm of the activation at each site over the real tokens of ``texts`` (BOS excluded)."""
    seqs = [tokenize(model, t) for t in texts]
    batch = make_batch(seqs, pad_id_of(model), "right")
    mask = batch.attention_mask.bool().clone()
    mask[:, 0] = False  # BOS: its residual norm is an outlier in most models

    def norm_sum(x: torch.Tensor, site: HookSite) -> float:
        return float(x.float().norm(dim=-1)[mask.to(x.device)].sum())

    sums = Capture(sites, norm_sum)
    with torch.no_grad():
        batch_logits(model, batch, sums)
    count = int(mask.sum())
    return {s.layer: sums.out[s] / count for s in sites}


def run(
    model: HookedModel,
    cfg: Config = Config(),
    *,
    directions: "DirectionSet | None" = None,
    name: str = "",
    progress: bool = True,
) -> Result:
    """Sweep layers x strengths for ``cfg.attribute`` on ``model`` (see the module docstring)."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    n_layers = model.cfg.n_layers
    layers = list(cfg.layers) if cfg.layers is not None else list(range(n_layers))
    ds = directions or directions_for(
        model, cfg.attribute, cfg.source, cfg.target, cfg.n_pairs, cfg.seed, cfg.kind, cfg.position
    )
    texts = [p.text for p in steer_prompts(cfg.attribute, cfg.source, cfg.n_prompts, cfg.seed + 1)]
    t0 = time.perf_counter()
    with torch.no_grad():
        plain = generate(model, texts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)
    t_unsteered = time.perf_counter() - t0
    unsteered_rate = score(list(plain.texts), cfg.attribute, cfg.target, texts).target_rate
    norms = residual_norms(model, texts, [HookSite(layer, cfg.kind) for layer in layers])
    cells, examples, t_generate = [], {}, 0.0
    for layer in tqdm(layers, desc=f"layer sweep ({cfg.attribute})", disable=not progress):
        d = ds.at(layer, cfg.kind)
        t0 = time.perf_counter()
        with torch.no_grad():
            gens = generate_at_strengths(
                model,
                texts,
                AddDirection(d.site, d.vector, 1.0),
                list(cfg.strengths),
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                seed=cfg.seed,
            )
        t_generate += time.perf_counter() - t0
        dnorm = float(d.vector.norm())
        costs: list[tuple[float | None, float | None]] = (
            fluency_at_strengths(
                model, texts, [list(g.texts) for g in gens], AddDirection(d.site, d.vector, 1.0), list(cfg.strengths)
            )
            if cfg.fluency
            else [(None, None)] * len(gens)
        )
        for s, g, (ppl, kl) in zip(cfg.strengths, gens, costs):
            sc = score(list(g.texts), cfg.attribute, cfg.target, texts)
            cells.append(
                {
                    "layer": layer,
                    "depth": round((layer + 1) / n_layers, 4),
                    "strength": s,
                    "relative_strength": round(s * dnorm / norms[layer], 4),
                    "target_rate": sc.target_rate,
                    "source_rate": sc.labels[cfg.attribute].get(cfg.source, 0.0),
                    "grammaticality": sc.grammaticality,
                    "kl": None if kl is None else round(kl, 5),
                    "perplexity": None if ppl is None else round(ppl, 4),
                }
            )
            examples[f"{layer}:{s}"] = g.texts[0]
    reading = [
        {
            "layer": d.site.layer,
            "depth": round((d.site.layer + 1) / n_layers, 4),
            "probe_accuracy": d.quality.probe_accuracy,
            "auroc": d.quality.auroc,
            "effect_size": d.quality.effect_size,
            "direction_norm": round(float(d.vector.norm()), 4),
            "residual_norm": round(norms[d.site.layer], 4) if d.site.layer in norms else None,
        }
        for d in ds.directions
        if d.site.kind == cfg.kind
    ]
    total = time.perf_counter() - t_start
    cost = {
        "seconds_total": round(total, 2),
        "seconds_generation": round(t_generate, 2),
        "seconds_unsteered_pass": round(t_unsteered, 3),
        "cells": len(cells),
        "ratio_total_to_unsteered": round(total / t_unsteered, 2),
        "ratio_generation_to_unsteered": round(t_generate / t_unsteered, 2),
        "ratio_generation_per_cell": round(t_generate / t_unsteered / len(cells), 3),
    }
    fp = models.fingerprint(model)
    config = {**asdict(cfg), "layers": layers}
    return Result(
        config,
        {"name": name, "n_layers": n_layers, "d_model": model.cfg.d_model, "fingerprint": fp.to_dict()},
        cells,
        reading,
        best_cell(cells, cfg.grammar_floor, cfg.kl_bound, baseline=unsteered_rate),
        cost,
        examples,
    )


def plot(result: "Result | dict") -> dict:
    """Figures: layer x strength maps (behaviour beside grammaticality on one scale; KL where computed), behaviour
    vs relative strength per depth, and the reading side (probe accuracy / AUROC per layer)."""
    from workbench.plotting import heatmap_grid, lines

    r = result.to_dict() if isinstance(result, Result) else result
    c = r["config"]
    layers = sorted({x["layer"] for x in r["cells"]})
    strengths = sorted({x["strength"] for x in r["cells"]})
    at = {(x["layer"], x["strength"]): x for x in r["cells"]}
    grid = lambda key: [[at[(layer, s)][key] for s in strengths] for layer in layers]  # noqa: E731
    who = r["model"].get("name") or r["model"]["fingerprint"]["architecture"]
    maps = heatmap_grid(
        [(f"{c['target']} rate", grid("target_rate")), ("grammaticality", grid("grammaticality"))],
        strengths,
        layers,
        title=f"{who}: steering {c['attribute']} {c['source']} -> {c['target']} ({c['kind']})",
        x_title="strength (x mean pair difference)",
        y_title="layer",
        scale=("Viridis", 0.0, 1.0),
    )
    kl = None
    if all(x["kl"] is not None for x in r["cells"]):
        kl = heatmap_grid(
            [("KL(unsteered || steered), nats/token", grid("kl"), "Magma", None)],
            strengths,
            layers,
            title=f"{who}: fluency cost of steering {c['attribute']}",
            x_title="strength (x mean pair difference)",
            y_title="layer",
        )
    rel = lines(
        {
            f"depth {at[(layer, strengths[0])]['depth']:.2f} (L{layer})": (
                [at[(layer, s)]["relative_strength"] for s in strengths],
                [at[(layer, s)]["target_rate"] for s in strengths],
            )
            for layer in layers
        },
        title=f"{who}: {c['target']} rate vs strength relative to the residual norm",
        x_title="strength x |direction| / mean residual norm",
        y_title=f"{c['target']} rate",
    )
    reading = lines(
        {k: ([x["layer"] for x in r["reading"]], [x[k] for x in r["reading"]]) for k in ("probe_accuracy", "auroc")},
        title=f"{who}: reading {c['attribute']} per layer (held-out)",
        x_title="layer",
        y_title="score",
    )
    figures = {
        "layer_sweep_maps": maps,
        "layer_sweep_kl": kl,
        "layer_sweep_relative": rel,
        "layer_sweep_reading": reading,
    }
    return {k: v for k, v in figures.items() if v is not None}


def _kl(cell: dict) -> str:
    return "" if cell.get("kl") is None else f" and KL {cell['kl']:.3f} nats/token"


def section(r: dict) -> Section:
    """The report's section: the best cell with its interval, where the property reads best, the sweep's cost."""
    c, b = r["config"], r["best"]
    n = c["n_prompts"]
    best = (
        "no steering cell passes: none beats the unsteered rate within the fluency bound"
        if b is None
        else f"the best cell is layer {b['layer']} (relative depth {b['depth']:.2f}) at strength {b['strength']:g} "
        f"({b['relative_strength']:.2f} of the residual norm): {c['target']} rate {rate_ci(b['target_rate'], n)} "
        f"at grammaticality {b['grammaticality']:.2f}{_kl(b)}"
    )
    reading = max(r["reading"], key=lambda x: x["probe_accuracy"] or 0)
    text = (
        f"Steering {c['attribute']} from {c['source']} to {c['target']} on {who(r)} over "
        f"{len(set(x['layer'] for x in r['cells']))} layers x {len(c['strengths'])} strengths ({n} prompts per "
        f"cell): {best}. The property reads best at layer {reading['layer']} (held-out probe accuracy "
        f"{reading['probe_accuracy']:.2f}). All generations of the sweep cost "
        f"{r['cost']['ratio_generation_to_unsteered']}x one unsteered generation pass."
    )
    return Section(Result.KIND, f"Layer sensitivity: {c['attribute']} ({who(r)})", text, plot(r), 10)


def summary(result: Result) -> str:
    b, c, cfg = result.best, result.cost, result.config
    lines = [
        f"layer sweep of {cfg['attribute']} on {result.model['name']}: {len(result.cells)} cells in "
        f"{c['seconds_total']} s ({c['ratio_generation_to_unsteered']}x one unsteered generation pass for all "
        f"generations)"
    ]
    lines.append(
        "best cell: none within the fluency bound"
        if b is None
        else f"best cell: layer {b['layer']} (depth {b['depth']}), strength {b['strength']} (relative "
        f"{b['relative_strength']}): {cfg['target']} rate {b['target_rate']:.2f}, grammaticality "
        f"{b['grammaticality']:.2f}" + ("" if b.get("kl") is None else f", KL {b['kl']:.3f}")
    )
    return "\n".join(lines)


STUDY = register(
    Study(
        "layer-sweep",
        "behaviour and fluency cost over layers x strengths",
        Config,
        Result,
        on_model(run),
        plot,
        section,
        summary,
    )
)
