"""Batched forward passes under interventions: logits of a padded batch, and the next-token logits after each of
many texts.

The interventions see the batch's ``TokenLayout`` (every real token is a prompt token), so their position
policies mean the same here as in generation. Gradients follow the caller's mode (``torch.no_grad()`` or not). On
the bridge the forward runs on the plain Hugging Face twin where every hook sits on a module boundary
(``workbench.plain``), else through the backend.
"""

__all__ = ["batch_logits", "last_logits"]

from collections.abc import Sequence

import torch
from jaxtyping import Float

from workbench import plain
from workbench.errors import WorkbenchError
from workbench.hooks import Intervention, applied
from workbench.models import HookedModel
from workbench.positions import TokenLayout
from workbench.tokens import Batch, batched, make_batch, pad_id_of, tokenize


def batch_logits(
    model: HookedModel, batch: Batch, *interventions: Intervention, layout: "TokenLayout | None" = None
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """Logits at every position of ``batch`` (model dtype, model device) with ``interventions`` applied;
    ``layout`` overrides the batch's own (e.g. to mark where each row's prompt ends)."""
    layout = TokenLayout(batch.start, batch.end) if layout is None else layout
    dev = model.cfg.device
    tokens, mask = batch.tokens.to(dev), batch.attention_mask.to(dev)
    with plain.attached(model, *interventions, layout=layout) as twin:
        if twin is not None:
            logits, _ = plain.forward(twin, tokens, mask)
            assert logits is not None
            return logits
    with applied(model, *interventions, layout=layout):
        return model(tokens, attention_mask=mask)


def last_logits(
    model: HookedModel, texts: "Sequence[str | Sequence[int]]", *interventions: Intervention, batch_size: int = 64
) -> Float[torch.Tensor, "n d_vocab"]:
    """Next-token logits (float32, on the CPU) after each text or token sequence, in right-padded batches."""
    if isinstance(texts, str) or not texts:
        raise WorkbenchError("texts must be a non-empty list of strings or token sequences.")
    seqs = [tokenize(model, t) if isinstance(t, str) else list(t) for t in texts]
    out = []
    for chunk in batched(len(seqs), batch_size):
        batch = make_batch([seqs[i] for i in chunk], pad_id_of(model), "right")
        with torch.no_grad():
            logits = batch_logits(model, batch, *interventions)
        out.append(logits[torch.arange(len(chunk)), batch.end - 1].float().cpu())
    return torch.cat(out)
