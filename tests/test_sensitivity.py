"""Layer and head sensitivity (analyses/layer_sweep.py, analyses/heads.py).

A tiny Llama is edited so that exactly one head (layer 1, head 2) writes a known direction u, nothing else in the
network writes u, and the unembedding reads u as "yes" minus "no": that head must rank first under direct
attribution, activation patching, attribution patching and per-head steering.
"""

import pytest
import torch

from analyses import heads, layer_sweep
from tests.conftest import BACKEND, n_attached_hooks, planted_llama
from workbench import models
from workbench.errors import WorkbenchError
from workbench.pairs import ContrastPairs
from workbench.sites import HookSite
from workbench.toy.measure import best_cell

PLANTED = (1, 2)
CONTEXTS = [
    "the cat sees the {} dog .",
    "a bird likes this {} house",
    "we love that {} tree and the sun",
    "they hate the {} bus",
    "i see a {} fish",
    "the moon is {} and the sky is",
]
ADJ = [("good", "bad"), ("happy", "sad"), ("big", "small"), ("red", "blue")]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    def edit(hf, tok, u):  # only the planted head writes u, strongly
        layer, head, dh = *PLANTED, 8
        g = torch.Generator().manual_seed(0)
        torch.randn(32, generator=g)  # u's draw (planted_llama, seed 0); ev is the next one
        ev = torch.randn(dh, generator=g)
        hf.model.layers[layer].self_attn.o_proj.weight[:, head * dh : (head + 1) * dh] += 6.0 * torch.outer(u, ev)

    model, u, tok = planted_llama(tmp_path_factory.mktemp("planted"), 0, edit)
    yes, no = tok.convert_tokens_to_ids(["yes", "no"])
    pairs = ContrastPairs.from_list([(c.format(a), c.format(b)) for c in CONTEXTS for a, b in ADJ])
    pos, neg, kept = heads.pair_batches(model, pairs)
    metric = heads.LogitDiff(((yes,),) * len(kept), ((no,),) * len(kept))
    return model, u, pos, neg, metric


def _argmax(matrix) -> tuple:
    cells = [(abs(v), (layer, h)) for layer, row in enumerate(matrix) for h, v in enumerate(row) if v is not None]
    return max(cells)[1]


def test_planted_head_ranks_first_under_every_method(planted):
    model, u, pos, neg, metric = planted
    direct = heads.direct_attribution(model, pos, neg, u, readout_layer=1)
    assert _argmax(direct) == PLANTED
    others = [abs(v) for layer, row in enumerate(direct) for h, v in enumerate(row) if (layer, h) != PLANTED]
    assert max(others) < 1e-4 * abs(direct[1][2])  # nobody else writes u at all
    patched, m_pos, m_neg = heads.patching(model, pos, neg, metric, metric)
    assert abs(m_pos - m_neg) > 0.5 and _argmax(patched) == PLANTED
    assert _argmax(heads.attribution_patching(model, pos, neg, metric)) == PLANTED
    effect, share = heads.head_steering_effect(model, neg, metric, {0: u, 1: u}, strength=3.0)
    assert _argmax(effect) == PLANTED
    assert share[1][2] > 0.99 and max(s for row in share for s in row if s != share[1][2]) < 1e-3
    assert n_attached_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())  # attribution patching leaves no gradients behind


def test_attribution_patching_is_exact_on_a_linear_metric(planted):
    """The attention output of block 1 is linear in block 1's z: the first-order estimate equals real patching."""
    model, u, pos, neg, _ = planted
    w = torch.randn(32, generator=torch.Generator().manual_seed(5))
    metric = heads.Projection(HookSite(1, "attn_out"), w)
    real, m_pos, m_neg = heads.patching(model, pos, neg, metric, metric, layers=[1])
    est = heads.attribution_patching(model, pos, neg, metric, layers=[1])
    torch.testing.assert_close(torch.tensor(est), torch.tensor(real), atol=1e-4, rtol=1e-4)
    assert sum(real[0]) == pytest.approx(m_pos - m_neg, abs=1e-4)  # patching every head of a linear site adds up


def test_head_analysis_runs_on_a_toy_model_and_plots():
    model = models.load("toy-s", backend=BACKEND)
    cfg = heads.Config("register", n_pairs=16, n_prompts=4, max_new_tokens=6, steer_strengths=(2.0,))
    r = heads.run(model, cfg, name="toy-s", progress=False)
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    for mat in (r.direct, r.patching, r.attribution, r.steering["metric_effect"], r.steering["target_rate"]["2.0"]):
        assert len(mat) == n_l and all(len(row) == n_h for row in mat)
    assert r.clean["m_pos"] > r.clean["m_neg"]  # the metric separates casual from formal continuations
    assert -1.0 <= r.agreement["pearson"] <= 1.0
    figs = heads.plot(heads.Result.from_dict(r.to_dict()))
    assert set(figs) == {"heads_maps", "heads_steering_logodds", "heads_steering"} and len(figs["heads_maps"].data) == 3
    assert figs["heads_steering"].layout.coloraxis.cmax == 1.0  # behaviour and fluency on one 0..1 scale


# ------------------------------------------------------------------------------------------------------ layer sweep


def test_batched_strengths_equal_one_run_per_strength():
    model = models.load("toy-s", backend=BACKEND)
    base = dict(attribute="register", layers=(1, 3), n_prompts=6, n_pairs=40, max_new_tokens=8, temperature=0.0)
    together = layer_sweep.run(model, layer_sweep.Config(**base, strengths=(-1.0, 0.5, 2.0)), progress=False)
    apart = [
        c
        for s in (-1.0, 0.5, 2.0)
        for c in layer_sweep.run(model, layer_sweep.Config(**base, strengths=(s,)), progress=False).cells
    ]
    key = lambda c: (c["layer"], c["strength"])  # noqa: E731
    for a, b in zip(sorted(together.cells, key=key), sorted(apart, key=key)):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


def test_sweep_units_reading_side_and_best_cell_rule():
    model = models.load("toy-s", backend=BACKEND)
    cfg = layer_sweep.Config("register", n_prompts=8, n_pairs=40, max_new_tokens=8, strengths=(-1.0, 0.0, 1.0))
    r = layer_sweep.run(model, cfg, progress=False)
    assert len(r.cells) == model.cfg.n_layers * 3 and len(r.reading) == model.cfg.n_layers
    norms = layer_sweep.residual_norms(model, ["so da cat sees dis dog ."], [HookSite(2)])
    assert norms[2] > 0
    for c in r.cells:
        d = next(x for x in r.reading if x["layer"] == c["layer"])
        assert c["relative_strength"] == pytest.approx(
            c["strength"] * d["direction_norm"] / d["residual_norm"], abs=2e-3
        )
        assert c["depth"] == pytest.approx((c["layer"] + 1) / model.cfg.n_layers)
        assert (c["kl"] == 0.0) == (c["strength"] == 0.0)
    cells = [
        {"layer": 0, "strength": 1.0, "target_rate": 0.9, "grammaticality": 0.5, "kl": 0.1},
        {"layer": 1, "strength": 2.0, "target_rate": 0.8, "grammaticality": 0.9, "kl": 0.3},
        {"layer": 2, "strength": 1.0, "target_rate": 0.8, "grammaticality": 0.9, "kl": 0.2},
        {"layer": 3, "strength": -1.0, "target_rate": 1.0, "grammaticality": 1.0, "kl": 0.0},
    ]
    assert best_cell(cells, baseline=0.0)["layer"] == 2  # within the floor, tie -> smaller strength
    assert best_cell(cells, kl_bound=0.15, baseline=0.0) is None
    assert best_cell(cells, grammar_floor=0.4, baseline=0.0)["layer"] == 0
    unsteered = {"layer": 0, "strength": 0.0, "target_rate": 0.85, "grammaticality": 1.0, "kl": 0.0}
    assert best_cell([*cells, unsteered]) is None  # nothing beats the unsteered rate within the floor
    figs = layer_sweep.plot(r)
    assert set(figs) == {"layer_sweep_maps", "layer_sweep_kl", "layer_sweep_relative", "layer_sweep_reading"}


def test_sweep_without_fluency_scores_the_same_generations():
    model = models.load("toy-s", backend=BACKEND)
    base = dict(attribute="register", layers=(1, 2), n_prompts=6, n_pairs=40, max_new_tokens=8, temperature=0.0)
    full = layer_sweep.run(model, layer_sweep.Config(**base, strengths=(0.0, 2.0)), progress=False)
    lean = layer_sweep.run(model, layer_sweep.Config(**base, strengths=(0.0, 2.0), fluency=False), progress=False)
    for a, b in zip(full.cells, lean.cells):
        assert a["kl"] is not None and a["perplexity"] is not None and b["kl"] is None and b["perplexity"] is None
        assert {k: v for k, v in a.items() if k not in ("kl", "perplexity")} == {
            k: v for k, v in b.items() if k not in ("kl", "perplexity")
        }
    stripped = None if full.best is None else {**full.best, "kl": None, "perplexity": None}
    assert lean.examples == full.examples and lean.best == stripped
    assert set(layer_sweep.plot(lean)) == {"layer_sweep_maps", "layer_sweep_relative", "layer_sweep_reading"}
    assert "KL" not in layer_sweep.summary(lean) and "KL" not in layer_sweep.section(lean.to_dict()).markdown
    with pytest.raises(WorkbenchError, match="kl_bound bounds the KL"):
        layer_sweep.Config(kl_bound=0.1, fluency=False)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"attribute": "colour"}, "attribute must be one of"),
        ({"attribute": "sentiment", "target": "neg", "source": "neg"}, "both"),
        ({"attribute": "topic", "target": "cars"}, "not a value of topic"),
        ({"strengths": ()}, "strengths"),
        ({"n_prompts": 0}, "n_prompts must be >= 1"),
        ({"temperature": -1}, "temperature"),
        ({"fluency": "no"}, "fluency must be True or False"),
    ],
)
def test_sweep_config_errors(kw, match):
    with pytest.raises(WorkbenchError, match=match):
        layer_sweep.Config(**kw)


def test_the_best_cell_must_beat_the_unsteered_rate():
    from workbench.errors import WorkbenchError
    from workbench.toy.measure import best_cell

    cell = {"strength": 1.0, "layer": 0, "target_rate": 0.3, "grammaticality": 1.0, "kl": 0.1}
    assert best_cell([cell], baseline=0.5) is None  # steering that does worse than no steering is no best cell
    assert best_cell([cell], baseline=0.2) == cell
    zero = {**cell, "strength": 0.0, "target_rate": 0.4}
    assert best_cell([zero, cell], baseline=0.0) is None  # the grid's own unsteered cells come first
    with pytest.raises(WorkbenchError, match="needs the unsteered rate"):
        best_cell([cell])
