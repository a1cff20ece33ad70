"""Does steering harm fluency less in larger models? (The CAE study: 70B degrades less than 8B.)

For one attribute, each model of the family is steered at the block nearest a relative ``depth`` with strengths
given **relative to that model's residual norm** at the site (strength x |direction| / mean residual norm), so
sizes compare. Per (model, relative strength): KL(unsteered || steered) per token, perplexity of the
continuation under the unsteered model, grammaticality, and the target rate (``analyses.layer_sweep`` cells).
Harm slopes: least-squares slope through the origin of KL and of (perplexity - unsteered perplexity) against the
relative strength, and of the grammaticality drop, per size.
"""

__all__ = ["Config", "Result", "run", "plot", "slope", "section", "summary", "STUDY"]

import time
from dataclasses import asdict, dataclass, field

from analyses import layer_sweep
from analyses.common import Attribute, resolve_steer
from workbench import models
from workbench.errors import WorkbenchError
from workbench.models import HookedModel
from workbench.report.sections import Section
from workbench.sites import HookSite
from workbench.studies import Context, Study, StudyResult, register
from workbench.toy.measure import directions_for, steer_prompts


@dataclass(frozen=True)
class Config:
    attribute: Attribute = "sentiment"
    """Toy attribute to steer."""
    source: "str | None" = None
    """Value the prompts carry (default: the attribute's usual source)."""
    target: "str | None" = None
    """Value to steer towards (default: the attribute's usual target)."""
    models: "tuple[str, ...]" = ("toy-s", "toy-m", "toy-l")
    """Models to compare (names or folders), smallest first."""
    depth: float = 0.5
    """Relative depth of the steered block in each model, (0, 1]."""
    relative_strengths: "tuple[float, ...]" = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
    """Strengths relative to the residual norm; must include 0 (the unsteered reference)."""
    n_prompts: int = 48
    """Steered prompts per cell."""
    max_new_tokens: int = 24
    """Tokens generated per prompt."""
    seed: int = 0
    """Seed of pairs, prompts and sampling."""

    def __post_init__(self) -> None:
        resolve_steer(self)
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise WorkbenchError(f"models must name at least one model, got {self.models!r}.")
        if not 0 < self.depth <= 1:
            raise WorkbenchError(f"depth must be in (0, 1], got {self.depth}.")
        if 0.0 not in self.relative_strengths:
            raise WorkbenchError("relative_strengths must include 0 (the unsteered reference).")


@dataclass(frozen=True)
class Result(StudyResult):
    KIND = "model_size"

    config: dict
    models: list  # per model: name, fingerprint, n_layers, d_model, layer, residual norm, cells, slopes
    cost: dict = field(default_factory=dict)


def slope(xs: "list[float]", ys: "list[float]") -> float:
    """Least-squares slope of y on x through the origin."""
    den = sum(x * x for x in xs)
    return 0.0 if den == 0 else sum(x * y for x, y in zip(xs, ys)) / den


def run(named_models: "dict[str, HookedModel]", cfg: Config = Config(), *, progress: bool = True) -> Result:
    """The study over ``{name: model}`` (smallest first reads best)."""
    t0 = time.perf_counter()
    out = []
    for name, model in named_models.items():
        n = model.cfg.n_layers
        layer = max(0, min(n - 1, round(cfg.depth * n) - 1))
        ds = directions_for(model, cfg.attribute, cfg.source, cfg.target, seed=cfg.seed)
        texts = [p.text for p in steer_prompts(cfg.attribute, cfg.source, cfg.n_prompts, cfg.seed + 1)]
        norm = layer_sweep.residual_norms(model, texts, [HookSite(layer)])[layer]
        vnorm = float(ds.at(layer).vector.norm())
        strengths = tuple(rs * norm / vnorm for rs in cfg.relative_strengths)
        sweep = layer_sweep.run(
            model,
            layer_sweep.Config(
                cfg.attribute,
                cfg.source,
                cfg.target,
                layers=(layer,),
                strengths=strengths,
                n_prompts=cfg.n_prompts,
                max_new_tokens=cfg.max_new_tokens,
                seed=cfg.seed,
            ),
            directions=ds,
            name=name,
            progress=progress,
        )
        cells = sorted(sweep.cells, key=lambda c: c["strength"])
        base = next(c for c in cells if c["strength"] == 0)
        rel = [c["relative_strength"] for c in cells]
        out.append(
            {
                "name": name,
                "fingerprint": models.fingerprint(model).to_dict(),
                "n_layers": n,
                "d_model": model.cfg.d_model,
                "layer": layer,
                "depth": round((layer + 1) / n, 3),
                "residual_norm": norm,
                "direction_norm": vnorm,
                "cells": cells,
                "slopes": {
                    "kl": slope(rel, [c["kl"] for c in cells]),
                    "perplexity": slope(rel, [c["perplexity"] - base["perplexity"] for c in cells]),
                    "grammaticality_drop": slope(rel, [base["grammaticality"] - c["grammaticality"] for c in cells]),
                },
            }
        )
    return Result(asdict(cfg), out, {"seconds": round(time.perf_counter() - t0, 1)})


def plot(result: "Result | dict") -> dict:
    from workbench.plotting import lines

    r = result.to_dict() if isinstance(result, Result) else result
    a = r["config"]["attribute"]
    figs = {}
    for key, label in (
        ("kl", "KL(unsteered || steered) per token"),
        ("perplexity", "continuation perplexity"),
        ("grammaticality", "grammaticality"),
        ("target_rate", f"{r['config']['target']} rate"),
    ):
        figs[f"model_size_{key}"] = lines(
            {
                f"{m['name']} ({m['n_layers']} x {m['d_model']}, L{m['layer']})": (
                    [c["relative_strength"] for c in m["cells"]],
                    [c[key] for c in m["cells"]],
                )
                for m in r["models"]
            },
            title=f"{a}: {label} vs strength relative to the residual norm",
            x_title="relative strength",
            y_title=label,
        )
    return figs


def section(r: dict) -> Section:
    """The report's section: fluency harm per unit of relative strength, per model."""
    parts = [
        f"{m['name']} KL slope {m['slopes']['kl']:.3f}, grammaticality-drop slope "
        f"{m['slopes']['grammaticality_drop']:.3f}"
        for m in r["models"]
    ]
    text = (
        f"{r['config']['attribute']}: harm per unit of strength relative to the residual norm: "
        + "; ".join(parts)
        + "."
    )
    return Section(Result.KIND, f"Fluency harm across sizes: {r['config']['attribute']}", text, plot(r), 42)


def summary(r: Result) -> str:
    lines = [f"model size, {r.config['attribute']}, depth {r.config['depth']}: harm slopes per unit relative strength"]
    for x in r.models:
        sl = x["slopes"]
        lines.append(
            f"  {x['name']:<6} L{x['layer']}  KL {sl['kl']:.3f}  perplexity {sl['perplexity']:.3f}  "
            f"grammaticality drop {sl['grammaticality_drop']:.3f}"
        )
    return "\n".join(lines)


def execute(ctx: Context, cfg: Config) -> Result:
    return run({name: ctx.get(name) for name in cfg.models}, cfg, progress=ctx.progress)


STUDY = register(
    Study(
        "model-size",
        "fluency harm vs relative strength across models",
        Config,
        Result,
        execute,
        plot,
        section,
        summary,
        needs_model=False,
    )
)
