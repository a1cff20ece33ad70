"""``applied(model, *interventions)``: the ONLY code in the workbench that attaches hooks.

Every intervention's hooks are built and validated before any is attached, and TransformerLens's ``hooks()``
context removes all of them on exit, also after an exception, so a model is never left half-edited.
"""

__all__ = ["applied"]

import contextlib
from collections.abc import Iterator

from workbench.errors import WorkbenchError
from workbench.interventions import Intervention
from workbench.models import HookedModel
from workbench.positions import TokenLayout


@contextlib.contextmanager
def applied(
    model: HookedModel, *interventions: Intervention, layout: "TokenLayout | None" = None
) -> Iterator[HookedModel]:
    """Attach the interventions' hooks for the duration of the block.

    Example:
        >>> with applied(model, AddDirection(HookSite(3), v, scale=4.0)):
        ...     logits = model(tokens)
    """
    fwd_hooks = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise WorkbenchError(f"expected an intervention with to_hooks(model), got {type(iv).__name__}.")
        fwd_hooks.extend(iv.to_hooks(model, layout))  # validates; raises before anything is attached
    if not fwd_hooks:
        yield model
        return
    # hooks on one point run in order: editing hooks first, so a capture hook sees the edited activation
    fwd_hooks.sort(key=lambda nh: bool(getattr(nh[1], "workbench_capture", False)))
    with model.hooks(fwd_hooks=fwd_hooks):
        yield model
