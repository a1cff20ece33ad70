"""Behaviour and fluency scores under interventions, and the intervals the studies put on them.

* ``ab_probability``: CAA's metric, p(matching answer) / (p(matching) + p(not matching)) at the answer token;
* ``perplexity``: of reference texts under the (steered) model;
* ``continuation_perplexity``: of continuations given their prompts (e.g. steered outputs under an unsteered
  reference model: the fluency cost that does not depend on a grammar);
* ``kl_divergence``: mean KL(unsteered || steered) of next-token distributions over reference texts;
* ``fluency_at_strengths``: both of the last two for the continuations generated at each of several strengths,
  from one unsteered and one steered forward per batch (per-row strengths).

Intervals (95%): ``wilson`` of a rate, ``mean_ci`` of a mean (normal approximation), ``bootstrap_ci`` of a mean
(percentile bootstrap).
"""

__all__ = [
    "ab_probability",
    "token_logprobs",
    "perplexity",
    "continuation_perplexity",
    "kl_divergence",
    "fluency_at_strengths",
    "wilson",
    "mean_ci",
    "bootstrap_ci",
]

import math
import random
from collections.abc import Sequence
from dataclasses import replace

import torch
from jaxtyping import Float

from workbench.errors import WorkbenchError
from workbench.forward import batch_logits, last_logits
from workbench.interventions import AddDirection, Intervention
from workbench.models import HookedModel
from workbench.pairs import ContrastPairs, join
from workbench.tokens import Batch, batched, first_difference, make_batch, pad_id_of, tokenize


def _logits(model: HookedModel, batch: Batch, interventions: Sequence[Intervention]) -> torch.Tensor:
    with torch.no_grad():
        return batch_logits(model, batch, *interventions).float().cpu()


def _row_logprobs(logp: torch.Tensor, batch: Batch, j: int, n: int) -> torch.Tensor:
    """Log-probability of tokens 1..n-1 of row ``j`` (``logp[j, i]`` scores token i + 1)."""
    return logp[j, : n - 1].gather(-1, batch.tokens[j, 1:n, None]).squeeze(-1)


def _continuation_start(prompt: Sequence[int], full: Sequence[int]) -> int:
    """Index into a row's ``_row_logprobs`` where its continuation starts: after the tokens it shares with its
    prompt (at least the first token has a prefix)."""
    return max(first_difference(prompt, full), 1) - 1


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position of two log-softmaxed logit tensors."""
    return (p.exp() * (p - q)).sum(-1)


def ab_probability(
    model: HookedModel, pairs: ContrastPairs, *interventions: Intervention, batch_size: int = 32
) -> Float[torch.Tensor, " n"]:
    """Per pair, the probability of the positive answer token relative to the negative one.

    The answer token is the first token where the positive and negative texts differ; both are scored from
    the same context (the shared tokens before it).
    """
    items = []
    for i, pair in enumerate(pairs.pairs):
        p, n = (tokenize(model, t) for t in pair.texts)
        k = first_difference(p, n)
        if k >= min(len(p), len(n)):
            raise WorkbenchError(f"pair {i}: one text is a prefix of the other; no answer token to score.")
        items.append((p[:k], p[k], n[k]))
    logp = last_logits(model, [context for context, _, _ in items], *interventions, batch_size=batch_size).log_softmax(
        -1
    )
    rows = torch.arange(len(items))
    return torch.sigmoid(logp[rows, [p for _, p, _ in items]] - logp[rows, [n for _, _, n in items]])


def token_logprobs(
    model: HookedModel, texts: Sequence[str], *interventions: Intervention, batch_size: int = 32
) -> list[Float[torch.Tensor, " n_tokens"]]:
    """Log-probability of each token of each text given its prefix (every token but the first, which has none:
    the BOS where the tokenizer adds one)."""
    if isinstance(texts, str) or not texts:
        raise WorkbenchError("texts must be a non-empty list of strings.")
    seqs = [tokenize(model, t) for t in texts]
    if any(len(s) < 2 for s in seqs):
        raise WorkbenchError("every text needs at least two tokens to be scored (the first has no prefix).")
    out: list = [None] * len(seqs)
    for chunk in batched(len(seqs), batch_size):
        batch = make_batch([seqs[i] for i in chunk], pad_id_of(model), "right")
        logp = _logits(model, batch, interventions).log_softmax(-1)
        for j, i in enumerate(chunk):
            n = len(seqs[i])
            out[i] = _row_logprobs(logp, batch, j, n)
    return out


def perplexity(model: HookedModel, texts: Sequence[str], *interventions: Intervention, batch_size: int = 32) -> float:
    """exp(mean negative log-likelihood per token) over all texts."""
    lps = torch.cat(token_logprobs(model, texts, *interventions, batch_size=batch_size))
    return math.exp(float(-lps.mean()))


def continuation_perplexity(
    model: HookedModel,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *interventions: Intervention,
    batch_size: int = 32,
) -> float:
    """exp(mean NLL per token) of each continuation given its prompt, over all continuation tokens."""
    if isinstance(prompts, str) or isinstance(continuations, str) or len(prompts) != len(continuations):
        raise WorkbenchError("prompts and continuations must be lists of strings of the same length.")
    texts = [join(p, c) for p, c in zip(prompts, continuations)]
    lps = token_logprobs(model, texts, *interventions, batch_size=batch_size)
    scored = []
    for p, full, lp in zip(prompts, texts, lps):
        scored.append(lp[_continuation_start(tokenize(model, p), tokenize(model, full)) :])
    cat = torch.cat(scored)
    if cat.numel() == 0:
        raise WorkbenchError("the continuations are empty; nothing to score.")
    return math.exp(float(-cat.mean()))


def kl_divergence(
    model: HookedModel, texts: Sequence[str], *interventions: Intervention, batch_size: int = 32
) -> float:
    """Mean over all real token positions of KL(unsteered || steered) next-token distributions (nats)."""
    if isinstance(texts, str) or not texts:
        raise WorkbenchError("texts must be a non-empty list of strings.")
    seqs = [tokenize(model, t) for t in texts]
    total, count = 0.0, 0
    for chunk in batched(len(seqs), batch_size):
        batch = make_batch([seqs[i] for i in chunk], pad_id_of(model), "right")
        p = _logits(model, batch, ()).log_softmax(-1)
        q = _logits(model, batch, interventions).log_softmax(-1)
        kl = _kl(p, q)  # [batch pos]
        real = batch.attention_mask.bool()
        total += float(kl[real].sum())
        count += int(real.sum())
    return total / count


def fluency_at_strengths(
    model: HookedModel,
    prompts: Sequence[str],
    continuations: "Sequence[Sequence[str]]",
    intervention: AddDirection,
    scales: Sequence[float],
    batch_size: int = 32,
) -> "list[tuple[float, float]]":
    """Per scale ``s``, (``continuation_perplexity(model, prompts, continuations[i])``,
    ``kl_divergence(model, texts_i, replace(intervention, scale=s))``) where ``texts_i`` joins each prompt to its
    continuation: the fluency cost of a batch of generations at several strengths (``generate_at_strengths``).

    One unsteered forward per batch gives both the perplexity and the reference distribution of the KL, and one
    steered forward with per-row strengths gives the other side, for every scale at once (a strength of 0 has a KL
    of exactly 0 and no steered forward). Rows are batched by length so little padding is computed.
    """
    if isinstance(prompts, str) or not prompts:
        raise WorkbenchError("prompts must be a non-empty list of strings.")
    if not scales or len(continuations) != len(scales):
        raise WorkbenchError(
            f"pass one list of continuations per scale: {len(continuations)} lists for {len(scales)} scales."
        )
    if any(isinstance(c, str) or len(c) != len(prompts) for c in continuations):
        raise WorkbenchError(f"each list of continuations must hold one string per prompt ({len(prompts)}).")
    heads = [tokenize(model, p) for p in prompts]
    rows = [(g, i) for g in range(len(scales)) for i in range(len(prompts))]
    seqs = [tokenize(model, join(prompts[i], continuations[g][i])) for g, i in rows]
    starts = [_continuation_start(heads[i], s) for (_, i), s in zip(rows, seqs)]
    row_scale = [float(scales[g]) for g, _ in rows]
    order = sorted(range(len(rows)), key=lambda r: (row_scale[r] == 0.0, len(seqs[r])))
    nll = torch.zeros(len(scales), dtype=torch.float64)
    kl = torch.zeros(len(scales), dtype=torch.float64)
    n_scored, n_real = [0] * len(scales), [0] * len(scales)
    for chunk in batched(len(order), batch_size):
        idx = [order[j] for j in chunk]
        batch = make_batch([seqs[r] for r in idx], pad_id_of(model), "right")
        p = _logits(model, batch, ()).log_softmax(-1)
        steered = tuple(row_scale[r] for r in idx)
        q = None if not any(steered) else _logits(model, batch, (replace(intervention, scale=steered),)).log_softmax(-1)
        for j, r in enumerate(idx):
            g, n = rows[r][0], len(seqs[r])
            lp = _row_logprobs(p, batch, j, n)[starts[r] :]
            nll[g] -= lp.double().sum()
            n_scored[g] += lp.numel()
            n_real[g] += n
            if q is not None and steered[j] != 0.0:
                kl[g] += _kl(p[j, :n], q[j, :n]).sum().double()
    if not all(n_scored):
        raise WorkbenchError("the continuations are empty; nothing to score.")
    return [(math.exp(float(nll[g]) / n_scored[g]), float(kl[g]) / n_real[g]) for g in range(len(scales))]


def wilson(k: "float | int", n: int, z: float = 1.96) -> list:
    """95% Wilson score interval [low, high] of a rate k/n (n = 0: [0, 1])."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def mean_ci(values: "Sequence[float]", z: float = 1.96) -> tuple[float, list]:
    """Mean and a normal-approximation 95% interval of the mean (one value: a zero-width interval)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, [m, m]
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, [m - z * sd / math.sqrt(n), m + z * sd / math.sqrt(n)]


def bootstrap_ci(values: torch.Tensor, n: int = 2000, seed: int = 0) -> "tuple[float, float]":
    """95% percentile-bootstrap interval (low, high) of the mean of ``values`` (1-D, e.g. per-row loss gaps)."""
    rng = random.Random(seed)
    rows = len(values)
    means = sorted(float(values[[rng.randrange(rows) for _ in range(rows)]].mean()) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n)]
