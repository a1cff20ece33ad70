"""The workbench's own portable intervention format: a versioned JSON manifest + one safetensors file.

A spec folder holds ``intervention.json`` and ``tensors.safetensors``::

    {"format": "workbench.intervention", "schema_version": 1,
     "basis": "unprocessed",                      # Hugging Face hidden-state basis: no folding, no centring
     "model": {architecture, d_model, n_layers, d_vocab, vocab_sha256, weights_sha256},
     "interventions": [{"kind": "add", "site": {"layer": 3, "kind": "resid_post", "hook": "blocks.3.hook_resid_post"},
                        "scale": 4.0, "positions": {"kind": "all", "start": 0},
                        "tensors": {"vector": "0.vector"}}],
     "provenance": {"method": "mean", "data_hash": ..., "n_pairs": 200, "workbench_version": "0.1.0", "source": ...,
                    "tokenization": {"bos": "auto", "chat_template": false}},
     "tensors_sha256": "<sha256 of tensors.safetensors>"}

Layers are 0-based blocks; ``resid_post`` of block N is Hugging Face ``hidden_states[N+1]`` (but for the last
block, which Hugging Face returns after the final norm) and llama.cpp's
``direction.N``. The manifest's schema is ``workbench.manifests.SpecManifest``: every field is typed exactly (no
boolean for a number, no float for an int), unknown fields are refused, scales are finite within
``schema.MAX_SCALE``, layers lie within the fingerprint's ``n_layers``, and each tensor is float32 of exactly its
shape ([d_model] for a vector at a residual-width site), finite, and named as the writer names it (an ablation
direction a unit vector, spectral factors orthonormal columns, as the writer stores them). The tensor file
must hash to ``tensors_sha256`` (a manifest without the field predates checksums: it is read unverified, and
saving it again records one). ``Spec.load`` also checks the spec against a model when one is given; every failure
is one error naming the file, the field and the fix. ``workbench.export.apply_hf`` reads the same folder through
the same checks, without TransformerLens.
"""

__all__ = ["SCHEMA_VERSION", "FORMAT", "MANIFEST", "TENSORS", "Provenance", "Spec", "spec_from_directions"]

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import workbench
from workbench.errors import WorkbenchError
from workbench.interventions import Ablate, AddDirection, SpectralEdit, intervention_from_dict
from workbench.io import atomic_dir, sha256_file, write_json, write_tensors
from workbench.manifests import (
    SPEC_FORMAT,
    SPEC_MANIFEST,
    SPEC_SCHEMA_VERSION,
    SPEC_TENSORS,
    ProvenanceModel,
    read_spec_folder,
)
from workbench.models import Fingerprint, HookedModel, fingerprint
from workbench.positions import Positions
from workbench.schema import MAX_SCALE, validate

SCHEMA_VERSION = SPEC_SCHEMA_VERSION
FORMAT = SPEC_FORMAT
MANIFEST = SPEC_MANIFEST
TENSORS = SPEC_TENSORS


@dataclass(frozen=True)
class Provenance:
    """Where an intervention came from: enough to recompute it."""

    method: str = "unknown"  # mean | pca | probe | imported-gguf | ...
    data_hash: str = ""
    n_pairs: int = 0
    workbench_version: str = workbench.__version__
    source: str = ""  # free text: a directions folder, an imported file and its sha256, ...
    tokenization: dict = field(default_factory=dict)  # models.Tokenization.to_dict() the vector was computed under

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "provenance") -> "Provenance":
        """The provenance ``to_dict()`` wrote, checked against ``manifests.ProvenanceModel``."""
        return cls.from_model(validate(d, ProvenanceModel, source=source, fix="re-export it with the workbench."))

    @classmethod
    def from_model(cls, m: ProvenanceModel) -> "Provenance":
        """The provenance of a validated manifest."""
        return cls(
            m.method,
            m.data_hash,
            m.n_pairs,
            m.workbench_version,
            m.source,
            m.tokenization.model_dump(exclude_none=True),
        )


@dataclass(frozen=True, eq=False)
class Spec:
    """Interventions for one model, ready to save, deploy (gguf, bake, apply_hf) or apply with ``hooks.applied``."""

    interventions: tuple  # tuple[AddDirection | Ablate | SpectralEdit, ...]
    fingerprint: Fingerprint
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        ivs = tuple(self.interventions)
        if not ivs:
            raise WorkbenchError("a spec needs at least one intervention; pass AddDirection or Ablate values.")
        for i, iv in enumerate(ivs):
            if not isinstance(iv, (AddDirection, Ablate, SpectralEdit)):
                raise WorkbenchError(
                    f"interventions[{i}] is a {type(iv).__name__}; a spec holds AddDirection, Ablate or "
                    f"SpectralEdit values."
                )
            if isinstance(iv, AddDirection) and isinstance(iv.scale, tuple):
                raise WorkbenchError(
                    f"interventions[{i}] has per-row scales {iv.scale}; a deployed edit has one strength. "
                    f"Pick one with dataclasses.replace(iv, scale=s)."
                )
            width = self.fingerprint.d_model
            if iv.site.kind in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
                n = (
                    iv.u_pos.shape[0]
                    if isinstance(iv, SpectralEdit)
                    else (iv.vector if isinstance(iv, AddDirection) else iv.direction).numel()
                )
                if n != width:
                    raise WorkbenchError(
                        f"interventions[{i}] at {iv.site.name} has {n} entries but the model's d_model is {width}; "
                        f"use a vector computed on this model."
                    )
            if iv.site.layer >= self.fingerprint.n_layers:
                raise WorkbenchError(
                    f"interventions[{i}] is at layer {iv.site.layer} but the model has {self.fingerprint.n_layers} "
                    f"blocks (0..{self.fingerprint.n_layers - 1})."
                )
        object.__setattr__(self, "interventions", ivs)

    def check(self, model: HookedModel) -> None:
        """Raise unless this spec was made for ``model`` and every site exists there with the right width."""
        self.fingerprint.check(fingerprint(model), what="intervention spec")
        for iv in self.interventions:
            iv.to_hooks(model)  # validates site and width; attaches nothing

    def save(self, out: "str | Path", *, overwrite: bool = True) -> Path:
        """Write ``intervention.json`` + ``tensors.safetensors`` into the folder ``out`` (atomically)."""
        entries, tensors = [], {}
        for i, iv in enumerate(self.interventions):
            entry = iv.to_dict()
            entry["tensors"] = {}
            for name, t in iv.tensors().items():
                key = f"{i}.{name}"
                tensors[key] = t.float()
                entry["tensors"][name] = key
            entries.append(entry)
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "basis": "unprocessed",
            "model": self.fingerprint.to_dict(),
            "interventions": entries,
            "provenance": self.provenance.to_dict(),
        }
        with atomic_dir(out, overwrite=overwrite) as tmp:
            write_tensors(tmp / TENSORS, tensors, {"format": FORMAT})
            manifest["tensors_sha256"] = sha256_file(tmp / TENSORS)
            write_json(tmp / MANIFEST, manifest)
        return Path(out)

    @classmethod
    def load(cls, folder: "str | Path", model: "HookedModel | None" = None) -> "Spec":
        """Read and validate a spec folder; with ``model``, also check it was made for that model."""
        m, raw, tensors = read_spec_folder(folder)
        where = f"{folder}/{MANIFEST}"
        ivs = []
        for i, (entry, own) in enumerate(zip(raw["interventions"], tensors)):
            meta = {k: v for k, v in entry.items() if k != "tensors"}
            try:
                ivs.append(intervention_from_dict(meta, own))
            except WorkbenchError as e:
                raise WorkbenchError(f"{where}: interventions[{i}]: {e}") from None
        try:
            spec = cls(tuple(ivs), Fingerprint(**m.model.model_dump()), Provenance.from_model(m.provenance))
        except WorkbenchError as e:
            raise WorkbenchError(f"{where}: {e}") from None
        if model is not None:
            spec.check(model)
        return spec


def spec_from_directions(
    directions: Any,
    layers: "list[int] | int",
    scale: float = 1.0,
    *,
    kind: str = "resid_post",
    positions: "Positions | None" = None,
    source: str = "",
) -> Spec:
    """A spec adding ``scale`` x the direction at each of ``layers`` from a ``DirectionSet``."""
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise WorkbenchError("layers is empty; pass the 0-based blocks to export.")
    twice = sorted({x for x in layers if layers.count(x) > 1})
    if twice:
        raise WorkbenchError(
            f"layer {twice[0]} is named twice in {layers}; name each block once (twice would add the direction twice)."
        )
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not -MAX_SCALE <= scale <= MAX_SCALE:
        raise WorkbenchError(f"scale must be a finite number with |scale| <= {MAX_SCALE:g}, got {scale!r}.")
    pos = positions or Positions()
    ivs = tuple(
        AddDirection(directions.at(layer, kind).site, directions.at(layer, kind).vector, float(scale), pos)
        for layer in layers
    )
    prov = Provenance(
        directions.method,
        directions.data_hash,
        directions.n_pairs,
        source=source,
        tokenization=dict(getattr(directions, "tokenization", {}) or {}),
    )
    return Spec(ivs, directions.fingerprint, prov)
