"""The workbench's own portable intervention format: a versioned JSON manifest + one safetensors file.

A spec folder holds ``intervention.json`` and ``tensors.safetensors``::

    {"format": "workbench.intervention", "schema_version": 1,
     "basis": "unprocessed",                      # Hugging Face hidden-state basis: no folding, no centring
     "model": {architecture, d_model, n_layers, d_vocab, vocab_sha256, weights_sha256},
     "interventions": [{"kind": "add", "site": {"layer": 3, "kind": "resid_post", "hook": "blocks.3.hook_resid_post"},
                        "scale": 4.0, "positions": {"kind": "all", "start": 0},
                        "tensors": {"vector": "0.vector"}}],
     "provenance": {"method": "mean", "data_hash": ..., "n_pairs": 200, "workbench_version": "0.1.0", "source": ...}}

Layers are 0-based blocks; ``resid_post`` of block N is Hugging Face ``hidden_states[N+1]`` (but for the last
block, which Hugging Face returns after the final norm) and llama.cpp's
``direction.N``. ``Spec.load`` checks every field, and against a model when one is given, and rejects with one
error that names the fix: unknown format or schema version, wrong model or width, a missing, corrupt or
non-finite tensor. ``workbench.export.apply_hf`` reads the same folder without TransformerLens.
"""

__all__ = ["SCHEMA_VERSION", "FORMAT", "MANIFEST", "TENSORS", "Provenance", "Spec", "spec_from_directions"]

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import workbench
from workbench.errors import WorkbenchError
from workbench.interventions import Ablate, AddDirection, SpectralEdit, intervention_from_dict
from workbench.io import atomic_dir, read_json, read_tensors, write_json, write_tensors
from workbench.models import Fingerprint, HookedModel, fingerprint
from workbench.positions import Positions

SCHEMA_VERSION = 1
FORMAT = "workbench.intervention"
MANIFEST = "intervention.json"
TENSORS = "tensors.safetensors"


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
    def from_dict(cls, d: dict) -> "Provenance":
        keys = ("method", "data_hash", "n_pairs", "workbench_version", "source", "tokenization")
        known = {k: d[k] for k in keys if k in d}
        return cls(**known)


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
            write_json(tmp / MANIFEST, manifest)
        return Path(out)

    @classmethod
    def load(cls, folder: "str | Path", model: "HookedModel | None" = None) -> "Spec":
        """Read and validate a spec folder; with ``model``, also check it was made for that model."""
        folder = Path(folder)
        if not folder.is_dir():
            raise WorkbenchError(
                f"{str(folder)!r} is not a spec folder; pass the --out of `workbench export --format spec`."
            )
        m = read_json(folder / MANIFEST)
        where = f"{folder}/{MANIFEST}"
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            got = m.get("format") if isinstance(m, dict) else type(m).__name__
            raise WorkbenchError(f"{where} is not a workbench intervention spec (format={got!r}).")
        if m.get("schema_version") != SCHEMA_VERSION:
            raise WorkbenchError(
                f"{where}: schema_version {m.get('schema_version')!r} is not supported (this workbench reads "
                f"{SCHEMA_VERSION}); re-export the spec with this version."
            )
        if m.get("basis") != "unprocessed":
            raise WorkbenchError(
                f"{where}: basis {m.get('basis')!r} is not supported; the workbench exports in the unprocessed "
                f"(Hugging Face hidden-state) basis only."
            )
        if not isinstance(m.get("interventions"), list) or not m["interventions"]:
            raise WorkbenchError(f"{where} lists no interventions; re-export it.")
        tensors = read_tensors(folder / TENSORS)
        fp = Fingerprint.from_dict(m.get("model") or {})
        ivs = []
        for i, entry in enumerate(m["interventions"]):
            own = {}
            for name, key in (entry.get("tensors") or {}).items():
                if key not in tensors:
                    raise WorkbenchError(f"{where}: tensor {key!r} of interventions[{i}] is missing from {TENSORS}.")
                t = tensors[key]
                if not t.is_floating_point() or not torch.isfinite(t).all():
                    raise WorkbenchError(f"{where}: tensor {key!r} has non-finite values; re-export the spec.")
                own[name] = t
            scale = entry.get("scale", 1.0)
            if entry.get("kind") == "add" and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
                raise WorkbenchError(f"{where}: interventions[{i}].scale must be a finite number, got {scale!r}.")
            try:
                ivs.append(intervention_from_dict(entry, own))
            except WorkbenchError as e:
                raise WorkbenchError(f"{where}: interventions[{i}]: {e}") from None
        spec = cls(tuple(ivs), fp, Provenance.from_dict(m.get("provenance") or {}))
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
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise WorkbenchError(f"scale must be a finite number, got {scale!r}.")
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
