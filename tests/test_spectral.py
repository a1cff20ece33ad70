"""SEA: fitting (planted subspaces, projection algebra, k = d identity), the official code's reference mode, the
low-rank intervention and its deployed forms (apply_hf everywhere, baked weights for the linear mode)."""

import numpy as np
import pytest
import torch

from tests.conftest import BACKEND, n_attached_hooks
from workbench import models
from workbench.errors import WorkbenchError
from workbench.export import apply_hf
from workbench.export.bake import bake_hf
from workbench.export.parity import tl_logits
from workbench.export.spec import Spec
from workbench.hooks import applied
from workbench.interventions import SpectralEdit
from workbench.sites import HookSite
from workbench.spectral import FEATURES, explained_rank, fit_layer, phi, phi_inverse


def planted(n=400, d=16, r_pos=3, r_neg=2, seed=0):
    """Base activations whose covariance with the positives lives in span(Qp), with the negatives in span(Qn)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    qp, qn = q[:, :r_pos], q[:, r_pos : r_pos + r_neg]
    h = torch.linalg.qr(torch.randn(n, d, generator=g))[0] * n**0.5  # whitened: H^T H / n = I
    pos = (h @ qp) @ qp.T * 3 + 0.01 * torch.randn(n, d, generator=g)
    neg = (h @ qn) @ qn.T * 2 + 0.01 * torch.randn(n, d, generator=g)
    return h, pos, neg, qp, qn


def subspace_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest sine of the principal angles between span(a) and span(b) (0 = same subspace)."""
    qa, _ = torch.linalg.qr(a.double())
    qb, _ = torch.linalg.qr(b.double())
    cos = torch.linalg.svdvals(qa.T @ qb)
    return float((1 - cos.min().clamp(max=1) ** 2).sqrt())


def test_fit_recovers_planted_subspaces():
    h, pos, neg, qp, qn = planted()
    p = fit_layer(h, pos, neg, ratio_pos=0.99, ratio_neg=0.99)
    assert p.k == (3, 2)
    assert subspace_gap(p.u_pos, qp) < 1e-2 and subspace_gap(p.u_neg, qn) < 1e-2


def test_projections_are_symmetric_idempotent_and_full_rank_is_identity():
    h, pos, neg, *_ = planted()
    p = fit_layer(h, pos, neg)
    for m in p.matrices():
        torch.testing.assert_close(m, m.T, atol=1e-6, rtol=0)
        torch.testing.assert_close(m @ m, m, atol=1e-5, rtol=0)
    full = fit_layer(h, pos + torch.randn_like(pos), neg + torch.randn_like(neg), ratio_pos=1.0, ratio_neg=1.0)
    assert full.k == (16, 16)
    x = torch.randn(2, 5, 16)
    edit = SpectralEdit(HookSite(0, "mlp_out"), full.u_pos, full.u_neg, combine="norm")
    torch.testing.assert_close(edit.edit(x), x, atol=1e-5, rtol=0)  # P+ = I, P- = 0: the identity edit


def test_explained_rank():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert explained_rank(s, 9 / 14) == 1 and explained_rank(s, 13 / 14) == 2 and explained_rank(s, 1.0) == 3
    with pytest.raises(WorkbenchError, match="ratio"):
        explained_rank(s, 0.0)


def test_reference_mode_matches_the_official_equations():
    """A direct transcription of sea-llm's AdapterLayer.forward ('l2_norm' combine), on random data."""
    h, pos, neg, *_ = planted(seed=3)
    p = fit_layer(h, pos, neg, ratio_pos=0.9, ratio_neg=0.9)
    pp, pn = p.matrices()
    x = torch.randn(1, 7, 16)

    def official(x):
        X = x[0].T
        n = X.norm(dim=-1, keepdim=True)
        Y = pp @ X + pn @ X
        Y = Y * n / Y.norm(dim=-1, keepdim=True)
        return Y.T[None]

    edit = SpectralEdit(HookSite(0, "mlp_out"), p.u_pos, p.u_neg, combine="reference")
    torch.testing.assert_close(edit.edit(x), official(x), atol=1e-5, rtol=1e-5)
    avg = SpectralEdit(HookSite(0, "mlp_out"), p.u_pos, p.u_neg, combine="average")
    torch.testing.assert_close(avg.edit(x), (x @ pp.T + x @ pn.T) / 2, atol=1e-5, rtol=1e-5)
    norm = SpectralEdit(HookSite(0, "mlp_out"), p.u_pos, p.u_neg, combine="norm")
    torch.testing.assert_close(norm.edit(x).norm(dim=-1), x.norm(dim=-1), atol=1e-4, rtol=1e-5)  # per token
    rev = SpectralEdit(HookSite(0, "mlp_out"), p.u_pos, p.u_neg, combine="average", reverse=True)
    eye = torch.eye(16)
    torch.testing.assert_close(rev.edit(x), (x @ (eye - pp) + x @ (eye - pn)) / 2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("feature", FEATURES)
def test_feature_functions_invert_where_invertible(feature):
    x = torch.linspace(-0.9, 2.0, 50, dtype=torch.float64)
    back = phi_inverse(phi(x, feature), feature)
    if feature == "squared_exponential":  # the official "inverse" returns x^2 (sign lost)
        torch.testing.assert_close(back, x.pow(2), atol=1e-6, rtol=0)
    else:
        torch.testing.assert_close(back, x, atol=1e-6, rtol=0)


def _seed_phi(x: np.ndarray, func: str) -> np.ndarray:
    """sea-llm ``non_linear_feature_func`` (sea-train.py, inference.py), transcribed to numpy."""
    if func == "squared_exponential":
        return np.exp(-1 * x**2 / (2 * 1**2))
    if func == "tanh":
        return np.tanh(x)
    return x * (x >= 0) + (np.exp(x) - 1) * (x < 0)


def _seed_phi_inverse(x: np.ndarray, func: str) -> np.ndarray:
    """sea-llm ``inv_non_linear_feature_func``, transcribed to numpy (one eps = 1e-4 everywhere)."""
    eps = np.ones(x.shape) * 1e-4
    if func == "squared_exponential":
        return -np.log(np.maximum(x, eps)) * 2 * 1**2
    if func == "tanh":
        return np.arctanh(np.maximum(np.minimum(x, 1 - eps), -1 + eps))
    with np.errstate(invalid="ignore", divide="ignore"):
        return x * (x >= 0) + np.log(np.maximum(x, -1 + eps) + 1) * (x < 0)


@pytest.mark.parametrize("feature", ["squared_exponential", "tanh", "elu"])
def test_feature_functions_are_the_seeds(feature):
    x = np.random.default_rng(0).normal(0, 3, size=4000)
    x[:4] = [-1.0, -1 + 1e-4, -1 - 1e-6, 0.0]
    t = torch.from_numpy(x)
    for fn, seed in ((phi, _seed_phi), (phi_inverse, _seed_phi_inverse)):
        np.testing.assert_allclose(fn(t, feature).numpy(), seed(x, feature), rtol=0, atol=1e-7)
    np.testing.assert_allclose(apply_hf._phi(t, feature).numpy(), _seed_phi(x, feature), rtol=0, atol=1e-7)
    np.testing.assert_allclose(
        apply_hf._phi(t, feature, inverse=True).numpy(), _seed_phi_inverse(x, feature), rtol=0, atol=1e-7
    )


def test_elu_sea_matches_the_seeds_equations_on_projected_features():
    """sea-train.py with ``--feature-function elu``: Phi on H, H+, H- before the cross-covariances, then
    Finv(UU+ Phi(h)) + Finv(UU- Phi(h)); projected features below -1 floor at log(1e-4)."""
    h, pos, neg, *_ = planted(seed=5)
    p = fit_layer(h * 3, pos * 3, neg * 3, ratio_pos=0.9, ratio_neg=0.9, feature="elu")
    hd, pd, nd = (_seed_phi(x.double().numpy() * 3, "elu").T for x in (h, pos, neg))  # d x N, as the seed
    n = hd.shape[1]

    def seed_u(other, ratio):
        u, s, _ = np.linalg.svd(hd @ other.T / n, full_matrices=True)
        ev = s**2 / np.sum(s**2)
        return u, int(np.argmax(np.cumsum(ev) >= ratio)) + 1

    (up, kp), (un, kn) = seed_u(pd, 0.9), seed_u(nd, 0.9)
    assert p.k == (kp, kn)
    uu_pos, uu_neg = up[:, :kp] @ up[:, :kp].T, un[:, kn:] @ un[:, kn:].T
    x = torch.randn(1, 64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 4
    fx = _seed_phi(x[0].numpy().T, "elu")
    a_pos, a_neg = uu_pos @ fx, uu_neg @ fx
    assert ((a_pos < -1).mean() + (a_neg < -1).mean()) / 2 > 0.02  # the floor is exercised
    want = (_seed_phi_inverse(a_pos, "elu") + _seed_phi_inverse(a_neg, "elu")) / 2
    edit = SpectralEdit(HookSite(0, "mlp_out"), p.u_pos, p.u_neg, feature="elu", combine="average")
    np.testing.assert_allclose(edit.edit(x.float())[0].double().numpy().T, want, rtol=0, atol=2e-4)


def test_official_fit_placement_is_resid_post_and_final_norm_for_the_last_block():
    """sea-llm fits on HF ``hidden_states[1:]`` at the last token (the last block's after the final norm), and
    learns UU+ = U+[:, :k] U+[:, :k]^T, UU- = U-[:, k:] U-[:, k:]^T from H H^T / N; the study's ``resid_post``
    placement must equal that transcription on toy-s, for edits at mlp_out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from analyses import spectral_study as ss
    from analyses.common import fact_items
    from workbench.toy import checkpoint_dir

    model = models.load("toy-s", backend=BACKEND)
    demos = fact_items(60, None, 0)
    sites = [HookSite(2, "mlp_out"), HookSite(3, "mlp_out")]
    ours = ss._fit(model, demos, sites, 0.998, "identity", False, "resid_post")
    hf = AutoModelForCausalLM.from_pretrained(str(checkpoint_dir("toy-s")), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(checkpoint_dir("toy-s")))

    def hidden(texts):
        out = []
        with torch.no_grad():
            for t in texts:
                hs = hf(torch.tensor([tok(t).input_ids]), output_hidden_states=True).hidden_states[1:]
                out.append(torch.stack([x[0, -1] for x in hs]))
        return torch.stack(out).double().numpy()  # N, layers, d

    with torch.no_grad():
        greedy = [int(hf(torch.tensor([tok(d[0]).input_ids])).logits[0, -1].argmax()) for d in demos]
    base = hidden([d[0] + " " + tok.decode([g]).strip() for d, g in zip(demos, greedy)])
    pos, neg = hidden([d[0] + " " + d[1] for d in demos]), hidden([d[0] + " " + d[2] for d in demos])
    for site in sites:
        h = base[:, site.layer].T
        n = h.shape[1]
        mats = []
        for other, keep in ((pos, "top"), (neg, "rest")):
            u, s, _ = np.linalg.svd(h @ other[:, site.layer] / n, full_matrices=True)
            ev = s**2 / np.sum(s**2)
            k = int(np.argmax(np.cumsum(ev) >= 0.998)) + 1
            mats.append(u[:, :k] @ u[:, :k].T if keep == "top" else u[:, k:] @ u[:, k:].T)
        pp, pn = ours[site].matrices()
        np.testing.assert_allclose(pp.double().numpy(), mats[0], rtol=0, atol=1e-4)
        np.testing.assert_allclose(pn.double().numpy(), mats[1], rtol=0, atol=1e-4)
    edit_site = ss._fit(model, demos[:20], sites[1:], 0.998, "identity", False, "edit-site")
    official = ss._fit(model, demos[:20], sites[1:], 0.998, "identity", False, "resid_post")
    assert subspace_gap(edit_site[sites[1]].u_pos, official[sites[1]].u_pos) > 0.1  # the placements differ


def test_fit_and_edit_errors():
    h, pos, neg, *_ = planted()
    with pytest.raises(WorkbenchError, match="row-aligned"):
        fit_layer(h, pos[:10], neg)
    with pytest.raises(WorkbenchError, match="feature must be"):
        fit_layer(h, pos, neg, feature="relu")
    with pytest.raises(WorkbenchError, match="combine must be"):
        SpectralEdit(HookSite(0, "mlp_out"), torch.eye(16)[:, :2], torch.eye(16)[:, :2], combine="l2")
    with pytest.raises(WorkbenchError, match="works at"):
        SpectralEdit(HookSite(0, "z"), torch.eye(16)[:, :2], torch.eye(16)[:, :2])


def _spectral_for(model, kind="mlp_out", layer=1, combine="norm", seed=0, **kw):
    d = model.cfg.d_model
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    return SpectralEdit(HookSite(layer, kind), q[:, :4], q[:, 4:7], combine=combine, **kw)


def test_intervention_edits_exactly_the_site(model):
    tokens = model.to_tokens("the cat sees the dog")
    edit = _spectral_for(model)
    with torch.no_grad():
        _, clean = model.run_with_cache(tokens)
        with applied(model, edit):
            _, s = model.run_with_cache(tokens)
    torch.testing.assert_close(s["blocks.1.hook_mlp_out"], edit.edit(clean["blocks.1.hook_mlp_out"]), atol=1e-5, rtol=0)
    assert torch.equal(s["blocks.1.hook_resid_mid"], clean["blocks.1.hook_resid_mid"])
    assert n_attached_hooks(model) == 0


@pytest.mark.parametrize(
    "kind, combine, feature",
    [
        ("mlp_out", "norm", "identity"),
        ("resid_post", "average", "tanh"),
        ("attn_out", "reference", "identity"),
        ("resid_pre", "norm", "elu"),
    ],
)
def test_apply_hf_reproduces_spectral_edits(model, tmp_path, kind, combine, feature):
    from transformers import AutoModelForCausalLM

    spec = Spec((_spectral_for(model, kind, combine=combine, feature=feature),), models.fingerprint(model))
    tokens = model.to_tokens("the cat sees the big dog .")[0]
    hf = AutoModelForCausalLM.from_pretrained(models.source_of(model), dtype=torch.float32).eval()
    with apply_hf.applied(hf, spec.save(tmp_path / "s")), torch.no_grad():
        got = hf(tokens[None]).logits[0]
    want = tl_logits(model, tokens, spec)
    assert float((want - tl_logits(model, tokens)).abs().max()) > 1e-3
    torch.testing.assert_close(got, want, atol=5e-5, rtol=0)
    back = Spec.load(tmp_path / "s", model).interventions[0]
    assert back.to_dict() == spec.interventions[0].to_dict() and torch.equal(back.u_pos, spec.interventions[0].u_pos)


@pytest.mark.parametrize("parts, reverse", [("both", False), ("neg", False), ("both", True)])
def test_linear_spectral_edit_bakes_into_the_down_projection(model, tmp_path, parts, reverse):
    from transformers import AutoModelForCausalLM

    spec = Spec(
        (
            _spectral_for(model, combine="average", parts=parts, reverse=reverse),
            _spectral_for(model, layer=2, combine="average", seed=1),
        ),
        models.fingerprint(model),
    )
    out = bake_hf(spec, models.source_of(model), tmp_path / "baked", dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tokens = model.to_tokens("the cat sees the big dog .")[0]
    with torch.no_grad():
        got = hf(tokens[None]).logits[0]
    torch.testing.assert_close(got, tl_logits(model, tokens, spec), atol=5e-5, rtol=0)


def test_nonlinear_spectral_edits_are_not_baked(llama, tmp_path):
    spec = Spec((_spectral_for(llama, combine="norm"),), models.fingerprint(llama))
    with pytest.raises(WorkbenchError, match="only linear spectral edits"):
        bake_hf(spec, models.source_of(llama), tmp_path / "baked")
    assert not (tmp_path / "baked").exists()


def test_spectral_study_runs_small_and_is_deterministic():
    from analyses import spectral_study as ss

    model = models.load("toy-s")
    cfg = ss.Config(n_demos=40, demo_counts=(25, 40), n_eval=16, n_control=8, max_new_tokens=6)
    a, b = (ss.run(model, cfg, name="toy-s", progress=False).to_dict() for _ in range(2))
    a.pop("cost"), b.pop("cost")
    assert a == b
    assert list(a["config"]["fit_sites"]) == ["edit-site", "resid_post"] and a["config"]["site"] == "mlp_out"
    assert len(a["methods"]) == 3 + 6 * 2 and set(a["fit"]) == {"edit-site", "resid_post"}
    assert [m["fit_site"] for m in a["methods"]] == [None] * 3 + ["edit-site"] * 6 + ["resid_post"] * 6
    assert all(m["method"].endswith("[fit at resid_post, official]") for m in a["methods"][9:])
    assert {m["edit_site"] for m in a["methods"][3:]} == {"mlp_out"}
    assert [(x["fit_site"], x["n_demos"]) for x in a["by_demos"]] == [
        ("edit-site", 25),
        ("edit-site", 40),
        ("resid_post", 25),
        ("resid_post", 40),
    ]
    assert "SEA linear [fit at mlp_out]" in ss.table([{**a, "cost": {"seconds": 0}}])
    for m in a["methods"]:
        for key in ("mc_liar", "mc_honest"):
            lo, hi = m[key]["accuracy_ci"]
            assert 0 <= lo <= m[key]["accuracy"] <= hi <= 1 and m[key]["n"] == 16
    unsteered = a["methods"][0]
    assert unsteered["mc_honest"]["accuracy"] > unsteered["mc_liar"]["accuracy"]  # the persona decides the answer
    assert set(ss.plot(a)) == {"spectral_methods", "spectral_demos"}
    with pytest.raises(WorkbenchError, match="phi_feature"):
        ss.Config(phi_feature="identity")
    with pytest.raises(WorkbenchError, match="layers must be"):
        ss.Config(layers="most")
    with pytest.raises(WorkbenchError, match="fit_sites must list distinct values among edit-site, resid_post"):
        ss.Config(fit_sites=())


def test_wilson_interval():
    from workbench.metrics import wilson

    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
