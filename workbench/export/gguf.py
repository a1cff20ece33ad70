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
The scale is folded into the tensors (llama.cpp's ``--control-vector-scaled`` multiplies on top of it); a scale
past ``schema.MAX_SCALE`` or a non-finite product is refused before anything is written.

A file the workbench writes also holds ``workbench.spec``: JSON (schema :class:`GgufMeta`) with the model's
fingerprint, the provenance and ``tensors_sha256``, the sha256 over every tensor in file order of its name, a NUL
byte and its values as little-endian float32. Reading verifies it, so a changed byte is refused ("re-export").
Foreign files (repeng, llama.cpp's ``cvector-generator``) carry no checksum and are checked as llama.cpp's loader
checks them: names exactly ``direction.N`` with N an ASCII decimal in 1..n_layers-1, 1-D F32 tensors of d_model
entries, no layer twice, finite values, a ``layer_count`` (when present) equal to the number of tensors, and a
``model_hint`` that does not name another model family.

Files are read by a bounded parser of the GGUF layout llama.cpp's ``gguf.cpp`` accepts (little-endian version 2 or
3, no nested arrays, tensor names under 64 bytes, tensors contiguous at aligned offsets and inside the file): every
length is checked against the bytes left before it is used (``gguf.GGUFReader`` loops without end on an array
length past the end of the file), so any corrupt file is one ``WorkbenchError``.
"""

__all__ = ["cvec_block", "write_gguf", "read_gguf", "GgufMeta", "MODEL_HINTS", "HF_MODEL_TYPES", "NO_LLAMACPP"]

import difflib
import hashlib
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.errors import WorkbenchError
from workbench.export.spec import Provenance, Spec
from workbench.interventions import AddDirection
from workbench.io import atomic_file, display_path
from workbench.manifests import FingerprintModel, ProvenanceModel
from workbench.models import Fingerprint, HookedModel, fingerprint
from workbench.schema import MAX_SCALE, Sha256, Strict, parse_json, read_file_bytes, validate
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
#: The Hugging Face ``model_type`` per architecture: what repeng writes as ``controlvector.model_hint``.
HF_MODEL_TYPES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "Phi3ForCausalLM": "phi3",
    "PhiForCausalLM": "phi",
    "GPTNeoXForCausalLM": "gpt_neox",
    "GPT2LMHeadModel": "gpt2",
    "OlmoForCausalLM": "olmo",
    "Olmo2ForCausalLM": "olmo2",
    "OPTForCausalLM": "opt",
}
#: Architectures llama.cpp cannot run, so a control vector for them would never be applied.
NO_LLAMACPP = {"OPTForCausalLM": "llama.cpp's converter does not support OPT"}
_META = "workbench.spec"  # our own key: fingerprint + provenance + tensors_sha256, ignored by llama.cpp
_REEXPORT = "re-export it with `workbench export --format gguf`"
#: the largest control vector file read (a 16384-wide, 128-block model's vector is 8 MiB)
MAX_GGUF_BYTES = 512 * 1024 * 1024


class GgufMeta(Strict):
    """The ``workbench.spec`` metadata of a control vector the workbench wrote."""

    model: FingerprintModel
    provenance: ProvenanceModel
    #: sha256 over each tensor in file order: its name, a NUL byte, its values as little-endian float32
    tensors_sha256: Sha256


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


def _tensors_sha256(tensors: "Iterable[tuple[str, np.ndarray]]") -> str:
    """The ``tensors_sha256`` of ``(name, values)`` pairs in file order."""
    h = hashlib.sha256()
    for name, values in tensors:
        h.update(name.encode("utf-8") + b"\0")
        h.update(np.ascontiguousarray(values, dtype="<f4").tobytes())
    return h.hexdigest()


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
        if not isinstance(iv.scale, (int, float)) or not math.isfinite(iv.scale) or abs(iv.scale) > MAX_SCALE:
            raise WorkbenchError(
                f"{iv.site.name}: scale {iv.scale!r} is not a finite number with |scale| <= {MAX_SCALE:g}; pick a "
                f"strength in that range."
            )
        v = iv.scale * iv.vector.double()
        summed[block] = summed[block] + v if block in summed else v
    out = Path(out)
    if out.suffix != ".gguf":
        raise WorkbenchError(f"out={str(out)!r}: a control vector file must end in .gguf.")
    arrays = {block: summed[block].float().numpy().astype(np.float32) for block in sorted(summed)}
    for block, values in arrays.items():
        if not np.isfinite(values).all():
            raise WorkbenchError(
                f"direction.{block}: scale x vector overflows float32 (the largest entry is "
                f"{float(summed[block].abs().max()):.3g}); use a smaller scale."
            )
    hint = model_hint or MODEL_HINTS.get(spec.fingerprint.architecture, spec.fingerprint.architecture.lower())
    meta = validate(
        {
            "model": spec.fingerprint.to_dict(),
            "provenance": spec.provenance.to_dict(),
            "tensors_sha256": _tensors_sha256((f"direction.{b}", v) for b, v in arrays.items()),
        },
        GgufMeta,
        source="the spec's model and provenance",
        fix="build the spec from a model loaded with workbench.models.load.",
    )

    def write(tmp: str) -> None:
        w = gguf.GGUFWriter(tmp, "controlvector")
        w.add_string("controlvector.model_hint", hint)
        w.add_uint32("controlvector.layer_count", len(arrays))
        w.add_string(_META, meta.model_dump_json())
        for block, values in arrays.items():
            w.add_tensor(f"direction.{block}", values)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_file(out, write)
    return out


# --- reading: a bounded GGUF parser ------------------------------------------------------------------------------


class _Corrupt(Exception):
    """A layout error inside ``_parse``; ``read_gguf`` reports it as a WorkbenchError naming the file."""


@dataclass(frozen=True)
class _TensorInfo:
    name: str
    dims: tuple[int, ...]  # ggml order: dims[0] is the innermost (contiguous) axis
    type_id: int
    offset: int  # from the start of the data section


@dataclass(frozen=True)
class _Gguf:
    fields: dict  # key -> (GGUFValueType, python value)
    tensors: list  # [_TensorInfo]
    data_start: int
    raw: bytes


_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_NAME = 64  # GGML_MAX_NAME: llama.cpp refuses tensor names of 64 bytes or more
_MAX_DIMS = 4


class _Cursor:
    def __init__(self, raw: bytes) -> None:
        self.raw, self.pos = raw, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.raw):
            raise _Corrupt(f"{what} at byte {self.pos} runs past the end of the file ({len(self.raw)} bytes)")
        chunk = self.raw[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("Q", f"{what} length")
        data = self.take(n, what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Corrupt(f"{what} at byte {self.pos - n} is not UTF-8") from None

    def value(self, type_id: int, what: str) -> Any:
        if type_id in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[type_id], what)
        if type_id == _STRING:
            return self.string(what)
        if type_id == _ARRAY:
            item = self.scalar("I", f"{what} element type")
            if item != _STRING and item not in _SCALAR_FORMATS:
                kind = "nested arrays" if item == _ARRAY else f"elements of value type {item}"
                raise _Corrupt(f"{what} is an array of {kind}, which GGUF readers refuse")
            count = self.scalar("Q", f"{what} length")
            smallest = 8 if item == _STRING else struct.calcsize(_SCALAR_FORMATS[item])
            if count * smallest > len(self.raw) - self.pos:
                raise _Corrupt(f"{what} claims {count} elements, more than the file holds")
            return [self.value(item, f"{what}[{i}]") for i in range(count)]
        raise _Corrupt(f"{what} has value type {type_id}, which GGUF readers refuse")


def _parse(raw: bytes) -> _Gguf:
    """The fields and tensor infos of a GGUF file, every length checked against the bytes left."""
    import gguf

    c = _Cursor(raw)
    if c.take(4, "the magic number") != b"GGUF":
        raise _Corrupt("it does not start with the GGUF magic number")
    version = c.scalar("I", "the version")
    if version & 0xFFFF == 0 and version != 0:
        raise _Corrupt("it is big-endian; llama.cpp reads only little-endian GGUF")
    if version not in (2, 3):
        raise _Corrupt(f"GGUF version {version} is not 2 or 3")
    n_tensors = c.scalar("Q", "the tensor count")
    n_fields = c.scalar("Q", "the metadata count")
    if n_tensors * 32 > len(raw) or n_fields * 13 > len(raw):
        raise _Corrupt(f"it claims {n_tensors} tensors and {n_fields} metadata entries, more than the file holds")
    fields: dict[str, tuple[int, Any]] = {}
    for _ in range(n_fields):
        key = c.string("a metadata key")
        type_id = c.scalar("I", f"the type of {key!r}")
        if key in fields:
            raise _Corrupt(f"metadata key {key!r} appears twice")
        fields[key] = (type_id, c.value(type_id, f"metadata {key!r}"))
    infos: list[_TensorInfo] = []
    for i in range(n_tensors):
        name = c.string(f"tensor {i}'s name")
        if len(name.encode("utf-8")) >= _MAX_NAME:
            raise _Corrupt(f"tensor name {name[:80]!r} is {_MAX_NAME} bytes or longer")
        n_dims = c.scalar("I", f"{name!r}'s dimension count")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions (1 to {_MAX_DIMS} allowed)")
        dims = tuple(c.scalar("Q", f"{name!r}'s shape") for _ in range(n_dims))
        infos.append(_TensorInfo(name, dims, c.scalar("I", f"{name!r}'s type"), c.scalar("Q", f"{name!r}'s offset")))
    if len({t.name for t in infos}) != len(infos):
        raise _Corrupt("two tensors have the same name")
    align_field = fields.get("general.alignment", (4, gguf.GGUF_DEFAULT_ALIGNMENT))
    alignment = align_field[1]
    if align_field[0] != 4 or alignment <= 0 or alignment & (alignment - 1):
        raise _Corrupt(f"general.alignment {alignment!r} is not a uint32 power of two")
    data_start = -(-c.pos // alignment) * alignment
    expected = 0
    for t in infos:
        try:
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.type_id)]
        except (ValueError, KeyError):
            raise _Corrupt(f"tensor {t.name!r} has unknown type {t.type_id}") from None
        if t.dims[0] % block:
            raise _Corrupt(f"tensor {t.name!r}: its row of {t.dims[0]} is not a multiple of its block size {block}")
        n_bytes = math.prod(t.dims) // block * type_size
        if t.offset != expected:
            raise _Corrupt(f"tensor {t.name!r} is at offset {t.offset}, expected {expected} (tensors are contiguous)")
        expected += -(-n_bytes // alignment) * alignment
        if data_start + expected > len(raw):
            raise _Corrupt(f"tensor {t.name!r}'s data runs past the end of the file (truncated?)")
    return _Gguf(fields, infos, data_start, raw)


def _hint_names(architecture: str) -> "set[str]":
    """The ``model_hint`` values that name ``architecture`` (llama.cpp's name, the HF model_type), normalised."""
    names = {architecture, MODEL_HINTS.get(architecture, ""), HF_MODEL_TYPES.get(architecture, "")}
    return {_norm(n) for n in names if n}


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


_KNOWN_HINTS = {_norm(n) for table in (MODEL_HINTS, HF_MODEL_TYPES) for n in (*table, *table.values())}
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool"}
_TYPE_NAMES |= {8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}


def _string_field(g: _Gguf, key: str, where: str) -> "str | None":
    if key not in g.fields:
        return None
    type_id, value = g.fields[key]
    if type_id != _STRING:
        raise WorkbenchError(
            f"{where}: metadata {key} is of type {_TYPE_NAMES.get(type_id, type_id)}, not a string; the file is "
            f"damaged. Re-export it."
        )
    return value


def read_gguf(path: "str | Path", model: "HookedModel | None" = None, *, fp: "Fingerprint | None" = None) -> Spec:
    """Import a llama.cpp / repeng control vector as a spec of ``AddDirection`` at ``resid_post`` (scale 1).

    A GGUF control vector does not say which model it is for (``model_hint`` is free text), so pass ``model`` (or
    its fingerprint ``fp``) unless the file was written by the workbench, whose own metadata names the model.
    Checks what llama.cpp checks and reports instead of skipping: architecture, ``direction.N`` names with N an
    ASCII decimal >= 1, no layer twice, 1-D F32 tensors of one width, finite values, and against the model: width
    == d_model, N < n_layers and a ``model_hint`` that names no other model. A file the workbench wrote must match
    its ``tensors_sha256``.
    """
    path = Path(path)
    where = str(path)
    raw = read_file_bytes(
        path, expected="a .gguf control vector file", limit=MAX_GGUF_BYTES, fix="Pass a .gguf control vector file."
    )
    try:
        g = _parse(raw)
    except _Corrupt as e:
        raise WorkbenchError(f"{where!r} is not a readable GGUF file: {e}. Re-export or re-download it.") from None
    arch = _string_field(g, "general.architecture", where)
    if arch != "controlvector":
        raise WorkbenchError(
            f"{where}: general.architecture is {arch!r}, not 'controlvector'; this is not a control vector file."
        )
    meta = _workbench_meta(g, where)
    if model is not None:
        fp = fingerprint(model)
    if meta is not None and fp is not None:
        Fingerprint(**meta.model.model_dump()).check(fp, what="control vector")
    if fp is None:
        if meta is None:
            raise WorkbenchError(
                f"{where} does not say which model it is for (GGUF model_hint is free text); pass --model."
            )
        fp = Fingerprint(**meta.model.model_dump())
    _check_hint(g, where, fp)
    vectors = _directions(g, where, fp)
    if meta is not None:
        got = _tensors_sha256((t.name, vectors[b].numpy()) for t, b in zip(g.tensors, _blocks(g)))
        if got != meta.tensors_sha256:
            raise WorkbenchError(
                f"{where}: its tensors do not match the sha256 recorded when it was written (corrupt or edited "
                f"since); {_REEXPORT}."
            )
    digest = hashlib.sha256(raw).hexdigest()
    prov = Provenance(**meta.provenance.model_dump(exclude_none=True)) if meta else Provenance("imported-gguf")
    prov = Provenance(**{**prov.to_dict(), "source": f"{display_path(path.name)} sha256:{digest}"})
    ivs = tuple(AddDirection(HookSite(b, "resid_post"), vectors[b], 1.0) for b in sorted(vectors))
    spec = Spec(ivs, fp, prov)
    if model is not None:
        spec.check(model)
    return spec


def _workbench_meta(g: _Gguf, where: str) -> "GgufMeta | None":
    """The validated ``workbench.spec`` metadata, or None for a foreign file.

    A key that looks like ours under another name (another ``workbench.*`` key, a name within two characters of
    ``workbench.spec``, or a string holding a ``tensors_sha256``) is refused: a damaged key name would otherwise
    turn a checked file into an unchecked foreign one."""
    for key, (type_id, value) in g.fields.items():
        if key != _META and (
            key.startswith("workbench.")
            or difflib.SequenceMatcher(None, key, _META).ratio() >= 0.8
            or (type_id == _STRING and '"tensors_sha256"' in value)
        ):
            raise WorkbenchError(
                f"{where}: metadata {key[:80]!r} looks like the workbench's {_META} under another name; the file is "
                f"damaged, {_REEXPORT}."
            )
    text = _string_field(g, _META, where)
    if text is None:
        return None
    fix = f"{_REEXPORT}."
    return validate(parse_json(text, f"{where}: {_META}", fix), GgufMeta, source=f"{where}: {_META}", fix=fix)


def _check_hint(g: _Gguf, where: str, fp: Fingerprint) -> None:
    """Refuse a ``controlvector.model_hint`` naming a model family other than ``fp``'s, and a ``layer_count`` that
    is not the number of tensors. Free text no model family uses is accepted, as llama.cpp does, and so is any hint
    for an architecture missing from ``MODEL_HINTS`` and ``HF_MODEL_TYPES`` (its names are not known)."""
    hint = _string_field(g, "controlvector.model_hint", where)
    known_arch = fp.architecture in MODEL_HINTS or fp.architecture in HF_MODEL_TYPES
    if (
        hint is not None
        and known_arch
        and _norm(hint) in _KNOWN_HINTS
        and _norm(hint) not in _hint_names(fp.architecture)
    ):
        raise WorkbenchError(
            f"{where}: controlvector.model_hint is {hint!r}, but the model is a {fp.architecture}; this control "
            f"vector was made for another model. Load the model it was made for, or recompute it on this one."
        )
    if "controlvector.layer_count" in g.fields:
        type_id, count = g.fields["controlvector.layer_count"]
        if type_id not in (0, 1, 2, 3, 4, 5, 10, 11) or count != len(g.tensors):
            shown = f"{count!r} ({_TYPE_NAMES.get(type_id, type_id)})"
            raise WorkbenchError(
                f"{where}: controlvector.layer_count is {shown[:80]} but the file holds {len(g.tensors)} tensors; "
                f"the file is damaged. Re-export it."
            )


_DIRECTION = re.compile(r"direction\.([1-9][0-9]*)", re.ASCII)


def _blocks(g: _Gguf) -> "list[int]":
    """The block of each tensor of a file ``_directions`` accepted, in file order."""
    return [int(t.name.partition(".")[2]) for t in g.tensors]


def _directions(g: _Gguf, where: str, fp: Fingerprint) -> "dict[int, torch.Tensor]":
    """Each ``direction.N`` tensor as a float32 vector by block N, checked as llama.cpp's loader checks them."""
    import gguf

    vectors: dict[int, torch.Tensor] = {}
    for t in g.tensors:
        name = t.name
        m = _DIRECTION.fullmatch(name)
        if name == "direction.0":
            raise WorkbenchError(
                f"{where}: direction.0 is invalid (block 0's output is never steered); llama.cpp skips the whole file "
                f"and runs unsteered. Re-export it with layers >= 1."
            )
        if m is None:
            head, _, idx = name.partition(".")
            why = (
                "its layer is not written in ASCII digits, which llama.cpp reads differently"
                if head == "direction" and idx.isdigit() and not idx.isascii()
                else "it is not named direction.N (N a decimal block number without leading zeros)"
            )
            raise WorkbenchError(f"{where}: tensor {name!r}: {why}; llama.cpp would skip or misread this file.")
        block = int(m.group(1))
        if t.type_id != gguf.GGMLQuantizationType.F32 or any(d != 1 for d in t.dims[1:]):
            type_name = gguf.GGMLQuantizationType(t.type_id).name
            raise WorkbenchError(
                f"{where}: {name} must be a 1-D F32 tensor (got {type_name}, shape {list(t.dims)}); "
                f"llama.cpp skips such files."
            )
        if t.dims[0] != fp.d_model:
            raise WorkbenchError(
                f"{where}: {name} has {t.dims[0]} entries but the model's d_model is {fp.d_model}; it was made for "
                f"another model."
            )
        if block >= fp.n_layers:
            raise WorkbenchError(
                f"{where}: {name} targets block {block} but the model has {fp.n_layers} blocks (0..{fp.n_layers - 1}); "
                f"llama.cpp silently ignores it. Re-export it for this model."
            )
        if block in vectors:
            raise WorkbenchError(f"{where}: block {block} has two direction tensors; llama.cpp would add them up.")
        values = np.frombuffer(g.raw, dtype="<f4", count=t.dims[0], offset=g.data_start + t.offset)
        if not np.isfinite(values).all():
            raise WorkbenchError(f"{where}: {name} has non-finite values; the file is damaged. Re-export it.")
        vectors[block] = torch.from_numpy(values.astype(np.float32))
    if not vectors:
        raise WorkbenchError(f"{where} holds no direction.N tensors.")
    return vectors
