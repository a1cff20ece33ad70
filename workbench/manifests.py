"""Declared schemas of the tensor folders the workbench writes, and the checks shared by their loaders.

Two folders carry tensors: a spec folder (``intervention.json`` + ``tensors.safetensors``, read by
``workbench.export.spec`` and by ``workbench.export.apply_hf``, which must not import TransformerLens) and a
directions folder (``directions.json`` + ``directions.safetensors``, read by ``workbench.directions``). This module
holds the pieces both manifests share (model fingerprint, site, positions, tokenization), the whole spec manifest,
and the tensor checks (names, dtype, exact shape, finiteness, checksum; for a spec also what the writer guarantees:
unit ablation directions, orthonormal spectral factors). It imports no TransformerLens.

Integrity: every manifest records ``tensors_sha256``, the sha256 of its tensor file's bytes; a loader refuses a
tensor file whose bytes do not hash to it. A manifest without the field was written by a workbench that predates
checksums; it is read as schema version 1 always was (every other check still applies), and saving the loaded
value again records the checksum. The field present but null, or not a lowercase hex sha256, is refused. The
schema version stays 1: files written before checksums stay readable, and earlier readers ignore the new field.
"""

__all__ = [
    "SPEC_FORMAT",
    "SPEC_MANIFEST",
    "SPEC_TENSORS",
    "SPEC_SCHEMA_VERSION",
    "RESIDUAL_KINDS",
    "SPECTRAL_SITES",
    "SPECTRAL_FEATURES",
    "SPECTRAL_COMBINES",
    "MAX_POSITION",
    "ORTHONORMAL_TOLERANCE",
    "Checksum",
    "UNIT_TOLERANCE",
    "FingerprintModel",
    "SiteModel",
    "PositionsModel",
    "TokenizationModel",
    "ProvenanceModel",
    "AddMeta",
    "AblateMeta",
    "SpectralMeta",
    "META_MODELS",
    "TENSOR_NAMES",
    "SpecManifest",
    "read_folder",
    "check_checksum",
    "check_tensor",
    "read_spec_folder",
]

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import torch
from pydantic import BeforeValidator, Field, WrapValidator, model_validator
from pydantic_core import PydanticCustomError

from workbench.errors import WorkbenchError
from workbench.io import read_tensor_file
from workbench.schema import MAX_SCALE, Layer, Scale, Sha256, Strict, read_json, validate
from workbench.sites import HookSite, SiteKind

SPEC_FORMAT = "workbench.intervention"
SPEC_MANIFEST = "intervention.json"
SPEC_TENSORS = "tensors.safetensors"
SPEC_SCHEMA_VERSION = 1
#: site kinds whose activation is [batch pos d_model]: a vector there has exactly d_model entries
RESIDUAL_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
SPECTRAL_SITES = ("mlp_out", "attn_out", "resid_pre", "resid_post")
SPECTRAL_FEATURES = ("identity", "squared_exponential", "tanh", "elu")  # workbench.spectral.FEATURES
SPECTRAL_COMBINES = ("norm", "average", "reference")  # workbench.spectral.COMBINES
#: how far from 1 the norm of a stored ablation direction may be (the writer stores v / |v| in float32)
UNIT_TOLERANCE = 1e-4
#: how far U^T U of a stored spectral factor may be from the identity (the writer stores orthonormal columns)
ORTHONORMAL_TOLERANCE = 1e-3
#: the largest |Positions.start|: far past any context length, well inside int64 token arithmetic
MAX_POSITION = 2**31 - 1
_REEXPORT = "re-export it with the workbench."


def _strength(v: Any) -> Any:
    """A steering strength as JSON carries it: a number (not a boolean) within +-MAX_SCALE."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not -MAX_SCALE <= v <= MAX_SCALE:
        raise ValueError(f"must be a finite number with |scale| <= {MAX_SCALE:g}")
    return v


def _strengths(v: Any) -> Any:
    """One strength, or a non-empty list of them (one per batch row)."""
    if isinstance(v, list):
        if not v:
            raise ValueError("must be a number or a non-empty list of numbers")
        return [_strength(s) for s in v]
    return _strength(v)


_Name = Annotated[str, Field(min_length=1, max_length=1000)]
_Text = Annotated[str, Field(max_length=100_000)]


def _present_is_a_digest(v: Any) -> Any:
    if v is None:
        raise ValueError("must be the sha256 of the tensor file (only files written before checksums lack it)")
    return v


#: ``tensors_sha256``: absent (None) in a manifest written before checksums; when present, a sha256 (never null)
Checksum = Annotated[Sha256 | None, BeforeValidator(_present_is_a_digest)]


class FingerprintModel(Strict):
    """``models.Fingerprint`` as a manifest records it."""

    architecture: _Name
    d_model: int = Field(ge=1, le=1_000_000)
    n_layers: int = Field(ge=1, le=100_000)
    d_vocab: int = Field(ge=1, le=100_000_000)
    vocab_sha256: "Sha256 | Literal['']"  # empty for a model without a tokenizer
    weights_sha256: Sha256


class SiteModel(Strict):
    """``HookSite.to_dict()``: a 0-based block, a site kind and the hook name they make."""

    layer: Layer
    kind: SiteKind
    hook: str

    @model_validator(mode="after")
    def _hook_agrees(self) -> "SiteModel":
        name = HookSite(self.layer, self.kind).name
        if self.hook != name:
            raise ValueError(f"hook {self.hook!r} disagrees with layer {self.layer} and kind {self.kind!r} ({name!r})")
        return self


class PositionsModel(Strict):
    """``Positions.to_dict()``: ``start`` is an int (not a boolean, not 2.5) and only non-zero for ``from``."""

    kind: Literal["all", "from", "generated"]
    start: int = Field(ge=-MAX_POSITION, le=MAX_POSITION)

    @model_validator(mode="after")
    def _start_only_for_from(self) -> "PositionsModel":
        if self.kind != "from" and self.start != 0:
            raise ValueError(f"start only applies to kind 'from' (kind is {self.kind!r}, start {self.start})")
        return self


class TokenizationModel(Strict):
    """``models.Tokenization.to_dict()``, or ``{}`` where an artifact was built without one: both keys or none."""

    bos: "Literal['auto', 'always', 'never'] | None" = None
    chat_template: "bool | None" = None

    @model_validator(mode="after")
    def _both_or_none(self) -> "TokenizationModel":
        if (self.bos is None) != (self.chat_template is None):
            raise ValueError("needs both 'bos' and 'chat_template', or neither")
        return self


class ProvenanceModel(Strict):
    """``export.spec.Provenance.to_dict()``."""

    method: _Text
    data_hash: _Text
    n_pairs: int = Field(ge=0, le=10**12)
    workbench_version: _Text
    source: _Text
    tokenization: TokenizationModel


class AddMeta(Strict):
    """``AddDirection.to_dict()``: ``scale`` is one strength or one per batch row."""

    kind: Literal["add"]
    site: SiteModel
    scale: Annotated["Scale | list[Scale]", BeforeValidator(_strengths)]  # a string, bool, NaN or 1e308: one error
    positions: PositionsModel


class AblateMeta(Strict):
    """``Ablate.to_dict()``."""

    kind: Literal["ablate"]
    site: SiteModel
    positions: PositionsModel


class SpectralMeta(Strict):
    """``SpectralEdit.to_dict()``."""

    kind: Literal["spectral"]
    site: SiteModel
    combine: Literal["norm", "average", "reference"]
    feature: Literal["identity", "squared_exponential", "tanh", "elu"]
    parts: Literal["both", "pos", "neg"]
    reverse: bool
    positions: PositionsModel

    @model_validator(mode="after")
    def _spectral_site(self) -> "SpectralMeta":
        if self.site.kind not in SPECTRAL_SITES:
            raise ValueError(f"a spectral edit works at {', '.join(SPECTRAL_SITES)}, not {self.site.kind!r}")
        return self


#: the schema of each intervention kind's ``to_dict()``
META_MODELS: "dict[str, type[Strict]]" = {"add": AddMeta, "ablate": AblateMeta, "spectral": SpectralMeta}
#: the tensors each kind stores, by name
TENSOR_NAMES = {"add": ("vector",), "ablate": ("direction",), "spectral": ("u_pos", "u_neg")}


class _AddTensors(Strict):
    vector: _Name


class _AblateTensors(Strict):
    direction: _Name


class _SpectralTensors(Strict):
    u_pos: _Name
    u_neg: _Name


class AddEntry(AddMeta):
    tensors: _AddTensors


class AblateEntry(AblateMeta):
    tensors: _AblateTensors


class SpectralEntry(SpectralMeta):
    tensors: _SpectralTensors


_ENTRY_MODELS: "dict[str, type[AddEntry] | type[AblateEntry] | type[SpectralEntry]]" = {
    "add": AddEntry,
    "ablate": AblateEntry,
    "spectral": SpectralEntry,
}


def _entry_of_its_kind(v: Any, handler: Any) -> Any:
    """An entry validated by the model of its ``kind`` (error paths stay ``interventions[0].scale``)."""
    kind = v.get("kind") if isinstance(v, dict) else None
    if not isinstance(kind, str) or kind not in _ENTRY_MODELS:
        raise PydanticCustomError(
            "intervention_kind",
            "unknown intervention kind: an entry is an object whose kind is 'add', 'ablate' or 'spectral'",
        )
    return _ENTRY_MODELS[kind].model_validate(v, strict=True)


_Entry = Annotated["AddEntry | AblateEntry | SpectralEntry", WrapValidator(_entry_of_its_kind)]


class SpecManifest(Strict):
    """``intervention.json``."""

    format: Literal["workbench.intervention"]
    schema_version: int = Field(ge=SPEC_SCHEMA_VERSION, le=SPEC_SCHEMA_VERSION)  # an int: True is not 1
    basis: Literal["unprocessed"]  # Hugging Face hidden-state basis: no LayerNorm folding, no centring
    model: FingerprintModel
    interventions: list[_Entry] = Field(min_length=1, max_length=100_000)
    provenance: ProvenanceModel
    tensors_sha256: Checksum = None

    @model_validator(mode="after")
    def _fits_the_model(self) -> "SpecManifest":
        n = self.model.n_layers
        for i, e in enumerate(self.interventions):
            if e.site.layer >= n:
                raise ValueError(
                    f"interventions[{i}].site.layer is {e.site.layer} but the model has {n} blocks (0..{n - 1})"
                )
            if isinstance(e, AddEntry) and isinstance(e.scale, list):
                raise ValueError(f"interventions[{i}].scale is a list; a deployed edit has one strength")
        return self


M = TypeVar("M", bound=Strict)


def read_folder(
    folder: "str | Path",
    manifest: str,
    tensors: str,
    schema: "type[M]",
    *,
    what: str,
    tag: "tuple[str, str, str]",
    version: int,
    fix: str,
    redo: str,
) -> "tuple[M, dict, dict[str, torch.Tensor], str, str]":
    """A ``what`` folder's manifest, checked: its ``tag`` (key, value, what a manifest without it is not), its
    ``schema_version`` and ``schema``; and
    its tensor file read once with its sha256. Returns ``(manifest, the parsed JSON, tensors, sha256, where)``;
    a missing folder, a file in its place, a manifest of another kind or version, or one ``schema`` refuses is one
    WorkbenchError naming it and ``fix`` (``redo``: how to write the folder again)."""
    folder = Path(folder)
    if folder.is_file():
        raise WorkbenchError(f"{str(folder)!r} is a file, not a {what} folder; {fix}")
    if folder.exists() and not folder.is_dir():
        raise WorkbenchError(f"{str(folder)!r} is a special file (a FIFO or device?), not a {what} folder; {fix}")
    if not folder.is_dir():
        raise WorkbenchError(f"{str(folder)!r} is not a {what} folder (it does not exist); {fix}")
    raw = read_json(folder / manifest, fix=fix)
    where = f"{folder}/{manifest}"
    key, value, noun = tag
    if not isinstance(raw, dict) or raw.get(key) != value:
        got = raw.get(key) if isinstance(raw, dict) else type(raw).__name__
        raise WorkbenchError(f"{where} is not a {noun} ({key}={got!r}); {fix}")
    got_version = raw.get("schema_version")
    if type(got_version) is not int or got_version != version:
        raise WorkbenchError(
            f"{where}: schema_version {got_version!r} is not supported (this workbench reads {version}); "
            f"{redo} with this version."
        )
    m = validate(raw, schema, source=where, fix=f"{redo} with the workbench.")
    data, digest = read_tensor_file(folder / tensors)
    return m, raw, data, digest, where


def check_tensor(
    tensors: "dict[str, torch.Tensor]",
    key: str,
    shape: "tuple[int | None, ...]",
    *,
    where: str,
    what: str,
    note: str = "",
) -> torch.Tensor:
    """``tensors[key]``, checked: present, float32, of exactly ``shape`` (None: any size; a vector is never
    empty), finite. ``note`` follows the expected shape in the error (e.g. where that width comes from)."""
    t = tensors.get(key)
    if t is None:
        raise WorkbenchError(f"{where}: tensor {key!r} of {what} is missing from the tensor file; {_REEXPORT}")
    want = "[" + ", ".join("k" if s is None else str(s) for s in shape) + "]"
    if t.dtype != torch.float32:
        raise WorkbenchError(f"{where}: tensor {key!r} of {what} is {t.dtype}, expected float32 {want}; {_REEXPORT}")
    if t.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        raise WorkbenchError(
            f"{where}: tensor {key!r} of {what} has shape {list(t.shape)}, expected {want}{note}; use a tensor "
            f"computed on this model, {_REEXPORT}"
        )
    if t.numel() == 0 and len(shape) == 1:
        raise WorkbenchError(f"{where}: tensor {key!r} of {what} is empty; {_REEXPORT}")
    if not torch.isfinite(t).all():
        raise WorkbenchError(f"{where}: tensor {key!r} of {what} has non-finite values; {_REEXPORT}")
    return t


def check_checksum(declared: "str | None", actual: str, *, where: str) -> None:
    """Refuse tensor bytes that do not hash to the manifest's ``tensors_sha256`` (None: a file written before
    checksums, read unverified)."""
    if declared is not None and declared != actual:
        raise WorkbenchError(
            f"{where}: the tensors do not match the manifest's checksum: the folder was modified or corrupted; "
            f"re-export it (tensors_sha256 {declared[:12]}..., the file hashes to {actual[:12]}...)."
        )


def check_only(tensors: "dict[str, torch.Tensor]", used: "set[str]", *, where: str) -> None:
    """Refuse tensors the manifest does not name (a writer stores nothing else)."""
    extra = sorted(set(tensors) - used)
    if extra:
        raise WorkbenchError(f"{where}: the tensor file holds tensors no entry names ({extra[:3]}); {_REEXPORT}")


def read_spec_folder(folder: "str | Path") -> "tuple[SpecManifest, dict, list[dict[str, torch.Tensor]]]":
    """A spec folder read and checked without a model: the validated manifest, the manifest as parsed JSON, and
    each intervention's tensors by name. Every failure is one WorkbenchError naming the file, the field and the
    fix."""
    m, raw, tensors, digest, where = read_folder(
        folder, SPEC_MANIFEST, SPEC_TENSORS, SpecManifest, what="spec",
        tag=("format", SPEC_FORMAT, "workbench intervention spec"), version=SPEC_SCHEMA_VERSION,
        fix="pass the --out of `workbench export --format spec`, or re-export it.", redo="re-export the spec",
    )  # fmt: skip
    d = m.model.d_model
    out: list[dict[str, torch.Tensor]] = []
    for i, e in enumerate(m.interventions):
        what = f"interventions[{i}] ({e.kind} at {e.site.kind} of block {e.site.layer})"
        width = d if e.site.kind in RESIDUAL_KINDS else None
        own = {}
        for name, key in e.tensors.model_dump().items():
            shape = (d, None) if e.kind == "spectral" else (width,)
            note = f" (the model's d_model is {d})" if shape[0] is not None else ""
            own[name] = check_tensor(tensors, key, shape, where=where, what=what, note=note)
            if key != f"{i}.{name}":
                raise WorkbenchError(
                    f"{where}: interventions[{i}].tensors.{name} is {key!r} but the writer names it "
                    f"{f'{i}.{name}'!r}: entries or tensor names were edited; re-export the spec."
                )
        norm = float(own["direction"].norm()) if e.kind == "ablate" else 1.0
        if not abs(norm - 1.0) <= UNIT_TOLERANCE:
            raise WorkbenchError(
                f"{where}: {what}: the direction has norm {norm:.6g}, but the writer stores a unit vector; {_REEXPORT}"
            )
        if e.kind == "spectral":
            if own["u_pos"].shape[1] + own["u_neg"].shape[1] == 0:
                raise WorkbenchError(f"{where}: {what}: both factors have no columns; {_REEXPORT}")
            for name in ("u_pos", "u_neg"):
                u = own[name].double()
                off = float((u.T @ u - torch.eye(u.shape[1], dtype=u.dtype)).abs().max()) if u.shape[1] else 0.0
                if not off <= ORTHONORMAL_TOLERANCE:
                    raise WorkbenchError(
                        f"{where}: {what}: the columns of {name} are not orthonormal (|U^T U - I| up to {off:.3g}), "
                        f"but the writer stores orthonormal factors; {_REEXPORT}"
                    )
        out.append(own)
    check_only(tensors, {k for e in m.interventions for k in e.tensors.model_dump().values()}, where=where)
    check_checksum(m.tensors_sha256, digest, where=where)
    return m, raw, out
