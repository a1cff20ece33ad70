"""Bake a spec into a Hugging Face checkpoint: the edit becomes weights, so it serves at zero cost anywhere.

What folds exactly (every position, as the spec's ``positions="all"``):

* add at ``resid_post`` / ``mlp_out`` of block N, or ``resid_pre`` of block N+1 -> bias of block N's MLP
  down-projection (Llama: ``config.mlp_bias = True``, zero gate/up biases; GPT-2: its existing ``c_proj`` bias);
* add at ``attn_out`` / ``resid_mid`` of block N -> bias of the attention output projection (Llama:
  ``attention_bias = True``, zero q/k/v biases);
* add at ``mlp_post`` / ``z`` of block N -> ``W_down @ v`` / ``W_O @ v`` on that projection's bias;
* add at ``resid_pre`` of block 0 -> every token embedding (Llama; untied from the unembedding first) or every
  position embedding (GPT-2);
* a linear spectral edit (SEA ``combine="average"``, identity feature) at ``mlp_out`` of block N -> the
  down-projection weight and bias left-multiplied by M = (P+ + P-) / 2 (or the one part kept);
* one direction ablated everywhere (the residual never carries it: every read site covered, see
  ``ablation_everywhere``) -> orthogonalisation of every writer: embeddings, attention and MLP output projections.

Anything else (per-position policies, ablation at some layers only, adds mixed with ablation) depends on the
activation, not only on the weights, and is refused with the reason; deploy it with ``workbench.export.apply_hf``.

The checkpoint is a plain transformers checkpoint that vLLM serves unchanged (no custom code): Llama and its
Mistral / Qwen2 rewrites, GPT-2 and OPT through vLLM's own model classes, Phi and GPT-NeoX through its
Transformers backend. Every bias a config flag implies is written (zeros where unused), and a checkpoint vLLM would
load wrong without a word is refused with the reason (``workbench.export.vllm.servable_problem``).
"""

__all__ = [
    "AS_LLAMA",
    "BAKE_MANIFEST",
    "BakeManifest",
    "bake_hf",
    "bake_support",
    "ablation_everywhere",
    "everywhere_sites",
    "read_bake_manifest",
]

import math
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import torch
from pydantic import Field

from workbench.errors import WorkbenchError
from workbench.export.spec import Spec
from workbench.export.vllm import servable_problem
from workbench.interventions import Ablate, AddDirection, SpectralEdit
from workbench.io import atomic_dir, read_json, write_json
from workbench.manifests import AblateMeta, AddMeta, FingerprintModel, ProvenanceModel, SpectralMeta
from workbench.schema import MAX_SCALE, Strict, validate
from workbench.schema import read_json as read_json_bounded
from workbench.sites import HookSite

#: the file beside a baked checkpoint's weights that says what was baked into it, from what
BAKE_MANIFEST = "workbench_bake.json"


class BakeManifest(Strict):
    """``workbench_bake.json``: the source checkpoint, the edit folded into the weights and how."""

    format: Literal["workbench.baked"]
    source: str
    source_model: FingerprintModel
    dtype: Literal["float32", "float16", "bfloat16", "float64"]
    edits: list[str]  # one line per weight change, in the order applied
    rewritten_as: "Literal['LlamaForCausalLM'] | None"  # a Mistral / Qwen2 checkpoint saved as a Llama
    interventions: list[Annotated[AddMeta | AblateMeta | SpectralMeta, Field(discriminator="kind")]] = Field(
        min_length=1
    )
    provenance: ProvenanceModel


def read_bake_manifest(folder: "str | Path") -> BakeManifest:
    """The validated ``workbench_bake.json`` of a checkpoint written by :func:`bake_hf`."""
    path = Path(folder) / BAKE_MANIFEST
    fix = "pass a checkpoint written by `workbench export --format hf-baked`, or bake it again."
    return validate(read_json_bounded(path, fix=fix), BakeManifest, source=str(path), fix=fix)


_TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def everywhere_sites(n_layers: int) -> list[HookSite]:
    """The canonical sites of "ablate everywhere": every block's input and middle, and the last block's output."""
    sites = [HookSite(layer, kind) for layer in range(n_layers) for kind in ("resid_pre", "resid_mid")]
    return [*sites, HookSite(n_layers - 1, "resid_post")]


def ablation_everywhere(sites: "list[HookSite]", n_layers: int) -> bool:
    """Whether ablating at ``sites`` keeps the direction out of every residual read (so it equals weight
    orthogonalisation): block inputs (attention reads), middles (MLP reads) and the final output."""
    have = {(s.kind, s.layer) for s in sites}
    clean = ("resid_pre", 0) in have  # the embedding output
    for layer in range(n_layers):
        mid = ("resid_mid", layer) in have or (clean and ("attn_out", layer) in have)
        if not (clean and mid):
            return False
        nxt = ("resid_post", layer) in have or ("resid_pre", layer + 1) in have
        clean = nxt or ("mlp_out", layer) in have
    return clean


def _layout(hf):
    t = hf.config.model_type
    if t == "llama":
        return hf.model.layers, lambda b: b.self_attn.o_proj, lambda b: b.mlp.down_proj
    if t == "gpt2":
        return hf.transformer.h, lambda b: b.attn.c_proj, lambda b: b.mlp.c_proj
    if t in _OWN_SLOT:
        layers, o_name, down_name = _OWN_SLOT[t]
        get = lambda obj, dotted: [obj := getattr(obj, part) for part in dotted.split(".")][-1]  # noqa: E731
        return get(hf, layers), lambda b: get(b, o_name), lambda b: get(b, down_name)
    raise WorkbenchError(f"baking does not support {t!r} checkpoints; use apply_hf instead.")


#: Families whose MLP output projection has a bias of its own (an add at a block output folds into it).
_OWN_SLOT = {
    "gpt_neox": ("gpt_neox.layers", "attention.dense", "mlp.dense_4h_to_h"),
    "opt": ("model.decoder.layers", "self_attn.out_proj", "fc2"),
    "phi": ("model.layers", "self_attn.dense", "mlp.fc2"),
}
#: Families rewritten exactly as Llama with biases (same modules and names; verified numerically before baking).
AS_LLAMA = {"mistral", "qwen2"}
#: Why the others cannot hold an edit in their weights, and what can.
_REFUSED = {
    "gemma": "Gemma's MLP has no bias slot and the model is not a Llama (embedding scale, (1 + w) norms, GELU)",
    "gemma2": "Gemma2 normalises the MLP output after the down-projection (post-feedforward norm), so no bias there "
    "adds a fixed vector to the block output",
    "gemma3_text": "Gemma3 normalises the MLP output after the down-projection (post-feedforward norm), so no bias "
    "there adds a fixed vector to the block output",
    "olmo2": "OLMo2 normalises the MLP output after the down-projection (post-norm), so no bias there adds a fixed "
    "vector to the block output",
    "olmo": "OLMo's MLP has no bias slot and its parameter-free LayerNorm and QKV clipping have no Llama equivalent",
    "qwen3": "Qwen3's MLP has no bias slot and its per-head q/k norms have no Llama equivalent",
    "phi3": "Phi-3's MLP down-projection has no bias slot in transformers",
    "mixtral": "Mixtral's experts have no bias slot in transformers (fused expert weights)",
    "qwen3_moe": "Qwen3-MoE's experts have no bias slot in transformers (fused expert weights)",
}


def bake_support(model_type: str) -> "str | None":
    """None when an additive edit at a block output bakes exactly into a ``model_type`` checkpoint, else why not."""
    if model_type in ("llama", "gpt2", *_OWN_SLOT, *AS_LLAMA):
        return None
    reason = _REFUSED.get(model_type, f"baking is not implemented for {model_type!r}")
    return (
        f"{reason}. Deploy it as a spec (--format spec, workbench.export.apply_hf) or, where llama.cpp converts "
        f"the model, as a control vector (--format gguf)."
    )


def _as_llama(hf):
    """The same model as a ``LlamaForCausalLM`` (Mistral, Qwen2: identical modules, plus Qwen2's q/k/v biases)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = hf.config
    t = c.model_type
    window = getattr(c, "sliding_window", None)
    if window and window < c.max_position_embeddings and (t == "mistral" or getattr(c, "use_sliding_window", False)):
        raise WorkbenchError(
            f"this {t} checkpoint uses sliding-window attention ({c.sliding_window} tokens), which a Llama checkpoint "
            f"cannot express; deploy the edit as a spec (apply_hf) or a llama.cpp control vector (--format gguf)."
        )
    keep = {
        k: v
        for k, v in c.to_dict().items()
        if k
        not in (
            "model_type",
            "architectures",
            "sliding_window",
            "use_sliding_window",
            "max_window_layers",
            "layer_types",
            "transformers_version",
        )
    }
    cfg = LlamaConfig(
        **{
            **keep,
            "attention_bias": t == "qwen2",
            "mlp_bias": False,
            "head_dim": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        }
    )
    cfg.architectures = ["LlamaForCausalLM"]
    llama = LlamaForCausalLM(cfg).to(next(hf.parameters()).dtype).eval()
    missing, unexpected = llama.load_state_dict(hf.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("o_proj.bias")]
    if missing or unexpected:
        raise WorkbenchError(
            f"{t} -> Llama rewrite does not match the weights (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); deploy the edit as a spec (apply_hf)."
        )
    with torch.no_grad():
        for block in llama.model.layers:
            if block.self_attn.o_proj.bias is not None:
                block.self_attn.o_proj.bias.zero_()
        ids = torch.randint(0, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
        ref = hf(ids).logits
        diff = float((llama(ids).logits - ref).abs().max())
    if not diff <= 1e-4 * max(1.0, float(ref.abs().max())):
        raise WorkbenchError(
            f"{t} -> Llama rewrite changes the logits by {diff:.3g}; deploy the edit as a spec (apply_hf) instead."
        )
    return llama


def _is_conv1d(m: torch.nn.Module) -> bool:  # GPT-2's Conv1D: weight [in, out]
    return not isinstance(m, torch.nn.Linear)


def _out_map(m: torch.nn.Module, v: torch.Tensor) -> torch.Tensor:
    """The projection's weight applied to an input-side vector: W @ v (no bias)."""
    w = cast(torch.Tensor, m.weight).double()
    return (v.double() @ w) if _is_conv1d(m) else (w @ v.double())


def _ensure_bias(m: torch.nn.Module) -> torch.nn.Parameter:
    if m.bias is None:
        out = m.weight.shape[1] if _is_conv1d(m) else m.weight.shape[0]
        m.bias = torch.nn.Parameter(torch.zeros(out, dtype=m.weight.dtype))
    return cast(torch.nn.Parameter, m.bias)


def _enable_llama_biases(hf, which: str) -> None:
    """Turn on ``mlp_bias`` / ``attention_bias`` with zero biases on every projection it covers."""
    names = {
        "mlp": ("mlp", ("gate_proj", "up_proj", "down_proj")),
        "attention": ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
    }[which]
    for block in hf.model.layers:
        for proj in names[1]:
            _ensure_bias(getattr(getattr(block, names[0]), proj))
    setattr(hf.config, f"{which}_bias", True)


def _untie(hf) -> None:
    if getattr(hf.config, "tie_word_embeddings", False):
        head = hf.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        hf.config.tie_word_embeddings = False


def _project_out_rows(w: torch.Tensor, u: torch.Tensor) -> None:  # rows live in the residual basis
    w -= torch.outer(w.double() @ u, u).to(w.dtype)


def _bake_adds(hf, adds: "list[AddDirection]", log: list) -> None:
    layers, o_proj, down = _layout(hf)
    llama = hf.config.model_type == "llama"
    if not llama and hf.config.model_type != "gpt2":
        other = [
            a.site.name
            for a in adds
            if not (a.site.kind in ("resid_post", "mlp_out") or (a.site.kind == "resid_pre" and a.site.layer > 0))
        ]
        if other:
            raise WorkbenchError(
                f"{', '.join(other)}: on {hf.config.model_type!r} checkpoints only adds at block outputs "
                f"(resid_post) bake into weights; deploy the others as a spec (apply_hf)."
            )
        if any(down(b).bias is None for b in layers):
            raise WorkbenchError(
                f"this {hf.config.model_type!r} checkpoint was built without MLP output biases, so "
                f"there is no slot to bake into; deploy the edit as a spec (apply_hf)."
            )
    if llama and any(
        a.site.kind in ("resid_post", "mlp_out", "mlp_post") or (a.site.kind == "resid_pre" and a.site.layer > 0)
        for a in adds
    ):
        _enable_llama_biases(hf, "mlp")
    if llama and any(a.site.kind in ("attn_out", "resid_mid", "z") for a in adds):
        _enable_llama_biases(hf, "attention")
    for a in adds:
        if isinstance(a.scale, tuple):  # Spec refuses per-row scales, so a spec never carries one
            raise WorkbenchError(f"{a.site.name}: per-row scales {a.scale} do not bake; pick one strength.")
        kind, layer, v = a.site.kind, a.site.layer, a.scale * a.vector.double()
        with torch.no_grad():
            if kind == "resid_pre" and layer == 0:
                if llama:
                    _untie(hf)
                    hf.model.embed_tokens.weight += v.to(hf.model.embed_tokens.weight.dtype)
                    log.append("embed_tokens.weight rows += v (lm_head untied)")
                else:
                    hf.transformer.wpe.weight += v.to(hf.transformer.wpe.weight.dtype)
                    log.append("wpe.weight rows += v")
                continue
            if kind in ("resid_post", "mlp_out", "resid_pre", "mlp_post"):
                block = layer - 1 if kind == "resid_pre" else layer
                proj = down(layers[block])
            elif kind in ("attn_out", "resid_mid", "z"):
                block, proj = layer, o_proj(layers[layer])
            else:
                raise WorkbenchError(f"{a.site.name}: an add at {kind!r} does not fold into weights; use apply_hf.")
            delta = _out_map(proj, v) if kind in ("mlp_post", "z") else v
            bias: torch.Tensor = _ensure_bias(proj)
            bias += delta.to(bias.dtype)
            log.append(
                f"block {block} {'down' if proj is down(layers[block]) else 'attention output'} "
                f"projection bias += {'W @ v' if kind in ('mlp_post', 'z') else 'v'} ({a.site.name})"
            )


def _spectral_matrix(e: SpectralEdit) -> torch.Tensor:
    """The linear map of an ``average``-mode, identity-feature spectral edit (float64)."""
    up, un = e.u_pos.double(), e.u_neg.double()
    eye = torch.eye(up.shape[0], dtype=torch.float64)
    p_pos, p_neg = up @ up.T, eye - un @ un.T
    if e.reverse:
        p_pos, p_neg = eye - p_pos, eye - p_neg
    chosen = {"both": (p_pos, p_neg), "pos": (p_pos,), "neg": (p_neg,)}[e.parts]
    return cast(torch.Tensor, sum(chosen)) / len(chosen)  # chosen is never empty


def _bake_spectral(hf, edits: "list[SpectralEdit]", log: list) -> None:
    layers, _, down = _layout(hf)
    for e in edits:
        if e.site.kind != "mlp_out" or e.combine != "average" or e.feature != "identity":
            raise WorkbenchError(
                f"{e.site.name}: only linear spectral edits (combine='average', feature='identity') at mlp_out fold "
                f"into weights (got {e.site.kind}, {e.combine}, {e.feature}); deploy this one with apply_hf."
            )
        m, proj = _spectral_matrix(e), down(layers[e.site.layer])
        with torch.no_grad():
            w = proj.weight.double()
            proj.weight.copy_((w @ m if _is_conv1d(proj) else m @ w).to(proj.weight.dtype))  # M symmetric
            if proj.bias is not None:
                proj.bias.copy_((m @ proj.bias.double()).to(proj.bias.dtype))
        log.append(
            f"block {e.site.layer} down projection weight and bias <- M @ (.), M = SEA average map "
            f"(k+ {e.u_pos.shape[1]}, k- {e.u_neg.shape[1]})"
        )


def _bake_ablation(hf, u: torch.Tensor, log: list) -> None:
    layers, o_proj, down = _layout(hf)
    u = u.double() / u.double().norm()
    with torch.no_grad():
        _untie(hf)
        embeds = (
            [hf.model.embed_tokens] if hf.config.model_type == "llama" else [hf.transformer.wte, hf.transformer.wpe]
        )
        for e in embeds:
            _project_out_rows(e.weight, u)
        for block in layers:
            for proj in (o_proj(block), down(block)):
                if _is_conv1d(proj):
                    _project_out_rows(proj.weight, u)  # [in, out=d_model]
                else:
                    proj.weight -= torch.outer(u, u @ proj.weight.double()).to(proj.weight.dtype)
                if proj.bias is not None:
                    proj.bias -= ((proj.bias.double() @ u) * u).to(proj.bias.dtype)
    log.append("direction projected out of the embeddings and every attention/MLP output projection")


def bake_hf(
    spec: Spec,
    source: "str | Path",
    out: "str | Path",
    *,
    dtype: "str | None" = None,
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face checkpoint at ``out``: the ``source`` checkpoint with ``spec`` folded into its weights.

    Args:
        spec: the edit (its fingerprint must match ``source``).
        source: the local checkpoint folder the spec was made for (a toy name such as ``toy-m`` works too).
        out: the new checkpoint folder (written atomically, with the tokenizer and ``workbench_bake.json``).
        dtype: ``float32``, ``float16`` or ``bfloat16``; default the source's. Parity with the steered model is
            exact up to float rounding in float32; lower precisions round the folded vectors.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.models import fingerprint_hf, hf_folder

    src = hf_folder(source)
    adds = [iv for iv in spec.interventions if isinstance(iv, AddDirection)]
    ablates = [iv for iv in spec.interventions if isinstance(iv, Ablate)]
    spectral = [iv for iv in spec.interventions if isinstance(iv, SpectralEdit)]
    if spectral and (adds or ablates):
        raise WorkbenchError(
            "a spec mixing spectral edits with adds or ablations is not baked in one step (their order "
            "at one site matters); bake them as separate specs or use apply_hf."
        )
    for iv in spec.interventions:
        if iv.positions.kind != "all":
            raise WorkbenchError(
                f"{iv.site.name}: positions={iv.positions.kind!r}; weights act on every position. Export with "
                f"positions 'all', or deploy the spec with workbench.export.apply_hf."
            )
    if adds and ablates:
        raise WorkbenchError(
            "a spec mixing adds and ablations does not fold into weights in general (the ablation "
            "would remove part of the add); bake them as separate specs or use apply_hf."
        )
    for a in adds:
        scales = a.scale if isinstance(a.scale, tuple) else (a.scale,)
        if not all(isinstance(x, (int, float)) and math.isfinite(x) and abs(x) <= MAX_SCALE for x in scales):
            raise WorkbenchError(
                f"{a.site.name}: scale {a.scale!r} is not a finite number with |scale| <= {MAX_SCALE:g}; pick a "
                f"strength in that range."
            )
    n = spec.fingerprint.n_layers
    if ablates:
        u = ablates[0].direction
        if any(not torch.allclose(a.direction, u, atol=1e-6) for a in ablates):
            raise WorkbenchError("baking ablations needs one direction ablated everywhere; this spec ablates several.")
        if not ablation_everywhere([a.site for a in ablates], n):
            raise WorkbenchError(
                "an ablation at some sites only depends on the activation and does not fold into weights; ablate at "
                "every site (workbench.export.bake.everywhere_sites(n_layers)) or deploy with apply_hf."
            )
    if dtype not in (None, "float32", "float16", "bfloat16"):
        raise WorkbenchError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}.")
    if Path(out).exists() and not overwrite:
        raise WorkbenchError(f"out={str(out)!r} already exists; remove it or pass overwrite=True (--overwrite).")
    hf = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    arch = (hf.config.architectures or [type(hf).__name__])[0]
    spec.fingerprint.check(fingerprint_hf(hf, tok, arch), what="intervention spec")
    why = bake_support(hf.config.model_type)
    if hf.config.model_type == "opt" and not getattr(hf.config, "do_layer_norm_before", True):
        why = (
            "this OPT normalises after each block (do_layer_norm_before=False), so no bias adds a fixed vector "
            "to the block output. Deploy it as a spec (--format spec, workbench.export.apply_hf)."
        )
    if why is not None:
        raise WorkbenchError(f"cannot bake into this {arch} checkpoint: {why}")
    if (spectral or ablates) and hf.config.model_type not in ("llama", "gpt2"):
        raise WorkbenchError(f"only additive edits bake into {arch} checkpoints; deploy this spec with apply_hf.")
    rewritten = hf.config.model_type in AS_LLAMA
    if rewritten:
        hf = _as_llama(hf)
    src_cfg = read_json(src / "config.json")
    src_dtype = src_cfg.get("dtype") or src_cfg.get("torch_dtype") or "float32"
    save_dtype = getattr(torch, dtype or src_dtype, torch.float32)
    log: list[str] = []
    if spectral:
        _bake_spectral(hf, spectral, log)
    elif adds:
        _bake_adds(hf, adds, log)
    else:
        _bake_ablation(hf, ablates[0].direction, log)
    hf = hf.to(save_dtype)
    misload = servable_problem(hf.config.to_dict(), hf.state_dict().keys())
    if misload is not None:
        raise WorkbenchError(
            f"cannot bake into this {arch} checkpoint: vLLM would serve it wrong ({misload}). Deploy the edit as a "
            f"spec (--format spec, workbench.export.apply_hf)."
        )
    if not all(bool(torch.isfinite(p).all()) for p in hf.parameters()):
        raise WorkbenchError(
            f"the baked weights overflow {str(save_dtype).removeprefix('torch.')} (scale x vector is too large for "
            f"it); use a smaller scale or dtype='float32' (--dtype float32)."
        )
    manifest: dict[str, Any] = {
        "format": "workbench.baked",
        "source": str(src),
        "source_model": spec.fingerprint.to_dict(),
        "dtype": str(save_dtype).removeprefix("torch."),
        "edits": log,
        "rewritten_as": "LlamaForCausalLM" if rewritten else None,
        "interventions": [iv.to_dict() for iv in spec.interventions],
        "provenance": spec.provenance.to_dict(),
    }
    validate(manifest, BakeManifest, source=BAKE_MANIFEST, fix="build the spec with the workbench.")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        hf.save_pretrained(str(tmp))
        for name in _TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        write_json(tmp / BAKE_MANIFEST, manifest)
    return Path(out)
