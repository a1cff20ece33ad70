"""Robustness studies (analyses/sample_size, distribution_shift, model_size, adversarial) on small settings.

The adversarial search must find the planted reversing token: a tiny Llama where only token embeddings and the
steering vector carry a direction u (attention and MLP outputs are orthogonalised against it), the unembedding
reads u as "yes" minus "no", steering adds +3u everywhere and one token's embedding is -6u: a suffix ending in that
token reverses the steered log-odds, nothing else can.
"""

import pytest

from analyses import adversarial, distribution_shift, model_size, sample_size
from tests.conftest import BACKEND, n_attached_hooks, planted_llama
from workbench import models
from workbench.errors import WorkbenchError
from workbench.interventions import AddDirection
from workbench.sites import HookSite
from workbench.tokens import tokenize


@pytest.fixture(scope="module")
def toy_s():
    return models.load("toy-s", backend=BACKEND)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    def edit(hf, tok, u):  # one token's embedding is -6u
        hf.model.embed_tokens.weight[tok.convert_tokens_to_ids("sad")] = -6 * u

    model, u, tok = planted_llama(tmp_path_factory.mktemp("adv"), 1, edit)
    yes, no = tok.convert_tokens_to_ids(["yes", "no"])
    return model, u, tok.convert_tokens_to_ids("sad"), adversarial.TokenSets((yes,), (no,))


@pytest.mark.parametrize("method", ["gcg", "epo"])
def test_search_finds_the_planted_reversing_suffix(planted, method):
    model, u, planted_id, metric = planted
    prompts = [tokenize(model, t) for t in ("the cat sees the dog", "a big red bus", "we love the sun")]
    steer = (AddDirection(HookSite(0, "resid_pre"), u, 3.0),)
    found = adversarial.search(
        model,
        prompts,
        steer,
        metric,
        method=method,
        suffix_len=3,
        steps=6,
        topk=4,
        candidates=16,
        population=4,
        ce_weight=0.01,
        seed=0,
    )
    assert found["suffix"][-1] == planted_id and found["loss"] < 0
    assert found["trace"][-1]["loss"] <= found["trace"][0]["loss"]
    assert n_attached_hooks(model) == 0 and all(p.grad is None for p in model.parameters())


def test_adversarial_run_reports_heldout_transfer_and_symmetry(toy_s):
    cfg = adversarial.Config("register", steps=2, candidates=8, n_train=3, n_heldout=6, max_new_tokens=6)
    a = adversarial.run(toy_s, cfg, name="toy-s", others={"toy-s-again": toy_s}, progress=False).to_dict()
    b = adversarial.run(toy_s, cfg, name="toy-s", progress=False).to_dict()
    assert a["suffix"]["tokens"] == b["suffix"]["tokens"] and a["heldout"] == b["heldout"]  # seeded
    assert len(a["suffix"]["tokens"]) == 4 and 0 <= a["heldout"]["reversal_rate"] <= 1
    assert a["transfer"][0]["model"] == "toy-s-again" and a["transfer"][0]["n"] == 6
    sy = a["symmetry"]
    assert sy["mean_logodds"]["+s"] > sy["mean_logodds"]["0"] > sy["mean_logodds"]["-s"]
    assert set(adversarial.plot(a)) == {"adversarial_search"}
    with pytest.raises(WorkbenchError, match="truth evidence"):
        adversarial.Config("truth")


def test_sample_size_full_draw_equals_the_full_direction(toy_s):
    cfg = sample_size.Config("register", ns=(1, 5, 40), resamples=2, pool=40, n_prompts=8, max_new_tokens=6)
    r = sample_size.run(toy_s, cfg, name="toy-s", progress=False).to_dict()
    assert [x["n"] for x in r["rows"]] == [1, 5, 40]
    full = r["rows"][-1]
    assert full["cosine_mean"] == pytest.approx(1.0, abs=1e-5)  # N = pool draws every pair
    assert full["effect_mean"] == pytest.approx(r["full"]["effect"], abs=1e-9)
    assert r["rows"][0]["cosine_mean"] < full["cosine_mean"]
    rows = [
        {"n": 1, "effect_mean": 0.1, "cosine_mean": 0.5},
        {"n": 10, "effect_mean": 0.5, "cosine_mean": 0.95},
        {"n": 80, "effect_mean": 0.6, "cosine_mean": 0.99},
    ]
    assert sample_size.saturation(rows, 0.6) == 80 and sample_size.saturation(rows, 0.55) == 10
    with pytest.raises(WorkbenchError, match="ns must be"):
        sample_size.Config(ns=(1, 1000), pool=640)


def test_distribution_shift_families(toy_s):
    cfg = distribution_shift.Config("register", families=("id", "short", "qa"), n_prompts=8, max_new_tokens=6)
    r = distribution_shift.run(toy_s, cfg, name="toy-s", progress=False).to_dict()
    assert [x["family"] for x in r["families"]] == ["id", "short", "qa"]
    for x in r["families"]:
        assert x["effect"] == pytest.approx(x["steered"] - x["unsteered"])
        assert x["steered_ci"][0] <= x["steered"] <= x["steered_ci"][1]
    idr = r["families"][0]["ratio_to_id"]
    assert idr is None or idr == pytest.approx(1.0)
    with pytest.raises(WorkbenchError, match="must include 'id'"):
        distribution_shift.Config(families=("short",))


def test_model_size_uses_relative_strengths(toy_s):
    cfg = model_size.Config("register", relative_strengths=(0.0, 0.5), n_prompts=6, max_new_tokens=6)
    r = model_size.run({"toy-s": toy_s}, cfg, progress=False).to_dict()
    m = r["models"][0]
    assert m["layer"] == 1 and [round(c["relative_strength"], 2) for c in m["cells"]] == [0.0, 0.5]
    assert m["cells"][0]["kl"] == 0.0 and m["cells"][1]["kl"] > 0
    assert model_size.slope([0, 1, 2], [0, 2, 4]) == pytest.approx(2.0)
    assert set(model_size.plot(r)) == {
        "model_size_kl",
        "model_size_perplexity",
        "model_size_grammaticality",
        "model_size_target_rate",
    }
