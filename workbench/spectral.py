"""Spectral Editing of Activations (SEA; Qiu et al. 2024, ``yfqiu-nlp/sea-llm``): fit per layer, apply low-rank.

Fit (float64, per layer, from activations at the last token; rows are examples)::

    Omega+ = H^T H+ / N,  Omega- = H^T H- / N            H: base (the model's own continuation), H+/H-: pos/neg
    U+, s+ = SVD(Omega+);  U-, s- = SVD(Omega-)
    k = number of leading components whose explained variance s_i^2 / sum s^2 reaches ``ratio`` (default 0.998)
    P+ = U+[:, :k+] U+[:, :k+]^T          keeps what covaries with the positive demonstrations
    P- = I - U-[:, :k-] U-[:, :k-]^T      removes what covaries with the negative ones

Placement: ``fit_layer`` fits whatever activations it is given. The official code fits on the residual stream (the
Hugging Face ``hidden_states[1:]`` at the last token: block outputs, the last block's after the final norm) and
applies the projections to the MLP output (an adapter after each edited layer's MLP), i.e. to activations of
another site than the ones it learned from; ``analyses/spectral_study.py`` runs that placement beside fitting at
the edited site itself.

Feature-function SEA fits the same on Phi(H), Phi(H+), Phi(H-) and edits h' = Phi^-1(P+ Phi(h)) + Phi^-1(P- Phi(h)).
The official inference code computes Phi(h) and discards it (it projects h itself); this module applies Phi as the
paper and the official training script (``sea-train.py``, on the demonstrations) do, and ``phi`` / ``phi_inverse``
are the official functions exactly (tested against a transcription).

Combine modes of the two parts ``a+ = P+ h`` and ``a- = P- h`` (``SpectralEdit.combine``):

* ``norm`` (the paper's intent): h' = (a+ + a-) |h| / |a+ + a-| per token;
* ``average``: h' = (a+ + a-) / 2 -- linear, so at ``mlp_out`` it folds into the down-projection weight (bake);
* ``reference``: the official code's quirk, kept to compare results with it: each *feature* is rescaled to its own
  norm across the sequence positions, ``Y * |X_j| / |Y_j|`` with X, Y as [d_model, positions] (under a KV cache a
  step sees one position, so this keeps |h_j| and only flips signs, exactly as the official code would).

Application never forms a d x d matrix: P+ h = U+ (U+^T h) and P- h = h - U- (U-^T h), O(d k) per token.
"""

__all__ = [
    "FEATURES",
    "COMBINES",
    "phi",
    "phi_inverse",
    "explained_rank",
    "SpectralProjections",
    "fit_layer",
    "fit_spectral",
]

from dataclasses import dataclass

import torch
from jaxtyping import Float

from workbench.errors import WorkbenchError

FEATURES: tuple[str, ...] = ("identity", "squared_exponential", "tanh", "elu")
COMBINES: tuple[str, ...] = ("norm", "average", "reference")
_EPS = 1e-4  # the official code's eps of every inverse
_TANH_CLIP = 1 - _EPS


def phi(x: torch.Tensor, feature: str) -> torch.Tensor:
    """The feature function Phi (as the official code defines each)."""
    if feature == "identity":
        return x
    if feature == "squared_exponential":
        return torch.exp(-x.pow(2) / 2)
    if feature == "tanh":
        return torch.tanh(x)
    if feature == "elu":
        return torch.nn.functional.elu(x)
    raise WorkbenchError(f"feature must be one of {', '.join(FEATURES)}, got {feature!r}.")


def phi_inverse(y: torch.Tensor, feature: str) -> torch.Tensor:
    """Phi^-1 exactly as the official code defines it (``inv_non_linear_feature_func``, one eps = 1e-4 for all).

    The squared-exponential "inverse" -2 log(max(y, 1e-4)) returns x^2, so the sign is lost (a property of that
    Phi); tanh clips to +-(1 - 1e-4) before atanh; elu's inverse is y for y >= 0 and log(max(y, -1 + 1e-4) + 1)
    below zero, so it floors at log(1e-4) (about -9.21) where a projected feature reaches -1 or below."""
    if feature == "identity":
        return y
    if feature == "squared_exponential":
        return -2 * torch.log(y.clamp_min(_EPS))
    if feature == "tanh":
        return torch.atanh(y.clamp(-_TANH_CLIP, _TANH_CLIP))
    if feature == "elu":
        return torch.where(y >= 0, y, torch.log(y.clamp_min(-1 + _EPS) + 1))
    raise WorkbenchError(f"feature must be one of {', '.join(FEATURES)}, got {feature!r}.")


def explained_rank(s: torch.Tensor, ratio: float) -> int:
    """The number of leading singular values whose explained variance s^2 / sum(s^2) reaches ``ratio``."""
    if not 0.0 < ratio <= 1.0:
        raise WorkbenchError(f"explained-variance ratio must be in (0, 1], got {ratio}.")
    e = s.double().pow(2)
    if float(e.sum()) == 0.0:
        return 0
    cum = torch.cumsum(e / e.sum(), 0)
    return int(min(int((cum < ratio - 1e-12).sum()) + 1, s.numel()))


@dataclass(frozen=True, eq=False)
class SpectralProjections:
    """One layer's fitted SEA projections, held as orthonormal factors (columns)."""

    u_pos: Float[torch.Tensor, "d_model k_pos"]  # P+ = u_pos u_pos^T
    u_neg: Float[torch.Tensor, "d_model k_neg"]  # P- = I - u_neg u_neg^T
    feature: str = "identity"
    explained: tuple = ()  # (ratio_pos, ratio_neg)

    @property
    def k(self) -> tuple[int, int]:
        return self.u_pos.shape[1], self.u_neg.shape[1]

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense P+ and P- (for tests and baking; application uses the factors)."""
        d = self.u_pos.shape[0]
        eye = torch.eye(d, dtype=self.u_pos.dtype)
        return self.u_pos @ self.u_pos.T, eye - self.u_neg @ self.u_neg.T


def fit_layer(
    base: torch.Tensor,  # [n, d_model]; validated below with a message that names the fix
    pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    ratio_pos: float = 0.998,
    ratio_neg: float = 0.998,
    feature: str = "identity",
    center: bool = False,
) -> SpectralProjections:
    """Fit one layer's projections from row-aligned base / positive / negative activations (float64 inside).

    ``center`` subtracts each set's per-feature mean before the cross-covariances (a true covariance). The
    official run scripts do not (their optional mean subtraction removes each *example's* mean over the hidden
    dimensions instead); on models whose activations share a large mean, the uncentred Omega is then dominated
    by that one mean direction and k collapses to 1 (P+ keeps the mean, P- removes it: close to the identity).
    """
    if not (base.shape == pos.shape == neg.shape) or base.ndim != 2 or base.shape[0] < 1:
        raise WorkbenchError(
            f"base, pos and neg must be row-aligned [n, d_model] activations of one shape; got "
            f"{tuple(base.shape)}, {tuple(pos.shape)}, {tuple(neg.shape)}."
        )
    h, hp, hn = (phi(x.double(), feature) for x in (base, pos, neg))
    if not all(torch.isfinite(x).all() for x in (h, hp, hn)):
        raise WorkbenchError("activations contain non-finite values; re-collect them.")
    if center:
        h, hp, hn = (x - x.mean(0, keepdim=True) for x in (h, hp, hn))
    n = h.shape[0]
    out = []
    for other, ratio in ((hp, ratio_pos), (hn, ratio_neg)):
        u, s, _ = torch.linalg.svd(h.T @ other / n, full_matrices=True)
        out.append(u[:, : explained_rank(s, ratio)].contiguous())
    return SpectralProjections(out[0].float(), out[1].float(), feature, (ratio_pos, ratio_neg))


def fit_spectral(
    acts_base,
    acts_pos,
    acts_neg,
    *,
    ratio_pos: float = 0.998,
    ratio_neg: float = 0.998,
    feature: str = "identity",
    center: bool = False,
) -> dict:
    """Fit every site of three ``collect`` results (``{HookSite: [n, d]}``-like mappings with the same sites):
    ``{site: SpectralProjections}``."""
    if set(acts_base) != set(acts_pos) or set(acts_base) != set(acts_neg):
        raise WorkbenchError("base, positive and negative activations must cover the same sites.")
    return {
        site: fit_layer(
            acts_base[site],
            acts_pos[site],
            acts_neg[site],
            ratio_pos=ratio_pos,
            ratio_neg=ratio_neg,
            feature=feature,
            center=center,
        )
        for site in acts_base
    }
