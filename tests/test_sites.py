import pytest

from workbench.errors import WorkbenchError
from workbench.sites import HookSite, hook_names, layer_sites


def test_names_are_transformerlens_names():
    assert HookSite(3).name == "blocks.3.hook_resid_post"
    assert HookSite(0, "resid_pre").name == "blocks.0.hook_resid_pre"
    assert HookSite(2, "z").name == "blocks.2.attn.hook_z"
    assert HookSite(1, "mlp_out").name == "blocks.1.hook_mlp_out"


def test_every_kind_exists_on_both_architectures(model):
    for kind in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "q", "k", "v", "mlp_post"):
        assert HookSite(0, kind).check(model) in model.hook_dict


def test_bad_kind_suggests_closest():
    with pytest.raises(WorkbenchError, match="closest: 'resid_post'"):
        HookSite(0, "resid_pots")


@pytest.mark.parametrize("layer", [-1, True])
def test_bad_layer_type(layer):
    with pytest.raises(WorkbenchError, match="0-based block index"):
        HookSite(layer)


def test_layer_past_depth_names_the_range(llama):
    with pytest.raises(WorkbenchError, match=r"has 3 blocks \(layers 0..2\)"):
        HookSite(3).check(llama)


def test_round_trip_and_mismatch():
    s = HookSite(2, "mlp_out")
    assert HookSite.from_dict(s.to_dict()) == s
    with pytest.raises(WorkbenchError, match="disagrees"):
        HookSite.from_dict({"layer": 2, "kind": "mlp_out", "hook": "blocks.3.hook_mlp_out"})


def test_layer_sites_and_filters(llama):
    assert [s.layer for s in layer_sites(llama)] == [0, 1, 2]
    with pytest.raises(WorkbenchError, match="layers is empty"):
        layer_sites(llama, [])
    assert "blocks.1.hook_resid_post" in hook_names(llama, "resid_post")
    with pytest.raises(WorkbenchError, match="no hook name contains"):
        hook_names(llama, "hook_resid_psot")
