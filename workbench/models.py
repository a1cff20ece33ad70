"""Loading models, the model protocol, fingerprints and the backend-specific forward step.

This is the only module that knows TransformerLens 3.9's ``HookedTransformer`` from 4.x's ``TransformerBridge``.
Both are loaded **without weight processing** (no LayerNorm folding, no centring), so block outputs equal the
Hugging Face model's ``hidden_states`` (all but the last entry, which Hugging Face returns after the final norm)
and an exported vector means the same thing in every runtime.

``load(spec)`` accepts a local Hugging Face checkpoint folder of any decoder-only architecture the backend
reproduces exactly, a toy-family name (``toy-s``, ``toy-m``, ``toy-l``, shipped in the package) or a TransformerLens
model name (needs the network); ``wrap(hf_model, tokenizer)`` takes a model already in memory. Every load runs a
self-check (one short forward of the wrapped model against the Hugging Face model, both in the model's dtype) and
refuses a backend that does not reproduce the checkpoint, naming the one that does:

* ``bridge`` (TransformerLens 4.x ``TransformerBridge``, also in 3.9): every architecture TransformerLens's
  bridge has an adapter for; it runs the Hugging Face modules themselves.
* ``hooked`` (TransformerLens 3.9 ``HookedTransformer``): the workbench wires Llama and GPT-2 only (TransformerLens
  re-implements them); Llama checkpoints with attention/MLP biases or rope scaling are refused (its converter
  drops both).

What the workbench knows about a loaded model (its folder, fingerprint, tokenisation policy, self-check) is kept
in a registry beside the model (``info(model)``), never as attributes on the TransformerLens object.
"""

__all__ = [
    "HookedModel",
    "Backend",
    "Fingerprint",
    "Tokenization",
    "ModelInfo",
    "load",
    "wrap",
    "info",
    "source_of",
    "tokenization_of",
    "backend_of",
    "available_backends",
    "fingerprint",
    "fingerprint_hf",
    "forward_step",
    "tokenizer_of",
    "hf_folder",
    "head_out_weights",
    "SELF_CHECK_TOLERANCE",
    "default_backend",
    "weights_hash",
    "transformer_lens_model",
    "plain_twin",
    "PlainTwin",
]

import contextlib
import copy
import hashlib
import importlib
import io
import json
import os
import re
import weakref
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from workbench import shipped
from workbench.errors import WorkbenchError, closest

Backend = Literal["hooked", "bridge"]


@runtime_checkable
class HookedModel(Protocol):
    """What the workbench needs of a TransformerLens model (HookedTransformer or TransformerBridge)."""

    cfg: Any
    tokenizer: Any
    blocks: Any

    @property
    def hook_dict(self) -> dict: ...

    def hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...

    def to_tokens(self, *args: Any, **kwargs: Any) -> torch.Tensor: ...

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, *args: Any, **kwargs: Any) -> Any: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Fingerprint:
    """Identity of a model, carried by every artifact so it is never applied to the wrong model."""

    architecture: str
    d_model: int
    n_layers: int
    d_vocab: int
    vocab_sha256: str
    weights_sha256: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Fingerprint":
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise WorkbenchError(f"model fingerprint lacks {missing}; re-create the artifact with the workbench.")
        return cls(**{n: d[n] for n in names})

    def check(self, other: "Fingerprint", what: str = "artifact") -> None:
        """Raise naming every field where ``other`` (the model at hand) differs from this (the artifact's)."""
        diffs = [
            f"{f.name}: {what} has {getattr(self, f.name)!r}, model has {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]
        if diffs:
            raise WorkbenchError(
                f"this {what} was made for another model ({'; '.join(diffs)}). Load the model it was made for, "
                f"or recompute it on this one."
            )


@dataclass(frozen=True)
class Tokenization:
    """How texts become token ids for this model; recorded in every artifact's provenance.

    ``bos``: ``"auto"`` tokenises as the Hugging Face tokenizer does by default (``tokenizer(text)``, the convention
    of every deployment: Llama/Mistral/Gemma prepend a BOS, GPT-2/Pythia/OLMo/Phi do not, Qwen has none);
    ``"always"`` makes sure the sequence starts with the BOS; ``"never"`` drops a leading BOS. (Phi-2 adds no BOS;
    Phi-3 does.)
    ``chat_template``: wrap each prompt as a user turn of the tokenizer's chat template (with the generation
    prompt), as CAA does for instruct models; a pair's completion follows the generation prompt.
    """

    bos: str = "auto"  # auto | always | never (validated below)
    chat_template: bool = False

    def __post_init__(self) -> None:
        if self.bos not in ("auto", "always", "never"):
            raise WorkbenchError(f"bos must be 'auto', 'always' or 'never', got {self.bos!r}.")
        if not isinstance(self.chat_template, bool):
            raise WorkbenchError(f"chat_template must be True or False, got {self.chat_template!r}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: "dict | None") -> "Tokenization":
        d = d or {}
        return cls(d.get("bos", "auto"), d.get("chat_template", False))


@dataclass(frozen=True)
class ModelInfo:
    """What the workbench knows about a loaded model, kept in a registry keyed by the model object."""

    fingerprint: Fingerprint
    tokenization: Tokenization = Tokenization()
    source: "str | None" = None  # the Hugging Face folder it was loaded from (None: wrapped from memory)
    self_check: "float | None" = None  # max |logit difference| to the Hugging Face model at load time
    hf_tokenizer: Any = None  # the tokenizer as loaded (the bridge keeps a copy reloaded to always add a BOS)


_INFO: "weakref.WeakKeyDictionary[Any, ModelInfo]" = weakref.WeakKeyDictionary()


def info(model: "HookedModel") -> ModelInfo:
    """The registry entry of ``model`` (computed from the model's own weights when it was not loaded here)."""
    got = _INFO.get(model)
    if got is None:
        got = ModelInfo(_fingerprint_tl(model))
        _INFO[model] = got
    return got


def source_of(model: "HookedModel") -> "str | None":
    """The local Hugging Face folder ``model`` was loaded from, or None."""
    return info(model).source


def tokenization_of(model: "HookedModel") -> Tokenization:
    return info(model).tokenization


@dataclass(frozen=True, eq=False)
class PlainTwin:
    """The Hugging Face module tree a bridge was built from, unwrapped, sharing every parameter and buffer with it.

    Where the bridge splits a fused weight (GPT-2's ``c_attn``, GPT-NeoX's ``query_key_value``, Phi-3's ``qkv_proj``
    and ``gate_up_proj``) into copies of its own, ``frozen`` holds every parameter of both with its version counter
    at load time: the twin equals the bridge only while none has changed."""

    module: torch.nn.Module
    frozen: "tuple[tuple[torch.Tensor, int], ...] | None" = None
    own_hooks: int = 0  # hooks the bridge keeps on its hook points by itself (OPT's MLP wiring)

    def current(self, bridge: Any) -> bool:
        """Whether the twin still computes what ``bridge`` computes: same parameter objects, no split copy changed,
        and no hook attached to the bridge's hook points beyond its own (``hooks.applied`` around the call)."""
        if self.frozen is not None and not all(p._version == v for p, v in self.frozen):
            return False
        if self.frozen is None and {id(p) for p in self.module.parameters()} != {id(p) for p in bridge.parameters()}:
            return False
        return hook_point_hooks(bridge) == self.own_hooks


def hook_point_hooks(model: Any) -> int:
    """How many forward hooks are attached to ``model``'s hook points (aliases counted once)."""
    unique = {id(h): h for h in model.hook_dict.values()}
    return sum(len(h._forward_hooks) + len(h._forward_pre_hooks) for h in unique.values())


_TWIN: "weakref.WeakKeyDictionary[Any, PlainTwin]" = weakref.WeakKeyDictionary()


def plain_twin(model: "HookedModel") -> "torch.nn.Module | None":
    """The plain Hugging Face twin of the bridge ``model`` (``PlainTwin``; ``workbench.plain`` runs it), or None on
    the hooked backend and where the twin no longer computes what the model computes."""
    twin = _TWIN.get(model)
    return twin.module if twin is not None and twin.current(model) else None


# ---------------------------------------------------------------------------------------------------- backends


def _tl_major() -> int:
    """3 when ``HookedTransformer`` is importable (TransformerLens <= 3.x, whose 3.9 has no ``__version__``), else 4."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return 4
    return 3


def available_backends() -> list[str]:
    """Backends importable here: 'bridge' (TransformerLens >= 3.9) and 'hooked' (TransformerLens < 4)."""
    out = []
    try:
        importlib.import_module("transformer_lens.model_bridge")
        out.append("bridge")
    except ImportError:
        pass
    try:
        from transformer_lens import HookedTransformer  # noqa: F401

        out.append("hooked")
    except ImportError:
        pass
    return out


def default_backend() -> str:
    """The backend used when none is named: ``$WORKBENCH_BACKEND``, else the installed TransformerLens line's own
    (``bridge`` on 4.x, ``hooked`` on 3.x)."""
    return os.environ.get("WORKBENCH_BACKEND") or ("bridge" if _tl_major() >= 4 else "hooked")


def _resolve_backend(backend: "str | None") -> Backend:
    backend = backend or default_backend()
    have = available_backends()
    if backend not in ("hooked", "bridge"):
        raise WorkbenchError(f"backend must be 'hooked' or 'bridge', got {backend!r}.")
    if backend not in have:
        raise WorkbenchError(
            f"backend {backend!r} is not available with the installed transformer_lens (have: {have}). "
            f"'hooked' needs transformer_lens 3.x; 'bridge' needs transformer_lens >= 3.9."
        )
    return backend  # type: ignore[return-value]


def backend_of(model: HookedModel) -> Backend:
    """Which TransformerLens model class ``model`` is."""
    names = {c.__name__ for c in type(model).__mro__}
    if "TransformerBridge" in names:
        return "bridge"
    if "HookedTransformer" in names:
        return "hooked"
    raise WorkbenchError(f"expected a HookedTransformer or TransformerBridge, got {type(model).__name__}.")


def tokenizer_of(model: HookedModel):
    """The model's Hugging Face tokenizer as it was loaded (its own BOS convention intact)."""
    entry = _INFO.get(model)
    tok = entry.hf_tokenizer if entry is not None else None
    tok = tok if tok is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise WorkbenchError("this model has no tokenizer; load it with workbench.models.load(...).")
    return tok


# ---------------------------------------------------------------------------------------------------- loading

#: Max |logit difference| allowed by the load self-check, relative to max(1, max |logit|), per dtype.
SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 2e-2, torch.bfloat16: 5e-2}
_HOOKED_ARCHS = ("LlamaForCausalLM", "GPT2LMHeadModel")


def load(
    spec: "str | os.PathLike",
    *,
    backend: "str | None" = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    bos: str = "auto",
    chat_template: bool = False,
) -> HookedModel:
    """Load a model as a TransformerLens model without weight processing, and check that it reproduces the
    Hugging Face model.

    Args:
        spec: a local Hugging Face checkpoint folder, a toy-family name (``toy-m``) or a TransformerLens name.
        backend: ``"bridge"`` (TransformerBridge) or ``"hooked"`` (HookedTransformer); default: the installed
            TransformerLens line's own (or ``$WORKBENCH_BACKEND``).
        device, dtype: where and in what precision to hold the weights.
        bos, chat_template: the tokenisation policy (see ``Tokenization``).

    Raises:
        WorkbenchError: unknown name, a folder that is not a checkpoint, an architecture the backend does not
            support or does not reproduce (naming the backend that does), or a download that failed (offline).
    """
    resolved = _resolve_backend(backend)
    tokenization = Tokenization(bos, chat_template)
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists():
        return _load_hf_folder(path, resolved, device, dtype, tokenization)
    if text.startswith("toy-"):
        return _load_hf_folder(shipped.checkpoint_dir(text), resolved, device, dtype, tokenization)
    if text.startswith((".", "/", "~")) or text.endswith("/"):
        raise WorkbenchError(f"model folder {text!r} does not exist; pass an existing Hugging Face checkpoint folder.")
    model = _load_tl_name(text, resolved, device, dtype)  # TransformerLens's own loading: no HF reference here
    _check_tokenization(tokenizer_of(model), tokenization)
    _INFO[model] = ModelInfo(_fingerprint_tl(model), tokenization)
    return model


def wrap(
    hf_model: Any,
    tokenizer: Any,
    *,
    backend: "str | None" = None,
    bos: str = "auto",
    chat_template: bool = False,
    source: "str | os.PathLike | None" = None,
) -> HookedModel:
    """Wrap a Hugging Face causal LM already in memory (and its tokenizer) as a TransformerLens model, with the
    same self-check as ``load``. ``source`` names the checkpoint folder it came from, if any (needed only by the
    exports that read the folder: baking, llama.cpp parity). The bridge wraps ``hf_model`` in place."""
    if not isinstance(hf_model, torch.nn.Module) or not hasattr(hf_model, "config"):
        raise WorkbenchError(
            f"hf_model must be a transformers model (AutoModelForCausalLM), got {type(hf_model).__name__}."
        )
    if tokenizer is None or not callable(getattr(tokenizer, "get_vocab", None)):
        raise WorkbenchError("tokenizer must be the model's transformers tokenizer (AutoTokenizer.from_pretrained).")
    resolved = _resolve_backend(backend)
    tokenization = Tokenization(bos, chat_template)
    p = next(hf_model.parameters())
    arch = (getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__])[0]
    _check_supported(hf_model.config, arch, resolved, "the model")
    fp = fingerprint_hf(hf_model.eval(), tokenizer, arch)
    return _wrap_checked(
        hf_model,
        tokenizer,
        arch,
        resolved,
        str(p.device),
        p.dtype,
        fp,
        tokenization,
        str(Path(source).resolve()) if source else None,
    )


def hf_folder(spec: "str | os.PathLike") -> Path:
    """The local Hugging Face checkpoint folder behind ``spec`` (a folder or a toy-family name)."""
    text = str(spec)
    if text.startswith("toy-") and not Path(text).exists():
        return shipped.checkpoint_dir(text)
    path = Path(text).expanduser()
    if not (path / "config.json").is_file():
        raise WorkbenchError(
            f"{text!r} is not a local Hugging Face checkpoint folder (no config.json); pass the folder the model "
            f"was loaded from (or a toy name such as toy-m)."
        )
    return path


def _architecture(config) -> str:
    return (getattr(config, "architectures", None) or [type(config).__name__])[0]


def _bridge_architectures() -> dict:
    try:
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    except ImportError:  # pragma: no cover - older TransformerLens lines
        return {}
    return SUPPORTED_ARCHITECTURES


def _rope_type(config) -> str:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return str(rope.get("rope_type") or rope.get("type") or "default") if isinstance(rope, dict) else "default"


def _check_supported(config, arch: str, backend: Backend, where: str) -> None:
    """Refuse, with the reason and the backend that works, what ``backend`` cannot load exactly."""
    causal = arch.endswith(("ForCausalLM", "LMHeadModel"))
    if backend == "bridge":
        if arch not in _bridge_architectures() or not causal:
            known = [a for a in _bridge_architectures() if a.endswith(("ForCausalLM", "LMHeadModel"))]
            raise WorkbenchError(
                f"architecture {arch!r} of {where} is not supported: the bridge loads decoder-only language models "
                f"TransformerLens has an adapter for, such as {closest(arch, known)} ({len(known)} in all)."
            )
        return
    if arch not in _HOOKED_ARCHS:
        bridge_ok = arch in _bridge_architectures() and causal
        raise WorkbenchError(
            f"architecture {arch!r} of {where} is not supported by the 'hooked' backend (TransformerLens 3.9 "
            f"HookedTransformer loads {' and '.join(_HOOKED_ARCHS)} here); "
            + ("load it with backend='bridge' (--backend bridge)." if bridge_ok else "no backend supports it.")
        )
    reasons = []
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        reasons.append("it has attention/MLP biases, which TransformerLens 3.9's Llama converter drops")
    if arch == "LlamaForCausalLM" and _rope_type(config) != "default":
        reasons.append(f"it uses rope scaling {_rope_type(config)!r}, which HookedTransformer ignores")
    if reasons:
        raise WorkbenchError(
            f"the 'hooked' backend cannot load {where} exactly: {'; '.join(reasons)}. Load it with backend='bridge' "
            f"(--backend bridge), which runs the Hugging Face modules themselves."
        )


#: config.json sizes that must be whole numbers >= 1 when present (a 0 or negative size builds an empty model)
_CONFIG_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "n_embd", "n_layer", "n_head")
_CKPT_FIX = "re-download or re-save it."


def _read_config(path: Path) -> dict:
    """``path``'s config.json read through ``workbench.schema.read_json`` and checked: a JSON object,
    ``architectures`` a list of strings when present, the sizes in ``_CONFIG_SIZES`` whole numbers >= 1."""
    from workbench.schema import read_json

    config = path / "config.json"
    where = f"{config}: the checkpoint's config.json"
    data = read_json(config, fix=f"The checkpoint in {path} is incomplete or its config.json is invalid: {_CKPT_FIX}")
    if not isinstance(data, dict):
        raise WorkbenchError(f"{where} is a JSON {type(data).__name__}, not an object; {_CKPT_FIX}")
    archs = data.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise WorkbenchError(f"{where}: architectures must be a list of strings, got {archs!r}; {_CKPT_FIX}")
    for key in _CONFIG_SIZES:
        value = data.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise WorkbenchError(f"{where}: {key} must be a whole number >= 1, got {value!r}; {_CKPT_FIX}")
    return data


def _load_hf_folder(
    path: Path, backend: Backend, device: str, dtype: torch.dtype, tokenization: Tokenization
) -> HookedModel:
    """Load the checkpoint folder ``path``: its config.json is checked first (``_read_config``); any failure of
    transformers or TransformerLens on it (truncated weights, sizes that do not fit) is one WorkbenchError naming
    the folder; the workbench's own refusals (unsupported architecture, self-check) pass through unchanged."""
    config = path / "config.json"
    if not config.exists() and not config.is_symlink():
        raise WorkbenchError(
            f"{str(path)!r} is not a Hugging Face checkpoint folder (no config.json); pass a folder written by "
            f"save_pretrained()."
        )
    _read_config(path)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        hf_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        arch = _architecture(hf_cfg)
        _check_supported(hf_cfg, arch, backend, repr(str(path)))
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True).eval()
        fp = _cached_fingerprint(path, hf, tok, arch, dtype)
        return _wrap_checked(hf, tok, arch, backend, device, dtype, fp, tokenization, str(path.resolve()))
    except (WorkbenchError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - whatever transformers / TransformerLens raise on a broken checkpoint
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
        first = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
        first = first if len(first) <= 300 else first[:297] + "..."
        raise WorkbenchError(
            f"the checkpoint in {path} could not be loaded ({type(e).__name__}: {first}); it is incomplete or its "
            f"config.json is invalid: {_CKPT_FIX}"
        ) from None


def _check_tokenization(tok, tokenization: Tokenization) -> None:
    if tokenization.chat_template and not getattr(tok, "chat_template", None):
        raise WorkbenchError(
            "chat_template=True (--chat-template) but this tokenizer has no chat template; drop the "
            "option or use an instruct model's tokenizer."
        )
    if tokenization.bos == "always" and tok.bos_token_id is None:
        raise WorkbenchError("bos='always' (--bos always) but this tokenizer has no BOS token; use --bos auto.")


def _versions_hint() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        have = f"transformers {version('transformers')}, transformer_lens {version('transformer_lens')}"
    except PackageNotFoundError:  # pragma: no cover
        have = "the installed transformers / transformer_lens"
    return (
        f"No backend reproduces it with {have}; the architecture matrix is measured exact with transformers "
        f"5.23.0 and transformer_lens 4.3.0 (constraints.txt): install those, or report the architecture."
    )


def _wrap_checked(
    hf,
    tok,
    arch: str,
    backend: Backend,
    device: str,
    dtype: torch.dtype,
    fp: Fingerprint,
    tokenization: Tokenization,
    source: "str | None",
) -> HookedModel:
    """Wrap ``hf`` on ``backend`` and check one short forward against the Hugging Face model (computed first:
    the bridge wraps the HF modules in place)."""
    _check_tokenization(tok, tokenization)
    hf = hf.to(device)
    ids = torch.randint(
        0, int(hf.config.get_text_config().vocab_size), (1, 12), generator=torch.Generator().manual_seed(0)
    ).to(device)
    with torch.no_grad():
        ref = hf(ids).logits
    model = transformer_lens_model(hf, tok, arch, backend, device, dtype, name=source or arch)
    with torch.no_grad():
        got = model(ids)
    diff = float((got.double() - ref.double()).abs().max())
    scale = max(1.0, float(ref.double().abs().max()))
    tol = SELF_CHECK_TOLERANCE.get(dtype, 5e-2) * scale
    if not diff <= tol:  # also catches NaN
        other = "bridge" if backend == "hooked" else None
        raise WorkbenchError(
            f"the {backend!r} backend does not reproduce this {arch} checkpoint: max |logit difference| to the Hugging "
            f"Face model is {diff:.3g} (tolerance {tol:.3g} in {str(dtype).removeprefix('torch.')}). "
            + (f"Load it with backend={other!r} (--backend {other})." if other else _versions_hint())
        )
    _INFO[model] = ModelInfo(fp, tokenization, source, diff, tok)
    return model


def transformer_lens_model(
    hf, tok, arch: str, backend: Backend, device: str, dtype: torch.dtype, name: str
) -> HookedModel:
    """The ``backend``'s TransformerLens model of the Hugging Face model ``hf``, unchecked and unregistered
    (``load`` and ``wrap`` add the self-check and the registry entry)."""
    if backend == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        shared = {id(t): t for t in (*hf.parameters(), *hf.buffers())}
        twin = copy.deepcopy(hf, shared)  # the module tree before the bridge wraps it in place; no weight is copied
        model = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok, device=device, dtype=dtype)
        mine = {id(p) for p in twin.parameters()}
        split = [p for p in model.parameters() if id(p) not in mine]
        frozen = tuple((p, p._version) for p in (*twin.parameters(), *split)) if split else None
        _TWIN[model] = PlainTwin(twin, frozen, hook_point_hooks(model))
        return model
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**_HOOKED_CONFIG[arch](hf.config), device=device, dtype=dtype)
    with contextlib.redirect_stdout(io.StringIO()):  # HookedTransformer prints "Moving model to device"
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
        model.load_and_process_state_dict(
            _HOOKED_WEIGHTS[arch](hf, cfg),
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
            refactor_factored_attn_matrices=False,
        )
        return model.to(device).eval()


def _llama_cfg(c) -> dict:
    rope = getattr(c, "rope_theta", None) or (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(
        d_model=c.hidden_size,
        d_head=d_head,
        n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=c.max_position_embeddings,
        eps=c.rms_norm_eps,
        d_vocab=c.vocab_size,
        act_fn=c.hidden_act,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=d_head,
        rotary_base=float(rope),
        final_rms=True,
        gated_mlp=True,
        n_key_value_heads=(c.num_key_value_heads if c.num_key_value_heads != c.num_attention_heads else None),
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=True,
        tokenizer_prepends_bos=True,
    )


def _gpt2_cfg(c) -> dict:
    return dict(
        d_model=c.n_embd,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd,
        n_layers=c.n_layer,
        n_ctx=c.n_positions,
        eps=c.layer_norm_epsilon,
        d_vocab=c.vocab_size,
        act_fn=c.activation_function,
        use_attn_scale=c.scale_attn_weights,
        use_local_attn=False,
        scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx,
        normalization_type="LN",
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True,
        tokenizer_prepends_bos=True,
    )


def _llama_weights(hf, cfg):
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    return convert_llama_weights(hf, cfg)


def _gpt2_weights(hf, cfg):
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    return convert_gpt2_weights(hf, cfg)


_HOOKED_CONFIG = {"LlamaForCausalLM": _llama_cfg, "GPT2LMHeadModel": _gpt2_cfg}
_HOOKED_WEIGHTS = {"LlamaForCausalLM": _llama_weights, "GPT2LMHeadModel": _gpt2_weights}


def _load_tl_name(name: str, backend: Backend, device: str, dtype: torch.dtype) -> HookedModel:
    try:
        from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES
    except ImportError:  # TransformerLens 4 moved the list
        from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES
    official = list(OFFICIAL_MODEL_NAMES)
    known = {n.lower() for n in official} | {n.split("/")[-1].lower() for n in official}
    if name.lower() not in known:
        raise WorkbenchError(
            f"model {name!r} is neither a local folder, a toy model (toy-s, toy-m, toy-l) nor a TransformerLens "
            f"name; closest names: {closest(name, official)}."
        )
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        raise WorkbenchError(
            f"could not download {name!r}: offline mode is set (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE). "
            f"Download the checkpoint elsewhere and pass its local folder instead."
        )
    if not _hub_reachable():
        raise WorkbenchError(
            f"could not download {name!r}: the model hub is not reachable from here (no connection within 2 s). "
            f"Download the checkpoint elsewhere and pass its local folder instead."
        )
    try:
        if backend == "bridge":
            from transformer_lens.model_bridge import TransformerBridge

            model = TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
        else:
            from transformer_lens import HookedTransformer

            model = HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)
    except (OSError, ConnectionError, RuntimeError) as e:
        raise WorkbenchError(
            f"could not download {name!r} ({type(e).__name__}); this needs network access to the model hub. "
            f"Offline, download the checkpoint elsewhere and pass its local folder instead."
        ) from None
    return model.eval()


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the model hub's endpoint opens within ``timeout`` seconds (name lookup
    included), so an offline machine fails at once instead of after the hub client's retries."""
    import concurrent.futures
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
    except (ImportError, AttributeError, ValueError):
        return True  # let the download itself report
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)

    def connect() -> bool:
        with socket.create_connection((host, port), timeout=timeout):
            return True

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout)
    except (OSError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)


# ---------------------------------------------------------------------------------------------------- fingerprint


def _vocab_hash(tok) -> str:
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256("\n".join(f"{i}\t{w}" for w, i in vocab).encode()).hexdigest()


def weights_hash(named: "list[tuple[str, torch.Tensor]]") -> str:
    """sha256 of named tensors (sorted by name, each as float32 bytes): a fingerprint's ``weights_sha256``."""
    h = hashlib.sha256()
    for name, t in sorted(named):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _dims(config) -> tuple[int, int, int]:
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    d_model = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None) or c.d_model
    n_layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None) or c.num_layers
    return int(d_model), int(n_layers), int(c.vocab_size)


def fingerprint_hf(hf, tok, arch: "str | None" = None, *, weights_sha256: "str | None" = None) -> Fingerprint:
    """The fingerprint of a Hugging Face model and its tokenizer: sizes, vocabulary hash and the sha256 of every
    weight as float32 (``weights_sha256`` given: that value, from the cache)."""
    d_model, n_layers, d_vocab = _dims(hf.config)
    return Fingerprint(
        architecture=arch or _architecture(hf.config),
        d_model=d_model,
        n_layers=n_layers,
        d_vocab=d_vocab,
        vocab_sha256=_vocab_hash(tok),
        weights_sha256=weights_sha256 or weights_hash(list(hf.state_dict().items())),
    )


def _cache_file() -> "Path | None":
    """``$WORKBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/workbench``, else ``~/.cache/workbench``; None if none."""
    base = os.environ.get("WORKBENCH_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or (
            os.path.join(os.environ["HOME"], ".cache") if os.environ.get("HOME") else None
        )
        base = os.path.join(xdg, "workbench") if xdg else None
    return Path(base) / "fingerprints.json" if base else None


def _weight_files_key(path: Path, dtype: torch.dtype) -> "str | None":
    """A key that changes whenever a weight file or the config of ``path`` changes (the folder, each file's name,
    size, mtime in ns and inode, and the load dtype)."""
    files = sorted(
        f
        for f in path.iterdir()
        if f.suffix in (".safetensors", ".bin", ".pt", ".pth")
        or f.name.endswith(".index.json")
        or f.name == "config.json"
    )
    if not files:
        return None
    stats = [(f.name, st.st_size, st.st_mtime_ns, st.st_ino) for f in files for st in [f.stat()]]
    return hashlib.sha256(json.dumps([str(path.resolve()), str(dtype), stats]).encode()).hexdigest()


def _read_cache(cache: Path) -> dict:
    """The fingerprint cache's table of weight-file key -> weights sha256; a cache that cannot be read or parsed,
    or is not a JSON object, is an empty table (it only costs a re-hash)."""
    from workbench.schema import parse_json

    try:
        table = parse_json(cache.read_text(encoding="utf-8"), str(cache), "it is rebuilt on the next load.")
    except (OSError, UnicodeDecodeError, WorkbenchError):
        return {}
    return table if isinstance(table, dict) else {}


def _cached_fingerprint(path: Path, hf, tok, arch: str, dtype: torch.dtype) -> Fingerprint:
    """``fingerprint_hf``, with the weights' hash cached by ``_weight_files_key``: the full hash is computed once per
    checkpoint (and dtype), every later load costs a ``stat`` per file. Only a lowercase hex sha256 is trusted from
    the cache; a cache that cannot be read or written only costs a re-hash."""
    cache, key = _cache_file(), _weight_files_key(path, dtype)
    if cache is None or key is None:
        return fingerprint_hf(hf, tok, arch)
    table = _read_cache(cache)
    cached = table.get(key)
    if isinstance(cached, str) and re.fullmatch("[0-9a-f]{64}", cached):
        return fingerprint_hf(hf, tok, arch, weights_sha256=cached)
    fp = fingerprint_hf(hf, tok, arch)
    table = {k: v for k, v in table.items() if isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v)}
    table[key] = fp.weights_sha256
    with contextlib.suppress(OSError, WorkbenchError):  # a read-only home or a directory in the cache's place
        from workbench.io import atomic_file

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_file(cache, lambda tmp: Path(tmp).write_text(json.dumps(table)))
    return fp


def _fingerprint_tl(model: HookedModel) -> Fingerprint:
    return Fingerprint(
        architecture=str(getattr(model.cfg, "original_architecture", None) or type(model).__name__),
        d_model=int(model.cfg.d_model),
        n_layers=int(model.cfg.n_layers),
        d_vocab=int(model.cfg.d_vocab),
        vocab_sha256=_vocab_hash(model.tokenizer) if getattr(model, "tokenizer", None) is not None else "",
        weights_sha256=weights_hash(list(model.state_dict().items())),
    )


def fingerprint(model: HookedModel) -> Fingerprint:
    """The model's fingerprint: recorded at load time from the Hugging Face weights, else computed from TL's."""
    return info(model).fingerprint


# ---------------------------------------------------------------------------------------------------- weights


def head_out_weights(model: HookedModel, layer: int) -> torch.Tensor:
    """Block ``layer``'s attention output weights per head, ``[n_heads, d_head, d_model]``: head h writes
    ``z[..., h, :] @ W_O[h]`` into the residual stream (both backends expose TransformerLens's ``W_O``)."""
    if not 0 <= layer < model.cfg.n_layers:
        raise WorkbenchError(f"layer {layer} does not exist: the model has {model.cfg.n_layers} blocks.")
    return model.blocks[layer].attn.W_O.detach()


# ---------------------------------------------------------------------------------------------------- forward


def forward_step(
    model: HookedModel,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    state: Any = None,
    *,
    use_cache: bool = True,
) -> tuple[torch.Tensor, Any]:
    """One forward over ``tokens`` [batch, new] continuing the KV ``state`` (None: a fresh sequence).

    ``attention_mask`` [batch, past + new] covers every position so far (1 real, 0 padding), so left padding is
    handled with the right positions on both backends. Returns ``(logits [batch, new, d_vocab], state)``; the
    state is opaque and only valid for the same model. With ``use_cache=False`` no state is kept.
    """
    if backend_of(model) == "bridge":
        if not use_cache:
            return model(tokens, attention_mask=attention_mask), None
        return model(tokens, attention_mask=attention_mask, past_key_values=state, return_type="logits_and_cache")
    if not use_cache:
        return model(tokens, attention_mask=attention_mask), None
    if state is None:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        state = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, tokens.shape[0])
    new_mask = attention_mask[:, -tokens.shape[1] :]
    return model(tokens, attention_mask=new_mask, past_kv_cache=state), state
