import math

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.forward import last_logits
from workbench.hooks import applied
from workbench.interventions import AddDirection
from workbench.metrics import (
    ab_probability,
    continuation_perplexity,
    fluency_at_strengths,
    kl_divergence,
    mean_ci,
    perplexity,
    token_logprobs,
    wilson,
)
from workbench.pairs import ContrastPairs, join
from workbench.sites import HookSite
from workbench.tokens import tokenize

AB = ContrastPairs.from_list(
    [
        {
            "question": "question is the cat good ? ( A ) yes ( B ) no answer (",
            "answer_matching_behavior": "A )",
            "answer_not_matching_behavior": "B )",
        },
        {
            "question": "question is the sky red ? ( A ) no ( B ) yes answer (",
            "answer_matching_behavior": "B )",
            "answer_not_matching_behavior": "A )",
        },
    ]
)
TEXTS = ["the cat sees the dog .", "we love the big blue sea and the sun ."]


def test_ab_probability_is_caas_normalised_letter_probability(model):
    got = ab_probability(model, AB)
    for i, pair in enumerate(AB.pairs):
        ctx = tokenize(model, pair.prompt)
        with torch.no_grad():
            logp = model(torch.tensor([ctx]))[0, -1].log_softmax(-1)
        a, b = tokenize(model, pair.texts[0])[len(ctx)], tokenize(model, pair.texts[1])[len(ctx)]
        expected = logp[a].exp() / (logp[a].exp() + logp[b].exp())
        assert abs(float(got[i]) - float(expected)) < 1e-5


def test_steering_along_the_letter_difference_raises_the_score(llama):
    a, b = (llama.tokenizer.convert_tokens_to_ids(t) for t in ("A", "B"))
    w_u = llama.W_U  # [d_model d_vocab]
    v = (w_u[:, a] - w_u[:, b]).detach()
    final = HookSite(llama.cfg.n_layers - 1)
    up = ab_probability(llama, AB, AddDirection(final, v, 5.0))
    down = ab_probability(llama, AB, AddDirection(final, v, -5.0))
    assert up[0] > ab_probability(llama, AB)[0] > down[0]


def test_perplexity_and_kl(model):
    lps = token_logprobs(model, TEXTS)
    assert [len(x) for x in lps] == [len(tokenize(model, t)) - 1 for t in TEXTS]
    ppl = perplexity(model, TEXTS)
    assert math.isclose(ppl, math.exp(-float(torch.cat(lps).mean())), rel_tol=1e-6)
    v = torch.randn(model.cfg.d_model)
    assert kl_divergence(model, TEXTS, AddDirection(HookSite(0), v, 0.0)) < 1e-9
    small = kl_divergence(model, TEXTS, AddDirection(HookSite(0), v, 0.5))
    big = kl_divergence(model, TEXTS, AddDirection(HookSite(0), v, 5.0))
    assert 0 < small < big


def test_bad_inputs(llama):
    with pytest.raises(WorkbenchError, match="non-empty list"):
        perplexity(llama, "the cat")
    with pytest.raises(WorkbenchError, match="at least two tokens"):
        perplexity(llama, [""])
    with pytest.raises(WorkbenchError, match="prefix of the other"):
        ab_probability(llama, ContrastPairs.from_list([("the cat", "the cat is")]))


def test_continuation_perplexity_scores_only_the_continuation(llama):
    prompts, conts = ["the cat is", "a dog"], ["very good", "sees the sun ."]
    lps = token_logprobs(llama, ["the cat is very good", "a dog sees the sun ."])
    n_cont = [2, 4]
    manual = torch.cat([lp[-n:] for lp, n in zip(lps, n_cont)])
    assert continuation_perplexity(llama, prompts, conts) == pytest.approx(math.exp(float(-manual.mean())), rel=1e-5)
    with pytest.raises(WorkbenchError, match="same length"):
        continuation_perplexity(llama, prompts, conts[:1])


def test_fluency_at_strengths_equals_perplexity_and_kl_per_strength(model):
    prompts = ["the cat is", "a dog", "we love the big blue sea and"]
    scales = [0.0, 2.0, -1.5]
    conts = [
        ["very good", "sees the sun .", "the sun ."],
        ["blue", "runs and runs and runs .", "the moon"],
        ["a cat", "is red", "the"],
    ]
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    iv = AddDirection(HookSite(1), v, 1.0)
    got = fluency_at_strengths(model, prompts, conts, iv, scales, batch_size=4)  # batches mix strengths
    for s, c, (ppl, kl) in zip(scales, conts, got):
        assert ppl == pytest.approx(continuation_perplexity(model, prompts, c), rel=1e-5)
        full = [join(p, x) for p, x in zip(prompts, c)]
        want = kl_divergence(model, full, AddDirection(HookSite(1), v, s))
        assert kl == pytest.approx(want, rel=1e-4, abs=1e-9)
    assert got[0][1] == 0.0 and got[1][1] > 0 and got[2][1] > 0
    with pytest.raises(WorkbenchError, match="one list of continuations per scale"):
        fluency_at_strengths(model, prompts, conts[:2], iv, scales)
    with pytest.raises(WorkbenchError, match="one string per prompt"):
        fluency_at_strengths(model, prompts, [c[:2] for c in conts], iv, scales)
    with pytest.raises(WorkbenchError, match="non-empty list"):
        fluency_at_strengths(model, "the cat", conts, iv, scales)


def test_last_logits_equal_one_unpadded_forward_per_text(llama):
    v = torch.randn(llama.cfg.d_model, generator=torch.Generator().manual_seed(2))
    iv = AddDirection(HookSite(1), v, scale=2.0)
    got = last_logits(llama, [TEXTS[0], tokenize(llama, TEXTS[1])], iv, batch_size=1)
    both = last_logits(llama, TEXTS, iv)  # one right-padded batch
    for i, text in enumerate(TEXTS):
        with torch.no_grad(), applied(llama, iv):
            want = llama(torch.tensor([tokenize(llama, text)]))[0, -1].float()
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=0)
        torch.testing.assert_close(both[i], want, atol=1e-5, rtol=0)
    with pytest.raises(WorkbenchError, match="non-empty list"):
        last_logits(llama, "the cat")


def test_intervals():
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    m, (a, b) = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and a == pytest.approx(2.0 - 1.96 / math.sqrt(3)) and b == pytest.approx(2.0 + 1.96 / math.sqrt(3))
    assert mean_ci([4.0]) == (4.0, [4.0, 4.0])
