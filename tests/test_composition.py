"""DAC (workbench/composition.py): in-context vectors, step-wise application, dynamic strengths, composition."""

import pytest
import torch

from tests.conftest import BACKEND, n_attached_hooks
from workbench import models
from workbench.composition import StepVectors, dynamic_alpha, generate_composed, icv
from workbench.errors import WorkbenchError
from workbench.sites import HookSite
from workbench.tokens import tokenize
from workbench.toy.prompts import few_shot_prompts, prompts, random_attributes

STRATEGIES = ["fixed", "start", "diminishing", "dynamic"]


@pytest.fixture(scope="module")
def toy_s():
    return models.load("toy-s", backend=BACKEND)


@pytest.fixture(scope="module")
def language(toy_s):
    a = [p.text for p in few_shot_prompts("language", "xx", n=8, shots=3, seed=0)]
    b = [p.text for p in few_shot_prompts("language", "en", n=8, shots=3, seed=0)]
    return icv(toy_s, a, b, steps=8)


@pytest.fixture(scope="module")
def tests_prompts():
    import random

    rng = random.Random(3)
    return [
        p.text
        for _ in range(6)
        for p in prompts(random_attributes(rng, language="en"), n=1, seed=rng.randrange(1000), family="short")
    ]


def _seed_step_means(model, prompts_, steps):
    """Transcription of DAC's ``extract_activations`` + ``get_mean_activations`` (src/extraction.py): per prompt,
    a full forward per step, the o_proj input (hook_z) of every layer at the last position, the plain argmax
    appended, a break after EOS; then a per-step mean over the prompts that reached the step."""
    eos = models.tokenizer_of(model).eos_token_id
    names = [HookSite(layer, "z").name for layer in range(model.cfg.n_layers)]
    runs, first = [], []
    for text in prompts_:
        toks, acts = list(tokenize(model, text)), []
        for _ in range(steps):
            with torch.no_grad():
                logits, cache = model.run_with_cache(torch.tensor([toks]), names_filter=lambda n: n in names)
            acts.append(torch.stack([cache[n][0, -1].reshape(-1).float() for n in names]))
            nxt = int(logits[0, -1].argmax())
            if len(toks) == len(tokenize(model, text)):
                first.append(nxt)
            toks.append(nxt)
            if nxt == eos:
                break
        runs.append(torch.stack(acts))
    mean = torch.zeros(steps, *runs[0].shape[1:])
    for step in range(steps):
        mean[step] = torch.stack([r[step] for r in runs if step < r.shape[0]]).mean(0)
    return mean, first


def test_icv_is_the_seeds_extraction_and_bans_nothing_by_default(toy_s):
    a = [p.text for p in few_shot_prompts("language", "xx", n=5, shots=4, seed=0)]
    b = [p.text for p in few_shot_prompts("language", "en", n=5, shots=4, seed=0)]
    (ma, first_a), (mb, first_b) = _seed_step_means(toy_s, a, 6), _seed_step_means(toy_s, b, 6)
    got = icv(toy_s, a, b, steps=6)
    torch.testing.assert_close(got.deltas, ma - mb, atol=2e-5, rtol=1e-4)
    bos = models.tokenizer_of(toy_s).bos_token_id
    assert bos in first_a + first_b  # the unbanned argmax starts a new document here, so the ban matters
    banned = icv(toy_s, a, b, steps=6, ban_special=True)
    assert float((banned.deltas - got.deltas).abs().max()) > 1e-3
    with pytest.raises(WorkbenchError, match="kind must be 'z'"):
        icv(toy_s, a, b, kind="mlp_out")


def test_seed_normalisation_is_kl_div_batchmean_on_the_nucleus():
    """DAC's ``F.kl_div(Q, P, log_target=True, reduction='batchmean')`` on 1-D log-probabilities over S."""
    g = torch.Generator().manual_seed(0)
    lo, hi = torch.randn(5, 40, generator=g) * 3, torch.randn(5, 40, generator=g) * 3
    for top_p in (0.5, 0.9):
        got = dynamic_alpha(lo, hi, top_p=top_p, alpha_max=100.0, normalisation="seed")
        for row in range(5):
            masks = []
            for x in (lo[row], hi[row]):
                probs, idx = x.softmax(-1).sort(descending=True)
                keep = torch.zeros(40, dtype=torch.bool)
                keep[idx[: int((probs.cumsum(-1) < top_p).sum()) + 1]] = True
                masks.append(keep)
            s = masks[0] | masks[1]
            p, q = lo[row][s].log_softmax(-1), hi[row][s].log_softmax(-1)
            seed = torch.nn.functional.kl_div(q, p, log_target=True, reduction="batchmean")
            assert float(got[row]) == pytest.approx(min(max(float(seed), 0.0), 100.0), rel=1e-5, abs=1e-7)


def test_icv_shapes_and_zero_for_identical_sets(toy_s, language):
    n_layers, width = toy_s.cfg.n_layers, toy_s.cfg.n_heads * toy_s.cfg.d_head
    assert language.deltas.shape == (8, n_layers, width) and float(language.deltas.norm()) > 0
    same = [p.text for p in few_shot_prompts("language", "en", n=4, shots=2, seed=1)]
    assert float(icv(toy_s, same, same, steps=3).deltas.abs().max()) == 0.0
    with pytest.raises(WorkbenchError, match="parallel"):
        icv(toy_s, same, same[:2])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_kv_cache_and_full_recompute_give_the_same_tokens(toy_s, language, tests_prompts, strategy):
    kw = dict(alpha=1.5, max_new_tokens=8)
    cached = generate_composed(toy_s, tests_prompts, [language], strategy, **kw)
    full = generate_composed(toy_s, tests_prompts, [language], strategy, use_cache=False, **kw)
    assert cached.tokens == full.tokens
    torch.testing.assert_close(cached.alphas, full.alphas, atol=1e-4, rtol=1e-4)
    assert n_attached_hooks(toy_s) == 0


def test_dynamic_alpha_is_zero_for_a_zero_vector_and_bounded(toy_s, language, tests_prompts):
    zero = StepVectors(torch.zeros_like(language.deltas))
    g = generate_composed(toy_s, tests_prompts, [zero], "dynamic", max_new_tokens=6)
    assert float(g.alphas.abs().max()) == 0.0
    big = StepVectors(language.deltas * 50)
    g = generate_composed(toy_s, tests_prompts, [big], "dynamic", alpha_max=1.25, max_new_tokens=6)
    assert float(g.alphas.max()) == pytest.approx(1.25) and float(g.alphas.min()) >= 0.0
    assert float(g.kl.max()) > 1.25  # the raw KL exceeded the bound and was clipped


def test_composing_one_property_equals_the_single_property_path(toy_s, language, tests_prompts):
    zero = StepVectors(torch.zeros_like(language.deltas))
    for strategy in ("fixed", "dynamic"):
        one = generate_composed(toy_s, tests_prompts, [language], strategy, alpha=1.5, max_new_tokens=8)
        two = generate_composed(toy_s, tests_prompts, [language, zero], strategy, alpha=[1.5, 1.5], max_new_tokens=8)
        assert one.tokens == two.tokens
        torch.testing.assert_close(one.alphas[:, 0], two.alphas[:, 0])


def test_schedules(toy_s, language, tests_prompts):
    start = generate_composed(toy_s, tests_prompts, [language], "start", alpha=2.0, max_new_tokens=8).alphas
    assert float(start[:, 0, 0].min()) == 2.0 and float(start[:, 0, 1:].abs().max()) == 0.0
    dim = generate_composed(toy_s, tests_prompts, [language], "diminishing", alpha=2.0, max_new_tokens=8).alphas
    torch.testing.assert_close(dim[0, 0], 2.0 * (1 - torch.arange(8) / 8))


def test_dynamic_alpha_math():
    lo = torch.tensor([[4.0, 3.0, 0.0, -5.0]])
    assert float(dynamic_alpha(lo, lo)) == 0.0
    hi = torch.tensor([[0.0, 3.0, 4.0, -5.0]])
    s = torch.tensor([[True, True, True, False]])  # union of both top-0.9 sets
    p = lo.masked_fill(~s, -1e9).log_softmax(-1)
    q = hi.masked_fill(~s, -1e9).log_softmax(-1)
    kl = float((p.exp() * (p - q))[s].sum())
    assert float(dynamic_alpha(lo, hi, alpha_max=100.0)) == pytest.approx(kl, rel=1e-5)
    assert float(dynamic_alpha(lo, hi, alpha_max=100.0, normalisation="seed")) == pytest.approx(kl / 3, rel=1e-5)
    assert float(dynamic_alpha(lo, hi, alpha_max=0.5)) == 0.5
    with pytest.raises(WorkbenchError, match="normalisation"):
        dynamic_alpha(lo, hi, normalisation="mean")


def test_generate_composed_errors(toy_s, language, tests_prompts):
    with pytest.raises(WorkbenchError, match="strategy"):
        generate_composed(toy_s, tests_prompts, [language], "adaptive")
    with pytest.raises(WorkbenchError, match="cover 8 steps"):
        generate_composed(toy_s, tests_prompts, [language], max_new_tokens=9)
    with pytest.raises(WorkbenchError, match="alphas for 1"):
        generate_composed(toy_s, tests_prompts, [language], "fixed", alpha=[1.0, 2.0])


def test_composition_study_small(toy_s):
    from analyses import composition

    cfg = composition.Config(
        properties=("language", "register"),
        pairs=(("language", "register"),),
        fixed_alphas=(1.0,),
        n_icl=6,
        n_test=6,
        steps=6,
    )
    r = composition.run(toy_s, cfg, name="toy-s", progress=False).to_dict()
    assert {x["strategy"] for x in r["single"]} == {"fixed", "start", "diminishing", "dynamic", "dynamic-lagged"}
    assert [(x["strategy"], x["normalisation"]) for x in r["composed"]] == [
        ("fixed", None),
        ("dynamic", "none"),
        ("dynamic-lagged", "none"),
        ("dynamic", "seed"),
        ("dynamic-lagged", "seed"),
    ]
    assert list(r["config"]["normalisations"]) == ["none", "seed"] and r["config"]["ban_special"] is False
    assert set(r["traces"]) == {"none", "seed"}
    assert set(r["traces"]["seed"]) == {"language", "register", "language+register"}

    def dyn(norm):
        return [x["mean_alpha"] for x in r["single"] if x["strategy"] == "dynamic" and x["normalisation"] == norm]

    assert dyn("seed") != dyn("none")  # dividing by |S| changes the strengths
    assert "dynamic [KL/|S|]" in composition.table([r]) and "bans nothing" in composition.table([r])
    assert all(0 <= v <= 1 for x in r["single"] + r["composed"] for v in x["accuracy"].values())
    assert set(composition.plot(r)) == {"dac_tradeoff", "dac_alpha_traces"}
    with pytest.raises(WorkbenchError, match="normalisations must list distinct values among none, seed"):
        composition.Config(normalisations=("none", "none"))


def test_lagged_dynamic_is_one_pass_per_step_and_cache_exact(toy_s, language, tests_prompts):
    kw = dict(max_new_tokens=8, timing="lagged")
    cached = generate_composed(toy_s, tests_prompts, [language], "dynamic", **kw)
    full = generate_composed(toy_s, tests_prompts, [language], "dynamic", use_cache=False, **kw)
    assert cached.tokens == full.tokens
    torch.testing.assert_close(cached.alphas, full.alphas, atol=1e-4, rtol=1e-4)
    assert float(cached.alphas[:, 0, 0].min()) == 2.0  # alpha_max at the first step, then the previous step's KL
    torch.testing.assert_close(cached.alphas[:, 0, 1:], cached.kl[:, 0, :-1].clamp(0, 2.0))
    zero = StepVectors(torch.zeros_like(language.deltas))
    z = generate_composed(toy_s, tests_prompts, [zero], "dynamic", **kw)
    assert float(z.alphas[:, :, 1:].abs().max()) == 0.0
    with pytest.raises(WorkbenchError, match="timing"):
        generate_composed(toy_s, tests_prompts, [language], "dynamic", timing="late")
