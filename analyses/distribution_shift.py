"""Does a steering vector work outside the distribution it was built on? (The CAE study: reliable only in-distribution.)

The direction comes from the toy world's minimal pairs (the in-distribution family: a persona and 1-3 sentences,
ending where the next word shows the attribute). It is evaluated on prompts of every family of
``workbench.toy.prompts.FAMILIES`` that hold the source value: ``id`` (persona + 2 sentences) and the
out-of-distribution ones (``long``, ``short``, ``no_persona``, ``mixed``, ``qa``). Effect per family = steered
target rate minus unsteered target rate on the same prompts (95% Wilson intervals on the rates); ratio = effect /
effect on ``id``.
"""

__all__ = ["Config", "Result", "run", "plot", "section", "summary", "STUDY"]

import time
from dataclasses import asdict, dataclass, field

from analyses.common import Attribute, resolve_steer, steer_cell, target_rate
from workbench import models
from workbench.errors import WorkbenchError
from workbench.metrics import wilson
from workbench.models import HookedModel
from workbench.report.sections import Section, who
from workbench.studies import Study, StudyResult, on_model, register
from workbench.toy.prompts import FAMILIES, prompts_with


@dataclass(frozen=True)
class Config:
    attribute: Attribute = "sentiment"
    """Toy attribute to steer."""
    source: "str | None" = None
    """Value the prompts carry (default: the attribute's usual source)."""
    target: "str | None" = None
    """Value to steer towards (default: the attribute's usual target)."""
    families: "tuple[str, ...]" = FAMILIES
    """Prompt families to compare; must include id (the in-distribution one)."""
    layer: "int | None" = field(default=None, metadata={"none": "card"})
    """0-based block to steer (default: the toy card's best cell, else the middle block)."""
    strength: "float | None" = field(default=None, metadata={"none": "card"})
    """Steering strength (default: the toy card's best cell, else 1)."""
    n_prompts: int = 100
    """Steered prompts per family."""
    max_new_tokens: int = 24
    """Tokens generated per prompt."""
    seed: int = 0
    """Seed of prompts and sampling."""

    def __post_init__(self) -> None:
        resolve_steer(self)
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or "id" not in self.families:
            raise WorkbenchError(
                f"families must include 'id' and be among {', '.join(FAMILIES)}; got {self.families!r}."
            )
        if self.n_prompts < 1 or self.max_new_tokens < 1:
            raise WorkbenchError("n_prompts and max_new_tokens must be >= 1.")


@dataclass(frozen=True)
class Result(StudyResult):
    KIND = "distribution_shift"

    config: dict
    model: dict
    site: dict
    families: list
    cost: dict = field(default_factory=dict)


def run(model: HookedModel, cfg: Config = Config(), *, name: str = "", progress: bool = True) -> Result:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    cell = steer_cell(
        model, name, cfg.attribute, cfg.source, cfg.target, layer=cfg.layer, strength=cfg.strength, seed=cfg.seed
    )
    rows = []
    for family in tqdm(cfg.families, desc=f"distribution shift ({cfg.attribute})", disable=not progress):
        texts = prompts_with(
            {cfg.attribute: cfg.source}, cfg.n_prompts, cfg.seed + 7, family, fact_stem=cfg.attribute == "truth"
        )
        kw = {"max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}
        base = target_rate(model, texts, cfg.attribute, cfg.target, **kw)
        steered = target_rate(model, texts, cfg.attribute, cfg.target, cell.intervention(), **kw)
        n = len(texts)
        rows.append(
            {
                "family": family,
                "n": n,
                "unsteered": base,
                "unsteered_ci": wilson(base * n, n),
                "steered": steered,
                "steered_ci": wilson(steered * n, n),
                "effect": steered - base,
            }
        )
    id_effect = next(r["effect"] for r in rows if r["family"] == "id")
    for r in rows:
        r["ratio_to_id"] = None if id_effect == 0 else r["effect"] / id_effect
    fp = models.fingerprint(model)
    return Result(
        asdict(cfg),
        {"name": name, "fingerprint": fp.to_dict()},
        {"layer": cell.layer, "kind": cell.kind, "strength": cell.strength},
        rows,
        {"seconds": round(time.perf_counter() - t0, 1)},
    )


def plot(result: "Result | dict") -> dict:
    from workbench.plotting import bars

    r = result.to_dict() if isinstance(result, Result) else result
    fam = [x["family"] for x in r["families"]]
    c = r["config"]
    fig = bars(
        {
            k: (fam, [x[k] for x in r["families"]], [x[f"{k}_ci"] for x in r["families"]])
            for k in ("unsteered", "steered")
        },
        title=f"{r['model'].get('name') or 'model'}: {c['attribute']} -> {c['target']} rate by prompt family "
        f"(direction from in-distribution pairs)",
        y_title="target rate",
        x_title="prompt family",
    )
    return {"distribution_shift": fig}


def section(r: dict) -> Section:
    """The report's section: how much of the in-distribution effect carries to the other prompt families."""
    ood = [x for x in r["families"] if x["family"] != "id" and x["ratio_to_id"] is not None]
    worst = min(ood, key=lambda x: x["ratio_to_id"], default=None)
    mean = sum(x["ratio_to_id"] for x in ood) / len(ood) if ood else float("nan")
    text = (
        f"{r['config']['attribute']} on {who(r)}: the in-distribution effect carries to the other prompt families "
        f"at a mean OOD/ID ratio of {mean:.2f}"
        + ("" if worst is None else f"; the weakest is {worst['family']} ({worst['ratio_to_id']:.2f})")
        + "."
    )
    return Section(Result.KIND, f"In- vs out-of-distribution: {r['config']['attribute']} ({who(r)})", text, plot(r), 41)


def summary(r: Result) -> str:
    lines = [
        f"distribution shift, {r.config['attribute']} on {r.model['name']} (L{r.site['layer']} "
        f"x{r.site['strength']:g}):"
    ]
    for x in r.families:
        ratio = "n/a" if x["ratio_to_id"] is None else f"{x['ratio_to_id']:.2f}"
        lines.append(
            f"  {x['family']:<11} unsteered {x['unsteered']:.2f}  steered {x['steered']:.2f} "
            f"{x['steered_ci']}  effect {x['effect']:+.2f}  OOD/ID {ratio}"
        )
    return "\n".join(lines)


STUDY = register(
    Study(
        "distribution-shift",
        "effect on in- vs out-of-distribution prompt families",
        Config,
        Result,
        on_model(run),
        plot,
        section,
        summary,
    )
)
