"""Loading models, the model protocol, fingerprints and the backend-specific forward step.

This is the only module that knows TransformerLens 3.9's ``HookedTransformer`` from 4.x's ``TransformerBridge``.
Both are loaded **without weight processing** (no LayerNorm folding, no centring), so residual activations equal
the Hugging Face model's ``hidden_states`` and an exported vector means the same thing in every runtime.

``load(spec)`` accepts a local Hugging Face checkpoint folder (Llama and GPT-2 families), a toy-family name
(``toy-s``, ``toy-m``, ``toy-l``, shipped in the package) or a TransformerLens model name (needs the network).
"""

__all__ = [
    "HookedModel", "Backend", "Fingerprint", "load", "backend_of", "available_backends", "fingerprint",
    "forward_step", "tokenizer_of", "hf_folder", "head_out_weights",
]

import contextlib
import hashlib
import importlib
import io
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from workbench.errors import WorkbenchError, closest

Backend = Literal["hooked", "bridge"]


@runtime_checkable
class HookedModel(Protocol):
    """What the workbench needs of a TransformerLens model (HookedTransformer or TransformerBridge)."""

    cfg: Any
    tokenizer: Any

    @property
    def hook_dict(self) -> dict: ...

    def hooks(self, fwd_hooks: list = ..., **kwargs: Any): ...

    def run_with_cache(self, *args: Any, **kwargs: Any): ...

    def to_tokens(self, input: Any, **kwargs: Any) -> torch.Tensor: ...

    def generate(self, *args: Any, **kwargs: Any): ...


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


# ---------------------------------------------------------------------------------------------------- backends


def _tl_major() -> int:
    import transformer_lens

    return int(getattr(transformer_lens, "__version__", "4").split(".")[0] or 4)


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


def _resolve_backend(backend: "str | None") -> Backend:
    backend = backend or os.environ.get("WORKBENCH_BACKEND") or ("bridge" if _tl_major() >= 4 else "hooked")
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
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise WorkbenchError("this model has no tokenizer; load it with workbench.models.load(...).")
    return tok


# ---------------------------------------------------------------------------------------------------- loading


def load(
    spec: "str | os.PathLike",
    *,
    backend: "str | None" = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedModel:
    """Load a model as a TransformerLens model without weight processing.

    Args:
        spec: a local Hugging Face checkpoint folder, a toy-family name (``toy-m``) or a TransformerLens name.
        backend: ``"bridge"`` (TransformerBridge) or ``"hooked"`` (HookedTransformer); default: the installed
            TransformerLens line's own (or ``$WORKBENCH_BACKEND``).
        device, dtype: where and in what precision to hold the weights.

    Raises:
        WorkbenchError: unknown name, a folder that is not a checkpoint, an unsupported architecture, or a
            download that failed (offline).
    """
    resolved = _resolve_backend(backend)
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists():
        return _load_hf_folder(path, resolved, device, dtype)
    if text.startswith("toy-"):
        from workbench.toy import checkpoint_dir

        return _load_hf_folder(checkpoint_dir(text), resolved, device, dtype)
    if text.startswith((".", "/", "~")) or text.endswith("/"):
        raise WorkbenchError(f"model folder {text!r} does not exist; pass an existing Hugging Face checkpoint folder.")
    return _load_tl_name(text, resolved, device, dtype)


def hf_folder(spec: "str | os.PathLike") -> Path:
    """The local Hugging Face checkpoint folder behind ``spec`` (a folder or a toy-family name)."""
    text = str(spec)
    if text.startswith("toy-") and not Path(text).exists():
        from workbench.toy import checkpoint_dir

        return checkpoint_dir(text)
    path = Path(text).expanduser()
    if not (path / "config.json").is_file():
        raise WorkbenchError(
            f"{text!r} is not a local Hugging Face checkpoint folder (no config.json); pass the folder the model "
            f"was loaded from (or a toy name such as toy-m)."
        )
    return path


def _load_hf_folder(path: Path, backend: Backend, device: str, dtype: torch.dtype) -> HookedModel:
    if not (path / "config.json").is_file():
        raise WorkbenchError(
            f"{str(path)!r} is not a Hugging Face checkpoint folder (no config.json); pass a folder written by "
            f"save_pretrained()."
        )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        hf_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        arch = (hf_cfg.architectures or [type(hf_cfg).__name__])[0]
        if arch not in _HOOKED_CONFIG:
            raise WorkbenchError(
                f"architecture {arch!r} in {str(path)!r} is not supported; supported: {', '.join(_HOOKED_CONFIG)}."
            )
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True).eval()
    except WorkbenchError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise WorkbenchError(f"could not load the checkpoint in {str(path)!r}: {e}".splitlines()[0]) from None
    fp = _fingerprint_hf(hf, tok, arch)
    model = _wrap_hf(hf, tok, arch, backend, device, dtype, name=str(path))
    model.workbench_fingerprint = fp
    model.workbench_source = str(path.resolve())
    return model


def _wrap_hf(hf, tok, arch: str, backend: Backend, device: str, dtype: torch.dtype, name: str) -> HookedModel:
    if backend == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok, device=device, dtype=dtype)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**_HOOKED_CONFIG[arch](hf.config), device=device, dtype=dtype)
    with contextlib.redirect_stdout(io.StringIO()):  # HookedTransformer prints "Moving model to device"
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
        model.load_and_process_state_dict(
            _HOOKED_WEIGHTS[arch](hf, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False,
            fold_value_biases=False, refactor_factored_attn_matrices=False,
        )
        return model.to(device).eval()


def _llama_cfg(c) -> dict:
    rope = getattr(c, "rope_theta", None) or (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(
        d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn=c.hidden_act, normalization_type="RMS", positional_embedding_type="rotary",
        rotary_adjacent_pairs=False, rotary_dim=d_head, rotary_base=float(rope), final_rms=True, gated_mlp=True,
        n_key_value_heads=(c.num_key_value_heads if c.num_key_value_heads != c.num_attention_heads else None),
        original_architecture="LlamaForCausalLM", default_prepend_bos=True, tokenizer_prepends_bos=True,
    )


def _gpt2_cfg(c) -> dict:
    return dict(
        d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
        n_layers=c.n_layer, n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size,
        act_fn=c.activation_function, use_attn_scale=c.scale_attn_weights, use_local_attn=False,
        scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx, normalization_type="LN",
        original_architecture="GPT2LMHeadModel", default_prepend_bos=True, tokenizer_prepends_bos=True,
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
        from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES  # type: ignore[no-redef]
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


# ---------------------------------------------------------------------------------------------------- fingerprint


def _vocab_hash(tok) -> str:
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256("\n".join(f"{i}\t{w}" for w, i in vocab).encode()).hexdigest()


def _weights_hash(named: "list[tuple[str, torch.Tensor]]") -> str:
    h = hashlib.sha256()
    for name, t in sorted(named):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _fingerprint_hf(hf, tok, arch: str) -> Fingerprint:
    c = hf.config
    return Fingerprint(
        architecture=arch,
        d_model=int(getattr(c, "hidden_size", None) or c.n_embd),
        n_layers=int(getattr(c, "num_hidden_layers", None) or c.n_layer),
        d_vocab=int(c.vocab_size),
        vocab_sha256=_vocab_hash(tok),
        weights_sha256=_weights_hash(list(hf.state_dict().items())),
    )


def fingerprint(model: HookedModel) -> Fingerprint:
    """The model's fingerprint: recorded at load time from the Hugging Face weights, else computed from TL's."""
    fp = getattr(model, "workbench_fingerprint", None)
    if fp is None:
        fp = Fingerprint(
            architecture=str(getattr(model.cfg, "original_architecture", None) or type(model).__name__),
            d_model=int(model.cfg.d_model),
            n_layers=int(model.cfg.n_layers),
            d_vocab=int(model.cfg.d_vocab),
            vocab_sha256=_vocab_hash(model.tokenizer) if getattr(model, "tokenizer", None) is not None else "",
            weights_sha256=_weights_hash(list(model.state_dict().items())),
        )
        model.workbench_fingerprint = fp
    return fp


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
    new_mask = attention_mask[:, -tokens.shape[1]:]
    return model(tokens, attention_mask=new_mask, past_kv_cache=state), state
