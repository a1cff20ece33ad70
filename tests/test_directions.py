import json

import numpy as np
import pytest
import torch

from workbench import models
from workbench.activations import ActivationSet, collect_pairs
from workbench.directions import (
    RIDGE_GRID,
    DirectionSet,
    compute_directions,
    gram_spectrum,
    mean_difference,
    pca_direction,
    probe_direction,
    ridge_probe,
)
from workbench.errors import WorkbenchError
from workbench.pairs import ContrastPairs
from workbench.sites import HookSite

FP = models.Fingerprint("LlamaForCausalLM", 64, 2, 10, "v", "w")


def planted(n=500, d=64, noise=0.2, seed=0):
    """Pairs whose activations differ by a planted direction ``delta`` plus isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    delta = torch.randn(d, generator=g)
    delta = 2.0 * delta / delta.norm()
    base = 0.3 * torch.randn(n, d, generator=g)
    pos = base + delta / 2 + noise * torch.randn(n, d, generator=g)
    neg = base - delta / 2 + noise * torch.randn(n, d, generator=g)
    return pos, neg, delta


@pytest.mark.parametrize("fit", [mean_difference, pca_direction, probe_direction])
def test_planted_direction_is_recovered(fit):
    pos, neg, delta = planted()
    v = fit(pos, neg)
    assert torch.cosine_similarity(v, delta, dim=0) >= 0.99
    assert abs(v.norm() / delta.norm() - 1) < 0.1  # every method scaled to the mean pair difference


def test_pca_sign_follows_the_mean():
    pos, neg, delta = planted()
    assert torch.cosine_similarity(pca_direction(neg, pos), -delta, dim=0) >= 0.99


def _mean_minority(n_big=40, n_small=60, d=8, seed=0):
    """Pairs where a minority of large differences along e0 outweighs a majority of small opposite ones."""
    g = torch.Generator().manual_seed(seed)
    e0 = torch.zeros(d)
    e0[0] = 1.0
    diff = torch.cat(
        [5.0 * e0 + 0.1 * torch.randn(n_big, d, generator=g), -1.0 * e0 + 0.1 * torch.randn(n_small, d, generator=g)]
    )
    neg = torch.randn(n_big + n_small, d, generator=g)
    return neg + diff, neg, e0


def test_pca_is_the_mean_component_on_the_uncentred_axis_not_repengs_pca_diff():
    pos, neg, e0 = _mean_minority()
    diff = (pos - neg).double().numpy()
    u = np.linalg.svd(diff, full_matrices=False)[2][0]  # uncentred first right singular vector
    ours_np = u * np.mean(diff @ u)  # the mean pair difference's component along it
    ours = pca_direction(pos, neg)
    np.testing.assert_allclose(ours.double().numpy(), ours_np, rtol=0, atol=1e-5)
    assert float(ours @ e0) > 0 and float(((pos - neg) @ ours > 0).float().mean()) == pytest.approx(
        0.4
    )  # mean sign, 40% of pairs

    # repeng read_representations(method="pca_diff"): sklearn PCA (centred) on h[::2] - h[1::2], unit length, sign by
    # majority vote of the pairs' projections of the raw hidden states
    h = torch.stack([pos, neg], 1).reshape(-1, pos.shape[1]).double().numpy()
    train = h[::2] - h[1::2]
    centred = train - train.mean(0, keepdims=True)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    projected = h @ direction / np.linalg.norm(direction)
    smaller = np.mean([projected[i] < projected[i + 1] for i in range(0, len(h), 2)])
    larger = np.mean([projected[i] > projected[i + 1] for i in range(0, len(h), 2)])
    if smaller > larger:
        direction = -direction
    assert abs(np.linalg.norm(direction) - 1) < 1e-9 and float(direction @ e0.double().numpy()) < 0  # the other sign


def acts_of(pos, neg):
    return ActivationSet((HookSite(0), HookSite(1)), torch.stack([pos, neg]), torch.stack([neg, pos]), "last", "h", FP)


@pytest.mark.parametrize("method", ["mean", "pca", "probe"])
def test_quality_on_held_out_pairs(method):
    pos, neg, delta = planted()
    ds = compute_directions(acts_of(pos, neg), method)
    good, flipped = ds.directions
    assert good.quality.probe_accuracy >= 0.97 and good.quality.auroc >= 0.99 and good.quality.effect_size > 3
    assert torch.allclose(flipped.vector, -good.vector, atol=1e-4)
    weak = compute_directions(acts_of(*planted(noise=30.0)[:2]), method).directions[0]
    assert weak.quality.auroc < 0.9


@pytest.mark.parametrize("n, d", [(24, 6), (20, 30)])  # both sides of the Gram/covariance switch
def test_ridge_probe_picks_the_penalty_of_least_leave_one_out_error(n, d):
    """The closed-form leave-one-out search picks the grid penalty that refitting without each example would,
    and its weights are the explicit ridge solution at that penalty."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g).double()
    y = ((x[:, 0] + torch.randn(n, generator=g).double()) > 0).double()  # partly decodable: a penalty inside the grid
    w_fast, b_fast, rel = ridge_probe(x, y)
    assert 1e-8 < rel < 100
    t = 2 * y - 1
    unit = float((x - x.mean(0)).square().sum()) / n

    def fit(xs, ts, lam):  # explicit ridge with an unpenalised intercept
        mu, tm = xs.mean(0), ts.mean()
        w = torch.linalg.solve((xs - mu).T @ (xs - mu) + lam * torch.eye(d, dtype=xs.dtype), (xs - mu).T @ (ts - tm))
        return w, tm - mu @ w

    def loo_error(lam):
        errs = []
        for i in range(n):
            keep = torch.arange(n) != i
            w, b = fit(x[keep], t[keep], lam)
            errs.append(float(t[i] - (x[i] @ w + b)) ** 2)
        return sum(errs) / n

    errors = {r: loo_error(r * unit) for r in RIDGE_GRID.tolist()}
    assert min(errors, key=errors.get) == pytest.approx(rel)
    w, b = fit(x, t, rel * unit)
    assert torch.allclose(w_fast, w, atol=1e-10) and torch.allclose(b_fast, b, atol=1e-10)


def test_spectrum_gives_the_threads_back():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gram_spectrum(torch.randn(8, 5, dtype=torch.float64))
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError):  # torch.linalg.LinAlgError
            gram_spectrum(torch.full((8, 5), float("nan"), dtype=torch.float64))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_quality_probe_reads_a_low_variance_feature_and_not_noise():
    """A label carried by one quiet axis among loud ones is decodable (a fixed penalty misses it); shuffled
    labels read at chance."""
    g = torch.Generator().manual_seed(2)
    n, d = 300, 96
    loud = 3.0 * torch.randn(2 * n, d, generator=g)
    label = torch.cat([torch.ones(n), torch.zeros(n)])
    loud[:, 0] = 0.05 * (2 * label - 1) + 0.01 * torch.randn(2 * n, generator=g)
    ds = compute_directions(ActivationSet((HookSite(0),), loud[:n][None], loud[n:][None], "last", "h", FP))
    assert ds.directions[0].quality.probe_accuracy >= 0.97
    shuffled = loud[torch.randperm(2 * n, generator=g)]
    q = (
        compute_directions(ActivationSet((HookSite(0),), shuffled[:n][None], shuffled[n:][None], "last", "h", FP))
        .directions[0]
        .quality
    )
    assert 0.35 <= q.probe_accuracy <= 0.65


def test_too_few_pairs_gives_no_held_out_metrics():
    pos, neg, _ = planted(n=3)
    q = compute_directions(acts_of(pos, neg)).directions[0].quality
    assert q.auroc is None and q.probe_accuracy is None and q.norm > 0


def test_bad_arguments():
    pos, neg, _ = planted(n=10)
    with pytest.raises(WorkbenchError, match="method must be one of"):
        compute_directions(acts_of(pos, neg), "svm")
    with pytest.raises(WorkbenchError, match="holdout"):
        compute_directions(acts_of(pos, neg), holdout=1.0)


@pytest.fixture
def saved(llama, tmp_path):
    pairs = ContrastPairs.from_list(
        [
            ("the cat is good", "the cat is bad"),
            ("a dog is happy", "a dog is sad"),
            ("we love the sea", "we hate the sea"),
            ("the sun is big", "the sun is small"),
        ]
    )
    ds = compute_directions(collect_pairs(llama, pairs, progress=False))
    return ds, ds.save(tmp_path / "dirs")


def test_save_load_round_trip(llama, saved):
    ds, path = saved
    back = DirectionSet.load(path, llama)
    assert [d.site for d in back.directions] == [d.site for d in ds.directions]
    for a, b in zip(ds.directions, back.directions):
        assert torch.equal(a.vector, b.vector)
    assert back.fingerprint == ds.fingerprint and back.data_hash == ds.data_hash and back.n_pairs == 4
    meta = json.loads((path / "directions.json").read_text())
    assert meta["directions"][1]["site"] == {"layer": 1, "kind": "resid_post", "hook": "blocks.1.hook_resid_post"}
    assert back.at(2).site.layer == 2
    with pytest.raises(WorkbenchError, match=r"no resid_post direction at layer 7; this set has layers \[0, 1, 2\]"):
        back.at(7)


def test_load_rejects_wrong_model_and_damaged_files(llama, gpt2, saved, tmp_path):
    _, path = saved
    with pytest.raises(WorkbenchError, match="made for another model.*architecture"):
        DirectionSet.load(path, gpt2)
    meta = json.loads((path / "directions.json").read_text())
    (path / "directions.json").write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(WorkbenchError, match="schema_version 99 is not supported"):
        DirectionSet.load(path)
    (path / "directions.json").write_text(json.dumps(meta))
    (path / "directions.safetensors").write_bytes(b"garbage")
    with pytest.raises(WorkbenchError, match="not a readable safetensors"):
        DirectionSet.load(path)
    (path / "directions.json").write_text("{not json")
    with pytest.raises(WorkbenchError, match="not valid JSON"):
        DirectionSet.load(path)
    with pytest.raises(WorkbenchError, match="not a directions folder"):
        DirectionSet.load(tmp_path / "missing")


def test_load_rejects_non_finite_and_missing_tensors(llama, saved):
    from safetensors.torch import save_file

    ds, path = saved
    tensors = {d.site.name: d.vector.clone() for d in ds.directions}
    tensors["blocks.0.hook_resid_post"][3] = float("nan")
    save_file(tensors, str(path / "directions.safetensors"))
    with pytest.raises(WorkbenchError, match="non-finite"):
        DirectionSet.load(path)
    del tensors["blocks.0.hook_resid_post"]
    save_file(tensors, str(path / "directions.safetensors"))
    with pytest.raises(WorkbenchError, match="missing"):
        DirectionSet.load(path)


def test_failed_save_leaves_nothing(saved, tmp_path, monkeypatch):
    ds, _ = saved
    import workbench.directions as mod

    monkeypatch.setattr(mod, "write_json", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        ds.save(tmp_path / "partial")
    assert not (tmp_path / "partial").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial")]
