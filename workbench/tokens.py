"""Tokenising texts and packing them into padded batches with attention masks.

Every batched computation in the workbench goes through ``Batch``: it knows where each row's real tokens start
and end, so left and right padding give the same per-example results.
"""

__all__ = ["Batch", "tokenize", "make_batch", "batched", "pad_id_of", "first_difference"]

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Int

from workbench.errors import WorkbenchError
from workbench.models import HookedModel, tokenization_of, tokenizer_of
from workbench.pairs import join

Padding = Literal["left", "right"]


def tokenize(model: HookedModel, text: str, completion: str = "", *, what: str = "text") -> list[int]:
    """Token ids of ``text`` (then ``completion``) under the model's tokenisation policy (``models.Tokenization``).

    By default this is exactly the Hugging Face tokenizer's ``tokenizer(text)``: a BOS where the tokenizer adds
    one, none where it adds none. With the chat template, ``text`` becomes a user turn followed by the generation
    prompt, and ``completion`` (a pair's answer) follows it; without, ``completion`` is joined to ``text`` as
    ``workbench.pairs.join`` does.

    Nothing is truncated: a sequence longer than ``model.cfg.n_ctx`` is refused, naming it as ``what``.
    """
    for name, value in (("text", text), ("completion", completion)):
        if not isinstance(value, str):
            raise WorkbenchError(f"expected {name} as a str, got {type(value).__name__}.")
    tok, policy = tokenizer_of(model), tokenization_of(model)
    if policy.chat_template:
        turn = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        ids = list(tok(turn + completion, add_special_tokens=False, truncation=False)["input_ids"])
    else:
        ids = list(tok(join(text, completion), truncation=False)["input_ids"])
    bos = tok.bos_token_id
    if policy.bos == "always" and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    elif policy.bos == "never" and ids and bos is not None and ids[0] == bos:
        ids = ids[1:]
    n_ctx = model.cfg.n_ctx
    if len(ids) > n_ctx:
        shown = join(text, completion)
        shown = repr(shown) if len(shown) <= 60 else f"{shown[:60]!r}..."
        raise WorkbenchError(
            f"{what} of {len(ids)} tokens exceeds the model's context of {n_ctx} tokens ({shown}); shorten it."
        )
    return ids


@dataclass(frozen=True)
class Batch:
    """Padded token ids; row ``i`` holds real tokens at ``start[i] : end[i]``."""

    tokens: Int[torch.Tensor, "batch pos"]
    attention_mask: Int[torch.Tensor, "batch pos"]
    start: Int[torch.Tensor, " batch"]
    end: Int[torch.Tensor, " batch"]

    @property
    def lengths(self) -> Int[torch.Tensor, " batch"]:
        return self.end - self.start


def make_batch(seqs: Sequence[Sequence[int]], pad_id: int, padding: str = "right") -> Batch:
    """Pad token sequences to one length, on the left or the right."""
    if padding not in ("left", "right"):
        raise WorkbenchError(f"padding must be 'left' or 'right', got {padding!r}.")
    if not seqs or any(len(s) == 0 for s in seqs):
        raise WorkbenchError("cannot batch an empty list or an empty token sequence.")
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    start = torch.empty(len(seqs), dtype=torch.long)
    for i, s in enumerate(seqs):
        a = width - len(s) if padding == "left" else 0
        tokens[i, a : a + len(s)] = torch.as_tensor(list(s))
        mask[i, a : a + len(s)] = 1
        start[i] = a
    return Batch(tokens, mask, start, start + torch.as_tensor([len(s) for s in seqs]))


def pad_id_of(model: HookedModel) -> int:
    tok = tokenizer_of(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad if pad is not None else 0)


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """Index of the first token where ``a`` and ``b`` differ; ``min(len(a), len(b))`` if one is a prefix."""
    return next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def batched(n: int, batch_size: int) -> Iterator[range]:
    """Index ranges covering ``range(n)`` in chunks of ``batch_size``."""
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}.")
    for i in range(0, n, batch_size):
        yield range(i, min(n, i + batch_size))
