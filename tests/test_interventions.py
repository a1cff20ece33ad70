import pytest
import torch

from tests.conftest import n_attached_hooks
from workbench.errors import WorkbenchError
from workbench.hooks import Capture, applied, captured
from workbench.interventions import Ablate, AddDirection, intervention_from_dict
from workbench.positions import Positions, TokenLayout
from workbench.sites import HookSite


def cache_of(model, tokens, *ivs):
    with torch.no_grad(), applied(model, *ivs):
        _, cache = model.run_with_cache(tokens)
    return cache


def test_additive_edit_lands_exactly_in_the_next_hook(model):
    tokens = model.to_tokens("the cat sees the dog")
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    clean = cache_of(model, tokens)
    steered = cache_of(model, tokens, AddDirection(HookSite(0), v, scale=2.5))
    torch.testing.assert_close(
        steered["blocks.1.hook_resid_pre"], clean["blocks.0.hook_resid_post"] + 2.5 * v, atol=1e-6, rtol=0
    )
    assert torch.equal(steered["blocks.0.hook_resid_mid"], clean["blocks.0.hook_resid_mid"])  # upstream untouched


def test_zero_scale_is_the_identity(model):
    tokens = model.to_tokens("the cat sees the dog")
    v = torch.randn(model.cfg.d_model)
    with torch.no_grad():
        base = model(tokens)
        with applied(model, AddDirection(HookSite(1), v, scale=0.0)):
            same = model(tokens)
    assert torch.equal(base, same)


def test_ablation_removes_the_component(model):
    tokens = model.to_tokens("the cat sees the dog")
    u = torch.randn(model.cfg.d_model)
    cache = cache_of(model, tokens, Ablate(HookSite(1), u))
    proj = cache["blocks.2.hook_resid_pre"] @ (u / u.norm())
    assert proj.abs().max() < 1e-4


def test_position_policies_on_a_plain_forward(llama):
    tokens = llama.to_tokens("the cat sees the dog")  # 6 tokens
    v = torch.ones(llama.cfg.d_model)
    clean = cache_of(llama, tokens)["blocks.0.hook_resid_post"]
    for policy, edited in [
        (Positions("from", 2), [2, 3, 4, 5]),
        (Positions("from", -2), [4, 5]),
        (Positions("generated"), []),
    ]:
        out = cache_of(llama, tokens, AddDirection(HookSite(0), v, positions=policy))["blocks.0.hook_resid_post"]
        changed = ((out - clean).abs().sum(-1) > 0)[0].nonzero().flatten().tolist()
        assert changed == edited, policy


def test_layout_mask_handles_left_padding_and_cache_offsets():
    layout = TokenLayout(start=torch.tensor([0, 2]), prompt_end=torch.tensor([5, 5]))
    m = layout.mask(Positions("from", 1), 5, torch.device("cpu"))
    assert m.tolist() == [[False, True, True, True, True], [False, False, False, True, True]]
    layout.offset = 5  # a cached step: the one new token at absolute position 5
    assert layout.mask(Positions("generated"), 1, torch.device("cpu")).tolist() == [[True], [True]]


def test_hooks_are_removed_after_an_exception(model):
    v = torch.randn(model.cfg.d_model)
    with pytest.raises(RuntimeError, match="boom"):
        with applied(model, AddDirection(HookSite(0), v), Ablate(HookSite(1), v)):
            assert n_attached_hooks(model) == 2
            raise RuntimeError("boom")
    assert n_attached_hooks(model) == 0


def test_capture_records_the_edited_activation_and_every_pass(model):
    tokens = model.to_tokens("the cat sees the dog")
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    steered = cache_of(model, tokens, AddDirection(HookSite(1), v, scale=3.0))
    with torch.no_grad(), captured(model, [HookSite(1), HookSite(2)], AddDirection(HookSite(1), v, scale=3.0)) as acts:
        model(tokens)
        assert n_attached_hooks(model) == 3
    assert n_attached_hooks(model) == 0
    for layer in (1, 2):  # a capture runs after the edit at its own hook point
        assert torch.equal(acts[HookSite(layer)], steered[HookSite(layer).name])
    every = Capture([HookSite(0)], lambda x, site: x[:, -1].clone(), keep="all")
    with torch.no_grad(), applied(model, every):
        model(tokens)
        model(tokens[:, :3])
    assert [tuple(x.shape) for x in every.out[HookSite(0)]] == [(1, model.cfg.d_model)] * 2
    with pytest.raises(WorkbenchError, match="keep must be"):
        with applied(model, Capture([HookSite(0)], keep="first")):
            pass


def test_nothing_is_attached_when_any_intervention_is_invalid(llama):
    good = AddDirection(HookSite(0), torch.randn(llama.cfg.d_model))
    for bad, match in [
        (AddDirection(HookSite(9), torch.randn(32)), "has 3 blocks"),
        (AddDirection(HookSite(1), torch.randn(31)), "has 31 entries but blocks.1.hook_resid_post has width 32"),
    ]:
        with pytest.raises(WorkbenchError, match=match):
            with applied(llama, good, bad):
                pass
        assert n_attached_hooks(llama) == 0


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(vector=torch.randn(2, 32)), "must be 1-D"),
        (dict(vector=torch.tensor([1.0, float("inf")])), "finite"),
        (dict(vector=torch.randn(32), scale=float("nan")), "scale must be a finite"),
    ],
)
def test_bad_vectors_and_scales(bad, match):
    with pytest.raises(WorkbenchError, match=match):
        AddDirection(HookSite(0), **bad)


def test_zero_ablation_direction():
    with pytest.raises(WorkbenchError, match="zero vector"):
        Ablate(HookSite(0), torch.zeros(8))


def test_per_row_scales_must_match_the_batch(llama):
    tokens = llama.to_tokens(["the cat", "the dog"])
    iv = AddDirection(HookSite(0), torch.randn(32), scale=(1.0, 2.0, 3.0))
    with pytest.raises(WorkbenchError, match="3 per-row scales but the batch has 2 rows"):
        with applied(llama, iv):
            llama(tokens)
    assert n_attached_hooks(llama) == 0


def test_serialisation_round_trip():
    for iv in [
        AddDirection(HookSite(2, "mlp_out"), torch.randn(16), 3.0, Positions("from", -1)),
        AddDirection(HookSite(1), torch.randn(16), (1.0, 2.0)),
        Ablate(HookSite(0), torch.randn(16)),
    ]:
        back = intervention_from_dict(iv.to_dict(), iv.tensors())
        assert back.to_dict() == iv.to_dict()
        assert all(torch.equal(a, b) for a, b in zip(iv.tensors().values(), back.tensors().values()))
    with pytest.raises(WorkbenchError, match="unknown intervention kind"):
        intervention_from_dict({"kind": "rotate", "site": {"layer": 0, "kind": "resid_post"}}, {})


@pytest.mark.parametrize("kind", ["add", "ablate"])
def test_resid_mid_edits_reach_the_residual_stream_on_every_backend(model, kind):
    """TransformerLens 4's bridge aliases hook_resid_mid to the second norm's input; an edit there must still
    carry on to the block output, as HookedTransformer's does (the meaning the exported forms reproduce)."""
    tokens = model.to_tokens("the cat sees the dog")
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    iv = AddDirection(HookSite(1, "resid_mid"), v, 2.5) if kind == "add" else Ablate(HookSite(1, "resid_mid"), v)
    s = cache_of(model, tokens, iv)
    clean = cache_of(model, tokens)
    mid = s["blocks.1.hook_resid_pre"] + s["blocks.1.hook_attn_out"]
    if kind == "add":
        torch.testing.assert_close(mid, clean["blocks.1.hook_resid_mid"] + 2.5 * v, atol=1e-5, rtol=0)
    else:
        assert float((mid @ (v / v.norm())).abs().max()) < 1e-5
    torch.testing.assert_close(s["blocks.1.hook_resid_post"], mid + s["blocks.1.hook_mlp_out"], atol=1e-5, rtol=0)
