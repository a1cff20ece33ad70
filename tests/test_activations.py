import pytest
import torch

from workbench.activations import collect, collect_pairs, pair_spans
from workbench.errors import WorkbenchError
from workbench.hooks import applied
from workbench.pairs import ContrastPairs
from workbench.sites import HookSite, layer_sites
from workbench.tokens import tokenize

PAIRS = ContrastPairs.from_list(
    [
        {"prompt": "the cat is", "positive": "very good", "negative": "bad"},
        {"prompt": "a dog", "positive": "is happy", "negative": "is sad and small"},
        {"positive": "we love the big sea", "negative": "we hate the sea"},
        {"positive": "question ( A", "negative": "question ( B"},
    ]
)


def reference(model, text, site, span):
    """Unbatched, uncached, straight from run_with_cache: the ground truth."""
    tokens = torch.tensor([tokenize(model, text)])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return cache[site.name][0, span[0] : span[1]].mean(0)


@pytest.mark.parametrize("position", ["last", "answer", "mean"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_batched_padded_collection_equals_unbatched(model, position, padding):
    pairs = ContrastPairs(PAIRS.pairs[:3] if position == "answer" else PAIRS.pairs)
    acts = collect_pairs(model, pairs, position=position, batch_size=3, padding=padding, progress=False)
    _, _, pos_spans, neg_spans = pair_spans(model, pairs, position)
    for k, site in enumerate(acts.sites):
        for i, pair in enumerate(pairs.pairs):
            pos_text, neg_text = pair.texts
            torch.testing.assert_close(
                acts.positive[k, i], reference(model, pos_text, site, pos_spans[i]), atol=2e-5, rtol=2e-5
            )
            torch.testing.assert_close(
                acts.negative[k, i], reference(model, neg_text, site, neg_spans[i]), atol=2e-5, rtol=2e-5
            )


def test_position_policies_pick_the_right_tokens(llama):
    pos_ids, _, pos_spans, neg_spans = pair_spans(llama, PAIRS, "answer")
    assert pos_spans[3] == neg_spans[3] == (len(pos_ids[3]) - 1, len(pos_ids[3]))  # "A" vs "B"
    assert pos_spans[0] == (4, 5)  # <bos> the cat is | very
    _, _, mean_spans, _ = pair_spans(llama, PAIRS, "mean")
    assert mean_spans[0] == (4, 6)  # "very good"
    assert mean_spans[2] == (1, 6)  # no prompt: the whole text after BOS is the completion


def test_answer_needs_a_differing_token(llama):
    with pytest.raises(WorkbenchError, match="prefix of the other"):
        pair_spans(llama, ContrastPairs.from_list([("the cat", "the cat is")]), "answer")
    with pytest.raises(WorkbenchError, match="position must be one of"):
        pair_spans(llama, PAIRS, "first")


def test_stops_after_the_deepest_requested_layer(llama):
    fired = []

    class Tripwire:
        def to_hooks(self, model, layout=None):
            return [("blocks.2.hook_attn_out", lambda x, hook: fired.append(1))]  # work inside block 2

    with applied(llama, Tripwire()):
        collect(llama, [tokenize(llama, "the cat")], [(0, 2)], [HookSite(0), HookSite(1, "resid_pre")], progress=False)
        assert fired == []
        collect(llama, [tokenize(llama, "the cat")], [(0, 2)], [HookSite(2)], progress=False)
        assert fired == [1]


def test_collect_errors(llama):
    ids = [tokenize(llama, "the cat")]
    with pytest.raises(WorkbenchError, match="one span per sequence"):
        collect(llama, ids, [], [HookSite(0)])
    with pytest.raises(WorkbenchError, match="empty or outside"):
        collect(llama, ids, [(1, 9)], [HookSite(0)])
    with pytest.raises(WorkbenchError, match="share one width"):
        collect(llama, ids, [(0, 1)], [HookSite(0), HookSite(0, "mlp_post")])
    with pytest.raises(WorkbenchError, match="has 3 blocks"):
        collect(llama, ids, [(0, 1)], layer_sites(llama, [0]) + [HookSite(7)])
    with pytest.raises(WorkbenchError, match="batch_size must be"):
        collect(llama, ids, [(0, 1)], [HookSite(0)], batch_size=0)
