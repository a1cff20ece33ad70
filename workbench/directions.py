"""Contrastive directions per site: mean difference (CAA), PCA of differences, logistic probe.

Every method returns a vector in the model's activation basis whose length is the mean pair difference along
it, so ``scale=1`` means "one average positive-minus-negative step" whatever the method (for ``mean`` this is
exactly CAA's unnormalised vector). Quality is measured on held-out pairs: the accuracy of a linear probe (ridge
classifier, penalty by leave-one-out on the training pairs), AUROC and effect size of the projections on a
direction fitted without them.
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
]

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float

import workbench
from workbench.activations import ActivationSet
from workbench.errors import WorkbenchError
from workbench.io import atomic_dir, read_json, read_tensors, write_json, write_tensors
from workbench.models import Fingerprint, HookedModel, fingerprint
from workbench.sites import HookSite

Method = Literal["mean", "pca", "probe"]
METHODS: tuple[str, ...] = ("mean", "pca", "probe")
SCHEMA_VERSION = 1
Acts = Float[torch.Tensor, "n width"]


def mean_difference(pos: Acts, neg: Acts) -> Float[torch.Tensor, " width"]:
    """CAA: mean over pairs of (positive - negative)."""
    return (pos - neg).mean(0)


def _rescale(unit: torch.Tensor, pos: Acts, neg: Acts) -> torch.Tensor:
    """``unit`` with the sign and length of the mean pair difference along it."""
    return unit * ((pos - neg) @ unit).mean()


def pca_direction(pos: Acts, neg: Acts) -> Float[torch.Tensor, " width"]:
    """First principal axis of the pair differences (uncentred), signed so most pairs project positively.

    Uncentred, because centring would remove the shared shift that *is* the contrast; sign by majority vote.
    """
    diff = (pos - neg).double()
    _, _, vh = torch.linalg.svd(diff, full_matrices=False)
    unit = vh[0]
    if ((diff @ unit) > 0).sum() * 2 < diff.shape[0]:
        unit = -unit
    return _rescale(unit.float(), pos, neg)


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
                tmp / "directions.safetensors",
                {d.site.name: d.vector for d in self.directions},
                {"format": "workbench.directions"},
            )
            write_json(tmp / "directions.json", manifest)
        return Path(out)

    @classmethod
    def load(cls, folder: "str | Path", model: "HookedModel | None" = None) -> "DirectionSet":
        """Read a saved set; with ``model``, check the fingerprint and widths against it."""
        folder = Path(folder)
        if not folder.is_dir():
            raise WorkbenchError(
                f"{str(folder)!r} is not a directions folder; pass the --out of `workbench directions`."
            )
        m = read_json(folder / "directions.json")
        if m.get("kind") != "directions":
            raise WorkbenchError(f"{folder}/directions.json is not a directions manifest (kind={m.get('kind')!r}).")
        if m.get("schema_version") != SCHEMA_VERSION:
            raise WorkbenchError(
                f"{folder}: schema_version {m.get('schema_version')!r} is not supported (this workbench reads "
                f"{SCHEMA_VERSION}); recompute the directions with this version."
            )
        tensors = read_tensors(folder / "directions.safetensors")
        fp = Fingerprint.from_dict(m["model"])
        if model is not None:
            fp.check(fingerprint(model), what="directions set")
        dirs = []
        for e in m["directions"]:
            site = HookSite.from_dict(e["site"])
            if e["tensor"] not in tensors:
                raise WorkbenchError(f"{folder}: tensor {e['tensor']!r} is missing from directions.safetensors.")
            v = tensors[e["tensor"]]
            if not torch.isfinite(v).all():
                raise WorkbenchError(f"{folder}: tensor {e['tensor']!r} has non-finite values; recompute it.")
            q = e.get("quality", {})
            dirs.append(
                Direction(
                    site,
                    v,
                    Quality(
                        q.get("norm", float(v.norm())), q.get("probe_accuracy"), q.get("auroc"), q.get("effect_size")
                    ),
                )
            )
        prov = m.get("provenance", {})
        return cls(
            tuple(dirs),
            m["method"],
            m["position"],
            fp,
            prov.get("data_hash", ""),
            prov.get("n_pairs", 0),
            prov.get("tokenization") or {},
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
