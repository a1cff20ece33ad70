"""Collecting activations at sites and token positions, keeping only one reduced vector per example.

Hooks reduce each batch on the fly (a weighted sum over the chosen positions), so no full cache is ever held;
the forward pass stops after the deepest requested layer. Sequences are sorted by length before batching, so
padding costs little, and every row is reduced over its own real tokens, so left and right padding agree.
"""

__all__ = ["PositionName", "Span", "ActivationSet", "collect", "collect_pairs", "pair_spans"]

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from workbench import plain
from workbench.errors import WorkbenchError
from workbench.generate import ENGINES, Engine
from workbench.hooks import Capture, applied
from workbench.models import Fingerprint, HookedModel, fingerprint, tokenization_of
from workbench.pairs import ContrastPairs
from workbench.sites import HookSite, layer_sites
from workbench.tokens import batched, first_difference, make_batch, pad_id_of, tokenize

PositionName = Literal["last", "answer", "mean"]
POSITIONS: tuple[str, ...] = ("last", "answer", "mean")
Span = tuple[int, int]  # [a, b) token indices in the unpadded sequence (0 = the first token: BOS where added)


def collect(
    model: HookedModel,
    seqs: Sequence[Sequence[int]],
    spans: Sequence[Span],
    sites: Sequence[HookSite],
    *,
    batch_size: int = 32,
    padding: str = "right",
    progress: bool = True,
    desc: str = "collecting",
    engine: Engine = "auto",
) -> Float[torch.Tensor, "site n width"]:
    """Mean activation over ``spans[i]`` of token sequence ``seqs[i]`` at each site (flattened width).

    ``engine`` as in ``workbench.generate``: on the bridge the forwards run on the plain Hugging Face twin where every
    site is a module boundary (``workbench.plain``), else through the backend."""
    if engine not in ENGINES:
        raise WorkbenchError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}.")
    if len(seqs) != len(spans):
        raise WorkbenchError(f"got {len(seqs)} sequences but {len(spans)} spans; give one span per sequence.")
    if not sites:
        raise WorkbenchError("no sites to collect; pass at least one HookSite.")
    for i, ((a, b), s) in enumerate(zip(spans, seqs)):
        if not 0 <= a < b <= len(s):
            raise WorkbenchError(f"span {(a, b)} of sequence {i} is empty or outside its {len(s)} tokens.")
    for site in sites:
        site.check(model)
    stop = max(s.layer for s in sites) + 1
    pad = pad_id_of(model)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    widths = {_width(model, s) for s in sites}
    if len(widths) != 1:
        raise WorkbenchError("collect() sites must share one width; call it once per kind of site.")
    out = torch.empty(len(sites), len(seqs), widths.pop())
    weights = torch.empty(0)  # the current batch's [batch pos] span weights, read by span_mean at hook time

    def span_mean(x: torch.Tensor, site: HookSite) -> torch.Tensor:
        return torch.einsum("bp,bp...->b...", weights.to(x), x).detach().float()

    chunks = list(batched(len(order), batch_size))
    cap = Capture(sites, span_mean)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        twin = stack.enter_context(plain.attached(model, cap)) if engine != "backend" else None
        if twin is None:
            if engine == "plain":
                raise WorkbenchError(
                    "engine='plain' needs the bridge backend and sites at block inputs/outputs or, on sequential "
                    "pre-norm families, attn_out / mlp_out / z / mlp_post; use engine='auto'."
                )
            stack.enter_context(applied(model, cap))
        for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
            rows = [order[i] for i in chunk]
            batch = make_batch([seqs[r] for r in rows], pad, padding)
            weights = torch.zeros(batch.tokens.shape, dtype=torch.float32)
            for j, r in enumerate(rows):
                a, b = spans[r]
                weights[j, batch.start[j] + a : batch.start[j] + b] = 1.0 / (b - a)
            tokens, mask = batch.tokens.to(model.cfg.device), batch.attention_mask.to(model.cfg.device)
            if twin is not None:
                plain.forward(twin, tokens, mask, stop_at_layer=stop)
            else:
                model(tokens, attention_mask=mask, stop_at_layer=stop)
            for k, site in enumerate(sites):
                out[k, rows] = cap.out[site].reshape(len(rows), -1).cpu()
    return out


def _width(model: HookedModel, site: HookSite) -> int:
    return math.prod(site.shape(model))


def pair_spans(model: HookedModel, pairs: ContrastPairs, position: str) -> tuple[list, list, list, list]:
    """Token ids and spans of every pair's positive and negative text under a position policy.

    * ``last``: the last token;
    * ``answer``: the first token where positive and negative differ (the answer letter of an A/B item);
    * ``mean``: the mean over the completion (the tokens after the shared prompt).

    A text longer than the model's context is refused, naming the pair (and its file line) and its token length.
    """
    if position not in POSITIONS:
        raise WorkbenchError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}.")
    pos_ids, neg_ids, pos_spans, neg_spans = [], [], [], []
    for i, pair in enumerate(pairs.pairs):
        where = pairs.describe(i)
        p, n = (
            tokenize(model, *((pair.prompt, c) if pair.prompt else (c,)), what=f"{where}: the {side} text")
            for side, c in (("positive", pair.positive), ("negative", pair.negative))
        )
        if p == n:
            raise WorkbenchError(f"{where} tokenises identically for positive and negative; the texts must differ.")
        if position == "last":
            sp, sn = (len(p) - 1, len(p)), (len(n) - 1, len(n))
        elif position == "answer":
            k = first_difference(p, n)
            if k >= min(len(p), len(n)):
                raise WorkbenchError(
                    f"{where}: one text is a prefix of the other, so there is no answer token; use --position last."
                )
            sp = sn = (k, k + 1)
        else:
            k = _prompt_len(model, pair.prompt, p, n)
            sp, sn = (k, len(p)), (k, len(n))
        pos_ids.append(p)
        neg_ids.append(n)
        pos_spans.append(sp)
        neg_spans.append(sn)
    return pos_ids, neg_ids, pos_spans, neg_spans


def _prompt_len(model: HookedModel, prompt: str, p: list[int], n: list[int]) -> int:
    """Tokens the completion starts after: the prompt's tokens (with no prompt: the BOS, if the tokenizer adds one),
    capped by the common prefix."""
    k = len(tokenize(model, prompt))
    return max(0, min(k, first_difference(p, n), len(p) - 1, len(n) - 1))


@dataclass(frozen=True, eq=False)
class ActivationSet:
    """Reduced activations of contrast pairs: ``positive[k, i]`` is pair ``i``'s positive text at ``sites[k]``,
    with the provenance a direction set inherits (the model's fingerprint, the pairs' hash, the tokenisation)."""

    sites: tuple[HookSite, ...]
    positive: Float[torch.Tensor, "site n width"]
    negative: Float[torch.Tensor, "site n width"]
    position: str
    data_hash: str
    fingerprint: Fingerprint
    tokenization: dict = field(default_factory=dict)  # models.Tokenization.to_dict() of the collection

    def __post_init__(self) -> None:
        if self.positive.shape != self.negative.shape or self.positive.shape[0] != len(self.sites):
            raise WorkbenchError(
                f"ActivationSet shapes disagree: positive {tuple(self.positive.shape)}, negative "
                f"{tuple(self.negative.shape)}, {len(self.sites)} sites."
            )

    @property
    def n_pairs(self) -> int:
        return self.positive.shape[1]


def collect_pairs(
    model: HookedModel,
    pairs: ContrastPairs,
    sites: "Sequence[HookSite] | None" = None,
    *,
    position: str = "last",
    batch_size: int = 32,
    padding: str = "right",
    progress: bool = True,
) -> ActivationSet:
    """Activations of every pair at ``sites`` (default: ``resid_post`` of every layer) in one batched pass."""
    sites = tuple(sites) if sites is not None else tuple(layer_sites(model))
    pos_ids, neg_ids, pos_spans, neg_spans = pair_spans(model, pairs, position)
    acts = collect(
        model,
        pos_ids + neg_ids,
        pos_spans + neg_spans,
        sites,
        batch_size=batch_size,
        padding=padding,
        progress=progress,
        desc=f"activations ({len(pairs)} pairs)",
    )
    n = len(pairs)
    return ActivationSet(
        sites, acts[:, :n], acts[:, n:], position, pairs.data_hash, fingerprint(model), tokenization_of(model).to_dict()
    )
