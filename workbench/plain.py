"""The plain Hugging Face model behind a bridge-backed model, with the workbench's hooks as ordinary forward hooks.

TransformerLens 4's bridge wraps the Hugging Face modules in place, and on small and mid-size models dispatching
through those wrappers costs more per decoding step than the step's arithmetic. ``models.load`` therefore keeps a
*plain twin* of the checkpoint's module tree that shares every parameter and buffer with the bridge (no weights are
copied). ``attached(model, *interventions)`` turns the interventions' TransformerLens hooks into forward hooks on
the twin's modules, at the module boundaries ``export.apply_hf`` documents (``resid_pre`` = a decoder layer's
input, ``resid_post`` its output, ``attn_out`` / ``mlp_out`` the attention / MLP outputs, ``z`` / ``mlp_post`` the
inputs of their output projections), and ``forward`` runs the twin with left-padding-aware positions.

Where a hook has no such module (attention internals, inner sites of families that are not sequential pre-norm),
on the hooked backend, while hooks are attached to the model's hook points (``hooks.applied`` around the call; raw
torch hooks on the bridge's own modules are not seen: pass ``engine="backend"`` with those) and once
the twin no longer computes what the bridge computes (``models.PlainTwin``), ``attached`` yields None and the caller
runs the backend: the twin is an optimisation that never changes what a call computes.
"""

__all__ = ["plain_model", "attached", "forward", "StopForward"]

import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any, cast

import torch

from workbench.export.apply_hf import LAYOUTS
from workbench.hooks import HookFn, Intervention, ordered_hooks
from workbench.models import HookedModel, plain_twin
from workbench.positions import TokenLayout

#: Sequential pre-norm families with a dense MLP: every site of ``apply_hf.LAYOUTS`` (where each family's modules
#: sit) is a module boundary; elsewhere only a block's input and output are.
_EVERY_SITE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "phi3", "gpt2"}


class StopForward(Exception):
    """Raised by the hook that ends a forward after its last needed layer (``forward(stop_at_layer=...)``)."""


def plain_model(model: HookedModel) -> "torch.nn.Module | None":
    """The plain twin of ``model`` (sharing its weights), or None where there is none or it is out of date."""
    twin = plain_twin(model)
    if twin is None or cast(Any, twin).config.model_type not in LAYOUTS:
        return None
    device = next(twin.parameters()).device
    if any(b.device != device for b in twin.buffers()):
        twin.to(device)  # the bridge moved; parameters follow it (shared), buffers do not
    return twin


def _module(root: torch.nn.Module, dotted: str) -> torch.nn.Module:
    for part in dotted.split("."):
        root = cast(torch.nn.ModuleList, root)[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _placement(twin: torch.nn.Module, name: str) -> "tuple[torch.nn.Module, str, tuple[int, ...] | None] | None":
    """Where TransformerLens hook ``name`` sits on the twin: (module, "pre" | "out", per-head shape or None)."""
    c: Any = twin.config
    layers_path, attn, mlp, o_proj, down = LAYOUTS[c.model_type]
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        return None
    layers = cast(torch.nn.ModuleList, _module(twin, layers_path))
    layer = int(parts[1])
    if layer >= len(layers):
        return None
    block, point = layers[layer], ".".join(parts[2:])
    if point == "hook_resid_pre":
        return block, "pre", None
    if point == "hook_resid_post":
        return block, "out", None
    if c.model_type not in _EVERY_SITE:
        return None
    if point == "hook_attn_out" and attn:
        return _module(block, attn), "out", None
    if point == "hook_mlp_out" and mlp:
        return _module(block, mlp), "out", None
    if point == "mlp.hook_post" and down:
        return _module(block, down), "pre", None
    if point == "attn.hook_z" and o_proj:
        text = c.get_text_config() if hasattr(c, "get_text_config") else c
        heads = int(getattr(text, "num_attention_heads", None) or text.n_head)
        hidden = int(getattr(text, "hidden_size", None) or text.n_embd)
        d_head = int(getattr(text, "head_dim", None) or hidden // heads)
        return _module(block, o_proj), "pre", (heads, d_head)
    return None


def _edit(fn: HookFn, heads: "tuple[int, ...] | None"):
    """The TransformerLens hook ``fn(x, hook)`` as a tensor -> tensor function on the module's own layout."""
    if heads is None:
        return lambda x: fn(x, None)
    return lambda x: fn(x.unflatten(-1, heads), None).flatten(-2)


@contextlib.contextmanager
def attached(
    model: HookedModel, *interventions: Intervention, layout: "TokenLayout | None" = None
) -> Iterator["torch.nn.Module | None"]:
    """Attach ``interventions`` to the plain twin for the duration of the block and yield it; yield None (attaching
    nothing) when the model has no twin or one of the hooks has no module boundary on it."""
    twin = plain_model(model)
    plans = []
    if twin is not None:
        for name, fn in ordered_hooks(model, *interventions, layout=layout):
            where = _placement(twin, name)
            if where is None:
                twin = None
                break
            module, when, heads = where
            plans.append((module, when, _edit(fn, heads)))
    if twin is None:
        yield None
        return
    handles = []
    try:
        for module, when, edit in plans:
            if when == "pre":

                def pre(mod, args, kwargs, edit=edit):
                    if args:
                        return (edit(args[0]), *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:

                def post(mod, args, out, edit=edit):
                    return (edit(out[0]), *out[1:]) if isinstance(out, tuple) else edit(out)

                handles.append(module.register_forward_hook(post))
        yield twin
    finally:
        for h in handles:
            h.remove()


@functools.cache
def _takes_positions(cls: Any) -> bool:
    return "position_ids" in inspect.signature(cls.forward).parameters


def forward(
    twin: torch.nn.Module,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: Any = None,
    *,
    use_cache: bool = False,
    last_only: bool = False,
    stop_at_layer: "int | None" = None,
) -> tuple["torch.Tensor | None", Any]:
    """One forward of the twin over ``tokens`` [batch, new], continuing ``cache`` (a transformers ``Cache``; None
    starts one when ``use_cache``). ``attention_mask`` [batch, past + new] covers every position so far; positions
    count real tokens only, so left padding shifts nothing. Returns (logits [batch, new or 1, d_vocab], cache);
    with ``stop_at_layer=k`` the forward ends after block k - 1 and the logits are None."""
    from transformers import DynamicCache

    if use_cache and cache is None:
        cache = DynamicCache()
    kwargs: dict[str, Any] = {"input_ids": tokens, "attention_mask": attention_mask, "use_cache": use_cache}
    if use_cache:
        kwargs["past_key_values"] = cache
    if _takes_positions(cast(Any, type(twin))):
        kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp_min(0)[:, -tokens.shape[1] :]
    if last_only:
        kwargs["logits_to_keep"] = 1
    if stop_at_layer is None:
        return cast(Any, twin)(**kwargs).logits, cache
    c: Any = twin.config
    last = cast(torch.nn.ModuleList, _module(twin, LAYOUTS[c.model_type][0]))[stop_at_layer - 1]

    def stop(mod, args, out):
        raise StopForward

    handle = last.register_forward_hook(stop)  # registered last: runs after every hook already on that layer
    try:
        cast(Any, twin)(**kwargs)
    except StopForward:
        pass
    finally:
        handle.remove()
    return None, cache
