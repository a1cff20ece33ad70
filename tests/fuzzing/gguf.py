"""Fuzzing ``workbench.export.gguf.read_gguf``: mutated control vector files, each outcome checked against an oracle.

``run(n, seed, workdir)`` starts from two valid files for one model: one written by ``write_gguf`` (with the
workbench's ``workbench.spec`` metadata and its ``tensors_sha256``) and a foreign one in repeng's layout (written
with the ``gguf`` package, no workbench metadata). Each of the ``n`` cases takes one of them and applies one
mutation: of the structure, re-serialised by :func:`emit` (tensor names, shapes, types, offsets and order,
metadata values, types, keys and counts, the version, the alignment), of the payload (a flipped byte, a NaN), or
of the bytes (flips anywhere, header flips, inserts, deletions, truncation, trailing bytes), or names something
that is not a file. Some structural mutations also recompute the checksum, so the check behind it is reached.

Each mutation says what the loader must do: ``refuse`` (the file is invalid, or not what llama.cpp would load as
written), ``same`` (a change llama.cpp ignores: trailing bytes, padding, free-text or absent ``model_hint``,
another alignment, GGUF version 2) or ``either`` (refuse, or load exactly the original vectors). The outcome is
one of

* ``accepted_valid``: loaded, with the original layers, vectors and scale;
* ``refused``: a ``WorkbenchError``, where the mutation allows one;
* ``raw_exception``: any other exception (a bug);
* ``silent_acceptance``: loaded although the mutation must be refused, or loaded with other layers, vectors or
  scale than the original's (a bug), except:
* ``accepted_unverifiable``: a foreign file (no checksum, by design) loaded with other values or layers after a
  mutation of its payload or names that keeps every structural rule llama.cpp checks, so neither llama.cpp nor
  the workbench can tell it from an intended file;
* ``refused_valid``: a ``WorkbenchError`` for a ``same`` mutation (a bug).

The same ``(n, seed)`` writes the same files and gives the same counts.
"""

import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.errors import WorkbenchError
from workbench.export.gguf import read_gguf, write_gguf
from workbench.export.spec import Provenance, Spec
from workbench.interventions import AddDirection
from workbench.models import HookedModel, fingerprint
from workbench.sites import HookSite

KINDS = (
    "accepted_valid",
    "refused",
    "raw_exception",
    "silent_acceptance",
    "accepted_unverifiable",
    "refused_valid",
)
BUGS = ("raw_exception", "silent_acceptance", "refused_valid")
N_EXAMPLES = 5

# GGUF value types and tensor types (gguf.GGUFValueType, gguf.GGMLQuantizationType)
U8, I8, U16, I16, U32, I32, F32V, BOOL, STRING, ARRAY, U64, I64, F64V = range(13)
F32, F16, Q8_0, I32T, F64 = 0, 1, 8, 26, 28
_SCALAR = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32V: "f", BOOL: "?"}
_SCALAR |= {U64: "Q", I64: "q", F64V: "d"}


@dataclass
class Desc:
    """A GGUF file as a list of metadata entries and tensors, written by :func:`emit` (possibly invalid)."""

    fields: list  # [(key, value type, value)]; an array value is (element type, [values])
    tensors: list  # [(name, dims in ggml order, tensor type, data bytes)]
    version: int = 3
    alignment: int = 32
    offsets: "list[int] | None" = None  # None: contiguous and aligned, as every writer does
    counts: "tuple[int, int] | None" = None  # (tensor count, metadata count) written in the header


def _value(type_id: int, value: Any) -> bytes:
    if type_id == STRING:
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        return struct.pack("<Q", len(data)) + data
    if type_id == ARRAY:
        item, values = value
        return struct.pack("<IQ", item, len(values)) + b"".join(_value(item, v) for v in values)
    return struct.pack("<" + _SCALAR.get(type_id, "I"), value)  # an unknown type: 4 bytes of something


def _pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def emit(d: Desc) -> bytes:
    """The bytes of ``d`` as the GGUF layout lays them out (gguf-py's writer gives the same bytes)."""
    n_tensors, n_fields = d.counts or (len(d.tensors), len(d.fields))
    out = bytearray(b"GGUF" + struct.pack("<IQQ", d.version, n_tensors, n_fields))
    for key, type_id, value in d.fields:
        out += _value(STRING, key) + struct.pack("<I", type_id) + _value(type_id, value)
    offsets, at = [], 0
    for _, _, _, data in d.tensors:
        offsets.append(at)
        at += _pad(len(data), d.alignment)
    for i, (name, dims, type_id, _) in enumerate(d.tensors):
        offset = d.offsets[i] if d.offsets is not None else offsets[i]
        out += _value(STRING, name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, type_id, offset)
    out += bytes(_pad(len(out), d.alignment) - len(out))
    for _, _, _, data in d.tensors:
        out += data + bytes(_pad(len(data), d.alignment) - len(data))
    return bytes(out)


def _sha(tensors: list) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, _, _, data in tensors:
        h.update(name.encode("utf-8", "surrogatepass") + b"\0" + data)
    return h.hexdigest()


@dataclass
class Base:
    """A valid file: its description and the vectors ``read_gguf`` must return for it (block -> float32 bytes)."""

    name: str  # "ours" | "foreign"
    desc: Desc
    vectors: dict
    n_layers: int
    d_model: int
    meta: "dict | None" = None  # the parsed workbench.spec JSON (ours)
    extra: dict = field(default_factory=dict)


def _bases(model: HookedModel, workdir: Path) -> "list[Base]":
    """The workbench's file and a repeng-style file for ``model``, each checked to round-trip through ``emit``."""
    import gguf

    fp = fingerprint(model)
    n, d = fp.n_layers, fp.d_model
    blocks = list(range(1, min(n, 4)))
    g = torch.Generator().manual_seed(0)
    ivs = tuple(AddDirection(HookSite(b, "resid_post"), torch.randn(d, generator=g), 2.0) for b in blocks)
    path = write_gguf(Spec(ivs, fp, Provenance("fuzz", n_pairs=3)), workdir / "base-ours.gguf")
    raw = path.read_bytes()
    vectors = {b: (2.0 * iv.vector.double()).float().numpy().astype("<f4").tobytes() for b, iv in zip(blocks, ivs)}
    tensors = [(f"direction.{b}", (d,), F32, vectors[b]) for b in blocks]
    meta_text = gguf.GGUFReader(str(path)).get_field("workbench.spec").contents()
    ours = Desc(
        [
            ("general.architecture", STRING, "controlvector"),
            ("controlvector.model_hint", STRING, "llama"),
            ("controlvector.layer_count", U32, len(blocks)),
            ("workbench.spec", STRING, meta_text),
        ],
        tensors,
    )
    if emit(ours) != raw:
        raise AssertionError("the fuzzer's emit() does not reproduce write_gguf's bytes; update the harness")
    if json.loads(meta_text)["tensors_sha256"] != _sha(tensors):
        raise AssertionError("the fuzzer's checksum is not write_gguf's tensors_sha256; update the harness")

    g = torch.Generator().manual_seed(1)
    foreign_vectors = {b: torch.randn(d, generator=g).numpy().astype("<f4").tobytes() for b in blocks}
    w = gguf.GGUFWriter(str(workdir / "base-foreign.gguf"), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", len(blocks))
    for b in reversed(blocks):  # repeng writes them in its dict's order
        w.add_tensor(f"direction.{b}", np.frombuffer(foreign_vectors[b], dtype="<f4"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    foreign = Desc(
        [
            ("general.architecture", STRING, "controlvector"),
            ("controlvector.model_hint", STRING, "llama"),
            ("controlvector.layer_count", U32, len(blocks)),
        ],
        [(f"direction.{b}", (d,), F32, foreign_vectors[b]) for b in reversed(blocks)],
    )
    if emit(foreign) != (workdir / "base-foreign.gguf").read_bytes():
        raise AssertionError("the fuzzer's emit() does not reproduce the gguf writer's bytes; update the harness")
    return [
        Base("ours", ours, vectors, n, d, json.loads(meta_text)),
        Base("foreign", foreign, foreign_vectors, n, d),
    ]


# --- mutations: each returns (label, bytes or a path-maker, expectation, checksum recomputed) --------------------

Mutation = Callable[[random.Random, Base], "tuple[str, Any, str]"]
OTHER_HINTS = ("gpt2", "qwen2", "gemma2", "gptneox", "phi3", "mistral", "qwen3_moe", "olmo2")


def _with(b: Base, *, resum: bool = False, **changes: Any) -> Desc:
    d = replace(b.desc, **changes)
    if resum and b.meta is not None:
        meta = {**b.meta, "tensors_sha256": _sha(d.tensors)}
        d = replace(d, fields=[(k, t, json.dumps(meta) if k == "workbench.spec" else v) for k, t, v in d.fields])
    return d


def _set_tensor(b: Base, i: int, **kw: Any) -> list:
    out = list(b.desc.tensors)
    name, dims, type_id, data = out[i]
    out[i] = (kw.get("name", name), kw.get("dims", dims), kw.get("type_id", type_id), kw.get("data", data))
    return out


def _set_field(b: Base, key: str, type_id: "int | None" = None, value: Any = None, *, drop: bool = False) -> list:
    out = [(k, t, v) for k, t, v in b.desc.fields if not (drop and k == key)]
    if not drop:
        if any(k == key for k, _, _ in out):
            out = [(k, type_id, value) if k == key else (k, t, v) for k, t, v in out]
        else:
            out.append((key, type_id, value))
    return out


def m_tensor_name(rng: random.Random, b: Base):
    i = rng.randrange(len(b.desc.tensors))
    block = int(b.desc.tensors[i][0].split(".")[1])
    names = [
        "direction.\u0662",  # ARABIC-INDIC DIGIT TWO
        f"direction.{chr(0xFF10 + block)}",  # FULLWIDTH DIGIT
        f"direction.{chr(0x0966 + block)}",  # DEVANAGARI DIGIT
        f"direction.0{block}",
        f"direction.{block}x",
        f"direction. {block}",
        f"direction.+{block}",
        f"direction.-{block}",
        f"Direction.{block}",
        f"direction{block}",
        f"direction.{block}.0",
        "direction.0",
        f"direction.{b.n_layers}",
        f"direction.{b.n_layers + 7}",
        "direction.99999999999999999999999",
        "direction.",
        "",
        "direction." + "1" * 60,
        "d\udcff.1",
        "blk.1.attn_q",
    ]
    name = rng.choice(names)
    resum = rng.random() < 0.5
    return (
        f"tensor name {name!r}{' (checksum recomputed)' if resum else ''}",
        _with(b, resum=resum, tensors=_set_tensor(b, i, name=name)),
        "refuse",
    )


def m_tensor_rename_valid(rng: random.Random, b: Base):
    """A tensor renamed to another valid, unused layer: the checksum must catch it in our file."""
    used = {int(t[0].split(".")[1]) for t in b.desc.tensors}
    free = [k for k in range(1, b.n_layers) if k not in used]
    i = rng.randrange(len(b.desc.tensors))
    if not free:  # swap two names instead
        j = (i + 1) % len(b.desc.tensors)
        tensors = _set_tensor(b, i, name=b.desc.tensors[j][0])
        tensors[j] = (b.desc.tensors[i][0], *tensors[j][1:])
        return "two tensor names swapped", _with(b, tensors=tensors), "refuse" if b.name == "ours" else "either"
    name = f"direction.{rng.choice(free)}"
    return (
        f"tensor renamed to {name}",
        _with(b, tensors=_set_tensor(b, i, name=name)),
        "refuse" if (b.name == "ours") else "either",
    )


def m_tensor_shape(rng: random.Random, b: Base):
    i = rng.randrange(len(b.desc.tensors))
    d = b.d_model
    data = b.desc.tensors[i][3]
    choices = [
        ((d, d), data * d, "refuse"),
        ((1, d), data, "refuse"),
        ((d, 2), data * 2, "refuse"),
        ((d // 2,), data[: len(data) // 2], "refuse"),
        ((2 * d,), data * 2, "refuse"),
        ((d - 1,), data[:-4], "refuse"),
        ((0,), b"", "refuse"),
        ((d, 1), data, "same"),
        ((d, 1, 1, 1), data, "same"),
        ((d, 1, 1, 1, 1), data, "refuse"),
        ((), b"", "refuse"),
    ]
    dims, new_data, expect = rng.choice(choices)
    resum = rng.random() < 0.5
    tensors = _set_tensor(b, i, dims=dims, data=new_data)
    return (
        f"shape {list(dims)}{' (checksum recomputed)' if resum else ''}",
        _with(b, resum=resum, tensors=tensors),
        expect,
    )


def m_tensor_dims_only(rng: random.Random, b: Base):
    """The shape changed but not the data: the offsets no longer add up (or the width is wrong)."""
    i = rng.randrange(len(b.desc.tensors))
    d = b.d_model
    dims = rng.choice([(d, d), (d + 1,), (d - 1,), (2**40,), (2**63,), (d, 2**62), (0,)])
    return f"dims {list(dims)} over unchanged data", _with(b, tensors=_set_tensor(b, i, dims=dims)), "refuse"


def m_tensor_dtype(rng: random.Random, b: Base):
    i = rng.randrange(len(b.desc.tensors))
    values = np.frombuffer(b.desc.tensors[i][3], dtype="<f4")
    d = b.d_model
    choices = [
        (F16, values.astype("<f2").tobytes(), (d,)),
        (F64, values.astype("<f8").tobytes(), (d,)),
        (I32T, values.astype("<i4").tobytes(), (d,)),
        (Q8_0, bytes(34 * (d // 32)), (d,)),
        (99, b"\0" * (4 * d), (d,)),
        (4, b"\0" * (4 * d), (d,)),  # a type id llama.cpp removed
        (F16, b.desc.tensors[i][3], (d,)),  # type changed, data not
    ]
    type_id, data, dims = rng.choice(choices)
    resum = rng.random() < 0.5
    return (
        f"tensor type {type_id}{' (checksum recomputed)' if resum else ''}",
        _with(b, resum=resum, tensors=_set_tensor(b, i, type_id=type_id, data=data, dims=dims)),
        "refuse",
    )


def m_payload(rng: random.Random, b: Base):
    i = rng.randrange(len(b.desc.tensors))
    data = bytearray(b.desc.tensors[i][3])
    j = rng.randrange(len(data) // 4)
    how = rng.choice(["flip", "nan", "inf", "flip", "sign"])
    if how == "flip":
        data[4 * j + rng.randrange(4)] ^= 1 << rng.randrange(8)
    elif how == "sign":
        data[4 * j + 3] ^= 0x80
    else:
        data[4 * j : 4 * j + 4] = struct.pack("<f", float("nan") if how == "nan" else float("inf"))
    resum = how in ("nan", "inf") and rng.random() < 0.5
    expect = "refuse" if b.name == "ours" or how in ("nan", "inf") else "either"
    return (
        f"payload {how} in tensor {i}{' (checksum recomputed)' if resum else ''}",
        _with(b, resum=resum, tensors=_set_tensor(b, i, data=bytes(data))),
        expect,
    )


def m_tensor_count(rng: random.Random, b: Base):
    how = rng.choice(["drop", "add", "duplicate", "none", "reorder"])
    tensors = list(b.desc.tensors)
    if how == "drop" and len(tensors) > 1:
        tensors.pop(rng.randrange(len(tensors)))
        fields = _set_field(b, "controlvector.layer_count", U32, len(tensors))
        expect = "refuse" if b.name == "ours" else "either"
        return "one tensor dropped (layer_count adjusted)", _with(b, tensors=tensors, fields=fields), expect
    if how == "add":
        used = {int(t[0].split(".")[1]) for t in tensors}
        free = [k for k in range(1, b.n_layers) if k not in used] or [1]
        tensors.append((f"direction.{free[0]}", (b.d_model,), F32, tensors[0][3]))
        fields = _set_field(b, "controlvector.layer_count", U32, len(tensors))
        expect = "refuse" if b.name == "ours" or free[0] in used else "either"
        return "one tensor added", _with(b, tensors=tensors, fields=fields), expect
    if how == "duplicate":
        tensors.append(tensors[0])
        return "a tensor twice", _with(b, resum=True, tensors=tensors), "refuse"
    if how == "none":
        fields = _set_field(b, "controlvector.layer_count", U32, 0)
        return "no tensors", _with(b, resum=True, tensors=[], fields=fields), "refuse"
    tensors.reverse()
    return "tensors reordered", _with(b, tensors=tensors), "either"


def m_offsets(rng: random.Random, b: Base):
    k = len(b.desc.tensors)
    base = [i * _pad(len(t[3]), 32) for i, t in enumerate(b.desc.tensors)]
    how = rng.choice(["swap", "shift", "same", "huge", "misalign"])
    offsets = list(base)
    if how == "swap" and k > 1:
        offsets[0], offsets[1] = offsets[1], offsets[0]
    elif how == "shift":
        offsets[rng.randrange(k)] += 32
    elif how == "huge":
        offsets[rng.randrange(k)] = 2**63 + 5
    elif how == "misalign":
        offsets[rng.randrange(k)] += 4
    else:
        offsets = [0] * k
    expect = "same" if offsets == base else "refuse"
    return f"tensor offsets {how}", _with(b, offsets=offsets), expect


def m_metadata(rng: random.Random, b: Base):
    cases: list = [
        ("general.architecture", STRING, "llama", "refuse"),
        ("general.architecture", STRING, "", "refuse"),
        ("general.architecture", U32, 7, "refuse"),
        ("general.architecture", ARRAY, (STRING, ["controlvector"]), "refuse"),
        ("general.architecture", None, None, "refuse"),  # dropped
        ("controlvector.model_hint", STRING, rng.choice(OTHER_HINTS), "refuse"),
        ("controlvector.model_hint", STRING, "LLaMA", "same"),
        ("controlvector.model_hint", STRING, "my fine-tuned model", "same"),
        ("controlvector.model_hint", STRING, "", "same"),
        ("controlvector.model_hint", None, None, "same"),
        ("controlvector.model_hint", U32, 1, "refuse"),
        ("controlvector.model_hint", BOOL, True, "refuse"),
        ("controlvector.model_hint", ARRAY, (STRING, ["llama", "gpt2"]), "refuse"),
        ("controlvector.layer_count", U32, len(b.desc.tensors) + 1, "refuse"),
        ("controlvector.layer_count", U32, 0, "refuse"),
        ("controlvector.layer_count", I64, len(b.desc.tensors), "same"),
        ("controlvector.layer_count", STRING, str(len(b.desc.tensors)), "refuse"),
        ("controlvector.layer_count", F32V, float(len(b.desc.tensors)), "refuse"),
        ("controlvector.layer_count", BOOL, True, "refuse"),
        ("controlvector.layer_count", None, None, "same"),
        ("general.name", STRING, "a name", "same"),
        ("general.description", ARRAY, (U8, [1, 2, 3]), "same"),
        ("general.tags", ARRAY, (STRING, ["a", "b"]), "same"),
        ("general.nested", ARRAY, (ARRAY, []), "refuse"),
        ("general.weird_type", 13, 0, "refuse"),
        ("general.alignment", U32, 64, "same"),
        ("general.alignment", U32, 3, "refuse"),
        ("general.alignment", U32, 0, "refuse"),
        ("general.alignment", U64, 32, "refuse"),
        ("general.alignment", STRING, "32", "refuse"),
        ("workbench.spex", STRING, "{}", "refuse"),
        ("workbench.other", U32, 1, "refuse"),
    ]
    key, type_id, value, expect = rng.choice(cases)
    if key == "controlvector.model_hint" and expect == "refuse" and type_id == STRING:
        label = f"model_hint {value!r}"
    else:
        label = f"metadata {key} = {value!r} (type {type_id})" if type_id is not None else f"metadata {key} dropped"
    fields = _set_field(b, key, type_id, value, drop=type_id is None)
    d = _with(b, fields=fields)
    if key == "general.alignment" and value == 64:
        d = replace(d, alignment=64)
    return label, d, expect


def m_duplicate_key(rng: random.Random, b: Base):
    k, t, v = rng.choice(b.desc.fields)
    return f"metadata key {k} twice", _with(b, fields=[*b.desc.fields, (k, t, v)]), "refuse"


def m_spec_meta(rng: random.Random, b: Base):
    """The workbench's own metadata, edited (in a foreign file: added)."""
    meta = json.loads(json.dumps(b.meta)) if b.meta is not None else None
    if meta is None:
        return (
            "workbench.spec added as garbage",
            _with(b, fields=_set_field(b, "workbench.spec", STRING, "{not json")),
            "refuse",
        )
    sha = _sha(b.desc.tensors)
    edits: list = [
        ("model.d_model", 4096, "refuse"),
        ("model.d_model", True, "refuse"),
        ("model.d_model", float(meta["model"]["d_model"]), "refuse"),
        ("model.n_layers", str(meta["model"]["n_layers"]), "refuse"),
        ("model.n_layers", meta["model"]["n_layers"] + 1, "refuse"),
        ("model.architecture", "GPT2LMHeadModel", "refuse"),
        ("model.weights_sha256", "0" * 64, "refuse"),
        ("model.weights_sha256", meta["model"]["weights_sha256"].upper(), "refuse"),
        ("model.vocab_sha256", None, "refuse"),
        ("model.extra", 1, "refuse"),
        ("provenance.n_pairs", -1, "refuse"),
        ("provenance.n_pairs", 2.5, "refuse"),
        ("provenance.n_pairs", True, "refuse"),
        ("provenance.method", ["mean"], "refuse"),
        ("provenance.tokenization", {"bos": "sometimes", "chat_template": False}, "refuse"),
        ("provenance.tokenization", {"bos": "auto"}, "refuse"),
        ("provenance.source", "edited by hand", "same"),
        ("provenance.method", "pca", "same"),
        ("tensors_sha256", sha[:-1] + ("0" if sha[-1] != "0" else "1"), "refuse"),
        ("tensors_sha256", sha.upper(), "refuse"),
        ("tensors_sha256", None, "refuse"),
        ("tensors_sha256", 0, "refuse"),
        ("extra_field", 1, "refuse"),
        ("<drop tensors_sha256>", None, "refuse"),
        ("<drop provenance>", None, "refuse"),
        ("<text>", "{", "refuse"),
        ("<text>", "[]", "refuse"),
        ("<text>", "null", "refuse"),
        ("<text>", "", "refuse"),
        ("<text>", '{"model": NaN}', "refuse"),
        ("<text>", "[" * 100 + "]" * 100, "refuse"),
        ("<text>", json.dumps(meta)[:-1] + ', "model": 1}', "refuse"),
        ("<drop key>", None, "same"),
    ]
    path, value, expect = rng.choice(edits)
    if path == "<drop key>":
        return (
            "workbench.spec dropped (a foreign file now)",
            _with(b, fields=_set_field(b, "workbench.spec", drop=True)),
            expect,
        )
    if path == "<text>":
        return (
            f"workbench.spec text {value[:40]!r}",
            _with(b, fields=_set_field(b, "workbench.spec", STRING, value)),
            expect,
        )
    if path.startswith("<drop "):
        meta.pop(path[6:-1])
    else:
        *parents, last = path.split(".")
        node = meta
        for p in parents:
            node = node[p]
        node[last] = value
    type_id = STRING if rng.random() < 0.9 else U32
    text: Any = json.dumps(meta) if type_id == STRING else 1
    expect = expect if type_id == STRING else "refuse"
    return (
        f"workbench.spec {path} = {value!r}" + ("" if type_id == STRING else " (as uint32)"),
        _with(b, fields=_set_field(b, "workbench.spec", type_id, text)),
        expect,
    )


def m_header(rng: random.Random, b: Base):
    how = rng.choice(["version1", "version4", "version2", "bigendian", "magic", "counts+", "counts-", "countsbig"])
    d = b.desc
    if how == "version1":
        return "GGUF version 1", replace(d, version=1), "refuse"
    if how == "version4":
        return "GGUF version 4", replace(d, version=4), "refuse"
    if how == "version2":
        return "GGUF version 2", replace(d, version=2), "same"
    if how == "bigendian":
        return "big-endian version field", replace(d, version=3 << 24), "refuse"
    if how == "magic":
        raw = bytearray(emit(d))
        raw[rng.randrange(4)] ^= 0x20
        return "magic number changed", bytes(raw), "refuse"
    nt, nk = len(d.tensors), len(d.fields)
    if how == "counts+":
        counts = rng.choice([(nt + 1, nk), (nt, nk + 1)])
    elif how == "counts-":
        counts = rng.choice([(nt - 1, nk), (nt, nk - 1), (0, nk), (nt, 0)])
    else:
        counts = rng.choice([(2**63, nk), (nt, 2**63), (2**64 - 1, 2**64 - 1), (10**6, nk)])
    return f"header counts {counts}", replace(d, counts=counts), "refuse"


def _string_spans(raw: bytes) -> "list[tuple[int, int]]":
    """The (start, end) of each length field of a string or array in the metadata (found by a plain walk)."""
    spans, pos = [], 24
    n_fields = struct.unpack_from("<Q", raw, 16)[0]
    for _ in range(n_fields):
        spans.append((pos, pos + 8))
        pos += 8 + struct.unpack_from("<Q", raw, pos)[0]
        type_id = struct.unpack_from("<I", raw, pos)[0]
        pos += 4
        if type_id == STRING:
            spans.append((pos, pos + 8))
            pos += 8 + struct.unpack_from("<Q", raw, pos)[0]
        else:
            pos += struct.calcsize(_SCALAR.get(type_id, "I"))
    return spans


def m_lengths(rng: random.Random, b: Base):
    """A string length field in the metadata set to a wrong value (past the end, off by one, zero)."""
    raw = bytearray(emit(b.desc))
    start, end = rng.choice(_string_spans(bytes(raw)))
    old = struct.unpack_from("<Q", raw, start)[0]
    new = rng.choice([old + 1, max(0, old - 1), 0, len(raw), 2**63, 2**64 - 1, old + 4096])
    struct.pack_into("<Q", raw, start, new)
    return f"a length field {old} -> {new}", bytes(raw), "refuse" if new != old else "same"


def m_array_length(rng: random.Random, b: Base):
    """An array whose length runs past the end of the file (gguf-py's reader loops without end on it)."""
    item = rng.choice([U8, U32, STRING, U64])
    d = _with(b, fields=_set_field(b, "general.tags", ARRAY, (item, [] if item != STRING else ["x"])))
    raw = bytearray(emit(d))
    at = raw.find(b"general.tags") + len("general.tags") + 4 + 4
    struct.pack_into("<Q", raw, at, rng.choice([2**40, 2**63, len(raw), 10**9]))
    return f"array of type {item} with a huge length", bytes(raw), "refuse"


def m_bytes(rng: random.Random, b: Base):
    raw = bytearray(emit(b.desc))
    how = rng.choice(["flip", "flip", "flips", "header_flip", "insert", "delete", "zero_run"])
    data_start = len(raw) - sum(_pad(len(t[3]), b.desc.alignment) for t in b.desc.tensors)
    if how == "flip":
        i = rng.randrange(len(raw))
        raw[i] ^= 1 << rng.randrange(8)
        label = f"bit flip at byte {i}"
    elif how == "flips":
        for _ in range(rng.randint(2, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        label = "random bytes overwritten"
    elif how == "header_flip":
        i = rng.randrange(min(data_start, len(raw)))
        raw[i] ^= 1 << rng.randrange(8)
        label = f"bit flip in the header at byte {i}"
    elif how == "insert":
        i = rng.randrange(len(raw))
        raw[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        label = f"bytes inserted at {i}"
    elif how == "delete":
        i = rng.randrange(len(raw))
        del raw[i : i + rng.randint(1, 16)]
        label = f"bytes deleted at {i}"
    else:
        i = rng.randrange(len(raw))
        raw[i : i + 8] = bytes(len(raw[i : i + 8]))
        label = f"zeroed 8 bytes at {i}"
    if bytes(raw) == emit(b.desc):
        return label + " (no change)", bytes(raw), "same"
    # a change in the payload of a foreign file can only be refused when it breaks a rule llama.cpp checks
    return label, bytes(raw), "either"


def m_truncate(rng: random.Random, b: Base):
    raw = emit(b.desc)
    cut = rng.choice([0, 3, 4, 8, 23, 24, rng.randrange(len(raw)), len(raw) - 1, len(raw) - rng.randint(1, 40)])
    return f"truncated to {cut} of {len(raw)} bytes", raw[:cut], "refuse"


def m_trailing(rng: random.Random, b: Base):
    raw = emit(b.desc)
    extra = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    return f"{len(extra)} trailing bytes", raw + extra, "same"


def m_padding(rng: random.Random, b: Base):
    """A byte of the alignment padding before the data changed (llama.cpp never reads it)."""
    raw = bytearray(emit(b.desc))
    data_start = len(raw) - sum(_pad(len(t[3]), b.desc.alignment) for t in b.desc.tensors)
    header_end = _header_end(b.desc)
    if header_end >= data_start:
        return "no padding to change", bytes(raw), "same"
    i = rng.randrange(header_end, data_start)
    raw[i] = rng.randrange(1, 256)
    return f"padding byte {i} set", bytes(raw), "same"


def _header_end(d: Desc) -> int:
    """The byte where the tensor infos end (before the padding to the data section)."""
    out = 24
    for key, type_id, value in d.fields:
        out += len(_value(STRING, key)) + 4 + len(_value(type_id, value))
    for name, dims, _, _ in d.tensors:
        out += len(_value(STRING, name)) + 4 + 8 * len(dims) + 4 + 8
    return out


def m_not_a_file(rng: random.Random, b: Base):
    how = rng.choice(["empty", "random", "json", "directory", "missing", "text"])
    if how == "empty":
        return "empty file", b"", "refuse"
    if how == "random":
        return "random bytes", bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))), "refuse"
    if how == "json":
        return "a JSON file", b'{"format": "workbench.intervention"}', "refuse"
    if how == "text":
        return "GGUF then text", b"GGUF" + "é…".encode() * 20, "refuse"
    return how, how, "refuse"


MUTATIONS: "list[tuple[Mutation, int]]" = [
    (m_tensor_name, 8),
    (m_tensor_rename_valid, 3),
    (m_tensor_shape, 6),
    (m_tensor_dims_only, 3),
    (m_tensor_dtype, 5),
    (m_payload, 8),
    (m_tensor_count, 4),
    (m_offsets, 3),
    (m_metadata, 10),
    (m_duplicate_key, 2),
    (m_spec_meta, 8),
    (m_header, 4),
    (m_lengths, 4),
    (m_array_length, 2),
    (m_bytes, 14),
    (m_truncate, 5),
    (m_trailing, 2),
    (m_padding, 2),
    (m_not_a_file, 2),
]


def _vectors(spec: Spec) -> dict:
    """Block -> (site kind, scale, vector bytes) of a loaded spec: what the oracle compares."""
    return {
        iv.site.layer: (iv.site.kind, iv.scale, iv.vector.numpy().astype("<f4").tobytes()) for iv in spec.interventions
    }


_MODEL: "HookedModel | None" = None


def run(n: int, seed: int, workdir: "str | Path", *, model: "HookedModel | None" = None) -> dict:
    """Write ``n`` mutated GGUF files under ``workdir``, load each with ``read_gguf(path, model)`` and count the
    outcomes (``KINDS``), with up to ``N_EXAMPLES`` examples of every kind but ``accepted_valid`` and ``refused``.
    ``model`` defaults to the shipped ``toy-s``, loaded once per process."""
    global _MODEL
    if model is None:
        if _MODEL is None:
            from workbench import models

            _MODEL = models.load("toy-s")
        model = _MODEL
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    bases = _bases(model, workdir)
    for base in bases:  # the unmutated files load as they were written
        got = _vectors(read_gguf(workdir / f"base-{base.name}.gguf", model))
        want = {k: ("resid_post", 1.0, v) for k, v in base.vectors.items()}
        if got != want:
            raise AssertionError(f"the {base.name} base file does not load as written; the harness is wrong")
    rng = random.Random(seed)
    mutations, weights = zip(*MUTATIONS)
    counts = dict.fromkeys(KINDS, 0)
    examples: dict[str, list[str]] = {k: [] for k in KINDS if k not in ("accepted_valid", "refused")}
    for i in range(n):
        base = bases[rng.randrange(len(bases))]
        mutate = rng.choices(mutations, weights)[0]
        label, content, expect = mutate(rng, base)
        label = f"{base.name}: {label}"
        path = workdir / f"case-{i:05d}.gguf"
        if isinstance(content, Desc):
            content = emit(content)
        if content == "directory":
            path.mkdir(exist_ok=True)
        elif content != "missing":
            path.write_bytes(content)
        kind = _classify(path, model, base, expect)
        counts[kind[0]] += 1
        if kind[0] in examples and len(examples[kind[0]]) < N_EXAMPLES:
            examples[kind[0]].append(f"{label}: {kind[1]}")
        if path.is_dir():
            path.rmdir()
        elif kind[0] not in BUGS:
            path.unlink(missing_ok=True)
    return {**counts, "n": n, "seed": seed, "examples": examples}


def _classify(path: Path, model: HookedModel, base: Base, expect: str) -> "tuple[str, str]":
    try:
        spec = read_gguf(path, model)
    except WorkbenchError as e:
        return ("refused_valid" if expect == "same" else "refused"), str(e)[:300]
    except Exception as e:  # noqa: BLE001 - the point of the fuzzer
        return "raw_exception", f"{type(e).__name__}: {str(e)[:300]}"
    got = _vectors(spec)
    want = {k: ("resid_post", 1.0, v) for k, v in base.vectors.items()}
    if expect == "refuse":
        return "silent_acceptance", f"accepted although it must be refused (layers {sorted(got)})"
    if got == want:
        return "accepted_valid", ""
    if (
        base.name == "foreign"
        and expect == "either"
        and all(k == "resid_post" and s == 1.0 for k, s, _ in got.values())
    ):
        changed = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
        return "accepted_unverifiable", f"layers {changed} differ from the original"
    return "silent_acceptance", f"loaded layers {sorted(got)} differ from the original {sorted(want)}"
