"""SEA: fitting (planted subspaces, projection algebra, k = d identity), the official code's reference mode, the
low-rank intervention and its deployed forms (apply_hf everywhere, baked weights for the linear mode)."""

import pytest
import torch

from tests.conftest import n_attached_hooks
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
    assert len(a["methods"]) == 9 and [x["n_demos"] for x in a["by_demos"]] == [25, 40]
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


def test_wilson_interval():
    from workbench.metrics import wilson

    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
