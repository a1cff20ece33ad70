"""Dynamic Activation Composition (DAC; Scalena, Sarti & Nissim 2024): step-specific in-context vectors and
per-step, information-theoretic strengths for one or several properties.

**In-context vectors** (``icv``). Greedy generation from N few-shot prompts with the property (A) and N without
(B, parallel texts); at every generation step t and every layer, the activation at the last position (t = 0: the
last prompt token; t > 0: the token generated at t - 1) is averaged over prompts still running (a prompt counts up
to and including the step that emits EOS, as the seed's loop breaks after it):
``delta[t, l] = mean_A - mean_B``. The seed reads the attention output projection's input (``hook_z``, flattened)
at all layers; ``kind="resid_post"`` reads the residual stream instead. The greedy decoding is a plain argmax
over the whole vocabulary, as the seed's and as ``generate_composed``'s, so extraction and steering decode alike;
``ban_special=True`` bans padding and BOS tokens during extraction only (a named deviation: where few-shot
prompts end at a document boundary, the unbanned argmax is often BOS, and banning it changes those trajectories).

**Application** (``StepAdd``). Position P - 1 + t of a row whose prompt has P tokens gets ``alpha[t] * delta[t]`` at
every layer, for every property summed; positions before P - 1 are never touched. Each position keeps the vector
of its own step, so a KV-cached generation equals the seed's full recompute (tested).

**Strengths** (``generate_composed``): ``fixed`` (alpha_t = alpha), ``start`` (only t = 0), ``diminishing``
(alpha (1 - t/T)) and ``dynamic``: at each step, per property k, a probe pass steered with ``alpha_max`` at every
position so far and an unsteered pass give next-token distributions; on the union S of their top-p sets (each
keeping the first token past p), renormalised, ``alpha_k = clip(KL(unsteered || probe_k), 0, alpha_max)``. The seed
code's ``F.kl_div(..., reduction='batchmean')`` on a 1-D tensor divides that KL by |S|: ``normalisation="seed"``
reproduces it, ``"none"`` (default) is the plain KL. Several properties each get their own alpha; their vectors add.

Cost per step: the unsteered pass and all probes run as **one** batched forward (their own KV cache), the steered
pass as a second one (it needs this step's alphas, which depend on the first pass's logits at the same position,
so the two cannot share a forward exactly). ``timing="lagged"`` puts all of them in one batched forward per step
by using, at step t >= 1, the alpha measured at step t - 1 (and alpha_max at t = 0, where the measured traces of the
exact rule sit): an approximation of the method, offered for speed and compared in the benchmark.
"""

__all__ = ["STRATEGIES", "StepVectors", "icv", "StepAdd", "Composed", "generate_composed", "dynamic_alpha"]

import math
from dataclasses import dataclass
from typing import Any

import torch

from workbench.errors import WorkbenchError
from workbench.generate import Decoder, generate
from workbench.hooks import Capture, applied
from workbench.models import HookedModel, tokenizer_of
from workbench.positions import TokenLayout
from workbench.sites import HookSite
from workbench.tokens import Batch, make_batch, pad_id_of, tokenize

STRATEGIES: tuple[str, ...] = ("fixed", "start", "diminishing", "dynamic")


@dataclass(frozen=True, eq=False)
class StepVectors:
    """One property's in-context vectors: ``deltas[t, layer]`` (flattened site width), from ``n_prompts`` pairs."""

    deltas: torch.Tensor  # [T, n_layers, width]
    kind: str = "z"
    n_prompts: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.deltas, torch.Tensor) or self.deltas.ndim != 3 or not torch.isfinite(self.deltas).all():
            raise WorkbenchError("StepVectors.deltas must be a finite [steps, n_layers, width] tensor.")
        if self.kind not in ("z", "resid_post"):
            raise WorkbenchError(
                f"StepVectors.kind must be 'z' (the seed's o_proj input) or 'resid_post', got {self.kind!r}."
            )

    @property
    def steps(self) -> int:
        return self.deltas.shape[0]


def _last_position(x: torch.Tensor, site: HookSite) -> torch.Tensor:
    return x[:, -1].reshape(x.shape[0], -1).float().cpu()


def _step_means(model: HookedModel, prompts: "list[str]", steps: int, kind: str, ban_special: bool) -> torch.Tensor:
    sites = [HookSite(layer, kind) for layer in range(model.cfg.n_layers)]
    rec = Capture(sites, _last_position, keep="all")  # one entry per decoding step
    g = generate(model, prompts, rec, max_new_tokens=steps, temperature=0.0, stop_at_eos=False, ban_special=ban_special)
    eos = tokenizer_of(model).eos_token_id
    running = torch.ones(len(prompts), steps, dtype=torch.bool)  # a row stops counting after it emitted EOS
    for i, row in enumerate(g.tokens):
        if eos in row:
            running[i, row.index(eos) + 1 :] = False
    acts = torch.stack([torch.stack(rec.out[s][:steps], 0) for s in sites], 1)  # [T, L, rows, width]
    w = running.T.float()[:, None, :, None]
    return (acts * w).sum(2) / w.sum(2).clamp_min(1)


def icv(
    model: HookedModel,
    with_property: "list[str]",
    without: "list[str]",
    *,
    steps: int = 24,
    kind: str = "z",
    ban_special: bool = False,
) -> StepVectors:
    """Step- and layer-specific in-context vectors (see the module docstring).

    Args:
        steps: generation steps T of the vectors.
        kind: ``"z"`` (the seed's o_proj input, flattened) or ``"resid_post"``.
        ban_special: ``False`` (the seed, and the same decoding as ``generate_composed``): plain greedy argmax;
            ``True`` never picks padding or BOS tokens during extraction.
    """
    if isinstance(with_property, str) or isinstance(without, str):
        raise WorkbenchError("icv takes two lists of few-shot prompts; wrap a single prompt in a list.")
    if not with_property or len(with_property) != len(without):
        raise WorkbenchError("icv needs two non-empty, equally long (parallel) lists of few-shot prompts.")
    if steps < 1:
        raise WorkbenchError(f"steps must be >= 1, got {steps}.")
    if kind not in ("z", "resid_post"):
        raise WorkbenchError(f"kind must be 'z' (the seed's o_proj input) or 'resid_post', got {kind!r}.")
    if not isinstance(ban_special, bool):
        raise WorkbenchError(f"ban_special must be True or False, got {ban_special!r}.")
    delta = _step_means(model, with_property, steps, kind, ban_special) - _step_means(
        model, without, steps, kind, ban_special
    )
    return StepVectors(delta, kind, len(with_property))


class StepAdd:
    """Adds ``sum_k alphas[k][row, t] * deltas_k[t, layer]`` at position prompt_end - 1 + t of each row, at every
    layer's site. ``alphas`` are tensors [rows, T] read at hook time, so a generation loop can fill in this step's
    values before the pass that uses them."""

    def __init__(self, properties: "list[StepVectors]", alphas: "list[torch.Tensor]") -> None:
        if len(properties) != len(alphas) or not properties:
            raise WorkbenchError("StepAdd needs one alpha table per property.")
        kinds = {p.kind for p in properties}
        if len(kinds) != 1:
            raise WorkbenchError("all composed properties must be read at the same site kind.")
        self.properties, self.alphas, self.kind = properties, alphas, kinds.pop()

    def to_hooks(self, model: Any, layout: "TokenLayout | None" = None) -> list:
        if layout is None:
            raise WorkbenchError("StepAdd needs the token layout of a generation (prompt ends, cache offset).")
        n_layers = model.cfg.n_layers
        for p in self.properties:
            if p.deltas.shape[1] != n_layers:
                raise WorkbenchError(f"in-context vectors have {p.deltas.shape[1]} layers, the model {n_layers}.")

        def add(x: torch.Tensor, hook: Any, layer: int = 0) -> torch.Tensor:
            pos = layout.offset + torch.arange(x.shape[1], device=x.device)  # absolute positions of this chunk
            t = pos[None, :] - (layout.prompt_end.to(x.device)[:, None] - 1)  # step index per (row, pos)
            flat = x.reshape(x.shape[0], x.shape[1], -1)
            delta = torch.zeros_like(flat)
            for p, alpha in zip(self.properties, self.alphas):
                steps = p.steps
                valid = (t >= 0) & (t < steps)
                tc = t.clamp(0, steps - 1)
                a = alpha.to(x.device).gather(1, tc) * valid  # [rows, pos]
                delta = delta + a[..., None].to(x.dtype) * p.deltas[:, layer].to(x)[tc]
            return (flat + delta).reshape(x.shape)

        return [
            (HookSite(layer, self.kind).check(model), lambda x, hook, layer=layer: add(x, hook, layer))
            for layer in range(n_layers)
        ]


def _top_p_mask(logits: torch.Tensor, p: float) -> torch.Tensor:
    probs = logits.softmax(-1)
    sorted_p, idx = probs.sort(-1, descending=True)
    keep = (sorted_p.cumsum(-1) - sorted_p) < p  # keeps the first token past p
    return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, idx, keep)


def dynamic_alpha(
    unsteered: torch.Tensor,
    probe: torch.Tensor,
    *,
    top_p: float = 0.9,
    alpha_max: float = 2.0,
    normalisation: str = "none",
) -> torch.Tensor:
    """Per row: clip(KL(unsteered || probe) on the union of the two top-p sets, renormalised, 0, alpha_max)."""
    if normalisation not in ("none", "seed"):
        raise WorkbenchError(
            f"normalisation must be 'none' or 'seed' (divide by |S| as the seed code), got {normalisation!r}."
        )
    s = _top_p_mask(unsteered, top_p) | _top_p_mask(probe, top_p)
    neg = torch.finfo(unsteered.dtype).min
    lp = unsteered.masked_fill(~s, neg).log_softmax(-1)
    lq = probe.masked_fill(~s, neg).log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).masked_fill(~s, 0.0).sum(-1)
    if normalisation == "seed":
        kl = kl / s.sum(-1)
    return kl.clamp(0.0, alpha_max)


@dataclass(frozen=True)
class Composed:
    prompts: tuple
    tokens: tuple
    texts: tuple
    alphas: torch.Tensor  # [rows, properties, steps] the strengths used
    kl: "torch.Tensor | None"  # [rows, properties, steps] dynamic only: the clipped-before KL


def _schedule(strategy: str, alpha: float, steps: int) -> torch.Tensor:
    t = torch.arange(steps, dtype=torch.float32)
    return {
        "fixed": torch.full((steps,), alpha),
        "start": (t == 0).float() * alpha,
        "diminishing": alpha * (1 - t / steps),
    }[strategy]


def generate_composed(
    model: HookedModel,
    prompts: "list[str]",
    properties: "list[StepVectors]",
    strategy: str = "dynamic",
    *,
    alpha: "float | list[float]" = 1.0,
    alpha_max: float = 2.0,
    top_p: float = 0.9,
    normalisation: str = "none",
    max_new_tokens: "int | None" = None,
    use_cache: bool = True,
    timing: str = "exact",
) -> Composed:
    """Greedy generation from ``prompts`` with the properties composed under ``strategy`` (module docstring)."""
    if timing not in ("exact", "lagged"):
        raise WorkbenchError(
            f"timing must be 'exact' or 'lagged' (one pass per step, alpha one step late), got {timing!r}."
        )
    if strategy not in STRATEGIES:
        raise WorkbenchError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}.")
    if isinstance(prompts, str) or not prompts or not properties:
        raise WorkbenchError("pass a non-empty list of prompts and at least one property.")
    if not (0 < top_p <= 1) or not (alpha_max > 0 and math.isfinite(alpha_max)):
        raise WorkbenchError(f"need 0 < top_p <= 1 and a finite alpha_max > 0; got {top_p}, {alpha_max}.")
    k = len(properties)
    alphas_in = list(alpha) if isinstance(alpha, (list, tuple)) else [float(alpha)] * k
    if len(alphas_in) != k:
        raise WorkbenchError(f"got {len(alphas_in)} alphas for {k} properties.")
    steps = min(p.steps for p in properties)
    t_max = steps if max_new_tokens is None else max_new_tokens
    if t_max > steps:
        raise WorkbenchError(f"the in-context vectors cover {steps} steps; generate at most that many tokens.")
    seqs = [tokenize(model, p) for p in prompts]
    b = len(seqs)
    batch = make_batch(seqs, pad_id_of(model), "left")
    if strategy == "dynamic" and timing == "lagged":
        return _lagged(model, prompts, properties, batch, k, steps, t_max, alpha_max, top_p, normalisation, use_cache)
    # steered alphas [rows, T] per property; dynamic fills column t at step t
    steer_a = [
        (_schedule(strategy, a, steps)[None].repeat(b, 1) if strategy != "dynamic" else torch.zeros(b, steps))
        for a in alphas_in
    ]
    kl_trace = torch.zeros(b, k, steps) if strategy == "dynamic" else None
    # probe batch: group 0 unsteered, group j (1..k) property j at alpha_max everywhere
    probe_a = [torch.zeros((k + 1) * b, steps) for _ in range(k)]
    for j in range(k):
        probe_a[j][(j + 1) * b : (j + 2) * b] = alpha_max
    steer_iv, probe_iv = StepAdd(properties, steer_a), StepAdd(properties, probe_a)
    steered = Decoder(model, batch, use_cache=use_cache)
    probes = Decoder(model, _repeat(batch, k + 1), use_cache=use_cache) if strategy == "dynamic" else None
    out = []
    with torch.no_grad():
        for step in range(t_max):
            if probes is not None:
                with applied(model, probe_iv, layout=probes.layout):
                    last = probes.logits()
                for j, a in enumerate(_step_alphas(last, b, k, top_p, normalisation)):
                    if kl_trace is not None:
                        kl_trace[:, j, step] = a.cpu()
                    steer_a[j][:, step] = a.clamp(0.0, alpha_max).cpu()
            with applied(model, steer_iv, layout=steered.layout):
                nxt = steered.logits().argmax(-1)
            out.append(nxt.cpu())
            steered.append(nxt)
            if probes is not None:
                probes.append(nxt.repeat(k + 1))
    used = torch.stack([a[:, :t_max] for a in steer_a], 1)
    return _finish(model, prompts, out, used, None if kl_trace is None else kl_trace[:, :, :t_max])


def _repeat(batch: Batch, n: int) -> Batch:
    """``n`` copies of ``batch``, stacked as consecutive groups of rows."""
    return Batch(
        batch.tokens.repeat(n, 1), batch.attention_mask.repeat(n, 1), batch.start.repeat(n), batch.end.repeat(n)
    )


def _step_alphas(last: torch.Tensor, b: int, k: int, top_p: float, normalisation: str) -> "list[torch.Tensor]":
    """Each property's uncapped KL alpha for one step, from logits laid out as [unsteered rows, then ``k`` blocks of
    ``b`` rows probed with one property each]."""
    return [
        dynamic_alpha(last[:b], last[(j + 1) * b : (j + 2) * b], top_p=top_p, alpha_max=float("inf"),
                      normalisation=normalisation)
        for j in range(k)
    ]  # fmt: skip


def _finish(model: HookedModel, prompts: "list[str]", out: list, used: torch.Tensor, kl) -> Composed:
    eos = tokenizer_of(model).eos_token_id
    ids = torch.stack(out, 1).tolist()
    rows = tuple(tuple(r[: r.index(eos)] if eos is not None and eos in r else r) for r in ids)
    texts = tuple(tokenizer_of(model).decode(list(r), skip_special_tokens=True) for r in rows)
    return Composed(tuple(prompts), rows, texts, used, kl)


def _lagged(model, prompts, properties, batch, k, steps, t_max, alpha_max, top_p, normalisation, use_cache) -> Composed:
    """Dynamic strengths with one batched forward per step: groups [unsteered, probe_1..probe_k, steered]; the
    steered rows use at step t the alpha measured at step t - 1 (alpha_max at t = 0)."""
    b = batch.tokens.shape[0]
    g = k + 2
    tables = [torch.zeros(g * b, steps) for _ in range(k)]
    for j in range(k):
        tables[j][(j + 1) * b : (j + 2) * b] = alpha_max
        tables[j][(k + 1) * b :, 0] = alpha_max
    iv = StepAdd(properties, tables)
    kl = torch.zeros(b, k, steps)
    rows = Decoder(model, _repeat(batch, g), use_cache=use_cache)
    out = []
    with torch.no_grad(), applied(model, iv, layout=rows.layout):
        for step in range(t_max):
            last = rows.logits()
            for j, a in enumerate(_step_alphas(last, b, k, top_p, normalisation)):
                kl[:, j, step] = a.cpu()
                if step + 1 < steps:
                    tables[j][(k + 1) * b :, step + 1] = a.clamp(0.0, alpha_max).cpu()
            nxt = last[(k + 1) * b :].argmax(-1)
            out.append(nxt.cpu())
            rows.append(nxt.repeat(g))
    used = torch.stack([t[(k + 1) * b :, :t_max] for t in tables], 1)
    return _finish(model, prompts, out, used, kl[:, :, :t_max])
