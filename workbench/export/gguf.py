"""llama.cpp control vectors (GGUF): export a spec's additive edits, import repeng / llama.cpp files.

The layout llama.cpp's loader reads (``common_control_vector_load``, checked by ``tests/test_export.py``):
``general.architecture = "controlvector"``, ``controlvector.model_hint``, ``controlvector.layer_count`` and F32 1-D
tensors ``direction.N``, each added to the residual stream after the FFN residual add of the **0-based** block N,
i.e. TransformerLens ``blocks.N.hook_resid_post`` (Hugging Face ``hidden_states[N+1]``; N < n_layers - 1), at every
position.

llama.cpp fails silently: a file holding ``direction.0`` (or a non-F32 tensor, or a wrong width) is skipped whole
and generation continues unsteered with exit code 0, and ``direction.{n_layer}`` is dropped. So the exporter
refuses what llama.cpp cannot express (block 0's output, the input of blocks 0 and 1, ablations, attention-output
sites, per-position policies) with the reason, instead of writing a file that would be ignored.
The scale is folded into the tensors (llama.cpp's ``--control-vector-scaled`` multiplies on top of it).
"""

__all__ = ["cvec_block", "write_gguf", "read_gguf", "MODEL_HINTS", "NO_LLAMACPP"]

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from workbench.errors import WorkbenchError
from workbench.export.spec import Provenance, Spec
from workbench.interventions import AddDirection
from workbench.io import atomic_file
from workbench.models import Fingerprint, HookedModel, fingerprint
from workbench.sites import HookSite

#: ``controlvector.model_hint`` per architecture: llama.cpp's name for it (free text; llama.cpp does not check it).
MODEL_HINTS = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "MixtralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3moe",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Phi3ForCausalLM": "phi3",
    "PhiForCausalLM": "phi2",
    "GPTNeoXForCausalLM": "gptneox",
    "GPT2LMHeadModel": "gpt2",
    "OlmoForCausalLM": "olmo",
    "Olmo2ForCausalLM": "olmo2",
}
#: Architectures llama.cpp cannot run, so a control vector for them would never be applied.
NO_LLAMACPP = {"OPTForCausalLM": "llama.cpp's converter does not support OPT"}
_META = "workbench.spec"  # our own key: fingerprint + provenance, ignored by llama.cpp


def cvec_block(iv: object, n_layers: int) -> int:
    """The llama.cpp ``direction.N`` index that reproduces ``iv``; raise with the reason when none does."""
    if not isinstance(iv, AddDirection):
        raise WorkbenchError(
            f"{type(iv).__name__} cannot be a llama.cpp control vector (control vectors only add a vector); "
            f"export it as --format spec or hf-baked."
        )
    if iv.positions.kind != "all":
        raise WorkbenchError(
            f"{iv.site.name}: positions={iv.positions.kind!r}; llama.cpp adds control vectors at every position. "
            f"Use positions 'all' for GGUF, or deploy the spec with workbench.export.apply_hf."
        )
    kind, layer = iv.site.kind, iv.site.layer
    if kind in ("resid_post", "mlp_out"):  # adding to the MLP output adds to the block output, nothing else reads it
        block = layer
    elif kind == "resid_pre":  # the input of block L is the output of block L-1
        block = layer - 1
    else:
        raise WorkbenchError(
            f"{iv.site.name}: llama.cpp adds control vectors to block outputs only (resid_post, or resid_pre of the "
            f"next block); {kind!r} cannot be expressed. Export it as --format spec or hf-baked."
        )
    if block < 1:
        what = "the embeddings (block 0's input)" if block < 0 else "block 0's output"
        raise WorkbenchError(
            f"{iv.site.name} is {what}: llama.cpp never steers block 0's output (a direction.0 tensor makes it skip "
            f"the whole file) nor the embeddings. Use a layer >= 1 (resid_post) or export as --format hf-baked."
        )
    if block > n_layers - 1:
        raise WorkbenchError(f"{iv.site.name}: block {block} does not exist in a {n_layers}-block model.")
    return block


def write_gguf(spec: Spec, out: "str | Path", *, model_hint: "str | None" = None) -> Path:
    """Write ``spec``'s additive edits as a llama.cpp control vector file (atomically); refuse what it cannot hold."""
    import gguf

    n_layers = spec.fingerprint.n_layers
    if spec.fingerprint.architecture in NO_LLAMACPP:
        raise WorkbenchError(
            f"{NO_LLAMACPP[spec.fingerprint.architecture]}, so a control vector for this model "
            f"would never run; export it as --format spec (or hf-baked)."
        )
    summed: dict[int, torch.Tensor] = {}
    for iv in spec.interventions:
        block = cvec_block(iv, n_layers)
        v = iv.scale * iv.vector.double()
        summed[block] = summed[block] + v if block in summed else v
    out = Path(out)
    if out.suffix != ".gguf":
        raise WorkbenchError(f"out={str(out)!r}: a control vector file must end in .gguf.")
    hint = model_hint or MODEL_HINTS.get(spec.fingerprint.architecture, spec.fingerprint.architecture.lower())
    meta = json.dumps({"model": spec.fingerprint.to_dict(), "provenance": spec.provenance.to_dict()}, sort_keys=True)

    def write(tmp: str) -> None:
        w = gguf.GGUFWriter(tmp, "controlvector")
        w.add_string("controlvector.model_hint", hint)
        w.add_uint32("controlvector.layer_count", len(summed))
        w.add_string(_META, meta)
        for block in sorted(summed):
            w.add_tensor(f"direction.{block}", summed[block].float().numpy().astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_file(out, write)
    return out


def _field_str(reader, key: str) -> "str | None":
    f = reader.get_field(key)
    if f is None:
        return None
    try:
        return str(f.contents())
    except (ValueError, TypeError, IndexError):
        return bytes(f.parts[-1]).decode("utf-8", errors="replace")


def read_gguf(path: "str | Path", model: "HookedModel | None" = None, *, fp: "Fingerprint | None" = None) -> Spec:
    """Import a llama.cpp / repeng control vector as a spec of ``AddDirection`` at ``resid_post`` (scale 1).

    A GGUF control vector does not say which model it is for (``model_hint`` is free text), so pass ``model`` (or
    its fingerprint ``fp``) unless the file was written by the workbench, whose own metadata names the model.
    Checks what llama.cpp checks and reports instead of skipping: architecture, ``direction.N`` names with N >= 1,
    F32 1-D tensors of one width, and against the model: width == d_model and N < n_layers.
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"{str(path)!r} does not exist; pass a .gguf control vector file.")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the gguf reader raises many types on corrupt input
        raise WorkbenchError(f"{str(path)!r} is not a readable GGUF file ({type(e).__name__}: {e}).") from None
    arch = _field_str(reader, "general.architecture")
    if arch != "controlvector":
        raise WorkbenchError(
            f"{path}: general.architecture is {arch!r}, not 'controlvector'; this is not a control vector file."
        )
    meta_text = _field_str(reader, _META)
    meta = json.loads(meta_text) if meta_text else None
    if model is not None:
        fp = fingerprint(model)
    if meta is not None and fp is not None:
        Fingerprint.from_dict(meta["model"]).check(fp, what="control vector")
    if fp is None:
        if meta is None:
            raise WorkbenchError(
                f"{path} does not say which model it is for (GGUF model_hint is free text); pass --model."
            )
        fp = Fingerprint.from_dict(meta["model"])
    vectors: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        name = t.name
        head, _, idx = name.partition(".")
        if head != "direction" or not idx.isdigit():
            raise WorkbenchError(f"{path}: tensor {name!r} is not named direction.N; llama.cpp would skip this file.")
        block = int(idx)
        if block == 0:
            raise WorkbenchError(
                f"{path}: direction.0 is invalid (block 0's output is never steered); llama.cpp skips the whole file "
                f"and runs unsteered. Re-export it with layers >= 1."
            )
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or len([d for d in t.shape if d != 1]) > 1:
            raise WorkbenchError(
                f"{path}: {name} must be a 1-D F32 tensor (got {t.tensor_type.name}, shape {list(t.shape)}); "
                f"llama.cpp skips such files."
            )
        v = torch.from_numpy(np.asarray(t.data, dtype=np.float32).reshape(-1).copy())
        if v.numel() != fp.d_model:
            raise WorkbenchError(
                f"{path}: {name} has {v.numel()} entries but the model's d_model is {fp.d_model}; it was made for "
                f"another model."
            )
        if block >= fp.n_layers:
            raise WorkbenchError(
                f"{path}: {name} targets block {block} but the model has {fp.n_layers} blocks (0..{fp.n_layers - 1}); "
                f"llama.cpp silently ignores it. Re-export it for this model."
            )
        if not torch.isfinite(v).all():
            raise WorkbenchError(f"{path}: {name} has non-finite values.")
        vectors[block] = v
    if not vectors:
        raise WorkbenchError(f"{path} holds no direction.N tensors.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    prov = Provenance.from_dict(meta["provenance"]) if meta else Provenance("imported-gguf")
    prov = dataclasses.replace(prov, source=f"{path.name} sha256:{digest}")
    ivs = tuple(AddDirection(HookSite(b, "resid_post"), vectors[b], 1.0) for b in sorted(vectors))
    spec = Spec(ivs, fp, prov)
    if model is not None:
        spec.check(model)
    return spec
