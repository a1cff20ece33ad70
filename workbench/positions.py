"""Which token positions an intervention edits, and where those positions are in a padded, cached batch.

``Positions`` is the policy (a value that serialises). ``TokenLayout`` is the running state of one batched
computation: where each row's real tokens start, where its prompt ends, and the absolute position of the chunk
being computed now. Under a KV cache a hook sees only the new token, so the policy is applied to *absolute*
positions; that is what makes cached and full-recompute generation steer identically.
"""

__all__ = ["Positions", "TokenLayout"]

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Int

from workbench.errors import WorkbenchError
from workbench.manifests import MAX_POSITION, PositionsModel
from workbench.schema import validate

PositionKind = Literal["all", "from", "generated"]


@dataclass(frozen=True)
class Positions:
    """Where to edit.

    * ``all``: every real token, prompt and generated.
    * ``from``: prompt positions from ``start`` on, and every generated token (CAA's ``instr_end`` rule).
      ``start >= 0`` counts from the first real token (0 = the BOS, where the tokenizer adds one); ``start < 0``
      counts from the prompt's end (-1 = the last prompt token).
    * ``generated``: only the positions of generated tokens (the first generated token is predicted unsteered).
    """

    kind: PositionKind = "all"
    start: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("all", "from", "generated"):
            raise WorkbenchError(f"Positions.kind must be 'all', 'from' or 'generated', got {self.kind!r}.")
        if isinstance(self.start, bool) or not isinstance(self.start, int) or abs(self.start) > MAX_POSITION:
            raise WorkbenchError(f"Positions.start must be an int within +-{MAX_POSITION}, got {self.start!r}.")
        if self.kind != "from" and self.start != 0:
            raise WorkbenchError(f"Positions.start only applies to kind='from' (got kind={self.kind!r}).")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "start": self.start}

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "positions") -> "Positions":
        """The policy ``to_dict()`` wrote, checked against ``manifests.PositionsModel`` (``start`` an exact int)."""
        m = validate(d, PositionsModel, source=source, fix="write it as {'kind': 'from', 'start': -1} or similar.")
        return cls(m.kind, m.start)

    @classmethod
    def parse(cls, text: str) -> "Positions":
        """``all``, ``generated``, ``from:K`` (K may be negative)."""
        if text in ("all", "generated"):
            return cls(text)  # type: ignore[arg-type]
        if text.startswith("from:") and re.fullmatch(r"-?[0-9]{1,9}", text[5:]):
            return cls("from", int(text[5:]))
        raise WorkbenchError(f"positions must be 'all', 'generated' or 'from:K' with an integer K, got {text!r}.")


class TokenLayout:
    """Positions of a padded batch during one computation; ``offset`` advances as a KV cache grows."""

    def __init__(self, start: Int[torch.Tensor, " batch"], prompt_end: Int[torch.Tensor, " batch"]) -> None:
        self.start = start
        self.prompt_end = prompt_end
        self.offset = 0

    def mask(self, policy: Positions, n_pos: int, device: torch.device) -> Bool[torch.Tensor, "batch pos"]:
        """Which of the ``n_pos`` positions of the current chunk the policy edits."""
        if n_pos + self.offset > 0 and self.start.shape[0] == 0:
            raise WorkbenchError("TokenLayout has no rows.")
        pos = (self.offset + torch.arange(n_pos, device=device))[None, :]
        start = self.start.to(device)[:, None]
        end = self.prompt_end.to(device)[:, None]
        if policy.kind == "all":
            return pos >= start
        if policy.kind == "generated":
            return pos >= end
        first = start + policy.start if policy.start >= 0 else end + policy.start
        return pos >= torch.maximum(first, start)
