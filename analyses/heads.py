"""Head sensitivity: which attention heads carry a property, by four methods, as layer x head maps.

On minimal pairs (positive / negative texts of equal token length) and a behaviour metric (default: the logit
difference, at the last position, between the next words that show ``target`` and those that show ``source``):

* **direct attribution**: each head's output at the last position, ``z[h] @ W_O[h]``, projected on the unit
  direction of the property at the readout layer (``resid_post``), mean over pairs of positive minus negative.
  Heads above the readout layer cannot write into it and are ``None``.
* **activation patching**: each head's output (``hook_z``, all positions) copied from the positive run into the
  negative run; the metric's change as a fraction of the clean gap ``m(pos) - m(neg)``.
* **attribution patching**: the first-order estimate of the same, for all heads from one backward pass:
  ``sum_pos,d grad_z m(neg) * (z_pos - z_neg)``, checked against real patching (correlation, top heads).
* **per-head steering**: the layer's direction added through one head only (``delta_z = v @ pinv(W_O[h])``, so the
  head writes the part of v in its output space), sampled continuations scored for the target rate and
  grammaticality at each strength.
"""

__all__ = [
    "Config",
    "Result",
    "section",
    "summary",
    "STUDY",
    "LogitDiff",
    "Projection",
    "run",
    "direct_attribution",
    "patching",
    "attribution_patching",
    "head_vector",
    "head_steering_effect",
    "head_steering",
    "plot",
    "toy_metric",
    "pair_batches",
]

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from analyses.common import Attribute, require_positive, resolve_steer, word_ids
from workbench import models
from workbench.directions import DirectionSet
from workbench.errors import WorkbenchError
from workbench.forward import batch_logits
from workbench.generate import generate, generate_at_strengths
from workbench.hooks import Capture
from workbench.interventions import AddDirection
from workbench.models import HookedModel, head_out_weights
from workbench.pairs import ContrastPairs
from workbench.report.sections import Section, who
from workbench.sites import HookSite
from workbench.studies import Study, StudyResult, on_model, register
from workbench.tokens import Batch, make_batch, pad_id_of, tokenize
from workbench.toy.evaluate import evidence_words, score
from workbench.toy.measure import best_cell, directions_for, steer_prompts
from workbench.toy.prompts import contrast_pairs

# ---------------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True, eq=False)
class LogitDiff:
    """Per example: logsumexp of the logits of ``target_ids[i]`` minus that of ``source_ids[i]`` at the last
    real position (a log-odds of "the next word shows target" against "shows source")."""

    target_ids: tuple
    source_ids: tuple
    site: None = None

    def value(self, logits: torch.Tensor, captured: "torch.Tensor | None", last: torch.Tensor) -> torch.Tensor:
        rows = logits[torch.arange(logits.shape[0]), last]  # [batch vocab]
        t = torch.stack([rows[i, list(ids)].logsumexp(-1) for i, ids in enumerate(self.target_ids)])
        s = torch.stack([rows[i, list(ids)].logsumexp(-1) for i, ids in enumerate(self.source_ids)])
        return t - s


@dataclass(frozen=True, eq=False)
class Projection:
    """Per example: the activation at ``site`` (last real position) projected on the unit ``direction``."""

    site: HookSite
    direction: torch.Tensor

    def value(self, logits: torch.Tensor, captured: "torch.Tensor | None", last: torch.Tensor) -> torch.Tensor:
        u = (self.direction / self.direction.norm()).to(captured)
        return captured[torch.arange(captured.shape[0]), last] @ u


@dataclass(frozen=True, eq=False)
class _PatchHead:
    """Replaces head ``head``'s ``hook_z`` at block ``layer`` with ``z`` [batch pos d_head], at every position."""

    layer: int
    head: int
    z: torch.Tensor

    def to_hooks(self, model: Any, layout: Any = None) -> list:
        def patch(x: torch.Tensor, hook: Any) -> torch.Tensor:
            x = x.clone()
            x[:, :, self.head] = self.z.to(x)
            return x

        return [(HookSite(self.layer, "z").check(model), patch)]


def pair_batches(model: HookedModel, pairs: ContrastPairs) -> "tuple[Batch, Batch, list[int]]":
    """Right-padded positive and negative batches of the pairs of equal token length, and those pairs' indices."""
    pos, neg, kept = [], [], []
    for i, p in enumerate(pairs.pairs):
        a, b = (tokenize(model, t) for t in p.texts)
        if len(a) == len(b):
            pos.append(a)
            neg.append(b)
            kept.append(i)
    if not kept:
        raise WorkbenchError("no pair has equal token lengths; head patching needs minimal pairs (same length).")
    pad = pad_id_of(model)
    return make_batch(pos, pad, "right"), make_batch(neg, pad, "right"), kept


def _run(
    model: HookedModel,
    batch: Batch,
    metric: Any,
    sites: "list[HookSite]",
    *,
    grad: bool = False,
    patch: "tuple[int, int, torch.Tensor] | None" = None,
) -> "tuple[torch.Tensor, dict]":
    """The metric on ``batch`` (one head's z patched in when ``patch``) and the activations at ``sites``, which
    keep their gradient after ``backward`` when ``grad``."""
    site = getattr(metric, "site", None)
    cap = Capture(list(sites) + ([site] if site is not None else []), retain_grad=grad)
    edits = () if patch is None else (_PatchHead(*patch),)
    with torch.enable_grad() if grad else torch.no_grad():
        logits = batch_logits(model, batch, *edits, cap)
        m = metric.value(logits.float(), cap.out.get(site), batch.end - 1)
    return m, cap.out


def _z_sites(model: HookedModel, layers: "list[int]") -> "list[HookSite]":
    return [HookSite(layer, "z") for layer in layers]


# ---------------------------------------------------------------------------------------------------- methods


def direct_attribution(
    model: HookedModel, pos: Batch, neg: Batch, direction: torch.Tensor, readout_layer: int
) -> "list[list[float | None]]":
    """[layer][head]: mean over pairs of (head output . unit direction), positive minus negative, last position."""
    u = direction.float() / direction.float().norm()
    layers = list(range(model.cfg.n_layers))
    sites = _z_sites(model, layers)
    caps = []
    for batch in (pos, neg):
        cap = Capture(sites)
        with torch.no_grad():
            batch_logits(model, batch, cap)
        caps.append(cap.out)
    out = []
    for layer in layers:
        if layer > readout_layer:
            out.append([None] * model.cfg.n_heads)
            continue
        w = head_out_weights(model, layer).float()  # [heads d_head d_model]
        per = []
        for cap, batch in zip(caps, (pos, neg)):
            z = cap[HookSite(layer, "z")].float()[torch.arange(batch.tokens.shape[0]), batch.end - 1]  # [b h dh]
            per.append(torch.einsum("bhd,hdm,m->bh", z, w.to(z), u.to(z)).mean(0))
        out.append([float(x) for x in per[0] - per[1]])
    return out


def patching(
    model: HookedModel, pos: Batch, neg: Batch, metric_pos: Any, metric_neg: Any, layers: "list[int] | None" = None
) -> "tuple[list[list[float]], float, float]":
    """[layer][head] metric change (absolute) when one head's z comes from the positive run; plus clean m(pos),
    m(neg) means. ``metric_neg`` evaluates on the negative rows (patched runs are negative runs)."""
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    sites = _z_sites(model, layers)
    m_pos, z_pos = _run(model, pos, metric_pos, sites)
    m_neg, _ = _run(model, neg, metric_neg, [])
    out = []
    for layer in layers:
        row = []
        for h in range(model.cfg.n_heads):
            m, _ = _run(model, neg, metric_neg, [], patch=(layer, h, z_pos[HookSite(layer, "z")][:, :, h]))
            row.append(float((m - m_neg).mean()))
        out.append(row)
    return out, float(m_pos.mean()), float(m_neg.mean())


def attribution_patching(
    model: HookedModel, pos: Batch, neg: Batch, metric_neg: Any, layers: "list[int] | None" = None
) -> "list[list[float]]":
    """[layer][head] first-order estimate of ``patching``: grad of m(neg) w.r.t. z, dotted with z_pos - z_neg over
    real positions and d_head, mean over pairs. One forward + backward; parameter grads are cleared after."""
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    sites = _z_sites(model, layers)
    with torch.no_grad():
        _, z_pos = _run(model, pos, metric_neg, sites)
    try:
        m, z_neg = _run(model, neg, metric_neg, sites, grad=True)
        m.sum().backward()
        mask = neg.attention_mask.bool().to(m.device)[:, :, None, None]
        out = []
        for s in sites:
            zn = z_neg[s]
            contrib = (zn.grad * (z_pos[s].to(zn) - zn.detach()) * mask).sum(dim=(1, 3))  # [batch heads]
            out.append([float(x) for x in contrib.mean(0)])
        return out
    finally:
        model.zero_grad(set_to_none=True)


def head_vector(model: HookedModel, layer: int, head: int, v: torch.Tensor) -> "tuple[torch.Tensor, float]":
    """The ``hook_z`` edit [n_heads * d_head] that adds ``v`` through head ``head`` only (least squares:
    ``dz @ W_O[head] ~ v``), and the share |dz @ W_O[head]| / |v| of ``v`` that head can write."""
    w = head_out_weights(model, layer).float()  # [heads d_head d_model]
    dz = torch.zeros(w.shape[0], w.shape[1])
    dz[head] = v.float() @ torch.linalg.pinv(w[head])
    return dz.flatten(), float((dz[head] @ w[head]).norm() / v.float().norm())


def head_steering_effect(
    model: HookedModel, neg: Batch, metric_neg: Any, vectors: "dict[int, torch.Tensor]", strength: float
) -> "tuple[list[list[float]], list[list[float]]]":
    """[layer][head] mean metric change on the negative runs when ``strength`` x the layer's vector is added
    through that head alone (teacher-forced, no sampling); and [layer][head] writable share."""
    base, _ = _run(model, neg, metric_neg, [])
    effect, share = [], []
    for layer in range(model.cfg.n_layers):
        row_e, row_s = [], []
        for h in range(model.cfg.n_heads):
            dz, sh = head_vector(model, layer, h, vectors[layer])
            with torch.no_grad():
                logits = batch_logits(model, neg, AddDirection(HookSite(layer, "z"), dz, strength))
            row_e.append(float((metric_neg.value(logits.float(), None, neg.end - 1) - base).mean()))
            row_s.append(sh)
        effect.append(row_e)
        share.append(row_s)
    return effect, share


def head_steering(
    model: HookedModel,
    ds: DirectionSet,
    attribute: str,
    source: str,
    target: str,
    strengths: "tuple[float, ...]",
    n_prompts: int,
    max_new_tokens: int,
    seed: int,
) -> dict:
    """Per strength: [layer][head] target rate and grammaticality of sampled continuations with the layer's
    direction added through one head (all strengths of one head in one batched generation pass), and the
    unsteered target rate of the same prompts."""
    texts = [p.text for p in steer_prompts(attribute, source, n_prompts, seed + 1)]
    with torch.no_grad():
        plain = generate(model, texts, max_new_tokens=max_new_tokens, seed=seed)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    rate = {s: [[0.0] * n_heads for _ in range(n_layers)] for s in strengths}
    gram = {s: [[0.0] * n_heads for _ in range(n_layers)] for s in strengths}
    for layer in range(n_layers):
        for h in range(n_heads):
            dz, _ = head_vector(model, layer, h, ds.at(layer).vector)
            with torch.no_grad():
                gens = generate_at_strengths(
                    model,
                    texts,
                    AddDirection(HookSite(layer, "z"), dz, 1.0),
                    list(strengths),
                    max_new_tokens=max_new_tokens,
                    seed=seed,
                )
            for s, g in zip(strengths, gens):
                sc = score(list(g.texts), attribute, target, texts)
                rate[s][layer][h], gram[s][layer][h] = sc.target_rate, sc.grammaticality
    return {
        "strengths": list(strengths),
        "unsteered_rate": score(list(plain.texts), attribute, target, texts).target_rate,
        "target_rate": {str(s): rate[s] for s in strengths},
        "grammaticality": {str(s): gram[s] for s in strengths},
    }


# ---------------------------------------------------------------------------------------------------- study


def toy_metric(model: HookedModel, texts: "list[str]", attribute: str, target: str, source: str) -> LogitDiff:
    """The default behaviour metric on toy texts: next-word log-odds of ``target`` evidence vs ``source``."""
    cache: dict = {}  # evidence sets repeat across texts (all of them, but for truth)

    def ids(words: "list[str]") -> tuple:
        key = tuple(words)
        if key not in cache:
            cache[key] = word_ids(model, words)
        return cache[key]

    return LogitDiff(
        tuple(ids(evidence_words(attribute, target, t)) for t in texts),
        tuple(ids(evidence_words(attribute, source, t)) for t in texts),
    )


@dataclass(frozen=True)
class Config:
    attribute: Attribute = "sentiment"
    """Toy attribute whose heads are studied."""
    source: "str | None" = None
    """Value of the negative side (default: the attribute's usual source)."""
    target: "str | None" = None
    """Value of the positive side (default: the attribute's usual target)."""
    n_pairs: int = 64
    """Minimal pairs for attribution and patching."""
    readout_layer: "int | None" = field(default=None, metadata={"none": "last"})
    """Block whose direction direct attribution reads (default: the last block)."""
    steer_strengths: "tuple[float, ...]" = (2.0, 4.0)
    """Strengths of the per-head steering."""
    n_prompts: int = 32
    """Prompts per steered head."""
    max_new_tokens: int = 16
    """Tokens generated per prompt in the per-head steering."""
    top_k: int = 5
    """Heads compared between attribution and real patching."""
    generate: bool = True
    """Run the sampled per-head steering (--no-generate keeps the rest)."""
    seed: int = 0
    """Seed of pairs, prompts and sampling."""

    def __post_init__(self) -> None:
        resolve_steer(self)
        if not all(isinstance(s, (int, float)) and math.isfinite(s) for s in self.steer_strengths):
            raise WorkbenchError(f"steer_strengths must be finite numbers, got {self.steer_strengths!r}.")
        object.__setattr__(self, "steer_strengths", tuple(float(s) for s in self.steer_strengths))
        require_positive(self, "n_pairs", "n_prompts", "max_new_tokens", "top_k")


@dataclass(frozen=True)
class Result(StudyResult):
    KIND = "heads"

    config: dict
    model: dict
    direct: list
    patching: list  # fraction of the clean gap
    attribution: list  # fraction of the clean gap (first-order estimate)
    clean: dict  # m_pos, m_neg, n_pairs
    agreement: dict
    top: dict  # method -> [(layer, head, value)] by |value|
    steering: dict
    cost: dict = field(default_factory=dict)


def _top(matrix: "list[list[float | None]]", k: int) -> list:
    cells = [(layer, h, v) for layer, row in enumerate(matrix) for h, v in enumerate(row) if v is not None]
    return [list(c) for c in sorted(cells, key=lambda c: -abs(c[2]))[:k]]


def run(
    model: HookedModel, cfg: Config = Config(), *, name: str = "", steer: "bool | None" = None, progress: bool = True
) -> Result:
    """All four head analyses for ``cfg.attribute`` on ``model`` (see the module docstring); ``steer`` overrides
    ``cfg.generate``."""
    from tqdm.auto import tqdm

    steer = cfg.generate if steer is None else steer

    t0 = time.perf_counter()
    n_layers = model.cfg.n_layers
    readout = n_layers - 1 if cfg.readout_layer is None else cfg.readout_layer
    if not 0 <= readout < n_layers:
        raise WorkbenchError(f"readout_layer must be in 0..{n_layers - 1}, got {readout}.")
    steps = tqdm(total=4 if steer else 3, desc=f"heads ({cfg.attribute})", disable=not progress)
    pairs = contrast_pairs(cfg.attribute, cfg.target, cfg.source, n=cfg.n_pairs, seed=cfg.seed)
    ds = directions_for(model, cfg.attribute, cfg.source, cfg.target, n_pairs=200, seed=cfg.seed)
    pos, neg, kept = pair_batches(model, pairs)
    texts = [pairs.pairs[i].texts for i in kept]
    m_pos = toy_metric(model, [t[0] for t in texts], cfg.attribute, cfg.target, cfg.source)
    m_neg = toy_metric(model, [t[1] for t in texts], cfg.attribute, cfg.target, cfg.source)
    direct = direct_attribution(model, pos, neg, ds.at(readout).vector, readout)
    steps.update()
    patched, clean_pos, clean_neg = patching(model, pos, neg, m_pos, m_neg)
    steps.update()
    attr = attribution_patching(model, pos, neg, m_neg)
    steps.update()
    gap = clean_pos - clean_neg
    frac = lambda mat: [[x / gap for x in row] for row in mat]  # noqa: E731
    patched, attr = frac(patched), frac(attr)
    flat_p = torch.tensor([x for row in patched for x in row])
    flat_a = torch.tensor([x for row in attr for x in row])
    top_p = _top(patched, cfg.top_k)
    agreement = {
        "pearson": float(torch.corrcoef(torch.stack([flat_p, flat_a]))[0, 1]),
        "top1_same": _top(patched, 1)[0][:2] == _top(attr, 1)[0][:2],
        "top_k_overlap": len({tuple(c[:2]) for c in top_p} & {tuple(c[:2]) for c in _top(attr, cfg.top_k)}),
        "max_abs_error_on_top_k": max(abs(attr[layer][h] - v) for layer, h, v in top_p),
    }
    vectors = {layer: ds.at(layer).vector for layer in range(n_layers)}
    effect, share = head_steering_effect(model, neg, m_neg, vectors, max(cfg.steer_strengths))
    steering = {"metric_effect": frac(effect), "metric_strength": max(cfg.steer_strengths), "writable_share": share}
    top_e = _top(steering["metric_effect"], cfg.top_k)
    if steer:
        steering.update(
            head_steering(
                model,
                ds,
                cfg.attribute,
                cfg.source,
                cfg.target,
                cfg.steer_strengths,
                cfg.n_prompts,
                cfg.max_new_tokens,
                cfg.seed,
            )
        )
        steps.update()
        cells = [
            {
                "strength": s,
                "layer": layer,
                "head": h,
                "target_rate": steering["target_rate"][str(s)][layer][h],
                "grammaticality": steering["grammaticality"][str(s)][layer][h],
            }
            for s in cfg.steer_strengths
            for layer in range(n_layers)
            for h in range(model.cfg.n_heads)
        ]
        best = best_cell(cells, baseline=steering["unsteered_rate"])
        steering["best"] = None if best is None else {k: best[k] for k in ("strength", "layer", "head", "target_rate")}
    steps.close()
    top = {
        "direct": _top(direct, cfg.top_k),
        "patching": top_p,
        "attribution": _top(attr, cfg.top_k),
        "steering": top_e,
    }
    fp = models.fingerprint(model)
    return Result(
        {**asdict(cfg), "readout_layer": readout},
        {"name": name, "n_layers": n_layers, "n_heads": model.cfg.n_heads, "fingerprint": fp.to_dict()},
        direct,
        patched,
        attr,
        {"m_pos": clean_pos, "m_neg": clean_neg, "n_pairs": len(kept)},
        agreement,
        top,
        steering,
        {"seconds": round(time.perf_counter() - t0, 2)},
    )


def plot(result: "Result | dict") -> dict:
    """Layer x head maps: direct attribution, patching, attribution patching, and per-head steering."""
    from workbench.plotting import heatmap_grid

    r = result.to_dict() if isinstance(result, Result) else result
    c, m = r["config"], r["model"]
    heads, layers = list(range(m["n_heads"])), list(range(m["n_layers"]))
    who = m.get("name") or m["fingerprint"]["architecture"]
    figs = {
        "heads_maps": heatmap_grid(
            [
                ("direct attribution", r["direct"], "RdBu", 0.0),
                ("patching (gap fraction)", r["patching"], "RdBu", 0.0),
                ("attribution patching", r["attribution"], "RdBu", 0.0),
            ],
            heads,
            layers,
            title=f"{who}: heads carrying {c['attribute']} ({c['source']} vs {c['target']})",
            x_title="head",
            y_title="layer",
        )
    }
    s = r["steering"]
    figs["heads_steering_logodds"] = heatmap_grid(
        [(f"log-odds change (gap fraction), x{s['metric_strength']}", s["metric_effect"], "RdBu", 0.0)],
        heads,
        layers,
        title=f"{who}: steering through one head",
        x_title="head",
        y_title="layer",
    )
    panels = [(f"{c['target']} rate, x{k}", v) for k, v in s.get("target_rate", {}).items()]
    panels += [(f"grammaticality, x{k}", v) for k, v in s.get("grammaticality", {}).items()]
    if panels:
        figs["heads_steering"] = heatmap_grid(
            panels,
            heads,
            layers,
            title=f"{who}: sampled steering through one head: behaviour beside fluency",
            x_title="head",
            y_title="layer",
            scale=("Viridis", 0.0, 1.0),
        )
    return figs


def section(r: dict) -> Section:
    """The report's section: the top heads per method and how well attribution patching matches real patching."""
    c, t, a = r["config"], r["top"], r["agreement"]
    fmt = lambda cells: ", ".join(f"L{x[0]}H{x[1]} ({x[2]:+.2f})" for x in cells[:3])  # noqa: E731
    text = (
        f"Heads carrying {c['attribute']} on {who(r)} ({r['clean']['n_pairs']} minimal pairs; clean log-odds "
        f"gap {r['clean']['m_pos'] - r['clean']['m_neg']:.2f}). Direct attribution: {fmt(t['direct'])}. "
        f"Activation patching (fraction of the gap): {fmt(t['patching'])}. Attribution patching: "
        f"{fmt(t['attribution'])} (Pearson r with real patching {a['pearson']:.2f}, top-{c['top_k']} overlap "
        f"{a['top_k_overlap']}). Steering through one head (teacher-forced log-odds): "
        f"{fmt(t.get('steering', [])) or 'not run'}." + _sampled(r["steering"])
    )
    return Section(Result.KIND, f"Head sensitivity: {c['attribute']} ({who(r)})", text, plot(r), 20)


def summary(result: Result) -> str:
    cfg = result.config
    lines = [
        f"heads for {cfg['attribute']} on {result.model['name']} ({result.cost['seconds']} s); top head per "
        f"method (layer, head, value):"
    ]
    for method, cells in result.top.items():
        lines.append(f"  {method:<12} " + "  ".join(f"L{c[0]}H{c[1]} {c[2]:+.3f}" for c in cells[:3]))
    a = result.agreement
    lines.append(
        f"attribution vs real patching: pearson {a['pearson']:.2f}, top-{cfg['top_k']} overlap {a['top_k_overlap']}"
    )
    if "target_rate" in result.steering:
        lines.append(_sampled(result.steering).strip())
    return "\n".join(lines)


def _sampled(steering: dict) -> str:
    """The sampled per-head steering's best cell, or that none passes (empty when it was not run)."""
    if "target_rate" not in steering:
        return ""
    b = steering.get("best")
    if b is None:
        return (
            " Sampled steering through one head: no steering cell passes (none beats the unsteered rate within the "
            "fluency bound)."
        )
    return (
        f" Best sampled steering through one head: L{b['layer']}H{b['head']} x{b['strength']:g}, target rate "
        f"{b['target_rate']:.2f}"
        + (f" (unsteered {steering['unsteered_rate']:.2f})." if "unsteered_rate" in steering else ".")
    )


STUDY = register(
    Study(
        "heads",
        "direct attribution, patching, attribution patching, per-head steering",
        Config,
        Result,
        on_model(run),
        plot,
        section,
        summary,
    )
)
