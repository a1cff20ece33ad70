"""Steered generation with a KV cache, where every token is steered exactly as a full recompute would steer it.

Prompts are left-padded into one batch; a ``TokenLayout`` tracks absolute positions, so position policies
(``all`` / ``from`` / ``generated``) mean the same with and without the cache. ``Decoder`` is the decoding state
every generation loop steps (also ``workbench.composition``'s); ``generate_at_strengths`` runs several strengths
of one intervention in a single batch (one row per prompt and strength).

On the bridge backend, generation runs on the plain Hugging Face twin of the model with the interventions as
ordinary forward hooks (``workbench.plain``) wherever every hook sits on a module boundary, and through the backend
otherwise (``engine="backend"`` forces it); both compute the same function (to float rounding).
"""

__all__ = ["Generation", "Decoder", "Engine", "generate", "generate_at_strengths"]

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from jaxtyping import Float

from workbench import plain
from workbench.errors import WorkbenchError
from workbench.hooks import Intervention, applied
from workbench.interventions import AddDirection
from workbench.models import HookedModel, forward_step, tokenizer_of
from workbench.positions import TokenLayout
from workbench.tokens import Batch, make_batch, pad_id_of, tokenize

#: ``auto``: the plain twin where the hooks allow, else the backend; ``plain``: the twin or an error; ``backend``:
#: the TransformerLens model itself.
Engine = Literal["auto", "plain", "backend"]
ENGINES: tuple[str, ...] = ("auto", "plain", "backend")


@dataclass(frozen=True, eq=False)
class Generation:
    """Continuations of ``prompts``: generated ids per row, decoded text, optional per-step logits."""

    prompts: tuple[str, ...]
    tokens: tuple[tuple[int, ...], ...]
    texts: tuple[str, ...]
    logits: "Float[torch.Tensor, 'batch step d_vocab'] | None" = None


class Decoder:
    """One batch being decoded: its tokens so far, attention mask, KV state and ``TokenLayout``.

    ``logits()`` runs one forward over the tokens added since the last call (with ``use_cache=False``: over the
    whole prefix) and returns each row's next-token logits; ``append(next_tokens)`` extends every row by one.
    Hooks attached around ``logits()`` with ``layout=decoder.layout`` see absolute positions either way;
    ``steered(*interventions)`` attaches them where the decoder runs (the plain twin or the backend).

    Example:
        >>> dec = Decoder(model, make_batch(seqs, pad_id_of(model), "left"))
        >>> with torch.no_grad(), dec.steered(*interventions):
        ...     for _ in range(8):
        ...         dec.append(dec.logits().argmax(-1))
    """

    def __init__(self, model: HookedModel, batch: Batch, *, use_cache: bool = True) -> None:
        device = model.cfg.device
        self.model, self.use_cache = model, use_cache
        self.layout = TokenLayout(batch.start, batch.end)
        self.tokens, self.mask = batch.tokens.to(device), batch.attention_mask.to(device)
        self.new = self.tokens  # the tokens the next forward has not seen yet
        self.state: Any = None
        self.twin: torch.nn.Module | None = None  # set inside steered() when the plain twin runs

    @contextlib.contextmanager
    def steered(self, *interventions: Intervention, engine: Engine = "auto") -> Iterator["Decoder"]:
        """Attach ``interventions`` for the block, on the plain twin (``engine`` auto / plain) or the backend."""
        if engine not in ENGINES:
            raise WorkbenchError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}.")
        if self.state is not None:
            raise WorkbenchError("steered() must wrap the whole decode: this decoder has already run a step.")
        if engine != "backend":
            with plain.attached(self.model, *interventions, layout=self.layout) as twin:
                if twin is not None:
                    self.twin = twin
                    try:
                        yield self
                    finally:
                        self.twin = None
                    return
        if engine == "plain":
            raise WorkbenchError(
                "engine='plain' needs the bridge backend and edits at block inputs/outputs or, on sequential "
                "pre-norm families, attn_out / mlp_out / z / mlp_post; use engine='auto'."
            )
        with applied(self.model, *interventions, layout=self.layout):
            yield self

    def logits(self) -> Float[torch.Tensor, "batch d_vocab"]:
        """Next-token logits (float32) of every row."""
        if self.use_cache:
            self.layout.offset = self.tokens.shape[1] - self.new.shape[1]
            if self.twin is not None:
                logits, self.state = plain.forward(
                    self.twin, self.new, self.mask, self.state, use_cache=True, last_only=True
                )
            else:
                logits, self.state = forward_step(self.model, self.new, self.mask, self.state)
        else:
            self.layout.offset = 0
            if self.twin is not None:
                logits, _ = plain.forward(self.twin, self.tokens, self.mask, last_only=True)
            else:
                logits, _ = forward_step(self.model, self.tokens, self.mask, use_cache=False)
        assert logits is not None
        return logits[:, -1].float()

    def append(self, next_tokens: torch.Tensor) -> None:
        """Extend every row by its token in ``next_tokens`` [batch]."""
        self.new = next_tokens[:, None]
        self.tokens = torch.cat([self.tokens, self.new], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.new)], dim=1)


def _sample(
    logits: torch.Tensor, temperature: float, top_k: "int | None", top_p: "float | None", gen: torch.Generator
) -> torch.Tensor:
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, idx = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the first token past p
        logits = logits.scatter(-1, idx, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


def generate(
    model: HookedModel,
    prompts: Sequence[str],
    *interventions: Intervention,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: "int | None" = None,
    top_p: "float | None" = None,
    seed: int = 0,
    ban_special: bool = True,
    stop_at_eos: bool = True,
    use_cache: bool = True,
    return_logits: bool = False,
    on_step: "Callable[[torch.Tensor], None] | None" = None,
    engine: Engine = "auto",
) -> Generation:
    """Sample continuations of ``prompts`` with ``interventions`` applied at every step.

    Args:
        prompts: texts, tokenised by the model's policy (``models.Tokenization``: as its HF tokenizer does by default).
        temperature: 0 for greedy decoding; sampling uses a local generator seeded with ``seed``.
        ban_special: never sample padding or BOS tokens (unless they double as EOS).
        use_cache: KV-cached decoding (False recomputes the whole prefix each step; same result).
        return_logits: keep the raw next-token logits of every step.
        on_step: called after every step with that step's token of each row (``[batch]`` on the CPU; a finished row
            repeats EOS), e.g. to stream; an exception it raises stops generation and propagates.
        engine: where the forward runs (``Engine``): the plain Hugging Face twin where possible (default), or the
            backend.
    """
    if isinstance(prompts, str) or not prompts:
        raise WorkbenchError("prompts must be a non-empty list of strings (wrap a single prompt in a list).")
    if max_new_tokens < 1:
        raise WorkbenchError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if (
        not math.isfinite(temperature)
        or temperature < 0
        or 0 < temperature < 1e-3
        or (top_p is not None and not 0 < top_p <= 1)
        or (top_k is not None and top_k < 1)
    ):
        raise WorkbenchError(
            f"need temperature 0 (greedy) or >= 1e-3, 0 < top_p <= 1, top_k >= 1; got {temperature}, {top_p}, {top_k}."
        )
    if engine not in ENGINES:
        raise WorkbenchError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}.")
    tok = tokenizer_of(model)
    device = model.cfg.device
    seqs = [tokenize(model, p) for p in prompts]
    if max(len(s) for s in seqs) + max_new_tokens > model.cfg.n_ctx:
        raise WorkbenchError(
            f"prompt plus {max_new_tokens} new tokens exceeds the model's context of {model.cfg.n_ctx}; "
            f"shorten the prompt or lower max_new_tokens."
        )
    dec = Decoder(model, make_batch(seqs, pad_id_of(model), "left"), use_cache=use_cache)
    eos = tok.eos_token_id
    banned = (
        sorted({t for t in (tok.pad_token_id, tok.bos_token_id) if t is not None and t != eos}) if ban_special else []
    )
    gen = torch.Generator().manual_seed(seed)
    done = torch.zeros(len(seqs), dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    steps: list[torch.Tensor] = []
    with torch.no_grad(), dec.steered(*interventions, engine=engine):
        for _ in range(max_new_tokens):
            last = dec.logits()
            if not math.isfinite(float(last.sum())) and not bool(torch.isfinite(last).all()):
                raise WorkbenchError(
                    f"the model produced non-finite logits at step {len(out) + 1}; the edit is too strong for it "
                    f"(lower the scale)."
                )
            if return_logits:
                steps.append(last.cpu())
            if banned:
                last = last.clone()
                last[:, banned] = float("-inf")
            nxt = _sample(last, temperature, top_k, top_p, gen)
            if eos is not None and stop_at_eos:
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            out.append(nxt.cpu())
            if on_step is not None:
                on_step(out[-1])
            dec.append(nxt)
            if eos is not None and stop_at_eos:
                done |= nxt == eos
                if bool(done.all()):
                    break
    ids = torch.stack(out, dim=1).tolist()
    rows = []
    for row in ids:
        if eos is not None and stop_at_eos and eos in row:
            row = row[: row.index(eos)]
        rows.append(tuple(row))
    texts = tuple(tok.decode(list(r), skip_special_tokens=True) for r in rows)
    return Generation(tuple(prompts), tuple(rows), texts, torch.stack(steps, dim=1) if return_logits else None)


def generate_at_strengths(
    model: HookedModel,
    prompts: Sequence[str],
    intervention: AddDirection,
    scales: Sequence[float],
    **kwargs,
) -> list[Generation]:
    """One ``Generation`` per scale, all computed in a single batch of ``len(prompts) * len(scales)`` rows."""
    if not scales:
        raise WorkbenchError("scales is empty; pass at least one strength.")
    if isinstance(prompts, str) or not prompts:
        raise WorkbenchError("prompts must be a non-empty list of strings.")
    n = len(prompts)
    rows = [p for _ in scales for p in prompts]
    row_scales = tuple(float(s) for s in scales for _ in prompts)
    g = generate(model, rows, replace(intervention, scale=row_scales), **kwargs)
    return [
        Generation(
            tuple(prompts),
            g.tokens[i * n : (i + 1) * n],
            g.texts[i * n : (i + 1) * n],
            None if g.logits is None else g.logits[i * n : (i + 1) * n],
        )
        for i in range(len(scales))
    ]
