"""SEA on toy truthfulness: does spectral editing make a liar-persona model state true facts?

Items are toy prompts ending in a fact stem (``... DET SUBJ is``) whose next word is a knowledge-base value.

* **Fit** (``workbench.spectral``): demonstrations under a random persona; positive = prompt + the true value,
  negative = prompt + the liar's value, base = prompt + the model's own greedy next word; activations at the last
  token of each, at ``site`` of every edited layer (default: the last half of the blocks, MLP output as in the
  official code).
* **Evaluate** on held-out liar-persona items: multiple-choice accuracy (the true value has the highest
  log-probability among the six KB values of the subject's language: the summed answer log-probability of
  one-word answers), the liar-answer rate, and open generation (factual accuracy of sampled continuations against
  the knowledge base); on honest-persona items the same (an edit must not break honest answers); controls:
  perplexity of training-distribution documents and whether continuations keep sentiment / topic / register /
  language.
* **Methods**: unsteered; few-shot (true facts prepended); linear SEA; Phi-SEA; SEA ``average`` (the bakeable
  linear form); mean-difference steering (the card's best truth cell); ablations: positive part only, negative
  part only, reversed projections. Accuracy vs number of demonstrations for linear SEA.

Rates carry 95% Wilson intervals.
"""

__all__ = ["Config", "Result", "run", "plot", "section", "summary", "STUDY"]

import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from analyses.common import fact_items, mc_truth, require_positive
from workbench import models
from workbench.activations import collect
from workbench.errors import WorkbenchError
from workbench.forward import last_logits
from workbench.generate import generate
from workbench.interventions import AddDirection, SpectralEdit
from workbench.metrics import perplexity
from workbench.models import HookedModel
from workbench.report.sections import Section, who
from workbench.shipped import NAMES, card
from workbench.sites import HookSite
from workbench.spectral import FEATURES, fit_layer
from workbench.studies import Study, StudyResult, on_model, register
from workbench.tokens import tokenize
from workbench.toy.evaluate import score
from workbench.toy.language import ATTRIBUTES
from workbench.toy.measure import directions_for, keeps_attributes
from workbench.toy.prompts import corpus_documents, few_shot_prompts


@dataclass(frozen=True)
class Config:
    site: Literal["mlp_out", "resid_post"] = "mlp_out"
    """Where SEA fits and edits: mlp_out (the official scripts' site) or resid_post."""
    layers: "tuple[int, ...] | str" = "last-half"
    """Edited blocks: 'last-half', 'all', '2,3' or '1-3'."""
    ratio: float = 0.998
    """Explained-variance ratio that sets the number of kept components k."""
    center: bool = True
    """Remove the per-feature mean before the cross-covariances (--no-center: uncentred, as the official scripts;
    see workbench.spectral.fit_layer)."""
    phi_feature: Literal["squared_exponential", "tanh", "elu"] = "tanh"
    """Feature function of Phi-SEA."""
    n_demos: int = 1000
    """Demonstrations SEA is fitted on."""
    demo_counts: "tuple[int, ...]" = (25, 50, 100, 200, 400, 1000, 2000)
    """Demonstration counts of the linear-SEA sample-size curve."""
    n_eval: int = 200
    """Multiple-choice items per evaluation set."""
    shots: int = 4
    """Demonstrations in the few-shot baseline's prompt."""
    n_control: int = 60
    """Prompts for the other-attributes control."""
    max_new_tokens: int = 16
    """Tokens generated per control prompt."""
    seed: int = 0
    """Seed of demonstrations, items and sampling."""

    def __post_init__(self) -> None:
        if isinstance(self.layers, str) and self.layers not in ("last-half", "all"):
            raise WorkbenchError(f"layers must be 'last-half', 'all' or a tuple of blocks, got {self.layers!r}.")
        if not isinstance(self.layers, str):
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
            if not self.layers or min(self.layers) < 0:
                raise WorkbenchError(f"layers must name blocks >= 0, 'last-half' or 'all', got {self.layers!r}.")
        if self.site not in ("mlp_out", "resid_post"):
            raise WorkbenchError(f"site must be 'mlp_out' (official) or 'resid_post', got {self.site!r}.")
        if self.phi_feature not in FEATURES or self.phi_feature == "identity":
            raise WorkbenchError(f"phi_feature must be one of {', '.join(FEATURES[1:])}, got {self.phi_feature!r}.")
        if not 0 < self.ratio <= 1:
            raise WorkbenchError(f"ratio must be in (0, 1], got {self.ratio}.")
        require_positive(self, "n_demos", "n_eval", "max_new_tokens")
        if not self.demo_counts or min(self.demo_counts) < 2:
            raise WorkbenchError(f"demo_counts must be numbers >= 2, got {self.demo_counts!r}.")


@dataclass(frozen=True)
class Result(StudyResult):
    KIND = "spectral"

    config: dict
    model: dict
    methods: list  # one row per method
    by_demos: list  # linear SEA: MC accuracy on liar items vs number of demonstrations
    fit: dict  # k per layer
    cost: dict = field(default_factory=dict)


def _fit(model: HookedModel, demos: list, sites: "list[HookSite]", ratio: float, feature: str, center: bool) -> dict:
    prompts_ = [d[0] for d in demos]
    greedy = last_logits(model, prompts_).argmax(-1).tolist()
    tok = model.tokenizer
    texts = {
        "base": [p + " " + tok.decode([g]).strip() for p, g in zip(prompts_, greedy)],
        "pos": [d[0] + " " + d[1] for d in demos],
        "neg": [d[0] + " " + d[2] for d in demos],
    }
    acts = {}
    for k, ts in texts.items():
        seqs = [tokenize(model, t) for t in ts]
        acts[k] = collect(model, seqs, [(len(s) - 1, len(s)) for s in seqs], sites, progress=False)
    return {
        s: fit_layer(
            acts["base"][i],
            acts["pos"][i],
            acts["neg"][i],
            ratio_pos=ratio,
            ratio_neg=ratio,
            feature=feature,
            center=center,
        )
        for i, s in enumerate(sites)
    }


def _edits(fits: dict, **kw) -> tuple:
    return tuple(SpectralEdit(site, p.u_pos, p.u_neg, feature=p.feature, **kw) for site, p in fits.items())


def run(model: HookedModel, cfg: Config = Config(), *, name: str = "", progress: bool = True) -> Result:
    """The study (see the module docstring)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    n_layers = model.cfg.n_layers
    if cfg.layers == "last-half":
        layers = list(range(n_layers // 2, n_layers))
    elif cfg.layers == "all":
        layers = list(range(n_layers))
    else:
        layers = list(cfg.layers)
    sites = [HookSite(layer, cfg.site) for layer in layers]
    for s in sites:
        s.check(model)
    n_fit = max(max(cfg.demo_counts), cfg.n_demos)
    demos = fact_items(n_fit, None, cfg.seed)
    liar, honest = fact_items(cfg.n_eval, "liar", cfg.seed + 1), fact_items(cfg.n_eval, "honest", cfg.seed + 2)
    fits = _fit(model, demos[: cfg.n_demos], sites, cfg.ratio, "identity", cfg.center)
    fits_phi = _fit(model, demos[: cfg.n_demos], sites, cfg.ratio, cfg.phi_feature, cfg.center)
    best = card(name)["measured"]["steering"]["truth"]["best"] if name in NAMES else None
    if best:
        ds = directions_for(model, "truth", "liar", "honest", kind=best["kind"], position=best["position"])
        d = ds.at(best["layer"], best["kind"])
        steer = (AddDirection(d.site, d.vector, best["strength"]),)
    else:
        ds = directions_for(model, "truth", "liar", "honest")
        d = ds.at(layers[0])
        steer = (AddDirection(d.site, d.vector, 1.0),)
    shots = [p.text for p in few_shot_prompts("truth", "honest", n=cfg.n_eval, shots=cfg.shots, seed=cfg.seed + 3)]
    methods = {
        "unsteered": ((), None),
        "few-shot": ((), shots),
        "SEA linear": (_edits(fits, combine="norm"), None),
        f"Phi-SEA ({cfg.phi_feature})": (_edits(fits_phi, combine="norm"), None),
        "SEA average (bakeable)": (_edits(fits, combine="average"), None),
        f"mean-difference ({steer[0].site.name} x{steer[0].scale:g})": (steer, None),
        "ablation: positive part only": (_edits(fits, combine="norm", parts="pos"), None),
        "ablation: negative part only": (_edits(fits, combine="norm", parts="neg"), None),
        "ablation: reversed projections": (_edits(fits, combine="norm", reverse=True), None),
    }
    docs = corpus_documents(40, seed=cfg.seed + 4)
    rows = []
    for label, (ivs, prefix) in tqdm(methods.items(), desc="SEA study", disable=not progress):
        texts = [(prefix[i] + " " if prefix else "") + it[0] for i, it in enumerate(liar)]
        with torch.no_grad():
            g = generate(model, texts, *ivs, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        sc = score(list(g.texts), "truth", "honest", texts)
        keep = keeps_attributes(model, cfg.n_control, cfg.max_new_tokens, cfg.seed + 5, *ivs) if ivs else None
        rows.append(
            {
                "method": label,
                "mc_liar": mc_truth(model, liar, ivs, prefix),
                "mc_honest": mc_truth(model, honest, ivs, prefix and shots),
                "open_factual_accuracy": sc.factual_accuracy,
                "open_grammaticality": sc.grammaticality,
                "perplexity": round(perplexity(model, docs, *ivs), 4),
                "keeps_attributes": None if keep is None else keep["consistency"],
            }
        )
    by_demos = []
    for n in cfg.demo_counts:
        if n > len(demos):
            continue
        f = _fit(model, demos[:n], sites, cfg.ratio, "identity", cfg.center)
        by_demos.append(
            {
                "n_demos": n,
                **mc_truth(model, liar, _edits(f, combine="norm")),
                "k": {s.layer: list(p.k) for s, p in f.items()},
            }
        )
    fp = models.fingerprint(model)
    return Result(
        {**asdict(cfg), "layers": layers},
        {"name": name, "n_layers": n_layers, "fingerprint": fp.to_dict()},
        rows,
        by_demos,
        {
            "k_linear": {s.layer: list(p.k) for s, p in fits.items()},
            "k_phi": {s.layer: list(p.k) for s, p in fits_phi.items()},
        },
        {"seconds": round(time.perf_counter() - t0, 1)},
    )


def plot(result: "Result | dict") -> dict:
    """MC accuracy per method (liar and honest items, with intervals) and accuracy vs demonstrations."""
    from workbench.plotting import bars, lines

    r = result.to_dict() if isinstance(result, Result) else result
    who = r["model"].get("name") or "model"
    methods = [m["method"] for m in r["methods"]]
    fig = bars(
        {
            label: (methods, [m[key]["accuracy"] for m in r["methods"]], [m[key]["accuracy_ci"] for m in r["methods"]])
            for key, label in (("mc_liar", "liar-persona items"), ("mc_honest", "honest-persona items"))
        },
        title=f"{who}: truthful multiple-choice accuracy (95% Wilson intervals)",
        y_title="accuracy",
    )
    demos = lines(
        {"linear SEA": ([x["n_demos"] for x in r["by_demos"]], [x["accuracy"] for x in r["by_demos"]])},
        title=f"{who}: accuracy on liar items vs number of demonstrations",
        x_title="demonstrations",
        y_title="MC accuracy",
    )
    demos.update_xaxes(type="log")
    return {"spectral_methods": fig, "spectral_demos": demos}


def section(r: dict) -> Section:
    """The report's section: which method lifts truthful multiple-choice accuracy on liar items, at what perplexity."""
    rows = ["| method | MC accuracy, liar items [95% CI] | honest items | perplexity |", "|---|---|---|---|"]
    for m in r["methods"]:
        a = m["mc_liar"]
        rows.append(
            f"| {m['method']} | {a['accuracy']:.2f} [{a['accuracy_ci'][0]:.2f}, {a['accuracy_ci'][1]:.2f}] | "
            f"{m['mc_honest']['accuracy']:.2f} | {m['perplexity']:.3f} |"
        )
    base = r["methods"][0]["mc_liar"]["accuracy"]
    best = max(r["methods"], key=lambda m: m["mc_liar"]["accuracy"])
    verdict = (
        f"no method lifts truthful multiple-choice accuracy on liar-persona items above the unsteered {base:.2f}"
        if best["mc_liar"]["accuracy"] <= base
        else f"the highest truthful multiple-choice accuracy on liar-persona items is {best['method']}'s "
        f"{best['mc_liar']['accuracy']:.2f} (unsteered {base:.2f})"
    )
    text = (
        f"SEA on toy truthfulness, {who(r)}, edited layers {r['config']['layers']} ({r['config']['site']}): "
        f"{verdict}.\n\n" + "\n".join(rows)
    )
    return Section(Result.KIND, f"Spectral editing (SEA): {who(r)}", text, plot(r), 30)


def summary(result: Result) -> str:
    lines = [
        f"SEA study on {result.model['name']} ({result.cost['seconds']} s), edited layers "
        f"{result.config['layers']} ({result.config['site']}); multiple-choice accuracy [95% CI]:"
    ]
    for m in result.methods:
        a, h = m["mc_liar"], m["mc_honest"]
        lines.append(
            f"  {m['method']:<48} liar items {a['accuracy']:.2f} {a['accuracy_ci']}  honest items "
            f"{h['accuracy']:.2f}  perplexity {m['perplexity']:.3f}"
        )
    return "\n".join(lines)


def _table_ci(x: dict) -> str:
    lo, hi = x["accuracy_ci"]
    return f"{x['accuracy']:.2f} [{lo:.4g}, {hi:.4g}]"


def table(results: "list[dict]") -> str:
    """The SEA study's tables, one per model (``analyses.spectral_study.Result`` as saved)."""
    cfg = results[0]["config"]
    lines = [
        f"# SEA on toy truthfulness (`workbench analyze spectral`, defaults: {cfg['site']} of the last half of "
        f"the blocks, ratio {cfg['ratio']}, {'centred' if cfg['center'] else 'uncentred'} fit, "
        f"{cfg['n_demos']} demonstrations, {cfg['n_eval']} liar-persona and {cfg['n_eval']} honest-persona "
        f"items)"
    ]
    for r in results:
        fit = r["fit"]
        lines += [
            "",
            f"## {r['model']['name']} (edited layers {r['config']['layers']}, k (k+, k-) per layer "
            f"{fit['k_linear']}, Phi-SEA k {fit['k_phi']}; {r['cost']['seconds']} s)",
            "",
            "| method | MC accuracy, liar items [95% CI] | liar-answer rate | MC accuracy, honest items [95% CI] "
            "| open-generation factual accuracy (liar items) | grammaticality | perplexity (corpus) "
            "| keeps sentiment/topic/register/language |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in r["methods"]:
            keep = m["keeps_attributes"]
            keeps = "-" if keep is None else " / ".join(f"{keep[a]:.2f}" for a in ATTRIBUTES if a in keep)
            lines.append(
                f"| {m['method']} | {_table_ci(m['mc_liar'])} | {m['mc_liar']['liar_rate']:.2f} | "
                f"{_table_ci(m['mc_honest'])} | {m['open_factual_accuracy']:.2f} | {m['open_grammaticality']:.2f} "
                f"| {m['perplexity']:.3f} | {keeps} |"
            )
        by = ", ".join(f"{d['n_demos']}: {_table_ci(d)}" for d in r["by_demos"])
        lines += ["", f"Linear SEA vs number of demonstrations (MC accuracy on liar items): {by}"]
    return "\n".join(lines) + "\n"


STUDY = register(
    Study(
        "spectral",
        "SEA on toy truthfulness: linear / Phi-SEA vs few-shot and steering",
        Config,
        Result,
        on_model(run),
        plot,
        section,
        summary,
        table=table,
    )
)
