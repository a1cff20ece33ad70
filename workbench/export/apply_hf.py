"""Apply a workbench intervention spec to a plain Hugging Face model with forward hooks.

Free of TransformerLens on purpose: besides the standard library, torch and transformers (through the model it is
given), it imports only the workbench's light modules that declare and check the spec folder
(``workbench.manifests``, ``workbench.schema``, ``workbench.io``, ``workbench.sites``, ``workbench.errors``; they
need pydantic and safetensors), so a service reads a spec through exactly the checks ``Spec.load`` applies: the
manifest's schema, each tensor's dtype, shape and finiteness, and the tensor file's sha256. Usage::

    from transformers import AutoModelForCausalLM
    from workbench.export.apply_hf import applied, load_spec

    model = AutoModelForCausalLM.from_pretrained(folder)
    spec = load_spec("my_edit/")                 # intervention.json + tensors.safetensors
    with applied(model, spec):                   # hooks removed on exit, also after an exception
        out = model.generate(**inputs)

Sites map onto the Hugging Face modules as TransformerLens defines them (0-based blocks): ``resid_pre`` = input of
decoder layer L, ``resid_post`` = its output (``hidden_states[L+1]``), ``attn_out`` / ``mlp_out`` = the attention /
MLP outputs, ``resid_mid`` = input + attention output, ``z`` = the attention output projection's input and
``mlp_post`` = the MLP down-projection's input; these inner sites on sequential pre-norm families only (``EVERY_SITE``),
block inputs and outputs everywhere. Position policy: every position (``all``); the per-position
policies (``from:K``, ``generated``) need prompt boundaries this applier does not see and are refused.
"""

__all__ = ["SpecError", "SCHEMA_VERSION", "LAYOUTS", "EVERY_SITE", "load_spec", "applied", "check_model"]

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch

from workbench.errors import WorkbenchError
from workbench.manifests import SPEC_SCHEMA_VERSION, read_spec_folder

SCHEMA_VERSION = SPEC_SCHEMA_VERSION
_LLAMA_LIKE = ("model.layers", "self_attn", "mlp", "self_attn.o_proj", "mlp.down_proj")
LAYOUTS = {  # model_type -> decoder layers, attention, MLP, attention out-projection, MLP down-projection
    **{
        t: _LLAMA_LIKE
        for t in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "phi3",
            "olmo",
            "olmo2",
        )
    },
    "gpt2": ("transformer.h", "attn", "mlp", "attn.c_proj", "mlp.c_proj"),
    "phi": ("model.layers", "self_attn", "mlp", "self_attn.dense", "mlp.fc2"),
    "gpt_neox": ("gpt_neox.layers", "attention", "mlp", "attention.dense", "mlp.dense_4h_to_h"),
    "opt": ("model.decoder.layers", "self_attn", None, "self_attn.out_proj", "fc2"),
}
#: Families whose blocks are sequential pre-norm (x + attn(norm x), then + mlp(norm .)) with a dense MLP: every
#: site maps onto a module. Elsewhere (post-norms: Gemma2/3, OLMo2; parallel attention and MLP: Phi, GPT-NeoX; MoE
#: MLPs; OPT) only the block's input and output (resid_pre, resid_post) are applied.
EVERY_SITE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "phi3", "gpt2"}
_ARCH = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}


class SpecError(WorkbenchError):
    """A spec that cannot be read or applied to this model; the message names the fix."""


def load_spec(folder: "str | Path") -> dict:
    """Read and check a spec folder as ``Spec.load`` does (``workbench.manifests.read_spec_folder``); returns the
    manifest as parsed JSON with each entry's tensors under ``"_tensors"``. Any failure is a SpecError."""
    try:
        _, m, tensors = read_spec_folder(Path(folder))
    except WorkbenchError as e:
        raise SpecError(str(e)) from None
    for entry, own in zip(m["interventions"], tensors):
        entry["_tensors"] = own
    return m


def _weights_sha256(model: torch.nn.Module) -> str:  # same recipe as workbench.models' fingerprint
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def check_model(model: torch.nn.Module, spec: dict, *, check_weights: bool = True) -> None:
    """Raise SpecError unless ``spec`` was made for ``model`` (architecture, sizes and, by default, weights)."""
    c: Any = model.config  # a transformers config: its field names vary by family (hidden_size / n_embd, ...)
    want = spec.get("model") or {}
    have = {
        "architecture": (getattr(c, "architectures", None) or [_ARCH.get(c.model_type, c.model_type)])[0],
        "d_model": getattr(c, "hidden_size", None) or getattr(c, "n_embd", None),
        "n_layers": getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None),
        "d_vocab": c.vocab_size,
    }
    if check_weights:
        have["weights_sha256"] = _weights_sha256(model)
    diffs = [f"{k}: spec {want.get(k)!r}, model {v!r}" for k, v in have.items() if want.get(k) != v]
    if diffs:
        raise SpecError(f"this spec was made for another model ({'; '.join(diffs)}). Load the model it was made for.")


def _module(root: torch.nn.Module, dotted: str) -> torch.nn.Module:
    for part in dotted.split("."):
        root = cast(torch.nn.ModuleList, root)[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _in_features(linear: torch.nn.Module) -> int:
    """Input width of a Linear or of GPT-2's Conv1D (weight [in, out])."""
    return getattr(linear, "in_features", None) or cast(torch.Tensor, linear.weight).shape[0]


def _first(out: Any, fn) -> Any:
    """Apply ``fn`` to a module output that is a tensor or a tuple whose first item is the hidden states."""
    if isinstance(out, tuple):
        return (fn(out[0]), *out[1:])
    return fn(out)


def _phi(x: torch.Tensor, f: str, inverse: bool = False) -> torch.Tensor:  # as workbench.spectral
    if f == "identity":
        return x
    if f == "squared_exponential":
        return -2 * torch.log(x.clamp_min(1e-4)) if inverse else torch.exp(-x.pow(2) / 2)
    if f == "tanh":
        return torch.atanh(x.clamp(-1 + 1e-4, 1 - 1e-4)) if inverse else torch.tanh(x)
    if f == "elu":
        return torch.where(x >= 0, x, torch.log(x.clamp_min(-1 + 1e-4) + 1)) if inverse else torch.nn.functional.elu(x)
    raise SpecError(f"unknown feature function {f!r}.")


def _spectral(entry: dict, where: str):
    """SEA through its rank-k factors (the math of workbench.interventions.SpectralEdit)."""
    up, un = entry["_tensors"]["u_pos"], entry["_tensors"]["u_neg"]
    combine, f = entry.get("combine", "norm"), entry.get("feature", "identity")
    parts, rev = entry.get("parts", "both"), bool(entry.get("reverse", False))
    if combine not in ("norm", "average", "reference") or parts not in ("both", "pos", "neg"):
        raise SpecError(f"{where}: combine {combine!r} / parts {parts!r} not supported.")

    def edit(x: torch.Tensor) -> torch.Tensor:
        y = _phi(x, f)
        kp, dn = (y @ up.to(x)) @ up.to(x).T, (y @ un.to(x)) @ un.to(x).T
        a = {"pos": (y - kp if rev else kp,), "neg": (dn if rev else y - dn,)}
        chosen = a["pos"] + a["neg"] if parts == "both" else a[parts]
        total = cast(torch.Tensor, sum(_phi(p, f, inverse=True) for p in chosen))  # chosen is never empty
        if combine == "average":
            return total / len(chosen)
        if combine == "norm":
            return total * x.norm(dim=-1, keepdim=True) / total.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return total * x.norm(dim=-2, keepdim=True) / total.norm(dim=-2, keepdim=True).clamp_min(1e-12)

    return edit, up[:, 0] if up.shape[1] else un[:, 0]


def _edit(entry: dict, where: str):
    """The tensor -> tensor function of one entry (add, ablate, spectral), and a vector of the site's width."""
    t = entry["_tensors"]
    if entry.get("kind") == "add":
        v, s = t["vector"], float(entry.get("scale", 1.0))
        return (lambda x: x + (s * v).to(x)), v
    if entry.get("kind") == "ablate":
        u = t["direction"] / t["direction"].norm()
        return (lambda x: x - (x @ u.to(x))[..., None] * u.to(x)), u
    if entry.get("kind") == "spectral":
        return _spectral(entry, where)
    raise SpecError(f"{where}: kind {entry.get('kind')!r} is not supported by this applier (add, ablate, spectral).")


@contextlib.contextmanager
def applied(model: torch.nn.Module, spec: "dict | str | Path", *, check_weights: bool = True) -> Iterator[Any]:
    """Attach the spec's edits as forward hooks for the duration of the block; all are removed on exit."""
    if not isinstance(spec, dict):
        spec = load_spec(spec)
    check_model(model, spec, check_weights=check_weights)
    config: Any = model.config  # a transformers config: its field names vary by family
    layout = LAYOUTS.get(config.model_type)
    if layout is None:
        raise SpecError(f"model_type {config.model_type!r} is not supported; supported: {', '.join(LAYOUTS)}.")
    layers_path, attn_name, mlp_name, o_name, down_name = layout
    layers = cast(torch.nn.ModuleList, _module(model, layers_path))  # the decoder layers
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text_config, "hidden_size", None) or text_config.n_embd
    plans = []  # (module, "pre" | "out", hook function): built and checked before anything is attached
    for i, e in enumerate(spec["interventions"]):
        site = e.get("site") or {}
        kind: Any = site.get("kind")  # read from JSON: any value, the branches below refuse unknown ones
        layer = site.get("layer")
        where = f"interventions[{i}] ({kind} of block {layer})"
        if not isinstance(layer, int) or not 0 <= layer < len(layers):
            raise SpecError(f"{where}: layer must be in 0..{len(layers) - 1}.")
        if (e.get("positions") or {}).get("kind", "all") != "all":
            raise SpecError(
                f"{where}: positions {e['positions']!r}; this applier edits every position only. "
                f"Export with positions 'all' or run the spec in the workbench."
            )
        fn, v = _edit(e, where)
        if kind not in ("resid_pre", "resid_post") and config.model_type not in EVERY_SITE:
            raise SpecError(
                f"{where}: on {config.model_type!r} models this applier edits block inputs and outputs "
                f"only (resid_pre, resid_post); run other sites in the workbench."
            )
        block = layers[layer]
        width = {
            "z": lambda: _in_features(_module(block, o_name)),
            "mlp_post": lambda: _in_features(_module(block, down_name)),
        }.get(kind, lambda: hidden)()
        if v.numel() != width:
            raise SpecError(f"{where}: vector has {v.numel()} entries, the site has {width}.")
        if kind == "resid_pre":
            plans.append((block, "pre", fn))
        elif kind == "resid_post":
            plans.append((block, "out", fn))
        elif kind == "mlp_out":
            if mlp_name is None:  # families without an MLP module (OPT) took the block-only branch above
                raise SpecError(f"{where}: {config.model_type!r} blocks have no MLP module to edit; use resid_post.")
            plans.append((_module(block, mlp_name), "out", fn))
        elif kind == "resid_mid" and e["kind"] == "spectral":
            raise SpecError(f"{where}: spectral edits at resid_mid are not supported.")
        elif kind == "attn_out" or (kind == "resid_mid" and e["kind"] == "add"):
            plans.append((_module(block, attn_name), "out", fn))  # adding to resid_mid = adding to attn_out
        elif kind == "resid_mid":  # ablation of (input + attn_out): remember the input, edit the attention output
            saved: dict = {}
            plans.append((block, "pre", lambda x, saved=saved: saved.__setitem__("x", x) or x))
            plans.append(
                (_module(block, attn_name), "out", lambda a, fn=fn, saved=saved: fn(saved["x"] + a) - saved["x"])
            )
        elif kind == "z":
            plans.append((_module(block, o_name), "pre", fn))
        elif kind == "mlp_post":
            plans.append((_module(block, down_name), "pre", fn))
        else:
            raise SpecError(f"{where}: site kind {kind!r} is not supported by this applier.")
    handles = []
    try:
        for module, when, fn in plans:
            if when == "pre":

                def pre(mod, args, kwargs, fn=fn):
                    if args:
                        return (fn(args[0]), *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(lambda mod, args, out, fn=fn: _first(out, fn)))
        yield model
    finally:
        for h in handles:
            h.remove()
