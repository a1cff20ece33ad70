"""How many contrast pairs does a steering vector need? (The CAE study's claim: quality saturates near 80.)

From a pool of minimal pairs, activations are collected once at the studied site; for each N and each of
``resamples`` random draws of N pairs, the mean-difference direction is compared with the full-pool direction
(cosine) and used to steer (same strength, sampled continuations, exact classifier): effect = steered target rate
minus the unsteered rate on the same prompts. Saturation N (documented rule): the smallest N whose mean effect
reaches 90% of the full-pool effect and whose mean cosine is >= 0.9.
"""

__all__ = ["Config", "Result", "run", "plot", "saturation"]

import random
import time
from dataclasses import asdict, dataclass, field

import torch

from analyses.common import ResultDict, mean_ci, require_positive, resolve_steer, steer_cell, target_rate
from workbench import models
from workbench.activations import collect_pairs
from workbench.errors import WorkbenchError
from workbench.models import HookedModel
from workbench.sites import HookSite
from workbench.toy.measure import steer_prompts
from workbench.toy.prompts import contrast_pairs


@dataclass(frozen=True)
class Config:
    attribute: str = "sentiment"
    source: "str | None" = None
    target: "str | None" = None
    ns: tuple = (1, 2, 5, 10, 20, 40, 80, 160, 320)
    resamples: int = 5
    pool: int = 640
    layer: "int | None" = None  # None: the card's best cell
    strength: "float | None" = None
    n_prompts: int = 48
    max_new_tokens: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        resolve_steer(self)
        if not self.ns or min(self.ns) < 1 or max(self.ns) > self.pool:
            raise WorkbenchError(f"ns must be pair counts in 1..pool ({self.pool}), got {self.ns!r}.")
        require_positive(self, "resamples", "n_prompts", "max_new_tokens")


@dataclass(frozen=True)
class Result(ResultDict):
    config: dict
    model: dict
    site: dict
    unsteered_rate: float
    full: dict
    rows: list
    saturation_n: "int | None"
    cost: dict = field(default_factory=dict)



def saturation(rows: "list[dict]", full_effect: float, frac: float = 0.9, min_cosine: float = 0.9) -> "int | None":
    """The module docstring's rule."""
    for r in sorted(rows, key=lambda r: r["n"]):
        if r["effect_mean"] >= frac * full_effect and r["cosine_mean"] >= min_cosine:
            return r["n"]
    return None


def run(model: HookedModel, cfg: Config = Config(), *, name: str = "", progress: bool = True) -> Result:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    cell = steer_cell(model, name, cfg.attribute, cfg.source, cfg.target, layer=cfg.layer, strength=cfg.strength,
                      seed=cfg.seed)
    pool = contrast_pairs(cfg.attribute, cfg.target, cfg.source, n=cfg.pool, seed=cfg.seed + 100)
    site = HookSite(cell.layer, cell.kind)
    acts = collect_pairs(model, pool, [site], position="last", progress=False)
    diffs = (acts.positive[0] - acts.negative[0]).float()  # [pool, d]
    full = diffs.mean(0)
    texts = [p.text for p in steer_prompts(cfg.attribute, cfg.source, cfg.n_prompts, cfg.seed + 1)]
    rate = lambda v: target_rate(model, texts, cfg.attribute, cfg.target, cell.intervention(v),  # noqa: E731
                                 max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    base = target_rate(model, texts, cfg.attribute, cfg.target, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    full_effect = rate(full) - base
    rng = random.Random(cfg.seed)
    rows = []
    for n in tqdm(cfg.ns, desc=f"sample size ({cfg.attribute})", disable=not progress):
        cos, eff = [], []
        for _ in range(cfg.resamples):
            v = diffs[rng.sample(range(cfg.pool), n)].mean(0)
            cos.append(float(torch.nn.functional.cosine_similarity(v, full, dim=0)))
            eff.append(rate(v) - base)
        (cm, cci), (em, eci) = mean_ci(cos), mean_ci(eff)
        rows.append({"n": n, "cosine_mean": cm, "cosine_ci": cci, "effect_mean": em, "effect_ci": eci,
                     "cosines": cos, "effects": eff})
    fp = models.fingerprint(model)
    return Result(asdict(cfg), {"name": name, "fingerprint": fp.to_dict()},
                  {"layer": cell.layer, "kind": cell.kind, "strength": cell.strength}, base,
                  {"n": cfg.pool, "effect": full_effect}, rows, saturation(rows, full_effect),
                  {"seconds": round(time.perf_counter() - t0, 1)})


def plot(result: "Result | dict") -> dict:
    from workbench.plotting import lines

    r = result.to_dict() if isinstance(result, Result) else result
    ns = [x["n"] for x in r["rows"]]
    who, a = r["model"].get("name") or "model", r["config"]["attribute"]
    fig = lines({"effect (target rate - unsteered)": (ns, [x["effect_mean"] for x in r["rows"]]),
                 "cosine to the full-pool direction": (ns, [x["cosine_mean"] for x in r["rows"]]),
                 f"full pool ({r['full']['n']} pairs) effect": (ns, [r["full"]["effect"]] * len(ns))},
                title=f"{who}: {a} steering vs number of pairs (mean of {r['config']['resamples']} draws)",
                x_title="pairs", y_title="effect / cosine")
    fig.update_xaxes(type="log")
    return {"sample_size": fig}
