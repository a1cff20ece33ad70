"""How many contrast pairs does a steering vector need? (The CAE study's claim: quality saturates near 80.)

From a pool of minimal pairs, activations are collected once at the studied site; for each N and each of
``resamples`` random draws of N pairs, the mean-difference direction is compared with the full-pool direction
(cosine) and used to steer (same strength, sampled continuations, exact classifier): effect = steered target rate
minus the unsteered rate on the same prompts. Saturation N (documented rule): the smallest N whose mean effect
reaches 90% of the full-pool effect and whose mean cosine is >= 0.9.
"""

__all__ = ["Config", "Result", "run", "plot", "saturation", "section", "summary", "STUDY"]

import random
import time
from dataclasses import asdict, dataclass, field

import torch

from analyses.common import Attribute, require_positive, resolve_steer, steer_cell, target_rate
from workbench import models
from workbench.activations import collect_pairs
from workbench.errors import WorkbenchError
from workbench.metrics import mean_ci
from workbench.models import HookedModel
from workbench.report.sections import Section, who
from workbench.sites import HookSite
from workbench.studies import Study, StudyResult, on_model, register
from workbench.toy.measure import steer_prompts
from workbench.toy.prompts import contrast_pairs


@dataclass(frozen=True)
class Config:
    attribute: Attribute = "sentiment"
    """Toy attribute to steer."""
    source: "str | None" = None
    """Value the prompts carry (default: the attribute's usual source)."""
    target: "str | None" = None
    """Value to steer towards (default: the attribute's usual target)."""
    ns: "tuple[int, ...]" = (1, 2, 5, 10, 20, 40, 80, 160, 320)
    """Pair counts to draw."""
    resamples: int = 5
    """Draws per pair count."""
    pool: int = 640
    """Pairs the draws come from (also the full-pool reference direction)."""
    layer: "int | None" = field(default=None, metadata={"none": "card"})
    """0-based block to steer (default: the toy card's best cell, else the middle block)."""
    strength: "float | None" = field(default=None, metadata={"none": "card"})
    """Steering strength (default: the toy card's best cell, else 1)."""
    n_prompts: int = 48
    """Steered prompts per draw."""
    max_new_tokens: int = 24
    """Tokens generated per prompt."""
    seed: int = 0
    """Seed of pairs, draws, prompts and sampling."""

    def __post_init__(self) -> None:
        resolve_steer(self)
        if not self.ns or min(self.ns) < 1 or max(self.ns) > self.pool:
            raise WorkbenchError(f"ns must be pair counts in 1..pool ({self.pool}), got {self.ns!r}.")
        require_positive(self, "resamples", "n_prompts", "max_new_tokens")


@dataclass(frozen=True)
class Result(StudyResult):
    KIND = "sample_size"

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
    cell = steer_cell(
        model, name, cfg.attribute, cfg.source, cfg.target, layer=cfg.layer, strength=cfg.strength, seed=cfg.seed
    )
    pool = contrast_pairs(cfg.attribute, cfg.target, cfg.source, n=cfg.pool, seed=cfg.seed + 100)
    site = HookSite(cell.layer, cell.kind)
    acts = collect_pairs(model, pool, [site], position="last", progress=False)
    diffs = (acts.positive[0] - acts.negative[0]).float()  # [pool, d]
    full = diffs.mean(0)
    texts = [p.text for p in steer_prompts(cfg.attribute, cfg.source, cfg.n_prompts, cfg.seed + 1)]

    def rate(v: torch.Tensor) -> float:
        return target_rate(
            model,
            texts,
            cfg.attribute,
            cfg.target,
            cell.intervention(v),
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
        )

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
        rows.append(
            {
                "n": n,
                "cosine_mean": cm,
                "cosine_ci": cci,
                "effect_mean": em,
                "effect_ci": eci,
                "cosines": cos,
                "effects": eff,
            }
        )
    fp = models.fingerprint(model)
    return Result(
        asdict(cfg),
        {"name": name, "fingerprint": fp.to_dict()},
        {"layer": cell.layer, "kind": cell.kind, "strength": cell.strength},
        base,
        {"n": cfg.pool, "effect": full_effect},
        rows,
        saturation(rows, full_effect),
        {"seconds": round(time.perf_counter() - t0, 1)},
    )


def plot(result: "Result | dict") -> dict:
    from workbench.plotting import lines

    r = result.to_dict() if isinstance(result, Result) else result
    ns = [x["n"] for x in r["rows"]]
    who, a = r["model"].get("name") or "model", r["config"]["attribute"]
    fig = lines(
        {
            "effect (target rate - unsteered)": (ns, [x["effect_mean"] for x in r["rows"]]),
            "cosine to the full-pool direction": (ns, [x["cosine_mean"] for x in r["rows"]]),
            f"full pool ({r['full']['n']} pairs) effect": (ns, [r["full"]["effect"]] * len(ns)),
        },
        title=f"{who}: {a} steering vs number of pairs (mean of {r['config']['resamples']} draws)",
        x_title="pairs",
        y_title="effect / cosine",
    )
    fig.update_xaxes(type="log")
    return {"sample_size": fig}


def section(r: dict) -> Section:
    """The report's section: the full-pool effect and where returns diminish."""
    sat = r["saturation_n"]
    text = (
        f"{r['config']['attribute']} on {who(r)} at layer {r['site']['layer']} x{r['site']['strength']:g}: the "
        f"full {r['full']['n']}-pair direction moves the target rate by {r['full']['effect']:+.2f}; "
        + (
            "no N reached 90% of it with cosine >= 0.9."
            if sat is None
            else f"returns diminish at N = {sat} pairs (mean effect >= 90% of the full effect, cosine >= 0.9; "
            f"{r['config']['resamples']} draws per N)."
        )
    )
    return Section(Result.KIND, f"Sample size: {r['config']['attribute']} ({who(r)})", text, plot(r), 40)


def summary(r: Result) -> str:
    lines = [
        f"sample size, {r.config['attribute']} on {r.model['name']} (L{r.site['layer']} x{r.site['strength']:g}): "
        f"full-pool effect {r.full['effect']:+.3f}; saturation N = {r.saturation_n}"
    ]
    for x in r.rows:
        lines.append(
            f"  N={x['n']:<4} effect {x['effect_mean']:+.3f} [{x['effect_ci'][0]:+.3f}, "
            f"{x['effect_ci'][1]:+.3f}]  cosine {x['cosine_mean']:.3f}"
        )
    return "\n".join(lines)


STUDY = register(
    Study(
        "sample-size",
        "steering effect and cosine vs number of pairs",
        Config,
        Result,
        on_model(run),
        plot,
        section,
        summary,
    )
)
