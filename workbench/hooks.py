"""``applied(model, *interventions)``: the ONLY code in the workbench that attaches hooks; ``Capture`` and
``captured``: the one way to record activations. An ``Intervention`` is anything with ``to_hooks(model, layout)``.

Every intervention's hooks are built and validated before any is attached, and TransformerLens's ``hooks()``
context removes all of them on exit, also after an exception, so a model is never left half-edited. A capture is
an intervention that edits nothing; on a hook point it runs after every editing hook, so it records the activation
as edited.
"""

__all__ = ["HookFn", "Intervention", "applied", "ordered_hooks", "Capture", "captured", "capture_hook"]

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from workbench.errors import WorkbenchError
from workbench.models import HookedModel
from workbench.positions import TokenLayout
from workbench.sites import HookSite

HookFn = Callable[..., torch.Tensor]
#: Maps a recorded activation (and its site) to what is kept, e.g. a reduction to one vector per row.
Reduce = Callable[[torch.Tensor, HookSite], Any]


@runtime_checkable
class Intervention(Protocol):
    """Anything that can become TransformerLens forward hooks."""

    def to_hooks(self, model: Any, layout: "TokenLayout | None" = None) -> list[tuple[str, HookFn]]: ...


@contextlib.contextmanager
def applied(
    model: HookedModel, *interventions: Intervention, layout: "TokenLayout | None" = None
) -> Iterator[HookedModel]:
    """Attach the interventions' hooks for the duration of the block.

    Example:
        >>> with applied(model, AddDirection(HookSite(3), v, scale=4.0)):
        ...     logits = model(tokens)
    """
    fwd_hooks = ordered_hooks(model, *interventions, layout=layout)
    if not fwd_hooks:
        yield model
        return
    with model.hooks(fwd_hooks=fwd_hooks):
        yield model


def ordered_hooks(
    model: HookedModel, *interventions: Intervention, layout: "TokenLayout | None" = None
) -> list[tuple[str, HookFn]]:
    """Every intervention's ``(hook name, fn)``, validated, in the order they must run: on one hook point, editing
    hooks before capture hooks, so a capture sees the edited activation."""
    fwd_hooks = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise WorkbenchError(f"expected an intervention with to_hooks(model), got {type(iv).__name__}.")
        fwd_hooks.extend(iv.to_hooks(model, layout))  # validates; raises before anything is attached
    fwd_hooks.sort(key=lambda nh: bool(getattr(nh[1], "workbench_capture", False)))
    return fwd_hooks


def capture_hook(
    store: dict,
    key: Any,
    reduce: "Callable[[torch.Tensor], Any] | None" = None,
    *,
    keep: str = "last",
    retain_grad: bool = False,
) -> HookFn:
    """A hook that records its input (or ``reduce`` of it) in ``store[key]`` and returns the input unchanged.

    ``keep="last"`` keeps the latest forward pass, ``keep="all"`` appends every pass to a list (one entry per
    decoding step); ``retain_grad`` keeps the gradient of a recorded activation after ``backward``.
    """
    if keep not in ("last", "all"):
        raise WorkbenchError(f"keep must be 'last' or 'all', got {keep!r}.")

    def capture(x: torch.Tensor, hook: Any) -> torch.Tensor:
        if retain_grad:
            x.retain_grad()
        value = x if reduce is None else reduce(x)
        if keep == "all":
            store.setdefault(key, []).append(value)
        else:
            store[key] = value
        return x

    capture.workbench_capture = True  # type: ignore[attr-defined]
    return capture


class Capture:
    """Records the activation at each of ``sites`` into ``out[site]``: an intervention that edits nothing.

    ``reduce(x, site)`` maps what is kept (default: the activation itself, graph included); ``keep`` and
    ``retain_grad`` as in ``capture_hook``.

    Example:
        >>> cap = Capture([HookSite(1), HookSite(2)])
        >>> with applied(model, AddDirection(HookSite(1), v), cap):
        ...     model(tokens)
        >>> cap.out[HookSite(2)].shape  # [batch pos d_model], after the edit at block 1
    """

    def __init__(
        self,
        sites: Sequence[HookSite],
        reduce: "Reduce | None" = None,
        *,
        keep: str = "last",
        retain_grad: bool = False,
    ) -> None:
        self.sites, self.reduce, self.keep, self.retain_grad = tuple(sites), reduce, keep, retain_grad
        self.out: dict = {}

    def to_hooks(self, model: Any, layout: Any = None) -> list:
        hooks = []
        for s in self.sites:
            fn = self.reduce
            reduce = None if fn is None else (lambda x, s=s, fn=fn: fn(x, s))
            hooks.append(
                (s.check(model), capture_hook(self.out, s, reduce, keep=self.keep, retain_grad=self.retain_grad))
            )
        return hooks


@contextlib.contextmanager
def captured(
    model: HookedModel,
    sites: Sequence[HookSite],
    *interventions: Intervention,
    reduce: "Reduce | None" = None,
    layout: "TokenLayout | None" = None,
) -> Iterator[dict]:
    """Record the activations at ``sites`` (as ``Capture``) during the block, with ``interventions`` applied; yields
    the ``{site: activation}`` dict, filled by the forward passes run inside.

    Example:
        >>> with torch.no_grad(), captured(model, [HookSite(3)]) as acts:
        ...     model(tokens)
        >>> acts[HookSite(3)]  # [batch pos d_model]
    """
    cap = Capture(sites, reduce)
    with applied(model, *interventions, cap, layout=layout):
        yield cap.out
