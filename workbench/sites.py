"""Hook sites: the ONLY module that spells TransformerLens hook names.

A ``HookSite(layer, kind)`` names one activation. ``site.check(model)`` returns its hook name after checking that
the model has it, and otherwise raises with the closest valid names. Layers are 0-based block indices:
``HookSite(3, "resid_post")`` is the output of block 3, which is Hugging Face ``hidden_states[4]``, repeng's and
llama.cpp's ``direction.3``, for every block but the last: Hugging Face returns the last block's output after the
final norm (``hidden_states[n_layers]`` is ``final_norm(resid_post of block n_layers - 1)``).
"""

__all__ = ["SiteKind", "HookSite", "SITE_KINDS", "FINAL_NORM", "EMBED", "layer_sites", "hook_names", "final_hidden"]

from dataclasses import dataclass
from typing import Literal, get_args

from workbench.errors import WorkbenchError, closest

SiteKind = Literal[
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",  # [batch pos d_model]
    "z",
    "q",
    "k",
    "v",
    "pattern",  # attention internals: [batch pos head_index d_head] / pattern
    "mlp_post",  # [batch pos d_mlp]
]
SITE_KINDS: tuple[str, ...] = get_args(SiteKind)

_TEMPLATES = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "z": "blocks.{layer}.attn.hook_z",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
}

#: The final norm's normalised input, before the norm's own weight (and bias): not yet what Hugging Face returns
#: as its last ``hidden_states`` entry (that is the norm's full output; see ``final_hidden``).
FINAL_NORM = "ln_final.hook_normalized"
#: The token embeddings (before positional information; Llama: the block-0 input), [batch pos d_model].
EMBED = "hook_embed"


@dataclass(frozen=True)
class HookSite:
    """One activation of one block. ``layer`` is the 0-based block index."""

    layer: int
    kind: str = "resid_post"  # one of SITE_KINDS (SiteKind)

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise WorkbenchError(f"HookSite.layer must be a 0-based block index (int >= 0), got {self.layer!r}.")
        if self.kind not in SITE_KINDS:
            raise WorkbenchError(
                f"HookSite.kind must be one of {', '.join(SITE_KINDS)}; got {self.kind!r} "
                f"(closest: {closest(str(self.kind), list(SITE_KINDS))})."
            )

    @property
    def name(self) -> str:
        """The TransformerLens hook name, e.g. ``blocks.3.hook_resid_post``."""
        return _TEMPLATES[self.kind].format(layer=self.layer)

    def check(self, model) -> str:
        """Return ``self.name`` if ``model`` has that hook; raise naming the valid layers or closest names."""
        n_layers = model.cfg.n_layers
        if self.layer >= n_layers:
            raise WorkbenchError(
                f"layer {self.layer} does not exist: the model has {n_layers} blocks (layers 0..{n_layers - 1}). "
                f"Pass a layer in that range."
            )
        if self.name not in model.hook_dict:
            raise WorkbenchError(
                f"hook {self.name!r} is not in this model; closest valid names: "
                f"{closest(self.name, sorted(model.hook_dict))}."
            )
        return self.name

    def shape(self, model) -> tuple[int, ...]:
        """Trailing shape of this site's activation (after ``batch pos``), e.g. ``(d_model,)``."""
        c = model.cfg
        if self.kind in ("z", "q", "v", "k"):
            heads = c.n_heads if self.kind in ("z", "q") else (getattr(c, "n_key_value_heads", None) or c.n_heads)
            return (heads, c.d_head)
        if self.kind == "mlp_post":
            return (c.d_mlp,)
        if self.kind == "pattern":
            raise WorkbenchError("attention patterns have no fixed width; pick another site kind.")
        return (c.d_model,)

    def to_dict(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "hook": self.name}

    @classmethod
    def from_dict(cls, d: dict) -> "HookSite":
        try:
            site = cls(layer=d["layer"], kind=d["kind"])
        except KeyError as e:
            raise WorkbenchError(f"site entry {d!r} lacks {e}; expected keys 'layer' and 'kind'.") from None
        if "hook" in d and d["hook"] != site.name:
            raise WorkbenchError(f"site entry {d!r}: hook {d['hook']!r} disagrees with layer/kind ({site.name!r}).")
        return site


def layer_sites(model, layers: "list[int] | None" = None, kind: str = "resid_post") -> list[HookSite]:
    """Sites of one kind at the given layers (default: every layer), each checked against ``model``."""
    chosen = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    if not chosen:
        raise WorkbenchError("layers is empty; pass at least one layer (or None for every layer).")
    sites = [HookSite(int(layer), kind) for layer in chosen]
    for s in sites:
        s.check(model)
    return sites


def hook_names(model, contains: str) -> list[str]:
    """Hook names of ``model`` containing ``contains``; raises when the filter matches nothing."""
    names = sorted(n for n in model.hook_dict if contains in n)
    if not names:
        raise WorkbenchError(
            f"no hook name contains {contains!r}; closest valid names: {closest(contains, sorted(model.hook_dict))}."
        )
    return names


def final_hidden(model, cache):
    """Hugging Face's last ``hidden_states`` entry from a TransformerLens cache holding the last block's output:
    the final norm applied to it (weight and bias included), ``[batch pos d_model]``."""
    last = HookSite(model.cfg.n_layers - 1).name
    if "ln_final.hook_out" in model.hook_dict and "ln_final.hook_out" in cache:
        return cache["ln_final.hook_out"]
    return model.ln_final(cache[last])
