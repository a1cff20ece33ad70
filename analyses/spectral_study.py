"""SEA on toy truthfulness: does spectral editing make a liar-persona model state true facts?

Items are toy prompts ending in a fact stem (``... DET SUBJ is``) whose next word is a knowledge-base value.

* **Fit** (``workbench.spectral``): demonstrations under a random persona; positive = prompt + the true value,
  negative = prompt + the liar's value, base = prompt + the model's own greedy next word; activations at the last
  token of each. Edits are applied at ``site`` of every edited layer (default: the last half of the blocks, at the
  MLP output, where the official code inserts its adapter). Two fit placements, each a variant of the study
  (``fit_sites``): **edit-site** fits at the site it edits (ours: the projections see the activations they act
  on); **resid_post** fits at the block output, the last block's after the final norm (the Hugging Face
  ``hidden_states[1:]`` the official ``prepare-activations.py`` saves) and edits at ``site``: with
  ``site="mlp_out"`` this is the official placement, projections learned on the residual stream applied to the
  MLP output.
* **Evaluate** on held-out liar-persona items: multiple-choice accuracy (the true value has the highest
  log-probability among the six KB values of the subject's language: the summed answer log-probability of
  one-word answers), the liar-answer rate, and open generation (factual accuracy of sampled continuations against
  the knowledge base); on honest-persona items the same (an edit must not break honest answers); controls:
  perplexity of training-distribution documents and whether continuations keep sentiment / topic / register /
  language.
* **Methods**: unsteered; few-shot (true facts prepended); mean-difference steering (the card's best truth cell);
  and per fit placement: linear SEA; Phi-SEA; SEA ``average`` (the bakeable linear form); ablations: positive part
  only, negative part only, reversed projections. Accuracy vs number of demonstrations for linear SEA, per fit
  placement.

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
    """Where SEA edits: mlp_out (where the official code applies it) or resid_post."""
    fit_sites: "tuple[Literal['edit-site', 'resid_post'], ...]" = ("edit-site", "resid_post")
    """Where the projections are fitted, one variant of the SEA rows each (the first listed first): edit-site = at
    --site (ours); resid_post = at the block output, the last block's after the final norm, as the official code
    fits (with --site mlp_out: the official placement)."""
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
        fits = tuple(self.fit_sites)
        if not fits or any(f not in FIT_SITES for f in fits) or len(set(fits)) != len(fits):
            raise WorkbenchError(f"fit_sites must list distinct values among {', '.join(FIT_SITES)}; got {fits!r}.")
        object.__setattr__(self, "fit_sites", fits)
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
    fit: dict  # fit placement -> k per layer (linear and Phi-SEA)
    cost: dict = field(default_factory=dict)


FIT_SITES: tuple[str, ...] = ("edit-site", "resid_post")


def _fit_label(fit_site: str, site: str) -> str:
    if fit_site == "edit-site":
        return f"fit at {site}"
    return "fit at resid_post, official" if site == "mlp_out" else "fit at resid_post"


def _fit(
    model: HookedModel,
    demos: list,
    sites: "list[HookSite]",
    ratio: float,
    feature: str,
    center: bool,
    fit_site: str = "edit-site",
) -> dict:
    """Projections per edited site, fitted at that site (``edit-site``) or at the block output (``resid_post``:
    the last block's through the final norm, as Hugging Face returns it)."""
    prompts_ = [d[0] for d in demos]
    greedy = last_logits(model, prompts_).argmax(-1).tolist()
    tok = model.tokenizer
    texts = {
        "base": [p + " " + tok.decode([g]).strip() for p, g in zip(prompts_, greedy)],
        "pos": [d[0] + " " + d[1] for d in demos],
        "neg": [d[0] + " " + d[2] for d in demos],
    }
    read = sites if fit_site == "edit-site" else [HookSite(s.layer, "resid_post") for s in sites]
    last = model.cfg.n_layers - 1
    acts = {}
    for k, ts in texts.items():
        seqs = [tokenize(model, t) for t in ts]
        got = collect(model, seqs, [(len(s) - 1, len(s)) for s in seqs], read, progress=False)
        if fit_site == "resid_post":
            got = torch.stack([_final_norm(model, a) if r.layer == last else a for r, a in zip(read, got)])
        acts[k] = got
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


def _final_norm(model: HookedModel, x: torch.Tensor) -> torch.Tensor:
    """The final norm (weight included) applied to last-block outputs ``x`` [n, d_model]: Hugging Face's last
    ``hidden_states`` entry."""
    with torch.no_grad():
        return model.ln_final(x[None].to(model.cfg.device)).float().cpu()[0]


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
    fits = {f: _fit(model, demos[: cfg.n_demos], sites, cfg.ratio, "identity", cfg.center, f) for f in cfg.fit_sites}
    fits_phi = {
        f: _fit(model, demos[: cfg.n_demos], sites, cfg.ratio, cfg.phi_feature, cfg.center, f) for f in cfg.fit_sites
    }
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
        "unsteered": ((), None, None),
        "few-shot": ((), shots, None),
        f"mean-difference ({steer[0].site.name} x{steer[0].scale:g})": (steer, None, None),
    }
    for f in cfg.fit_sites:
        lin, phi_ = fits[f], fits_phi[f]
        tag = f" [{_fit_label(f, cfg.site)}]"
        methods.update(
            {
                "SEA linear" + tag: (_edits(lin, combine="norm"), None, f),
                f"Phi-SEA ({cfg.phi_feature})" + tag: (_edits(phi_, combine="norm"), None, f),
                "SEA average (bakeable)" + tag: (_edits(lin, combine="average"), None, f),
                "ablation: positive part only" + tag: (_edits(lin, combine="norm", parts="pos"), None, f),
                "ablation: negative part only" + tag: (_edits(lin, combine="norm", parts="neg"), None, f),
                "ablation: reversed projections" + tag: (_edits(lin, combine="norm", reverse=True), None, f),
            }
        )
    docs = corpus_documents(40, seed=cfg.seed + 4)
    rows = []
    for label, (ivs, prefix, fit_site) in tqdm(methods.items(), desc="SEA study", disable=not progress):
        texts = [(prefix[i] + " " if prefix else "") + it[0] for i, it in enumerate(liar)]
        with torch.no_grad():
            g = generate(model, texts, *ivs, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        sc = score(list(g.texts), "truth", "honest", texts)
        keep = keeps_attributes(model, cfg.n_control, cfg.max_new_tokens, cfg.seed + 5, *ivs) if ivs else None
        rows.append(
            {
                "method": label,
                "fit_site": fit_site,
                "edit_site": cfg.site if fit_site else None,
                "mc_liar": mc_truth(model, liar, ivs, prefix),
                "mc_honest": mc_truth(model, honest, ivs, prefix and shots),
                "open_factual_accuracy": sc.factual_accuracy,
                "open_grammaticality": sc.grammaticality,
                "perplexity": round(perplexity(model, docs, *ivs), 4),
                "keeps_attributes": None if keep is None else keep["consistency"],
            }
        )
    by_demos = []
    for fit_site in cfg.fit_sites:
        for n in cfg.demo_counts:
            if n > len(demos):
                continue
            f = _fit(model, demos[:n], sites, cfg.ratio, "identity", cfg.center, fit_site)
            by_demos.append(
                {
                    "fit_site": fit_site,
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
            f: {
                "k_linear": {s.layer: list(p.k) for s, p in fits[f].items()},
                "k_phi": {s.layer: list(p.k) for s, p in fits_phi[f].items()},
            }
            for f in cfg.fit_sites
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
    curves = {}
    for f in r["config"]["fit_sites"]:
        pts = [x for x in r["by_demos"] if x["fit_site"] == f]
        curves[f"linear SEA [{_fit_label(f, r['config']['site'])}]"] = (
            [x["n_demos"] for x in pts],
            [x["accuracy"] for x in pts],
        )
    demos = lines(
        curves,
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
        f"SEA on toy truthfulness, {who(r)}, edited layers {r['config']['layers']} (edits at "
        f"{r['config']['site']}; projections fitted per row's placement): {verdict}.\n\n" + "\n".join(rows)
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
            f"  {m['method']:<72} liar items {a['accuracy']:.2f} {a['accuracy_ci']}  honest items "
            f"{h['accuracy']:.2f}  perplexity {m['perplexity']:.3f}"
        )
    return "\n".join(lines)


def _table_ci(x: dict) -> str:
    lo, hi = x["accuracy_ci"]
    return f"{x['accuracy']:.2f} [{lo:.4g}, {hi:.4g}]"


def table(results: "list[dict]") -> str:
    """The SEA study's tables, one per model (``analyses.spectral_study.Result`` as saved)."""
    cfg = results[0]["config"]
    placements = " and at ".join(_fit_label(f, cfg["site"])[len("fit at ") :] for f in cfg["fit_sites"])
    lines = [
        f"# SEA on toy truthfulness (`workbench analyze spectral`, defaults: edits at {cfg['site']} of the last "
        f"half of the blocks, projections fitted at {placements} (one variant each), ratio {cfg['ratio']}, "
        f"{'centred' if cfg['center'] else 'uncentred'} fit, "
        f"{cfg['n_demos']} demonstrations, {cfg['n_eval']} liar-persona and {cfg['n_eval']} honest-persona "
        f"items)",
        "",
        f"Each SEA row names its fit placement: [fit at {cfg['site']}] fits the projections at the site they edit; "
        "[fit at resid_post, official] fits them on the block outputs (the last block's after the final norm: the "
        "Hugging Face hidden states the official code saves) and applies them at the MLP output, as the official "
        "code does.",
    ]
    for r in results:
        ks = "; ".join(
            f"{_fit_label(f, r['config']['site'])}: k (k+, k-) per layer {v['k_linear']}, Phi-SEA k {v['k_phi']}"
            for f, v in r["fit"].items()
        )
        lines += [
            "",
            f"## {r['model']['name']} (edited layers {r['config']['layers']}; {ks}; {r['cost']['seconds']} s)",
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
        lines.append("")
        for f in r["config"]["fit_sites"]:
            by = ", ".join(f"{d['n_demos']}: {_table_ci(d)}" for d in r["by_demos"] if d["fit_site"] == f)
            lines.append(
                f"Linear SEA [{_fit_label(f, r['config']['site'])}] vs number of demonstrations (MC accuracy on "
                f"liar items): {by}"
            )
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
