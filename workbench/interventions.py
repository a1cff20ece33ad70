"""Interventions: frozen values that carry their own site and turn into TransformerLens ``fwd_hooks``.

``to_hooks(model, layout)`` validates against the model (site exists, vector width matches) and returns
``[(hook_name, fn)]``; it attaches nothing. ``workbench.hooks.applied`` attaches them. ``to_dict`` + ``tensors``
round-trip through ``from_dict`` so every intervention serialises to JSON + safetensors.

Edits at ``resid_mid`` (block input + attention output) are written through the attention output: TransformerLens
4's bridge aliases ``hook_resid_mid`` to the *input of the second norm*, so a direct edit there reaches the MLP but
not the residual stream carried to the next block, whereas 3.9's ``HookedTransformer`` edits the residual itself.
Adding v to the attention output (and, for an ablation, editing it given the captured block input) gives
HookedTransformer's meaning on both backends, which is also what the exported forms (apply_hf, baked weights)
reproduce.
"""

__all__ = ["Intervention", "AddDirection", "Ablate", "SpectralEdit", "intervention_from_dict"]

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from workbench.errors import WorkbenchError
from workbench.hooks import HookFn, Intervention, capture_hook
from workbench.manifests import META_MODELS, TENSOR_NAMES, AblateMeta, AddMeta, SpectralMeta
from workbench.positions import Positions, TokenLayout
from workbench.schema import MAX_SCALE, validate
from workbench.sites import HookSite


def _check_vector(v: Any, what: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise WorkbenchError(f"{what} must be a torch.Tensor, got {type(v).__name__}.")
    if v.ndim != 1 or v.numel() == 0:
        raise WorkbenchError(f"{what} must be 1-D [d_model], got shape {tuple(v.shape)}; flatten or index a layer.")
    if not v.is_floating_point() or not torch.isfinite(v).all():
        raise WorkbenchError(f"{what} must be a finite float vector; it has non-finite entries or is not float.")
    return v.detach()


def _strength(s: Any) -> bool:
    return not isinstance(s, bool) and isinstance(s, (int, float)) and -MAX_SCALE <= s <= MAX_SCALE


def _check_width(site: HookSite, model: Any, v: torch.Tensor, what: str) -> tuple[int, ...]:
    name = site.check(model)
    shape = site.shape(model)
    if v.numel() != math.prod(shape):
        raise WorkbenchError(
            f"{what} has {v.numel()} entries but {name} has width {math.prod(shape)} {shape}; "
            f"use a vector computed on this model."
        )
    return shape


def _edit_mask(layout: "TokenLayout | None", positions: Positions, x: torch.Tensor) -> "torch.Tensor | None":
    """[batch pos 1...] float mask of positions to edit; None means every position (fast path)."""
    if layout is None:
        if positions.kind == "all":
            return None
        layout = TokenLayout(torch.zeros(x.shape[0], dtype=torch.long), torch.full((x.shape[0],), x.shape[1]))
    m = layout.mask(positions, x.shape[1], x.device).to(x.dtype)
    return m.reshape(*m.shape, *([1] * (x.ndim - 2)))


#: the largest finite float32: an edit past it turns activations into inf
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True, eq=False)
class AddDirection:
    """Add ``scale * vector`` to the activation at ``site`` at the positions chosen by ``positions``.

    ``scale`` may be a tuple with one strength per batch row, so several strengths run in one batch. Each strength
    is a number (not a boolean) with ``|scale| <= schema.MAX_SCALE``.
    """

    site: HookSite
    vector: torch.Tensor  # [width]: validated in __post_init__ with a message that names the fix
    scale: "float | tuple[float, ...]" = 1.0
    positions: Positions = field(default_factory=Positions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector", _check_vector(self.vector, "AddDirection.vector"))
        scales = self.scale if isinstance(self.scale, tuple) else (self.scale,)
        if not scales or not all(_strength(s) for s in scales):
            raise WorkbenchError(
                f"AddDirection.scale must be a finite number with |scale| <= {MAX_SCALE:g} (not a boolean) or a "
                f"tuple of them, got {self.scale!r}."
            )
        peak = (
            max(abs(float(s)) for s in scales) * float(self.vector.detach().abs().max()) if self.vector.numel() else 0
        )
        if not peak <= FLOAT32_MAX:
            raise WorkbenchError(
                f"AddDirection: scale x vector reaches {peak:.3g}, past what float32 holds; lower the scale or "
                f"use a direction of ordinary norm."
            )

    def to_hooks(self, model: Any, layout: "TokenLayout | None" = None) -> list[tuple[str, HookFn]]:
        shape = _check_width(self.site, model, self.vector, "AddDirection.vector")
        vector, positions = self.vector.reshape(shape), self.positions
        rows = torch.tensor(self.scale, dtype=torch.float32) if isinstance(self.scale, tuple) else None
        scalar = 0.0 if isinstance(self.scale, tuple) else float(self.scale)

        deltas: dict = {}  # the scaled vector per (dtype, device, ndim), computed once

        def add(x: torch.Tensor, hook: Any) -> torch.Tensor:
            if rows is not None and x.shape[0] != rows.numel():
                raise WorkbenchError(
                    f"AddDirection has {rows.numel()} per-row scales but the batch has {x.shape[0]} rows."
                )
            key = (x.dtype, x.device, x.ndim)
            delta = deltas.get(key)
            if delta is None:
                delta = vector.to(x)
                if rows is not None:
                    delta = rows.to(x).reshape(-1, *([1] * (x.ndim - 1))) * delta
                else:
                    delta = scalar * delta
                deltas[key] = delta
            # "all" adds at padding too: a finite addition there is never attended to, so no mask is needed
            mask = None if positions.kind == "all" else _edit_mask(layout, positions, x)
            return x + delta if mask is None else x + mask * delta

        if self.site.kind == "resid_mid":  # adding to (input + attention output) = adding to the attention output
            return [(HookSite(self.site.layer, "attn_out").check(model), add)]
        return [(self.site.name, add)]

    def to_dict(self) -> dict:
        scale = list(self.scale) if isinstance(self.scale, tuple) else self.scale
        return {"kind": "add", "site": self.site.to_dict(), "scale": scale, "positions": self.positions.to_dict()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"vector": self.vector}


@dataclass(frozen=True, eq=False)
class Ablate:
    """Project the unit ``direction`` out of the activation at ``site``: x - (x . u) u."""

    site: HookSite
    direction: torch.Tensor  # [width]
    positions: Positions = field(default_factory=Positions)

    def __post_init__(self) -> None:
        v = _check_vector(self.direction, "Ablate.direction")
        if float(v.norm()) == 0.0:
            raise WorkbenchError("Ablate.direction is the zero vector; there is no direction to project out.")
        if abs(float(v.norm()) - 1.0) > 1e-6:  # keep an already-unit vector bit-exact (round trips)
            object.__setattr__(self, "direction", v / v.norm())

    def to_hooks(self, model: Any, layout: "TokenLayout | None" = None) -> list[tuple[str, HookFn]]:
        shape = _check_width(self.site, model, self.direction, "Ablate.direction")
        if len(shape) != 1:
            raise WorkbenchError(f"Ablate works on [batch pos width] sites; {self.site.name} is per head.")
        u, positions = self.direction, self.positions

        def ablate(x: torch.Tensor, hook: Any) -> torch.Tensor:
            uu = u.to(x)
            delta = (x @ uu)[..., None] * uu
            mask = _edit_mask(layout, positions, x)
            return x - delta if mask is None else x - mask * delta

        if self.site.kind == "resid_mid":  # remove u from (input + attention output) through the attention output
            store: dict = {}

            def ablate_mid(a: torch.Tensor, hook: Any) -> torch.Tensor:
                x = store["x"]
                return ablate(x + a, hook) - x

            return [
                (HookSite(self.site.layer, "resid_pre").check(model), capture_hook(store, "x")),
                (HookSite(self.site.layer, "attn_out").check(model), ablate_mid),
            ]
        return [(self.site.name, ablate)]

    def to_dict(self) -> dict:
        return {"kind": "ablate", "site": self.site.to_dict(), "positions": self.positions.to_dict()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"direction": self.direction}


_SPECTRAL_SITES = ("mlp_out", "attn_out", "resid_pre", "resid_post")


@dataclass(frozen=True, eq=False)
class SpectralEdit:
    """SEA at ``site``: h -> combine(Phi^-1(P+ Phi(h)), Phi^-1(P- Phi(h))) with P+ = U+U+^T, P- = I - U-U-^T,
    applied through the rank-k factors (see ``workbench.spectral`` for the modes and the official code's quirks).

    ``parts``: ``both`` (SEA), ``pos`` or ``neg`` only (ablations); ``reverse`` swaps what is kept and removed
    (P+ = I - U+U+^T, P- = U-U-^T): the reversed-projection ablation.
    """

    site: HookSite
    u_pos: torch.Tensor  # [d_model, k_pos], orthonormal columns
    u_neg: torch.Tensor  # [d_model, k_neg]
    combine: str = "norm"
    feature: str = "identity"
    parts: str = "both"
    reverse: bool = False
    positions: Positions = field(default_factory=Positions)

    def __post_init__(self) -> None:
        from workbench.spectral import COMBINES, FEATURES

        for name in ("u_pos", "u_neg"):
            u = getattr(self, name)
            if (
                not isinstance(u, torch.Tensor)
                or u.ndim != 2
                or not u.is_floating_point()
                or not torch.isfinite(u).all()
            ):
                raise WorkbenchError(f"SpectralEdit.{name} must be a finite float [d_model, k] tensor.")
        if self.u_pos.shape[0] != self.u_neg.shape[0]:
            raise WorkbenchError(
                f"SpectralEdit factors disagree on d_model: {self.u_pos.shape[0]} vs {self.u_neg.shape[0]}."
            )
        if self.combine not in COMBINES:
            raise WorkbenchError(f"SpectralEdit.combine must be one of {', '.join(COMBINES)}, got {self.combine!r}.")
        if self.feature not in FEATURES:
            raise WorkbenchError(f"SpectralEdit.feature must be one of {', '.join(FEATURES)}, got {self.feature!r}.")
        if self.parts not in ("both", "pos", "neg"):
            raise WorkbenchError(f"SpectralEdit.parts must be 'both', 'pos' or 'neg', got {self.parts!r}.")
        if self.site.kind not in _SPECTRAL_SITES:
            raise WorkbenchError(f"SpectralEdit works at {', '.join(_SPECTRAL_SITES)}; got {self.site.kind!r}.")
        object.__setattr__(self, "u_pos", self.u_pos.detach().float())
        object.__setattr__(self, "u_neg", self.u_neg.detach().float())

    def edit(self, x: torch.Tensor, real: "torch.Tensor | None" = None) -> torch.Tensor:
        """The edited activation for ``x`` [..., pos, d_model]; ``real`` [..., pos] marks non-padding positions
        (used by the ``reference`` mode's per-feature norms over the sequence)."""
        from workbench.spectral import phi, phi_inverse

        up, un = self.u_pos.to(x), self.u_neg.to(x)
        y = phi(x, self.feature)
        keep_p = (y @ up) @ up.T
        drop_n = (y @ un) @ un.T
        a_pos = y - keep_p if self.reverse else keep_p
        a_neg = drop_n if self.reverse else y - drop_n
        chosen = {"both": (a_pos, a_neg), "pos": (a_pos,), "neg": (a_neg,)}[self.parts]
        total = cast(torch.Tensor, sum(phi_inverse(a, self.feature) for a in chosen))
        if self.combine == "average":
            return total / len(chosen)
        if self.combine == "norm":
            return total * x.norm(dim=-1, keepdim=True) / total.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        w = torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device) if real is None else real.to(x)
        nx = (x.pow(2) * w[..., None]).sum(-2, keepdim=True).sqrt()  # per feature, across positions
        ny = (total.pow(2) * w[..., None]).sum(-2, keepdim=True).sqrt().clamp_min(1e-12)
        return total * nx / ny

    def to_hooks(self, model: Any, layout: "TokenLayout | None" = None) -> list[tuple[str, HookFn]]:
        _check_width(
            self.site, model, self.u_pos[:, 0] if self.u_pos.shape[1] else self.u_neg[:, 0], "SpectralEdit factors"
        )
        positions = self.positions

        def spectral(x: torch.Tensor, hook: Any) -> torch.Tensor:
            mask = _edit_mask(layout, positions, x)
            real = None
            if layout is not None:
                real = layout.mask(Positions(), x.shape[1], x.device)
            new = self.edit(x, real)
            return new if mask is None else x + mask * (new - x)

        return [(self.site.name, spectral)]

    def to_dict(self) -> dict:
        return {
            "kind": "spectral",
            "site": self.site.to_dict(),
            "combine": self.combine,
            "feature": self.feature,
            "parts": self.parts,
            "reverse": self.reverse,
            "positions": self.positions.to_dict(),
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"u_pos": self.u_pos, "u_neg": self.u_neg}


def intervention_from_dict(meta: Any, tensors: dict[str, torch.Tensor]) -> "AddDirection | Ablate | SpectralEdit":
    """Rebuild an intervention from ``to_dict()`` and ``tensors()`` output; ``meta`` is checked against its kind's
    schema in ``workbench.manifests`` (exact types, no unknown or missing fields)."""
    kind = meta.get("kind") if isinstance(meta, dict) else None
    schema = META_MODELS.get(kind) if isinstance(kind, str) else None
    if schema is None or not isinstance(kind, str):
        raise WorkbenchError(f"unknown intervention kind {kind!r}; expected 'add', 'ablate' or 'spectral'.")
    fix = "re-export it with the workbench."
    m = cast("AddMeta | AblateMeta | SpectralMeta", validate(meta, schema, source=f"{kind} intervention", fix=fix))
    missing = [name for name in TENSOR_NAMES[kind] if name not in tensors]
    if missing:
        raise WorkbenchError(f"{kind} intervention lacks the tensor(s) {missing}; {fix}")
    site = HookSite(m.site.layer, m.site.kind)
    positions = Positions(m.positions.kind, m.positions.start)
    if isinstance(m, AddMeta):
        return AddDirection(
            site, tensors["vector"], tuple(m.scale) if isinstance(m.scale, list) else m.scale, positions
        )
    if isinstance(m, SpectralMeta):
        return SpectralEdit(
            site, tensors["u_pos"], tensors["u_neg"], m.combine, m.feature, m.parts, m.reverse, positions
        )
    return Ablate(site, tensors["direction"], positions)
