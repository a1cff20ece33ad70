"""Fuzzing the tensor folders: spec folders and directions folders, each outcome checked against an oracle.

``run_spec(n, seed, workdir)`` and ``run_directions(n, seed, workdir)`` each write ``n`` folders made from one
valid folder (saved once from a tiny random Llama, loaded once per process) put through one random mutation: of
the manifest's JSON (values of other types, numbers retyped or out of range, keys dropped, added, swapped, renamed
or repeated, lists emptied, reordered or repeated, deep nesting, the checksum edited), of its text and bytes
(flips, cuts, inserts, a BOM, a non-object), of the tensor file (flipped payload and header bytes, cuts, a wrong header
length, tensors rewritten with another shape, dtype, value, name or count, with the manifest's checksum left alone
or forged to match), and of the folder (a member missing, swapped with the other, a directory or FIFO in its
place, the other kind's tensors, the folder itself missing or a file). Each folder is read by every loader of its
kind: ``Spec.load(folder, model)`` and ``apply_hf.load_spec(folder)``, or ``DirectionSet.load(folder, model)``.

A loader's outcome is one of

* ``accepted_valid``: loaded, and the oracle holds (below);
* ``refused``: a ``WorkbenchError`` (``apply_hf.SpecError`` is one) for a mutation that is not neutral;
* ``raw_exception``: any other exception (a bug);
* ``silent_acceptance``: loaded although the oracle fails (a bug);
* ``refused_valid``: a ``WorkbenchError`` after a neutral mutation (whitespace, key order, a BOM, a checksum
  dropped as files written before checksums lack it), a bug.

The oracle of an accepted folder: (1) integrity: if the tensor file's bytes differ from the ones the manifest's
``tensors_sha256`` names, acceptance is an unchecked corruption; (2) faithfulness: what was loaded is what the
files say: the loaded value saved again gives the mutated manifest (types exact: a boolean is not a number, and an
int and a float are equal only as numbers; ``tensors_sha256`` and the directions' ``workbench_version``, which a
loaded set does not keep, aside), and its tensors are bit for bit the mutated file's; (3) validity: every scale a
number (not a boolean) within ``schema.MAX_SCALE``, every layer an int inside the model, every position start an
int, every tensor float32, finite, of exactly its site's shape. A valid edit (a scale of 3 instead of 2.5, a
checksum forged for a well-formed tensor of the right shape) is accepted, and counted in ``accepted_edit`` too.

The same ``(n, seed)`` writes the same folders and gives the same counts.
"""

import copy
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from workbench import models
from workbench.directions import Direction, DirectionSet, Quality
from workbench.errors import WorkbenchError
from workbench.export import apply_hf
from workbench.export.spec import Provenance, Spec
from workbench.interventions import Ablate, AddDirection, SpectralEdit
from workbench.manifests import RESIDUAL_KINDS
from workbench.positions import Positions
from workbench.schema import MAX_SCALE
from workbench.sites import SITE_KINDS, HookSite
from workbench.tiny import write_tiny_checkpoint

KINDS = ("accepted_valid", "refused", "raw_exception", "silent_acceptance", "refused_valid")
BUGS = ("raw_exception", "silent_acceptance", "refused_valid")
N_EXAMPLES = 5

MISSING, DIRECTORY, FIFO = "<missing>", "<directory>", "<fifo>"


@dataclass
class Base:
    """One valid folder of a kind, in memory."""

    kind: str  # "spec" | "directions"
    manifest_name: str
    tensors_name: str
    manifest: dict
    tensor_bytes: bytes
    other_tensor_bytes: bytes = b""  # the other kind's tensor file


@dataclass
class Case:
    """A mutated folder: each member's bytes (or MISSING / DIRECTORY / FIFO) and what was done."""

    files: dict
    label: str
    neutral: bool = False
    folder: str = ""  # "", "missing" or "file": the folder itself


_CACHE: dict = {}


# ------------------------------------------------------------------------------------------------ the bases


def _model(workdir: Path) -> Any:
    if "model" not in _CACHE:
        src = write_tiny_checkpoint(workdir / "_model", "llama", n_layers=3, d_model=16, n_heads=4, n_kv_heads=2)
        _CACHE["model"] = models.load(src)
    return _CACHE["model"]


def _bases(workdir: Path) -> "tuple[Any, Base, Base]":
    """The model, a valid spec folder and a valid directions folder (built once per process)."""
    model = _model(workdir)
    if "bases" in _CACHE:
        return model, *_CACHE["bases"]
    d, d_mlp = model.cfg.d_model, model.cfg.d_mlp
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, 3, generator=g))
    u = torch.randn(d, generator=g)
    spec = Spec(
        (
            AddDirection(HookSite(1, "resid_post"), torch.randn(d, generator=g), 2.5, Positions("from", -1)),
            Ablate(HookSite(0, "resid_mid"), u / u.norm()),
            SpectralEdit(HookSite(2, "mlp_out"), q[:, :2].contiguous(), q[:, 2:].contiguous(), "norm", "tanh"),
            AddDirection(HookSite(2, "mlp_post"), torch.randn(d_mlp, generator=g), -1.0),
        ),
        models.fingerprint(model),
        Provenance("mean", "abc123", 12, source="fuzz", tokenization=models.tokenization_of(model).to_dict()),
    )
    dirs = DirectionSet(
        tuple(
            Direction(HookSite(layer, kind), v, Quality(float(v.norm()), acc, 0.95 if acc else None, acc))
            for layer, kind, acc in ((0, "resid_post", 0.75), (1, "resid_post", 1.0), (2, "resid_post", None))
            for v in [torch.randn(d, generator=g)]
        )
        + (Direction(HookSite(1, "mlp_out"), torch.randn(d, generator=g), Quality(1.5, None, None, -0.5)),),
        "mean",
        "last",
        models.fingerprint(model),
        "abc123",
        12,
        models.tokenization_of(model).to_dict(),
    )
    spec_dir, dirs_dir = spec.save(workdir / "_base_spec"), dirs.save(workdir / "_base_dirs")
    spec_tensors = (spec_dir / "tensors.safetensors").read_bytes()
    dirs_tensors = (dirs_dir / "directions.safetensors").read_bytes()
    bases = (
        Base(
            "spec",
            "intervention.json",
            "tensors.safetensors",
            json.loads((spec_dir / "intervention.json").read_text()),
            spec_tensors,
            dirs_tensors,
        ),
        Base(
            "directions",
            "directions.json",
            "directions.safetensors",
            json.loads((dirs_dir / "directions.json").read_text()),
            dirs_tensors,
            spec_tensors,
        ),
    )
    _CACHE["bases"] = bases
    return model, *bases


# ------------------------------------------------------------------------------------------------ mutations

#: values put in place of a JSON value
VALUES: tuple = (
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    3,
    2.5,
    -0.0,
    1e308,
    -1e308,
    1e4,
    1e4 + 1,
    10**30,
    2**63,
    "",
    "x",
    "1",
    "2.5",
    "true",
    "resid_post",
    "blocks.1.hook_resid_post",
    "0.vector",
    "a" * 64,
    "٢",
    "\ud800",
    [],
    {},
    [1],
    [2.5, 1.0],
    {"a": 1},
    {"kind": "add"},
)
#: JSON text put in place of a value (literals Python's json would accept or that overflow)
TOKENS = ("NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" * 5000, "0.1e-99999", "[[[[[[[[[[]]]]]]]]]]")


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a node below the top level."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _set(obj: Any, path: tuple, value: Any) -> None:
    _get(obj, path[:-1])[path[-1]] = value


def _dump(rng: random.Random, m: Any) -> bytes:
    return json.dumps(m, indent=rng.choice([None, 1, 2]), sort_keys=rng.random() < 0.5).encode()


def _json_case(rng: random.Random, base: Base, m: Any, label: str, neutral: bool = False) -> Case:
    return Case({base.manifest_name: _dump(rng, m), base.tensors_name: base.tensor_bytes}, label, neutral)


def m_reformat(rng: random.Random, base: Base) -> Case:
    m = copy.deepcopy(base.manifest)
    if rng.random() < 0.5:
        m = dict(reversed(list(m.items())))
    text = json.dumps(m, indent=rng.choice([None, 0, 4, "\t"]), separators=rng.choice([None, (",", ":")]))
    return Case({base.manifest_name: text.encode(), base.tensors_name: base.tensor_bytes}, "reformat", True)


def m_bom(rng: random.Random, base: Base) -> Case:
    data = b"\xef\xbb\xbf" + _dump(rng, base.manifest)
    return Case({base.manifest_name: data, base.tensors_name: base.tensor_bytes}, "bom", True)


def m_legacy(rng: random.Random, base: Base) -> Case:
    """A manifest as written before checksums: no ``tensors_sha256``."""
    m = copy.deepcopy(base.manifest)
    del m["tensors_sha256"]
    return _json_case(rng, base, m, "legacy (no checksum)", neutral=True)


def m_set_value(rng: random.Random, base: Base) -> Case:
    m = copy.deepcopy(base.manifest)
    path = rng.choice(_paths(m))
    value = copy.deepcopy(rng.choice(VALUES))
    _set(m, path, value)
    return _json_case(rng, base, m, f"set {_p(path)} = {value!r:.40}")


def m_token(rng: random.Random, base: Base) -> Case:
    """A JSON literal the standard library reads leniently (NaN, 1e999, a 5000-digit int) in place of a value."""
    m = copy.deepcopy(base.manifest)
    path = rng.choice(_paths(m))
    marker = "__TOKEN__"
    _set(m, path, marker)
    token = rng.choice(TOKENS)
    text = json.dumps(m).replace(f'"{marker}"', token)
    return Case({base.manifest_name: text.encode(), base.tensors_name: base.tensor_bytes}, f"{_p(path)} = {token:.20}")


def m_number(rng: random.Random, base: Base) -> Case:
    """A number retyped or moved: int <-> float, bool, string, negated, scaled, nudged."""
    m = copy.deepcopy(base.manifest)
    paths = [p for p in _paths(m) if type(_get(m, p)) in (int, float)]
    path = rng.choice(paths)
    v = _get(m, path)
    how = rng.choice(["float", "int", "bool", "str", "neg", "big", "nudge", "inc", "dec"])
    new = {
        "float": float(v),
        "int": int(v) if math.isfinite(v) else v,
        "bool": bool(v),
        "str": str(v),
        "neg": -v,
        "big": v * 1e300 if isinstance(v, float) else v * 10**20,
        "nudge": v + 1e-9 if isinstance(v, float) else v + 1,
        "inc": v + 1,
        "dec": v - 1,
    }[how]
    _set(m, path, new)
    return _json_case(rng, base, m, f"{_p(path)}: {v!r} -> {new!r:.40} ({how})")


def m_string(rng: random.Random, base: Base) -> Case:
    m = copy.deepcopy(base.manifest)
    paths = [p for p in _paths(m) if isinstance(_get(m, p), str)]
    path = rng.choice(paths)
    v = _get(m, path)
    how = rng.choice(["append", "upper", "empty", "long", "digit", "surrogate", "strip", "swap_case_first"])
    new = {
        "append": v + "x",
        "upper": v.upper(),
        "empty": "",
        "long": v * 3000,
        "digit": v.replace("1", "١").replace("0", "٠"),
        "surrogate": v + "\udc00",
        "strip": v[:-1],
        "swap_case_first": v[:1].swapcase() + v[1:],
    }[how]
    _set(m, path, new)
    return _json_case(rng, base, m, f"{_p(path)}: string {how}")


def m_drop_key(rng: random.Random, base: Base) -> Case:
    m = copy.deepcopy(base.manifest)
    path = rng.choice([p for p in _paths(m) if isinstance(p[-1], str)])
    del _get(m, path[:-1])[path[-1]]
    return _json_case(rng, base, m, f"drop {_p(path)}", neutral=path == ("tensors_sha256",))


def m_add_key(rng: random.Random, base: Base) -> Case:
    m = copy.deepcopy(base.manifest)
    dicts = [()] + [p for p in _paths(m) if isinstance(_get(m, p), dict)]
    path = rng.choice(dicts)
    key = rng.choice(["extra", "Kind", "scale", "comment", "layer", "hook", "tensors_sha256", "schema_version"])
    target = _get(m, path)
    if key in target:
        key = key + "_"
    target[key] = copy.deepcopy(rng.choice(VALUES))
    return _json_case(rng, base, m, f"add key {_p((*path, key))}")


def m_rename_key(rng: random.Random, base: Base) -> Case:
    m = copy.deepcopy(base.manifest)
    path = rng.choice([p for p in _paths(m) if isinstance(p[-1], str)])
    parent = _get(m, path[:-1])
    new = rng.choice([path[-1].upper(), path[-1] + "s", " " + path[-1], path[-1].replace("_", "-")])
    if new in parent:
        new = new + "_"
    parent[new] = parent.pop(path[-1])
    return _json_case(rng, base, m, f"rename {_p(path)} -> {new!r}")


def m_repeat_key(rng: random.Random, base: Base) -> Case:
    """A key written twice in one object, with another value first or last."""
    m = copy.deepcopy(base.manifest)
    path = rng.choice([p for p in _paths(m) if isinstance(p[-1], str)])
    value, other = _get(m, path), copy.deepcopy(rng.choice(VALUES))
    _set(m, path, "__REPEAT__")
    pair = [json.dumps(other), json.dumps(value)]
    rng.shuffle(pair)
    key = json.dumps(path[-1])
    text = json.dumps(m).replace(f'{key}: "__REPEAT__"', f"{key}: {pair[0]}, {key}: {pair[1]}")
    return Case({base.manifest_name: text.encode(), base.tensors_name: base.tensor_bytes}, f"repeat key {_p(path)}")


def m_container(rng: random.Random, base: Base) -> Case:
    """A dict made a list of its values, a list made a dict, a value wrapped in a list or an object."""
    m = copy.deepcopy(base.manifest)
    path = rng.choice(_paths(m))
    v = _get(m, path)
    how = rng.choice(["wrap_list", "wrap_dict", "as_list", "as_dict"])
    if how == "wrap_list":
        new: Any = [v]
    elif how == "wrap_dict":
        new = {"value": v}
    elif how == "as_list":
        new = list(v.values()) if isinstance(v, dict) else [v]
    else:
        new = {str(i): x for i, x in enumerate(v)} if isinstance(v, list) else {"0": v}
    _set(m, path, new)
    return _json_case(rng, base, m, f"{_p(path)}: {how}")


def m_list(rng: random.Random, base: Base) -> Case:
    """A list emptied, cut, repeated, reversed or with two items swapped."""
    m = copy.deepcopy(base.manifest)
    lists = [p for p in _paths(m) if isinstance(_get(m, p), list)]
    path = rng.choice(lists)
    v = _get(m, path)
    how = rng.choice(["empty", "drop_first", "drop_last", "repeat", "reverse", "swap"])
    if how == "empty":
        v.clear()
    elif how == "drop_first":
        v.pop(0)
    elif how == "drop_last":
        v.pop()
    elif how == "repeat":
        v.append(copy.deepcopy(rng.choice(v)))
    elif how == "reverse":
        v.reverse()
    elif len(v) >= 2:
        i, j = rng.sample(range(len(v)), 2)
        v[i], v[j] = v[j], v[i]
    return _json_case(rng, base, m, f"{_p(path)}: list {how}")


def m_swap_values(rng: random.Random, base: Base) -> Case:
    """The values of one key swapped between two entries (sites, scales, tensor names, positions, ...)."""
    m = copy.deepcopy(base.manifest)
    entries = m["interventions"] if base.kind == "spec" else m["directions"]
    i, j = rng.sample(range(len(entries)), 2)
    key = rng.choice(sorted(set(entries[i]) & set(entries[j])))
    sub = rng.choice([(), ("layer",), ("kind",)]) if key == "site" else ()
    a, b = (i, key, *sub), (j, key, *sub)
    va, vb = _get(entries, a), _get(entries, b)
    _set(entries, a, vb)
    _set(entries, b, va)
    return _json_case(rng, base, m, f"swap {'.'.join(map(str, (key, *sub)))} of entries {i} and {j}")


def m_site(rng: random.Random, base: Base) -> Case:
    """A site moved to another layer or kind, the hook name kept or updated to match."""
    m = copy.deepcopy(base.manifest)
    entries = m["interventions"] if base.kind == "spec" else m["directions"]
    e = rng.choice(entries)
    site = e["site"]
    if rng.random() < 0.5:
        site["layer"] = rng.choice([0, 1, 2, 3, 7, -1, 100_001])
    else:
        site["kind"] = rng.choice(SITE_KINDS)
    if rng.random() < 0.6 and isinstance(site["layer"], int) and site["layer"] >= 0:
        site["hook"] = HookSite(site["layer"], site["kind"]).name
        if base.kind == "directions" and rng.random() < 0.5:
            e["tensor"] = site["hook"]
    return _json_case(rng, base, m, f"site -> {site}")


def m_nest(rng: random.Random, base: Base) -> Case:
    m = copy.deepcopy(base.manifest)
    path = rng.choice(_paths(m))
    depth = rng.choice([20, 40, 200, 5000])
    marker = "__NEST__"
    _set(m, path, marker)
    text = json.dumps(m).replace(f'"{marker}"', "[" * depth + "1" + "]" * depth)
    return Case({base.manifest_name: text.encode(), base.tensors_name: base.tensor_bytes}, f"{_p(path)} nested {depth}")


def m_checksum(rng: random.Random, base: Base) -> Case:
    m = copy.deepcopy(base.manifest)
    s = m["tensors_sha256"]
    how = rng.choice(["flip", "upper", "short", "other", "null", "int"])
    k = rng.randrange(len(s))
    new: Any = {
        "flip": s[:k] + ("0" if s[k] != "0" else "1") + s[k + 1 :],
        "upper": s.upper(),
        "short": s[:-1],
        "other": hashlib.sha256(b"other").hexdigest(),
        "null": None,
        "int": 0,
    }[how]
    m["tensors_sha256"] = new
    return _json_case(rng, base, m, f"checksum {how}")


def m_top(rng: random.Random, base: Base) -> Case:
    data = rng.choice([b"", b"[]", b"42", b'"x"', b"null", b"{}", b"[{}]", b"\x00", b"{" * 100000])
    return Case({base.manifest_name: data, base.tensors_name: base.tensor_bytes}, f"top level {data[:10]!r}")


def b_manifest(rng: random.Random, base: Base) -> Case:
    """Bytes of the manifest flipped, cut, or with junk inserted."""
    data = bytearray(_dump(rng, base.manifest))
    how = rng.choice(["flip", "cut", "insert", "latin1"])
    k = rng.randrange(len(data))
    if how == "flip":
        data[k] ^= 1 << rng.randrange(8)
    elif how == "cut":
        del data[k:]
    elif how == "insert":
        data[k:k] = rng.choice([b",", b"}", b"]", b"NaN", b"\x00", b"\xff", b'"', b"\\", b" 1e999 "])
    else:
        data = bytearray(json.dumps(base.manifest, ensure_ascii=False).replace("fuzz", "füzz").encode("latin-1"))
    return Case({base.manifest_name: bytes(data), base.tensors_name: base.tensor_bytes}, f"manifest bytes {how}@{k}")


def _header_len(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")


def b_tensors(rng: random.Random, base: Base) -> Case:
    """Bytes of the tensor file flipped (payload or header), cut, extended, or its header length edited."""
    data = bytearray(base.tensor_bytes)
    n = _header_len(data)
    how = rng.choice(["payload", "payload", "header", "cut", "append", "length", "empty", "garbage", "zero_payload"])
    if how == "payload":
        k = rng.randrange(8 + n, len(data))
        data[k] ^= 1 << rng.randrange(8)
    elif how == "header":
        k = rng.randrange(8, 8 + n)
        data[k] ^= 1 << rng.randrange(8)
    elif how == "cut":
        del data[rng.randrange(len(data)) :]
    elif how == "append":
        data += bytes(rng.randrange(1, 16))
    elif how == "length":
        new = rng.choice([0, 1, n - 1, n + 1, 2**40, 2**64 - 1, len(data)])
        data[:8] = new.to_bytes(8, "little")
    elif how == "empty":
        data = bytearray()
    elif how == "garbage":
        data = bytearray(rng.randbytes(rng.randrange(1, 200)))
    else:
        k = rng.randrange(8 + n, len(data) - 3)
        data[k : k + 4] = bytes(4)
    return Case({base.manifest_name: _dump(rng, base.manifest), base.tensors_name: bytes(data)}, f"tensor bytes {how}")


def _rewritten(rng: random.Random, tensors: dict) -> "tuple[dict, str]":
    out = {k: v.clone() for k, v in tensors.items()}
    key = rng.choice(sorted(out))
    v = out[key]
    d = v.shape[0]
    how = rng.choice(
        [
            "square",
            "longer",
            "shorter",
            "row",
            "column",
            "scalar",
            "empty",
            "float16",
            "float64",
            "bfloat16",
            "int32",
            "bool",
            "nan",
            "inf",
            "huge",
            "value",
            "zero",
            "drop",
            "extra",
            "rename",
            "swap",
            "transpose",
        ]
    )
    if how == "square":
        out[key] = torch.randn(d, d)
    elif how == "longer":
        out[key] = torch.cat([v, v[:1]])
    elif how == "shorter":
        out[key] = v[:-1].contiguous()
    elif how == "row":
        out[key] = v.reshape(1, *v.shape).contiguous()
    elif how == "column":
        out[key] = v.reshape(*v.shape, 1).contiguous()
    elif how == "scalar":
        out[key] = v.flatten()[0].clone()
    elif how == "empty":
        out[key] = v[:0].contiguous()
    elif how in ("float16", "float64", "bfloat16", "int32", "bool"):
        out[key] = v.to(getattr(torch, how))
    elif how in ("nan", "inf", "huge", "value", "zero"):
        flat = v.flatten()
        k = rng.randrange(flat.numel())
        flat[k] = {"nan": math.nan, "inf": math.inf, "huge": 3e38, "value": float(flat[k]) + 0.5, "zero": 0.0}[how]
        out[key] = flat.reshape(v.shape) if how != "zero" else torch.zeros_like(v)
    elif how == "drop":
        del out[key]
    elif how == "extra":
        out["extra"] = v.clone()
    elif how == "rename":
        out[key + "x"] = out.pop(key)
    elif how == "swap" and len(out) >= 2:
        other = rng.choice(sorted(set(out) - {key}))
        if out[other].shape == v.shape:
            out[key], out[other] = out[other], v
        else:
            how = "swap (shapes differ: drop)"
            del out[key]
    elif v.ndim == 2:
        out[key] = v.T.contiguous()
    else:
        out[key] = v.flip(0).contiguous()
    return out, f"{how} {key}"


def t_rewrite(rng: random.Random, base: Base) -> Case:
    """Tensors rewritten (shape, dtype, values, names), the checksum left alone or forged to match."""
    tensors, what = _rewritten(rng, st_load(base.tensor_bytes))
    data = st_save(tensors, metadata={"format": "workbench.intervention" if base.kind == "spec" else "x"})
    m = copy.deepcopy(base.manifest)
    forged = rng.random() < 0.6
    if forged:
        m["tensors_sha256"] = hashlib.sha256(data).hexdigest()
    label = f"tensors {what} ({'checksum forged' if forged else 'checksum kept'})"
    return Case({base.manifest_name: _dump(rng, m), base.tensors_name: data}, label)


def f_folder(rng: random.Random, base: Base) -> Case:
    """A member missing, a directory or FIFO in its place, the two swapped, the other kind's tensors."""
    files: dict = {base.manifest_name: _dump(rng, base.manifest), base.tensors_name: base.tensor_bytes}
    how = rng.choice(
        [
            "no_manifest",
            "no_tensors",
            "manifest_dir",
            "tensors_dir",
            "manifest_fifo",
            "tensors_fifo",
            "swapped",
            "other_tensors",
            "other_tensors_forged",
            "empty",
            "folder_missing",
            "folder_is_file",
            "tensors_are_manifest",
        ]
    )
    folder = ""
    if how == "no_manifest":
        files[base.manifest_name] = MISSING
    elif how == "no_tensors":
        files[base.tensors_name] = MISSING
    elif how == "manifest_dir":
        files[base.manifest_name] = DIRECTORY
    elif how == "tensors_dir":
        files[base.tensors_name] = DIRECTORY
    elif how == "manifest_fifo":
        files[base.manifest_name] = FIFO
    elif how == "tensors_fifo":
        files[base.tensors_name] = FIFO
    elif how == "swapped":
        files = {base.manifest_name: base.tensor_bytes, base.tensors_name: files[base.manifest_name]}
    elif how in ("other_tensors", "other_tensors_forged"):
        files[base.tensors_name] = base.other_tensor_bytes
        if how == "other_tensors_forged":
            m = copy.deepcopy(base.manifest)
            m["tensors_sha256"] = hashlib.sha256(base.other_tensor_bytes).hexdigest()
            files[base.manifest_name] = _dump(rng, m)
    elif how == "empty":
        files = {base.manifest_name: MISSING, base.tensors_name: MISSING}
    elif how == "tensors_are_manifest":
        files[base.tensors_name] = files[base.manifest_name]
    else:
        folder = how.split("_", 1)[1]  # "missing" | "is_file"
    return Case(files, f"folder {how}", folder=folder)


#: (mutation, weight)
MUTATIONS = (
    (m_reformat, 2),
    (m_bom, 1),
    (m_legacy, 1),
    (m_set_value, 12),
    (m_token, 4),
    (m_number, 10),
    (m_string, 5),
    (m_drop_key, 6),
    (m_add_key, 4),
    (m_rename_key, 3),
    (m_repeat_key, 2),
    (m_container, 4),
    (m_list, 5),
    (m_swap_values, 5),
    (m_site, 5),
    (m_nest, 2),
    (m_checksum, 3),
    (m_top, 1),
    (b_manifest, 5),
    (b_tensors, 10),
    (t_rewrite, 14),
    (f_folder, 5),
)


def _p(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def mutate(rng: random.Random, base: Base) -> Case:
    fns, weights = zip(*MUTATIONS)
    return rng.choices(fns, weights)[0](rng, base)


def _write(case: Case, folder: Path) -> None:
    if case.folder == "missing":
        return
    if case.folder == "is_file":
        folder.write_bytes(b"{}")
        return
    folder.mkdir()
    for name, content in case.files.items():
        path = folder / name
        if content == MISSING:
            continue
        if content == DIRECTORY:
            path.mkdir()
        elif content == FIFO:
            os.mkfifo(path)
        else:
            path.write_bytes(content)


def _remove(folder: Path) -> None:
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)
    elif folder.exists() or folder.is_symlink():
        folder.unlink()


# --------------------------------------------------------------------------------------------------- oracle


def same(a: Any, b: Any) -> bool:
    """JSON values equal with exact types: a boolean is not a number; an int and a float are equal as JSON numbers
    (doubles) are."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        try:
            return a == b or float(a) == float(b)
        except OverflowError:
            return False
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _identical(a: dict, b: dict) -> bool:
    """Two tensor dicts with the same names, dtypes, shapes and bits."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k].view(-1), b[k].view(-1)) for k in a
    )


def _close(a: dict, b: dict, renormalised: set) -> bool:
    """``_identical`` but for the ablation directions, which Ablate may renormalise (to 1e-6)."""
    return (
        a.keys() == b.keys()
        and _identical({k: a[k] for k in a if k not in renormalised}, {k: b[k] for k in b if k not in renormalised})
        and all(a[k].shape == b[k].shape and torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in renormalised)
    )


def _file(case: Case, name: str) -> "bytes | None":
    content = case.files.get(name)
    return content if isinstance(content, bytes) else None


def _number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and -MAX_SCALE <= x <= MAX_SCALE


def _integrity(case: Case, base: Base) -> "tuple[dict, str | None]":
    """The mutated manifest and tensors as files hold them, and an integrity failure (or None)."""
    manifest = json.loads(_file(case, base.manifest_name).decode("utf-8-sig"))  # type: ignore[union-attr]
    data = _file(case, base.tensors_name) or b""
    declared = manifest.get("tensors_sha256")
    if declared is not None and declared != hashlib.sha256(data).hexdigest():
        return manifest, "accepted tensors that do not hash to the manifest's checksum (unchecked corruption)"
    return manifest, None


def _check_tensor(t: torch.Tensor, shape: tuple, where: str) -> "str | None":
    if t.dtype != torch.float32 or not bool(torch.isfinite(t).all()):
        return f"{where}: tensor {t.dtype} not finite float32"
    if tuple(t.shape) != shape:
        return f"{where}: tensor shape {list(t.shape)}, expected {list(shape)}"
    return None


def oracle_spec(spec: Spec, case: Case, base: Base, model: Any, scratch: Path) -> "str | None":
    """None if the loaded spec is what the folder says, intact and valid; else what is wrong."""
    manifest, problem = _integrity(case, base)
    if problem:
        return problem
    file_tensors = st_load(_file(case, base.tensors_name))  # type: ignore[arg-type]
    _remove(scratch)
    spec.save(scratch)
    again = json.loads((scratch / "intervention.json").read_text())
    saved = st_load((scratch / "tensors.safetensors").read_bytes())
    for m in (manifest, again):
        m.pop("tensors_sha256", None)
    if not same(again, manifest):
        return f"loaded a spec that saves as another manifest: {_diff(manifest, again)}"
    ablated = {f"{i}.direction" for i, iv in enumerate(spec.interventions) if isinstance(iv, Ablate)}
    unit = {k: v / v.norm() if k in ablated and v.dtype == torch.float32 else v for k, v in file_tensors.items()}
    if not (_identical(saved, file_tensors) or _close(saved, unit, ablated)):
        return "loaded tensors differ from the file's"
    fp = spec.fingerprint
    if fp != models.fingerprint(model):
        return "loaded a spec for another model"
    for i, iv in enumerate(spec.interventions):
        where = f"interventions[{i}]"
        if isinstance(iv.site.layer, bool) or not 0 <= iv.site.layer < fp.n_layers:
            return f"{where}: layer {iv.site.layer!r}"
        start = iv.positions.start
        if isinstance(start, bool) or not isinstance(start, int):
            return f"{where}: positions.start {start!r}"
        width = fp.d_model if iv.site.kind in RESIDUAL_KINDS else math.prod(iv.site.shape(model))
        if isinstance(iv, AddDirection):
            if not _number(iv.scale):
                return f"{where}: scale {iv.scale!r}"
            problem = _check_tensor(iv.vector, (width,), where)
        elif isinstance(iv, Ablate):
            problem = _check_tensor(iv.direction, (width,), where)
        else:
            problem = _check_tensor(iv.u_pos, (width, iv.u_pos.shape[1]), where) or _check_tensor(
                iv.u_neg, (width, iv.u_neg.shape[1]), where
            )
        if problem:
            return problem
    return None


def oracle_apply_hf(m: dict, case: Case, base: Base) -> "str | None":
    """None if ``apply_hf.load_spec``'s manifest and tensors are the folder's, intact and valid."""
    manifest, problem = _integrity(case, base)
    if problem:
        return problem
    file_tensors = st_load(_file(case, base.tensors_name))  # type: ignore[arg-type]
    got = {k: v for k, v in m.items()}
    entries = [{k: v for k, v in e.items() if k != "_tensors"} for e in m["interventions"]]
    got["interventions"] = entries
    if not same(got, manifest):
        return f"returned another manifest: {_diff(manifest, got)}"
    fp = m["model"]
    for i, e in enumerate(m["interventions"]):
        where = f"interventions[{i}]"
        layer = e["site"]["layer"]
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < fp["n_layers"]:
            return f"{where}: layer {layer!r}"
        start = e["positions"]["start"]
        if isinstance(start, bool) or not isinstance(start, int):
            return f"{where}: positions.start {start!r}"
        if e["kind"] == "add" and not _number(e["scale"]):
            return f"{where}: scale {e['scale']!r}"
        for name, key in e["tensors"].items():
            t = e["_tensors"][name]
            if key not in file_tensors or not torch.equal(t, file_tensors[key]) or t.dtype != torch.float32:
                return f"{where}: tensor {name} is not the file's {key!r}"
            if not bool(torch.isfinite(t).all()):
                return f"{where}: tensor {name} not finite"
            if e["site"]["kind"] in RESIDUAL_KINDS and t.shape[0] != fp["d_model"]:
                return f"{where}: tensor {name} shape {list(t.shape)}"
            if t.ndim != (2 if e["kind"] == "spectral" else 1):
                return f"{where}: tensor {name} shape {list(t.shape)}"
    return None


def oracle_directions(ds: DirectionSet, case: Case, base: Base, model: Any, scratch: Path) -> "str | None":
    """None if the loaded set is what the folder says, intact and valid; else what is wrong."""
    manifest, problem = _integrity(case, base)
    if problem:
        return problem
    file_tensors = st_load(_file(case, base.tensors_name))  # type: ignore[arg-type]
    _remove(scratch)
    ds.save(scratch)
    again = json.loads((scratch / "directions.json").read_text())
    saved = st_load((scratch / "directions.safetensors").read_bytes())
    for m in (manifest, again):
        m.pop("tensors_sha256", None)
        if isinstance(m.get("provenance"), dict):
            m["provenance"].pop("workbench_version", None)  # not kept by a loaded set
    if not same(again, manifest):
        return f"loaded a set that saves as another manifest: {_diff(manifest, again)}"
    if not _identical(saved, file_tensors):
        return "loaded tensors differ from the file's"
    fp = ds.fingerprint
    if fp != models.fingerprint(model):
        return "loaded a set for another model"
    for i, d in enumerate(ds.directions):
        if isinstance(d.site.layer, bool) or not 0 <= d.site.layer < fp.n_layers:
            return f"directions[{i}]: layer {d.site.layer!r}"
        width = fp.d_model if d.site.kind in RESIDUAL_KINDS else math.prod(d.site.shape(model))
        problem = _check_tensor(d.vector, (width,), f"directions[{i}]")
        if problem:
            return problem
    return None


def _diff(a: Any, b: Any, path: tuple = ()) -> str:
    """The first path where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{_p((*path, k))} only in {'the file' if k in a else 'the loaded value'}"
            if not same(a[k], b[k]):
                return _diff(a[k], b[k], (*path, k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if not same(x, y):
                return _diff(x, y, (*path, i))
    return f"{_p(path) or '(top level)'}: file {a!r:.60}, loaded {b!r:.60}"


def _changed(case: Case, base: Base) -> bool:
    """Whether the folder says something other than the base (an edit that was accepted)."""
    data = _file(case, base.manifest_name)
    try:
        manifest = json.loads(data.decode("utf-8-sig")) if data is not None else None
    except ValueError:
        return True
    return not same(manifest, base.manifest) or _file(case, base.tensors_name) != base.tensor_bytes


# ------------------------------------------------------------------------------------------------------ runs


def _clip(text: str, n: int = 240) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _run(kind: str, n: int, seed: int, workdir: Path) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, spec_base, dirs_base = _bases(workdir)
    base = spec_base if kind == "spec" else dirs_base
    loaders = ("Spec.load", "apply_hf.load_spec") if kind == "spec" else ("DirectionSet.load",)
    counts = dict.fromkeys(KINDS, 0)
    by_loader = {name: dict.fromkeys(KINDS, 0) for name in loaders}
    examples: dict[str, list[str]] = {k: [] for k in BUGS}
    edits = 0
    folder, scratch = workdir / f"{kind}-case", workdir / f"{kind}-resaved"
    for k in range(n):
        rng = random.Random(f"{kind}:{seed}:{k}")
        case = mutate(rng, base)
        _remove(folder)
        _write(case, folder)
        for name in loaders:
            outcome, detail = _load(name, folder, case, base, model, scratch)
            counts[outcome] += 1
            by_loader[name][outcome] += 1
            if outcome == "accepted_valid" and _changed(case, base):
                edits += 1
            if outcome in BUGS and len(examples[outcome]) < N_EXAMPLES:
                examples[outcome].append(f"{k:06d} {name} [{case.label}]: {_clip(detail)}")
    _remove(folder)
    _remove(scratch)
    return {
        **counts,
        "accepted_edit": edits,
        "by_loader": by_loader,
        "examples": examples,
        "n": n,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _load(name: str, folder: Path, case: Case, base: Base, model: Any, scratch: Path) -> "tuple[str, str]":
    try:
        if name == "Spec.load":
            got: Any = Spec.load(folder, model)
        elif name == "apply_hf.load_spec":
            got = apply_hf.load_spec(folder)
        else:
            got = DirectionSet.load(folder, model)
    except WorkbenchError as e:
        return ("refused_valid" if case.neutral else "refused"), f"refused: {e}"
    except Exception as e:  # every other exception is what the harness counts
        return "raw_exception", f"{type(e).__name__}: {e}"
    try:
        if name == "Spec.load":
            problem = oracle_spec(got, case, base, model, scratch)
        elif name == "apply_hf.load_spec":
            problem = oracle_apply_hf(got, case, base)
        else:
            problem = oracle_directions(got, case, base, model, scratch)
    except Exception as e:  # the loaded value broke the oracle: it is not what the folder says
        problem = f"the loaded value could not be checked ({type(e).__name__}: {e})"
    return ("silent_acceptance", problem) if problem else ("accepted_valid", "")


def run_spec(n: int, seed: int, workdir: "str | Path") -> dict:
    """Load ``n`` mutated spec folders with ``Spec.load`` (against the model) and ``apply_hf.load_spec``; the
    count of each outcome over both loaders (``KINDS``), per loader (``by_loader``), the accepted edits, and up to
    ``N_EXAMPLES`` examples of each bug kind."""
    return _run("spec", n, seed, Path(workdir))


def run_directions(n: int, seed: int, workdir: "str | Path") -> dict:
    """Load ``n`` mutated directions folders with ``DirectionSet.load`` (against the model); counts as
    ``run_spec``."""
    return _run("directions", n, seed, Path(workdir))


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for fn in (run_spec, run_directions):
            print(fn.__name__, json.dumps(fn(args.n, args.seed, Path(tmp)), indent=1))
