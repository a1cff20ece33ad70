"""Report sections: a result file's ``kind`` picks its writer, which writes the text from its numbers, with figures.

Every section's prose is generated from the result (best layer and strength with intervals, saturation point,
reversal rate, ...); nothing is canned. Figures come from each analysis's own ``plot``.
"""

__all__ = ["Section", "section_for", "CORE_KINDS", "ParityResult", "who", "rate_ci"]

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from workbench.errors import WorkbenchError
from workbench.metrics import wilson
from workbench.schema import Strict, validate


class ParityRowSchema(Strict):
    """One deployment path's row of a ``parity`` result (``workbench.export.parity.ParityRow.to_dict``)."""

    path: str
    max_abs_diff: float
    effect: float
    off_by_one: "float | None"
    n_tokens: int


class ParityResult(Strict):
    """A ``parity.json``: the exported edit, one row per deployment path checked, and the paths not run."""

    kind: Literal["parity"]
    spec: str
    rows: "list[ParityRowSchema]"
    refused: "list[str]" = []


@dataclass
class Section:
    kind: str
    title: str
    markdown: str
    figures: dict = field(default_factory=dict)
    order: int = 50
    source: str = ""  # the result file, relative to the results folder (set by collect_sections)


def who(r: dict) -> str:
    m = r.get("model") or {}
    return (m.get("name") if isinstance(m, dict) else m) or "the model"


def rate_ci(rate: float, n: int) -> str:
    lo, hi = wilson(rate * n, n)
    return f"{rate:.2f} [{lo:.2f}, {hi:.2f}]"


def _passes(b: "dict | None") -> bool:
    """A best cell that steers: there is one and its strength is not the unsteered 0."""
    return b is not None and b["strength"] > 0


def _demo(r: dict) -> Section:
    fp = r["fingerprint"]
    lines = [
        f"Model **{r['model']}** ({fp['architecture']}, {fp['n_layers']} layers x d_model {fp['d_model']}, "
        f"vocabulary {fp['d_vocab']}; weights sha256 `{fp['weights_sha256'][:16]}...`), {r['backend']} backend. "
        f"Per attribute, mean-difference directions from 200 minimal pairs at every layer, and steered sampled "
        f"continuations of prompts with the opposite value. The best cell has the highest target rate with "
        f"grammaticality >= {r['grammar_floor']} that beats the unsteered rate; the maps show both.",
        "",
        "| attribute | site | best layer | strength | target rate [95% CI] | grammaticality | best probe accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for attribute, grids in r["attributes"].items():
        for g in grids:
            b = g["best"]
            probe = max((v for v in g["probe_accuracy"].values() if v is not None), default=None)
            probe_text = "n/a" if probe is None else f"{probe:.2f}"
            if not _passes(b):
                lines.append(f"| {attribute} | {g['kind']} | no steering cell passes | | | | {probe_text} |")
            else:
                lines.append(
                    f"| {attribute} | {g['kind']} | {b['layer']} | x{b['strength']:g} | "
                    f"{rate_ci(b['target_rate'], g['n_prompts'])} | {b['grammaticality']:.2f} | {probe_text} |"
                )
    from workbench.plotting import heatmap_grid

    figs = {}
    for attribute, grids in r["attributes"].items():
        g = grids[0]
        strengths = sorted({c["strength"] for c in g["cells"]})
        layers = sorted({c["layer"] for c in g["cells"]})
        at = {(c["layer"], c["strength"]): c for c in g["cells"]}
        grid = lambda key: [[at[(lay, s)][key] for s in strengths] for lay in layers]  # noqa: E731
        figs[f"demo_{attribute}"] = heatmap_grid(
            [(f"{g['target']} rate", grid("target_rate")), ("grammaticality", grid("grammaticality"))],
            strengths,
            layers,
            title=f"{r['model']}: steering {attribute} {g['source']} -> {g['target']} ({g['kind']}, layer x strength)",
            x_title="strength",
            y_title="layer",
            scale=("Viridis", 0.0, 1.0),
        )
    return Section("demo", f"Model and steering overview: {r['model']}", "\n".join(lines), figs, order=0)


def _card(r: dict) -> Section:
    checks = (r.get("measured") or {}).get("checks") or {}
    met = sum(bool(v) for v in checks.values())
    missed = [k for k, v in checks.items() if not v]
    bars = (
        "properties not measured"
        if not checks
        else f"bars met {met} of {len(checks)}" + (f" (missed: {', '.join(missed)})" if missed else "")
    )
    t = r["training"]
    name = r["size"]["name"] if isinstance(r.get("size"), dict) else r.get("name", "")
    lines = [
        f"Toy checkpoint card: {name} trained {t['steps']} steps at learning rate {t['lr']:g}; validation loss "
        f"{r['validation_loss']:.3f} nats/token; {bars}."
    ]
    return Section("card", "Model card", "\n".join(lines), order=1)


def _parity(r: dict) -> Section:
    refused = "; ".join(x.rstrip(".") for x in r.get("refused") or [])
    if not r.get("rows"):
        text = f"Export of `{r.get('spec', 'the edit')}`: nothing exported ({refused or 'no reason recorded'})."
        return Section("parity", f"Export and deployment parity: {r.get('spec', '')}", text, {}, 60)
    rows = ["| path | max abs logit diff | edit effect | one block off |", "|---|---|---|---|"]
    for x in r["rows"]:
        obo = "n/a" if x["off_by_one"] is None else f"{x['off_by_one']:.2f}"
        rows.append(f"| {x['path']} | {x['max_abs_diff']:.1e} | {x['effect']:.2f} | {obo} |")
    worst = max(r["rows"], key=lambda x: x["max_abs_diff"])
    text = (
        f"Export of `{r.get('spec', 'the edit')}` checked where it deploys: every path reproduces the "
        f"TransformerLens-steered logits to {worst['max_abs_diff']:.1e} or better"
        + (f". Not exported or not run: {refused}" if refused else "")
        + ".\n\n"
        + "\n".join(rows)
    )
    return Section("parity", f"Export and deployment parity: {r.get('spec', '')}", text, {}, 60)


#: the sections of the results the core writes; studies bring their own (workbench.studies)
CORE_KINDS = {"demo": _demo, "card": _card, "parity": _parity}


def section_for(result: Any, source: str = "<memory>") -> "Section | None":
    """The section of a result dict (read from ``source``) by its ``kind`` (a core result or a registered study's),
    or None when it is not a workbench result or no installed study reads it. A result of a known kind that does
    not hold what its kind declares is one WorkbenchError naming ``source``."""
    if not isinstance(result, dict) or not isinstance(result.get("kind"), str):
        return None
    kind = result["kind"]
    if kind == "card":
        from workbench.shipped import check_card

        check_card(result, source)
    if kind == "parity":
        validate(
            result,
            ParityResult,
            source=source,
            fix="re-run what wrote it (workbench demo) or move the file out of the results folder.",
        )
    writer: Callable[[dict], Any]
    if kind in CORE_KINDS:
        writer = CORE_KINDS[kind]
    else:
        from workbench import studies

        try:
            study = studies.get(kind)
        except WorkbenchError:
            return None
        study.result.from_dict(result, source=source)  # refuses a newer schema or a truncated file with the reason
        writer = study.section
    try:
        return writer(result)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as e:
        raise WorkbenchError(
            f"{source}: not a complete {kind} result ({type(e).__name__}: {e}); re-run what wrote it or move the "
            f"file out of the results folder."
        ) from None
