"""The plain Hugging Face twin (``workbench.plain``): generation on it equals generation through the backend, at
every site it takes, on every family's layout, with position policies, per-row strengths and the cache; where a
hook has no module boundary the backend runs instead; its hooks never outlive the call."""

import pytest
import torch
from conftest import BACKEND

from workbench import models, plain
from workbench.activations import collect
from workbench.errors import WorkbenchError
from workbench.generate import generate
from workbench.interventions import Ablate, AddDirection
from workbench.positions import Positions
from workbench.sites import HookSite
from workbench.tiny import write_tiny_checkpoint

bridge_only = pytest.mark.skipif(BACKEND != "bridge", reason="the plain twin exists on the bridge backend only")
PROMPTS = ["the cat sat on", "a dog", "the the the bird is very"]
KW = dict(max_new_tokens=6, temperature=0.0, stop_at_eos=False, ban_special=False, return_logits=True)


def _vec(model, kind: str, seed: int = 0) -> torch.Tensor:
    shape = HookSite(1, kind).shape(model)
    return torch.randn(int(torch.tensor(shape).prod()), generator=torch.Generator().manual_seed(seed)) * 3


def _same(model, *ivs, **kw) -> None:
    a = generate(model, PROMPTS, *ivs, engine="plain", **{**KW, **kw})
    b = generate(model, PROMPTS, *ivs, engine="backend", **{**KW, **kw})
    assert a.tokens == b.tokens
    assert a.logits is not None and b.logits is not None
    assert float((a.logits - b.logits).abs().max()) < 1e-4


@bridge_only
@pytest.mark.parametrize("kind", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "mlp_post"])
def test_every_site_equals_the_backend(model, kind):
    _same(model, AddDirection(HookSite(1, kind), _vec(model, kind), 1.0))
    if kind not in ("z", "mlp_post"):
        _same(model, Ablate(HookSite(1, kind), _vec(model, kind, 1)))


@bridge_only
def test_positions_rows_and_cache_equal_the_backend(llama):
    v = _vec(llama, "resid_post")
    for positions in (Positions("from", 3), Positions("generated")):
        iv = AddDirection(HookSite(0), v, 2.0, positions)
        _same(llama, iv)
        _same(llama, iv, use_cache=False)
    rows = AddDirection(HookSite(2), v, (0.0, 1.5, -3.0))
    _same(llama, rows, AddDirection(HookSite(0, "attn_out"), _vec(llama, "attn_out", 2), 0.5))
    cached = generate(llama, PROMPTS, rows, engine="plain", **KW)
    full = generate(llama, PROMPTS, rows, engine="plain", use_cache=False, **KW)
    assert cached.tokens == full.tokens


@bridge_only
@pytest.mark.parametrize("family", ["gemma2", "phi", "gpt-neox", "opt", "mixtral", "qwen2"])
def test_block_edges_on_other_layouts(tmp_path, family):
    m = models.load(write_tiny_checkpoint(tmp_path / family, family, n_layers=2, d_model=32, n_heads=4))
    v = _vec(m, "resid_post")
    _same(m, AddDirection(HookSite(1, "resid_pre"), v, 1.0), AddDirection(HookSite(0), v, 1.0, Positions("from", 2)))
    # an inner site these layouts do not express as a module runs through the backend under auto; plain refuses
    inner = AddDirection(HookSite(1, "attn_out"), v, 1.0)
    if family == "qwen2":  # sequential pre-norm: its attention output is a module boundary
        _same(m, inner)
        return
    with pytest.raises(WorkbenchError, match="engine='plain'"):
        generate(m, PROMPTS, inner, engine="plain", **KW)
    assert generate(m, PROMPTS, inner, **KW).tokens == generate(m, PROMPTS, inner, engine="backend", **KW).tokens


@bridge_only
def test_attention_internals_fall_back(llama):
    from workbench.hooks import Capture

    cap = Capture([HookSite(1, "q")], keep="all")
    with pytest.raises(WorkbenchError, match="engine='plain'"):
        generate(llama, PROMPTS, cap, engine="plain", **KW)
    generate(llama, PROMPTS, cap, **KW)  # auto: through the backend, where q exists
    assert len(cap.out[HookSite(1, "q")]) == KW["max_new_tokens"]


@bridge_only
def test_twin_shares_weights_and_detaches_on_replacement(tmp_path):
    m = models.load(write_tiny_checkpoint(tmp_path / "l", "llama", n_layers=2, d_model=32, n_heads=4))
    twin = plain.plain_model(m)
    assert twin is not None
    assert {id(p) for p in twin.parameters()} == {id(p) for p in m.parameters()}
    before = generate(m, PROMPTS, engine="plain", **KW)
    w = twin.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        w.mul_(3.0)  # an in-place update (an optimiser step) reaches both
    after = generate(m, PROMPTS, engine="plain", **KW)
    assert after.logits is not None and before.logits is not None
    assert not torch.equal(after.logits, before.logits)
    _same(m)
    # a parameter replaced by a new object: the twin no longer is the model, so it is not used
    first = next(iter(m.parameters()))
    for mod in m.modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            if p is first:
                setattr(mod, name, torch.nn.Parameter(p.detach().clone()))
    assert plain.plain_model(m) is None
    with pytest.raises(WorkbenchError, match="engine='plain'"):
        generate(m, PROMPTS, engine="plain", **KW)


@bridge_only
def test_a_changed_split_copy_retires_the_twin(gpt2, tmp_path):
    # GPT-2's bridge computes with its own copies of the fused c_attn: once any weight changes in place, the twin
    # (which holds only c_attn) may no longer equal the bridge, so the backend runs
    m = models.load(write_tiny_checkpoint(tmp_path / "g", "gpt2", n_layers=2, d_model=32, n_heads=4))
    assert plain.plain_model(m) is not None
    _same(m)
    mine = {id(p) for p in plain.plain_model(m).parameters()}
    copy = next(p for p in m.parameters() if id(p) not in mine)
    with torch.no_grad():
        copy.add_(0.5)
    assert plain.plain_model(m) is None
    assert generate(m, PROMPTS, **KW).tokens == generate(m, PROMPTS, engine="backend", **KW).tokens


@bridge_only
def test_hooks_on_the_model_itself_keep_the_backend(llama):
    # a caller's own hooks around generate (applied / captured) must run: the twin would not see them
    from workbench.hooks import applied

    steer = AddDirection(HookSite(1), _vec(llama, "resid_post"), 2.0)
    inside_kw = {**KW, "engine": "auto"}
    with applied(llama, steer):
        assert plain.plain_model(llama) is None
        inside = generate(llama, PROMPTS, **inside_kw)
    assert inside.tokens == generate(llama, PROMPTS, steer, engine="backend", **KW).tokens
    assert plain.plain_model(llama) is not None


@bridge_only
def test_no_hook_outlives_a_failed_call(llama):
    twin = plain.plain_model(llama)
    assert twin is not None

    def boom(tokens):
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="went away"):
        generate(llama, PROMPTS, AddDirection(HookSite(1), _vec(llama, "resid_post"), 1.0), on_step=boom, **KW)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in twin.modules())


def test_engine_argument_is_checked(llama):
    from jaxtyping import TypeCheckError

    # the test run's type checker refuses the value by its annotation first; without it, the function itself does
    with pytest.raises((WorkbenchError, TypeCheckError), match="engine"):
        generate(llama, PROMPTS, engine="fast", **KW)  # type: ignore[arg-type]
    with pytest.raises(WorkbenchError, match="engine must be one of"):
        getattr(generate, "__wrapped__", generate)(llama, PROMPTS, engine="fast", **KW)
    if BACKEND != "bridge":
        assert plain.plain_model(llama) is None
        with pytest.raises(WorkbenchError, match="engine='plain'"):
            generate(llama, PROMPTS, engine="plain", **KW)


@bridge_only
def test_collect_on_the_twin_equals_the_backend(model):
    seqs = [[1, 5, 6, 7], [2, 3], [4, 4, 4, 4, 4, 9]]
    spans = [(1, 4), (0, 2), (5, 6)]
    sites = [HookSite(0), HookSite(1)]
    a = collect(model, seqs, spans, sites, progress=False, padding="left", engine="plain")
    b = collect(model, seqs, spans, sites, progress=False, padding="left", engine="backend")
    assert torch.allclose(a, b, atol=1e-5)
