import pytest
import torch

from tests.conftest import n_attached_hooks
from workbench.errors import WorkbenchError
from workbench.generate import generate, generate_at_strengths
from workbench.interventions import Ablate, AddDirection
from workbench.positions import Positions
from workbench.sites import HookSite

PROMPTS = ["the cat", "a big red dog is very", "we"]  # different lengths: left padding matters


def steer(model, policy=Positions(), scale=3.0, layer=1):
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    return AddDirection(HookSite(layer), v, scale, policy)


@pytest.mark.parametrize("policy", [Positions(), Positions("from", -1), Positions("from", 2), Positions("generated")])
def test_cached_generation_steers_exactly_like_full_recompute(model, policy):
    kw = dict(max_new_tokens=6, temperature=0.0, return_logits=True)
    cached = generate(model, PROMPTS, steer(model, policy), **kw)
    full = generate(model, PROMPTS, steer(model, policy), use_cache=False, **kw)
    assert cached.tokens == full.tokens
    torch.testing.assert_close(cached.logits, full.logits, atol=1e-4, rtol=1e-4)
    assert n_attached_hooks(model) == 0


def test_batched_rows_equal_single_prompt_runs(model):
    iv = steer(model)
    batch = generate(model, PROMPTS, iv, max_new_tokens=5, temperature=0.0, return_logits=True)
    for i, p in enumerate(PROMPTS):
        one = generate(model, [p], iv, max_new_tokens=5, temperature=0.0, return_logits=True)
        assert one.tokens[0] == batch.tokens[i]
        torch.testing.assert_close(one.logits[0], batch.logits[i], atol=1e-4, rtol=1e-4)


def test_steering_changes_logits_and_generated_only_leaves_step_one(llama):
    base = generate(llama, PROMPTS, max_new_tokens=3, temperature=0.0, return_logits=True)
    allpos = generate(llama, PROMPTS, steer(llama), max_new_tokens=3, temperature=0.0, return_logits=True)
    gen_only = generate(
        llama, PROMPTS, steer(llama, Positions("generated")), max_new_tokens=3, temperature=0.0, return_logits=True
    )
    assert (allpos.logits[:, 0] - base.logits[:, 0]).abs().max() > 1e-2
    torch.testing.assert_close(gen_only.logits[:, 0], base.logits[:, 0], atol=1e-5, rtol=1e-5)
    assert (gen_only.logits[:, 1] - base.logits[:, 1]).abs().max() > 1e-2


def test_strengths_in_one_batch_equal_one_run_per_strength(model):
    iv = steer(model)
    scales = [-2.0, 0.0, 4.0]
    batched = generate_at_strengths(model, PROMPTS, iv, scales, max_new_tokens=5, temperature=0.0, return_logits=True)
    for s, g in zip(scales, batched):
        one = generate(
            model, PROMPTS, AddDirection(iv.site, iv.vector, s), max_new_tokens=5, temperature=0.0, return_logits=True
        )
        assert one.tokens == g.tokens
        torch.testing.assert_close(one.logits, g.logits, atol=1e-4, rtol=1e-4)


def test_sampling_is_seeded_and_bans_special_tokens(llama):
    a = generate(llama, PROMPTS, max_new_tokens=12, seed=3, top_k=20, top_p=0.9)
    b = generate(llama, PROMPTS, max_new_tokens=12, seed=3, top_k=20, top_p=0.9)
    c = generate(llama, PROMPTS, max_new_tokens=12, seed=4, top_k=20, top_p=0.9)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    tok = llama.tokenizer
    assert not any(t in (tok.pad_token_id, tok.bos_token_id) for row in a.tokens for t in row)
    assert all(isinstance(t, str) for t in a.texts)


def test_ablation_during_generation(llama):
    g = generate(llama, PROMPTS, Ablate(HookSite(0), torch.randn(32)), max_new_tokens=3, temperature=0.0)
    assert len(g.tokens) == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompts="the cat"), "non-empty list"),
        (dict(prompts=[]), "non-empty list"),
        (dict(max_new_tokens=0), "max_new_tokens must be"),
        (dict(temperature=-1.0), "temperature 0 \\(greedy\\) or >= 1e-3"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_new_tokens=500), "exceeds the model's context"),
    ],
)
def test_bad_arguments(llama, kwargs, match):
    args = {"prompts": PROMPTS, **kwargs}
    with pytest.raises(WorkbenchError, match=match):
        generate(llama, args.pop("prompts"), **args)
    assert n_attached_hooks(llama) == 0


def test_strength_sweep_arguments(llama):
    with pytest.raises(WorkbenchError, match="scales is empty"):
        generate_at_strengths(llama, PROMPTS, steer(llama), [])
