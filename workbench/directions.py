"""Contrastive directions per site: mean difference (CAA), PCA of differences, logistic probe.

Every method returns a vector in the model's activation basis whose length is the mean pair difference along
it, so ``scale=1`` means "one average positive-minus-negative step" whatever the method (for ``mean`` this is
exactly CAA's unnormalised vector). Quality is measured on held-out pairs: the accuracy of a linear probe (ridge
classifier, penalty by leave-one-out on the training pairs), AUROC and effect size of the projections on a
direction fitted without them.

A saved set is a folder of ``directions.json`` (schema ``DirectionsManifest``: every field typed exactly, unknown
fields refused, sites within the fingerprint's ``n_layers``, at least one direction, no site twice, each tensor
named by its site's hook) and ``directions.safetensors`` (float32 vectors of exactly [d_model] at residual-width
sites, finite). The manifest records ``tensors_sha256``, the sha256 of the tensor file, and loading refuses bytes
that do not hash to it; a manifest without it predates checksums and is read unverified (saving it again records
one).
"""

__all__ = [
    "Method",
    "METHODS",
    "Quality",
    "Direction",
    "DirectionSet",
    "compute_directions",
    "mean_difference",
    "pca_direction",
    "probe_direction",
    "fit_logistic_probe",
    "ridge_probe",
    "RIDGE_GRID",
    "gram_spectrum",
    "DirectionsManifest",
]

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from pydantic import Field, field_validator, model_validator

import workbench
from workbench.activations import POSITIONS, ActivationSet
from workbench.errors import WorkbenchError
from workbench.io import atomic_dir, sha256_file, write_json, write_tensors
from workbench.manifests import (
    RESIDUAL_KINDS,
    Checksum,
    FingerprintModel,
    SiteModel,
    TokenizationModel,
    check_checksum,
    check_only,
    check_tensor,
    read_folder,
)
from workbench.models import Fingerprint, HookedModel, fingerprint
from workbench.schema import Strict
from workbench.sites import HookSite

Method = Literal["mean", "pca", "probe"]
METHODS: tuple[str, ...] = ("mean", "pca", "probe")
SCHEMA_VERSION = 1
MANIFEST = "directions.json"
TENSORS = "directions.safetensors"
Acts = Float[torch.Tensor, "n width"]


def mean_difference(pos: Acts, neg: Acts) -> Float[torch.Tensor, " width"]:
    """CAA: mean over pairs of (positive - negative)."""
    return (pos - neg).mean(0)


def _rescale(unit: torch.Tensor, pos: Acts, neg: Acts) -> torch.Tensor:
    """The mean pair difference's component along ``unit``: ``unit * mean((pos - neg) @ unit)``. Its sign and length
    do not depend on the sign of ``unit``, so ``scale=+1`` always adds one average positive-minus-negative step."""
    return unit * ((pos - neg) @ unit).mean()


def pca_direction(pos: Acts, neg: Acts) -> Float[torch.Tensor, " width"]:
    """First principal axis of the pair differences (uncentred SVD), returned as the mean pair difference's
    component along it (``_rescale``): the sign is the sign of the **mean** projection, the length its size.

    Uncentred, because centring would remove the shared shift that *is* the contrast. How this differs from
    repeng's ``pca_diff`` (``read_representations``): repeng fits sklearn ``PCA(n_components=1)`` on the
    differences, which centres them, so its axis is the largest variance *around* the mean shift and drops the
    shift itself; it signs the unit axis by a **majority vote** of pairs (more pairs with positive above negative
    along it) and keeps it unit-length. Where a few pairs with large differences outweigh many small opposite ones,
    the mean and the majority disagree (toy-l's 200 sentiment pairs at block 0's output: 95 project positively on
    this direction, so repeng's vote would pick the other sign).
    """
    diff = (pos - neg).double()
    _, _, vh = torch.linalg.svd(diff, full_matrices=False)
    return _rescale(vh[0].float(), pos, neg)


def fit_logistic_probe(
    x: torch.Tensor, y: torch.Tensor, l2: float = 1e-1, steps: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression (float64, L-BFGS) with an isotropic L2 penalty; returns weights and bias.

    Features are centred and divided by one global scale (not per feature), so the penalty stays isotropic and
    the weight vector keeps the geometry of the activation space.
    """
    x = x.double()
    mu = x.mean(0)
    scale = (x - mu).pow(2).sum(1).mean().sqrt().clamp_min(1e-12) / x.shape[1] ** 0.5
    z = (x - mu) / scale
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
    yd = y.double()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, yd) + l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = (w / scale).detach()
    return w_raw, (b - mu @ w_raw).detach()


def probe_direction(pos: Acts, neg: Acts) -> Float[torch.Tensor, " width"]:
    """Weight vector of a logistic probe separating positive from negative activations."""
    x = torch.cat([pos, neg])
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    w, _ = fit_logistic_probe(x, y)
    return _rescale((w / w.norm().clamp_min(1e-12)).float(), pos, neg)


_FITS = {"mean": mean_difference, "pca": pca_direction, "probe": probe_direction}


@dataclass(frozen=True)
class Quality:
    """Held-out quality of a direction (None when there are too few pairs to hold any out)."""

    norm: float
    probe_accuracy: "float | None"
    auroc: "float | None"
    effect_size: "float | None"

    def to_dict(self) -> dict:
        return {k: (None if v is None or not math.isfinite(v) else v) for k, v in self.__dict__.items()}


def _auroc(p: torch.Tensor, n: torch.Tensor) -> float:
    diff = p[:, None] - n[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


#: Penalties tried by the held-out quality probe, relative to the mean squared norm of a centred example.
RIDGE_GRID = torch.logspace(2, -8, 21, dtype=torch.float64)


def gram_spectrum(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and squared singular values of ``z``, zero ones dropped.

    Through the eigendecomposition of the smaller Gram matrix, on one thread when it is small: LAPACK's threads
    cost more than they save there (192 x 192: 2.5 ms on one thread, 12 ms on two, 31 ms for the SVD).
    """
    n, d = z.shape
    gram = z @ z.T if n <= d else z.T @ z
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if min(n, d) <= 1024 else threads)
    try:
        s2, vecs = torch.linalg.eigh(gram)
    finally:
        torch.set_num_threads(threads)
    keep = s2 > s2.max().clamp_min(1e-300) * 1e-12
    s2, vecs = s2[keep], vecs[:, keep]
    return (vecs if n <= d else (z @ vecs) / s2.sqrt()), s2


def ridge_probe(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Ridge classifier (least squares on +-1 targets, unpenalised intercept), penalty chosen by exact
    leave-one-out error; returns weights, bias and the chosen relative penalty.

    The held-out quality probe measures what is *linearly decodable*, so its penalty must not be fixed: a fixed
    penalty reads a feature of small variance as poorly decodable (a toy-l's persona at the fact's stem:
    0.76-0.89 per layer by a logistic probe at L2 1e-2, 1.00 from block 1 on by this probe on the same split;
    table in ``benchmarks/RESULTS.md``). One decomposition of the centred training set gives every penalty's fit
    and its leave-one-out residuals ``(t - fit) / (1 - h)`` in closed form (as scikit-learn's
    ``RidgeClassifierCV``), so the search costs less than one logistic fit.
    """
    x = x.double()
    n = x.shape[0]
    t = y.double() * 2 - 1
    mu, t_mean = x.mean(0), t.mean()
    z = x - mu
    u, s2 = gram_spectrum(z)
    unit = s2.sum().clamp_min(1e-300) / n
    ut = u.T @ (t - t_mean)
    u2 = u.square()
    best_err, best_rel = math.inf, float(RIDGE_GRID[0])
    for rel in RIDGE_GRID.tolist():  # strong to weak: ties keep the stronger penalty
        shrink = s2 / (s2 + rel * unit)
        fit = u @ (shrink * ut) + t_mean
        leverage = u2 @ shrink + 1.0 / n
        err = float((((t - fit) / (1 - leverage).clamp_min(1e-12)).square()).mean())
        if err < best_err:
            best_err, best_rel = err, rel
    w = z.T @ (u @ (ut / (s2 + best_rel * unit)))
    return w, t_mean - mu @ w, best_rel


def _quality(pos: Acts, neg: Acts, vector: torch.Tensor, method: str, gen: torch.Generator, holdout: float) -> Quality:
    n = pos.shape[0]
    n_test = int(round(n * holdout))
    if n_test < 2 or n - n_test < 2:
        return Quality(float(vector.norm()), None, None, None)
    perm = torch.randperm(n, generator=gen)
    test, train = perm[:n_test], perm[n_test:]
    v = _FITS[method](pos[train], neg[train])
    u = v / v.norm().clamp_min(1e-12)
    pp, pn = pos[test] @ u, neg[test] @ u
    pooled = torch.sqrt((pp.var() + pn.var()) / 2).clamp_min(1e-12)
    labels = torch.cat([torch.ones(len(train)), torch.zeros(len(train))])
    w, b, _ = ridge_probe(torch.cat([pos[train], neg[train]]), labels)
    x_test = torch.cat([pos[test], neg[test]]).double()
    y_test = torch.cat([torch.ones(n_test), torch.zeros(n_test)])
    acc = float((((x_test @ w + b) > 0).float() == y_test).float().mean())
    return Quality(float(vector.norm()), acc, _auroc(pp, pn), float((pp.mean() - pn.mean()) / pooled))


class _QualityModel(Strict):
    norm: float = Field(ge=0.0)
    probe_accuracy: "float | None" = Field(ge=0.0, le=1.0)  # None: too few pairs to hold any out
    auroc: "float | None" = Field(ge=0.0, le=1.0)
    effect_size: "float | None"


class _DirectionEntry(Strict):
    site: SiteModel
    tensor: str
    quality: _QualityModel

    @model_validator(mode="after")
    def _named_by_site(self) -> "_DirectionEntry":
        name = HookSite(self.site.layer, self.site.kind).name
        if self.tensor != name:
            raise ValueError(f"tensor {self.tensor!r} is not the site's hook name {name!r} (entries were edited)")
        return self


class _DirectionsProvenance(Strict):
    data_hash: str = Field(max_length=100_000)
    n_pairs: int = Field(ge=0, le=10**12)
    workbench_version: str = Field(max_length=100_000)
    tokenization: TokenizationModel


class DirectionsManifest(Strict):
    """``directions.json``."""

    schema_version: int = Field(ge=SCHEMA_VERSION, le=SCHEMA_VERSION)  # an int: True is not 1
    kind: Literal["directions"]
    method: str
    position: str
    basis: Literal["unprocessed"]  # Hugging Face hidden-state basis: no LayerNorm folding, no centring
    model: FingerprintModel
    provenance: _DirectionsProvenance
    directions: list[_DirectionEntry] = Field(min_length=1, max_length=100_000)
    tensors_sha256: Checksum = None

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"must be one of {', '.join(METHODS)}")
        return v

    @field_validator("position")
    @classmethod
    def _known_position(cls, v: str) -> str:
        if v not in POSITIONS:
            raise ValueError(f"must be one of {', '.join(POSITIONS)}")
        return v

    @model_validator(mode="after")
    def _fits_the_model(self) -> "DirectionsManifest":
        n, seen = self.model.n_layers, set()
        for i, e in enumerate(self.directions):
            if e.site.layer >= n:
                raise ValueError(
                    f"directions[{i}].site.layer is {e.site.layer} but the model has {n} blocks (0..{n - 1})"
                )
            if e.tensor in seen:
                raise ValueError(f"directions[{i}] repeats the site {e.tensor!r}")
            seen.add(e.tensor)
        return self


@dataclass(frozen=True, eq=False)
class Direction:
    """One direction at one site."""

    site: HookSite
    vector: Float[torch.Tensor, " width"]
    quality: Quality


@dataclass(frozen=True, eq=False)
class DirectionSet:
    """Directions at several sites from one set of pairs, with their provenance."""

    directions: tuple[Direction, ...]
    method: str
    position: str
    fingerprint: Fingerprint
    data_hash: str
    n_pairs: int
    tokenization: dict = field(default_factory=dict)  # models.Tokenization.to_dict() of the collection

    def at(self, layer: int, kind: str = "resid_post") -> Direction:
        """The direction at ``blocks.{layer}`` of the given kind."""
        for d in self.directions:
            if d.site.layer == layer and d.site.kind == kind:
                return d
        have = sorted(d.site.layer for d in self.directions if d.site.kind == kind)
        raise WorkbenchError(f"no {kind} direction at layer {layer}; this set has layers {have}.")

    def save(self, out: "str | Path") -> Path:
        """Write ``directions.json`` + ``directions.safetensors`` into the folder ``out`` (atomically)."""
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "kind": "directions",
            "method": self.method,
            "position": self.position,
            "basis": "unprocessed",  # no LayerNorm folding or centring: Hugging Face hidden-state basis
            "model": self.fingerprint.to_dict(),
            "provenance": {
                "data_hash": self.data_hash,
                "n_pairs": self.n_pairs,
                "workbench_version": workbench.__version__,
                "tokenization": self.tokenization,
            },
            "directions": [
                {"site": d.site.to_dict(), "tensor": d.site.name, "quality": d.quality.to_dict()}
                for d in self.directions
            ],
        }
        with atomic_dir(out) as tmp:
            write_tensors(
                tmp / TENSORS,
                {d.site.name: d.vector.float() for d in self.directions},
                {"format": "workbench.directions"},
            )
            manifest["tensors_sha256"] = sha256_file(tmp / TENSORS)
            write_json(tmp / MANIFEST, manifest)
        return Path(out)

    @classmethod
    def load(cls, folder: "str | Path", model: "HookedModel | None" = None) -> "DirectionSet":
        """Read and check a saved set; with ``model``, check the fingerprint and widths against it."""
        m, _, tensors, digest, where = read_folder(
            folder, MANIFEST, TENSORS, DirectionsManifest, what="directions",
            tag=("kind", "directions", "directions manifest"),
            version=SCHEMA_VERSION, fix="pass the --out of `workbench directions`, or recompute the directions.",
            redo="recompute the directions",
        )  # fmt: skip
        fp = Fingerprint(**m.model.model_dump())
        dirs = []
        for i, e in enumerate(m.directions):
            width = fp.d_model if e.site.kind in RESIDUAL_KINDS else None
            note = f" (the model's d_model is {width})" if width is not None else ""
            what = f"directions[{i}] ({e.site.kind} of block {e.site.layer})"
            v = check_tensor(tensors, e.tensor, (width,), where=where, what=what, note=note)
            q = e.quality
            dirs.append(
                Direction(
                    HookSite(e.site.layer, e.site.kind),
                    v,
                    Quality(q.norm, q.probe_accuracy, q.auroc, q.effect_size),
                )
            )
        check_only(tensors, {e.tensor for e in m.directions}, where=where)
        check_checksum(m.tensors_sha256, digest, where=where)
        if model is not None:
            fp.check(fingerprint(model), what="directions set")
            for d in dirs:
                d.site.check(model)
                width = math.prod(d.site.shape(model))
                if d.vector.numel() != width:
                    raise WorkbenchError(
                        f"{where}: tensor {d.site.name!r} has {d.vector.numel()} entries but the site has {width}; "
                        f"recompute the directions on this model."
                    )
        prov = m.provenance
        return cls(
            tuple(dirs),
            m.method,
            m.position,
            fp,
            prov.data_hash,
            prov.n_pairs,
            prov.tokenization.model_dump(exclude_none=True),
        )


def compute_directions(
    acts: ActivationSet,
    method: str = "mean",
    *,
    seed: int = 0,
    holdout: float = 0.25,
) -> DirectionSet:
    """A direction per site of ``acts`` by ``method``, with held-out quality metrics; provenance from ``acts``."""
    if method not in METHODS:
        raise WorkbenchError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    if not 0.0 <= holdout < 1.0:
        raise WorkbenchError(f"holdout must be in [0, 1), got {holdout}.")
    if acts.n_pairs < 1:
        raise WorkbenchError("no pairs in the activation set.")
    dirs = []
    for k, site in enumerate(acts.sites):
        pos, neg = acts.positive[k].float(), acts.negative[k].float()
        vector = _FITS[method](pos, neg)
        gen = torch.Generator().manual_seed(seed)
        dirs.append(Direction(site, vector.float(), _quality(pos, neg, vector, method, gen, holdout)))
    return DirectionSet(
        tuple(dirs), method, acts.position, acts.fingerprint, acts.data_hash, acts.n_pairs, dict(acts.tokenization)
    )
