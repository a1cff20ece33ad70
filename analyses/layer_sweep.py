"""Layer sensitivity: where a property can be read and where adding its direction steers, at what fluency cost.

For one toy attribute (steering ``source`` prompts towards ``target``) and a direction per layer (mean difference
of minimal pairs, or any ``DirectionSet``), every (layer, strength) cell gets:

* behaviour: ``target_rate`` / ``source_rate`` (exact classifier on sampled continuations);
* fluency cost: ``grammaticality`` (strict parse), ``perplexity`` of the continuation under the unsteered model,
  ``kl``: mean KL(unsteered || steered) of next-token distributions over prompt + continuation (nats/token);
* comparable units: ``relative_strength`` = strength x |direction| / mean residual norm at that site (prompt
  tokens, BOS excluded), and ``depth`` = (layer + 1) / n_layers, so models of different sizes line up.

All strengths of one layer (both signs) run as **one** batched generation pass (per-row scales). The reading
side is the direction set's held-out quality per layer (probe accuracy, AUROC, effect size).

Best-cell rule (``best_cell``): among positive strengths, the highest target rate whose grammaticality is at
least ``grammar_floor`` (and whose KL is at most ``kl_bound`` when one is set) and that beats the unsteered
target rate (the strength-0 cells); ties go to the smaller strength, then to the shallower layer. No such cell
gives ``None``: "no safe steering here" is a result.
"""

__all__ = ["Config", "Result", "run", "best_cell", "plot", "residual_norms"]

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from analyses.common import ResultDict, require_positive, resolve_steer
from workbench import models
from workbench.directions import DirectionSet
from workbench.errors import WorkbenchError
from workbench.generate import generate, generate_at_strengths
from workbench.hooks import applied
from workbench.interventions import AddDirection
from workbench.metrics import continuation_perplexity, kl_divergence
from workbench.models import HookedModel
from workbench.pairs import join
from workbench.sites import HookSite
from workbench.tokens import make_batch, pad_id_of, tokenize
from workbench.toy.evaluate import score
from workbench.toy.measure import GRAMMAR_FLOOR, directions_for, steer_prompts

STRENGTHS = (-2.0, -1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class Config:
    attribute: str = "sentiment"
    source: "str | None" = None  # default: workbench.toy.prompts.STEER_TARGETS[attribute]
    target: "str | None" = None
    kind: str = "resid_post"
    position: str = "last"
    layers: "tuple[int, ...] | None" = None  # None: every layer
    strengths: tuple = STRENGTHS
    n_prompts: int = 48
    n_pairs: int = 200
    max_new_tokens: int = 24
    grammar_floor: float = GRAMMAR_FLOOR
    kl_bound: "float | None" = None
    temperature: float = 1.0  # 0: greedy (then one batched pass == one run per strength, exactly)
    seed: int = 0

    def __post_init__(self) -> None:
        resolve_steer(self)
        if not self.strengths or not all(isinstance(s, (int, float)) and math.isfinite(s) for s in self.strengths):
            raise WorkbenchError(f"strengths must be a non-empty tuple of finite numbers, got {self.strengths!r}.")
        object.__setattr__(self, "strengths", tuple(float(s) for s in self.strengths))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        require_positive(self, "n_prompts", "n_pairs", "max_new_tokens")
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise WorkbenchError(f"temperature must be >= 0, got {self.temperature!r}.")
        if not 0.0 <= self.grammar_floor <= 1.0:
            raise WorkbenchError(f"grammar_floor must be in [0, 1], got {self.grammar_floor}.")


@dataclass(frozen=True)
class Result(ResultDict):
    config: dict
    model: dict  # name, fingerprint, n_layers, d_model
    cells: list  # one dict per (layer, strength)
    reading: list  # per layer: probe accuracy, AUROC, effect size, direction norm, residual norm, depth
    best: "dict | None"
    cost: dict  # seconds and the ratio to one unsteered generation pass
    examples: dict = field(default_factory=dict)


    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        return cls(**{k: d[k] for k in ("config", "model", "cells", "reading", "best", "cost")},
                   examples=d.get("examples", {}))


def residual_norms(model: HookedModel, texts: "list[str]", sites: "list[HookSite]") -> dict[int, float]:
    """Mean L2 norm of the activation at each site over the real tokens of ``texts`` (BOS excluded)."""
    sums = {s.layer: 0.0 for s in sites}
    count = 0
    seqs = [tokenize(model, t) for t in texts]
    batch = make_batch(seqs, pad_id_of(model), "right")
    mask = batch.attention_mask.bool().clone()
    mask[:, 0] = False  # BOS: its residual norm is an outlier in most models

    class _Norms:  # an intervention-shaped recorder, attached through hooks.applied like everything else
        def to_hooks(self, model: Any, layout: Any = None) -> list:
            def rec(x: torch.Tensor, hook: Any, layer: int = 0) -> torch.Tensor:
                sums[layer] += float(x.float().norm(dim=-1)[mask.to(x.device)].sum())
                return x
            return [(s.check(model), lambda x, hook, layer=s.layer: rec(x, hook, layer)) for s in sites]

    with torch.no_grad(), applied(model, _Norms()):
        model(batch.tokens.to(model.cfg.device), attention_mask=batch.attention_mask.to(model.cfg.device))
    count = int(mask.sum())
    return {layer: v / count for layer, v in sums.items()}


def best_cell(cells: "list[dict]", grammar_floor: float = GRAMMAR_FLOOR, kl_bound: "float | None" = None) -> "dict | None":
    """The module docstring's rule: best positive-strength cell within the fluency bound that beats the unsteered
    rate, or None."""
    base = max((c["target_rate"] for c in cells if c["strength"] == 0), default=0.0)
    ok = [c for c in cells if c["strength"] > 0 and c["grammaticality"] >= grammar_floor
          and (kl_bound is None or c["kl"] <= kl_bound) and c["target_rate"] > base]
    if not ok:
        return None
    return max(ok, key=lambda c: (c["target_rate"], -c["strength"], -c["layer"]))


def run(model: HookedModel, cfg: Config = Config(), *, directions: "DirectionSet | None" = None,
        name: str = "", progress: bool = True) -> Result:
    """Sweep layers x strengths for ``cfg.attribute`` on ``model`` (see the module docstring)."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    n_layers = model.cfg.n_layers
    layers = list(cfg.layers) if cfg.layers is not None else list(range(n_layers))
    ds = directions or directions_for(model, cfg.attribute, cfg.source, cfg.target, cfg.n_pairs, cfg.seed,
                                      cfg.kind, cfg.position)
    texts = [p.text for p in steer_prompts(cfg.attribute, cfg.source, cfg.n_prompts, cfg.seed + 1)]
    t0 = time.perf_counter()
    with torch.no_grad():
        generate(model, texts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)
    t_unsteered = time.perf_counter() - t0
    norms = residual_norms(model, texts, [HookSite(layer, cfg.kind) for layer in layers])
    cells, examples, t_generate = [], {}, 0.0
    for layer in tqdm(layers, desc=f"layer sweep ({cfg.attribute})", disable=not progress):
        d = ds.at(layer, cfg.kind)
        t0 = time.perf_counter()
        with torch.no_grad():
            gens = generate_at_strengths(model, texts, AddDirection(d.site, d.vector, 1.0), list(cfg.strengths),
                                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                         seed=cfg.seed)
        t_generate += time.perf_counter() - t0
        dnorm = float(d.vector.norm())
        for s, g in zip(cfg.strengths, gens):
            sc = score(list(g.texts), cfg.attribute, cfg.target, texts)
            full = [join(p, c) for p, c in zip(texts, g.texts)]
            kl = 0.0 if s == 0 else kl_divergence(model, full, AddDirection(d.site, d.vector, s))
            cells.append({
                "layer": layer, "depth": round((layer + 1) / n_layers, 4), "strength": s,
                "relative_strength": round(s * dnorm / norms[layer], 4),
                "target_rate": sc.target_rate, "source_rate": sc.labels[cfg.attribute].get(cfg.source, 0.0),
                "grammaticality": sc.grammaticality, "kl": round(kl, 5),
                "perplexity": round(continuation_perplexity(model, texts, list(g.texts)), 4),
            })
            examples[f"{layer}:{s}"] = g.texts[0]
    reading = [{"layer": d.site.layer, "depth": round((d.site.layer + 1) / n_layers, 4),
                "probe_accuracy": d.quality.probe_accuracy, "auroc": d.quality.auroc,
                "effect_size": d.quality.effect_size, "direction_norm": round(float(d.vector.norm()), 4),
                "residual_norm": round(norms[d.site.layer], 4) if d.site.layer in norms else None}
               for d in ds.directions if d.site.kind == cfg.kind]
    total = time.perf_counter() - t_start
    cost = {"seconds_total": round(total, 2), "seconds_generation": round(t_generate, 2),
            "seconds_unsteered_pass": round(t_unsteered, 3), "cells": len(cells),
            "ratio_total_to_unsteered": round(total / t_unsteered, 2),
            "ratio_generation_to_unsteered": round(t_generate / t_unsteered, 2),
            "ratio_generation_per_cell": round(t_generate / t_unsteered / len(cells), 3)}
    fp = models.fingerprint(model)
    config = {**asdict(cfg), "layers": layers}
    return Result(config, {"name": name, "n_layers": n_layers, "d_model": model.cfg.d_model, "fingerprint": fp.to_dict()},
                  cells, reading, best_cell(cells, cfg.grammar_floor, cfg.kl_bound), cost, examples)


def plot(result: "Result | dict") -> dict:
    """Figures: layer x strength maps (behaviour, grammaticality, KL), behaviour vs relative strength per depth,
    and the reading side (probe accuracy / AUROC per layer)."""
    from workbench.plotting import heatmap_grid, lines

    r = result.to_dict() if isinstance(result, Result) else result
    c = r["config"]
    layers = sorted({x["layer"] for x in r["cells"]})
    strengths = sorted({x["strength"] for x in r["cells"]})
    at = {(x["layer"], x["strength"]): x for x in r["cells"]}
    grid = lambda key: [[at[(layer, s)][key] for s in strengths] for layer in layers]  # noqa: E731
    who = r["model"].get("name") or r["model"]["fingerprint"]["architecture"]
    maps = heatmap_grid(
        [(f"{c['target']} rate", grid("target_rate"), "Viridis", None),
         ("grammaticality", grid("grammaticality"), "RdYlGn", None),
         ("KL(unsteered || steered)", grid("kl"), "Magma", None)],
        strengths, layers, title=f"{who}: steering {c['attribute']} {c['source']} -> {c['target']} ({c['kind']})",
        x_title="strength (x mean pair difference)", y_title="layer")
    rel = lines({f"depth {at[(layer, strengths[0])]['depth']:.2f} (L{layer})":
                 ([at[(layer, s)]["relative_strength"] for s in strengths],
                  [at[(layer, s)]["target_rate"] for s in strengths]) for layer in layers},
                title=f"{who}: {c['target']} rate vs strength relative to the residual norm",
                x_title="strength x |direction| / mean residual norm", y_title=f"{c['target']} rate")
    reading = lines({k: ([x["layer"] for x in r["reading"]], [x[k] for x in r["reading"]])
                     for k in ("probe_accuracy", "auroc")},
                    title=f"{who}: reading {c['attribute']} per layer (held-out)", x_title="layer", y_title="score")
    return {"layer_sweep_maps": maps, "layer_sweep_relative": rel, "layer_sweep_reading": reading}
