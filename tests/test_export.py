"""Export formats: own spec, llama.cpp GGUF control vectors, baked HF checkpoints, the standalone applier.

Parity is checked against the TransformerLens-steered logits on tiny random Llama (GQA) and GPT-2 checkpoints for
every site kind, and on the toy family through all three deployment paths (including a real llama.cpp).
"""

import dataclasses
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import n_attached_hooks
from workbench import models
from workbench.errors import WorkbenchError
from workbench.export import apply_hf, llamacpp
from workbench.export.bake import ablation_everywhere, bake_hf, everywhere_sites
from workbench.export.gguf import cvec_block, read_gguf, write_gguf
from workbench.export.parity import check, tl_logits
from workbench.export.spec import Provenance, Spec
from workbench.interventions import Ablate, AddDirection
from workbench.positions import Positions
from workbench.sites import HookSite

PROMPT = "the cat sees the big dog and the red bus ."


def vec(n: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(n, generator=torch.Generator().manual_seed(seed))


def add_spec(model, sites, seed=0, scale=2.0, positions=None) -> Spec:
    ivs = []
    for i, (layer, kind) in enumerate(sites):
        width = HookSite(layer, kind).shape(model)
        ivs.append(
            AddDirection(HookSite(layer, kind), vec(int(np.prod(width)), seed + i), scale, positions or Positions())
        )
    return Spec(tuple(ivs), models.fingerprint(model), Provenance("test"))


def hf_of(model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(models.source_of(model), dtype=torch.float32).eval()


def hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(tokens[None]).logits[0]


# ------------------------------------------------------------------------------------------------------ spec


def test_spec_round_trip_is_exact_and_checks_the_model(llama, gpt2, tmp_path):
    spec = Spec(
        (AddDirection(HookSite(1), vec(32), 3.5, Positions("from", -1)), Ablate(HookSite(2, "resid_mid"), vec(32, 1))),
        models.fingerprint(llama),
        Provenance("mean", "h", 7),
    )
    back = Spec.load(spec.save(tmp_path / "s"), llama)
    assert [iv.to_dict() for iv in back.interventions] == [iv.to_dict() for iv in spec.interventions]
    assert torch.equal(back.interventions[0].vector, spec.interventions[0].vector)
    assert torch.equal(back.interventions[1].direction, spec.interventions[1].direction)
    assert back.provenance == spec.provenance and back.fingerprint == spec.fingerprint
    with pytest.raises(WorkbenchError, match="made for another model"):
        Spec.load(tmp_path / "s", gpt2)


def _corrupt(folder, how):
    m = json.loads((folder / "intervention.json").read_text())
    if how == "schema":
        m["schema_version"] = 99
    elif how == "format":
        m["format"] = "repeng"
    elif how == "basis":
        m["basis"] = "fold_ln"
    elif how == "missing_tensor":
        m["interventions"][0]["tensors"]["vector"] = "9.vector"
    elif how == "scale":
        m["interventions"][0]["scale"] = "big"
    elif how == "kind":
        m["interventions"][0]["kind"] = "steer"
    elif how == "nan":
        t = load_file(str(folder / "tensors.safetensors"))
        t["0.vector"][3] = float("nan")
        save_file(t, str(folder / "tensors.safetensors"))
    elif how == "corrupt_tensors":
        (folder / "tensors.safetensors").write_bytes(b"not a safetensors file")
    elif how == "corrupt_json":
        (folder / "intervention.json").write_text("{ nope")
        return
    elif how == "d_model":
        m["model"]["d_model"] = 64
    (folder / "intervention.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "how, match",
    [
        ("schema", "schema_version 99"),
        ("format", "not a workbench intervention spec"),
        ("basis", "basis"),
        ("missing_tensor", "missing"),
        ("scale", "finite number"),
        ("kind", "unknown intervention kind"),
        ("nan", "non-finite"),
        ("corrupt_tensors", "not a readable safetensors"),
        ("corrupt_json", "not valid JSON"),
        ("d_model", "d_model is 64"),
    ],
)
def test_spec_load_rejects_bad_files_with_one_clear_error(llama, tmp_path, how, match):
    spec = Spec((AddDirection(HookSite(1), vec(32), 2.0),), models.fingerprint(llama))
    folder = spec.save(tmp_path / "s")
    _corrupt(folder, how)
    with pytest.raises(WorkbenchError, match=match):
        Spec.load(folder, llama)
    with pytest.raises(apply_hf.SpecError, match=match):  # the same checks, without TransformerLens
        apply_hf.load_spec(folder)


def test_spec_construction_rejects_what_cannot_be_deployed(llama):
    fp = models.fingerprint(llama)
    with pytest.raises(WorkbenchError, match="one strength"):
        Spec((AddDirection(HookSite(1), vec(32), (1.0, 2.0)),), fp)
    with pytest.raises(WorkbenchError, match="d_model is 32"):
        Spec((AddDirection(HookSite(1), vec(16)),), fp)
    with pytest.raises(WorkbenchError, match="has 3 blocks"):
        Spec((AddDirection(HookSite(5), vec(32)),), fp)
    with pytest.raises(WorkbenchError, match="at least one"):
        Spec((), fp)


def test_failed_save_leaves_no_partial_folder(llama, tmp_path, monkeypatch):
    import workbench.export.spec as spec_mod

    spec = Spec((AddDirection(HookSite(1), vec(32)),), models.fingerprint(llama))
    monkeypatch.setattr(spec_mod, "write_json", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        spec.save(tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------ gguf


def test_gguf_layout_is_what_llamacpp_reads(llama, tmp_path):
    import gguf

    spec = add_spec(llama, [(1, "resid_post"), (2, "resid_pre"), (2, "mlp_out")], scale=1.5)
    path = write_gguf(spec, tmp_path / "cv.gguf")
    r = gguf.GGUFReader(str(path))
    assert r.get_field("general.architecture").contents() == "controlvector"
    assert r.get_field("controlvector.model_hint").contents() == "llama"
    assert r.get_field("controlvector.layer_count").contents() == 2
    tensors = {t.name: t for t in r.tensors}
    assert sorted(tensors) == ["direction.1", "direction.2"]  # resid_pre of block 2 is the output of block 1
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in tensors.values())
    ivs = spec.interventions
    np.testing.assert_allclose(
        np.asarray(tensors["direction.1"].data),
        (1.5 * (ivs[0].vector.double() + ivs[1].vector.double())).float().numpy(),
        atol=1e-6,
    )
    np.testing.assert_allclose(np.asarray(tensors["direction.2"].data), (1.5 * ivs[2].vector).numpy(), atol=1e-6)
    n, data = llamacpp.control_vector_data([(path, 1.0)])  # the port of llama.cpp's loader places them too
    assert n == 32 and data.shape == (64,)


def test_gguf_round_trip_keeps_the_model_identity(llama, gpt2, tmp_path):
    spec = add_spec(llama, [(1, "resid_post"), (2, "resid_post")])
    back = read_gguf(write_gguf(spec, tmp_path / "cv.gguf"))
    assert back.fingerprint == spec.fingerprint
    for a, b in zip(spec.interventions, back.interventions):
        assert b.site == a.site and b.scale == 1.0
        torch.testing.assert_close(b.vector, a.scale * a.vector, atol=1e-6, rtol=0)
    with pytest.raises(WorkbenchError, match="made for another model"):
        read_gguf(tmp_path / "cv.gguf", gpt2)


@pytest.mark.parametrize(
    "iv, match",
    [
        (AddDirection(HookSite(0), torch.ones(32)), "never steers block 0"),
        (AddDirection(HookSite(1, "resid_pre"), torch.ones(32)), "never steers block 0"),
        (AddDirection(HookSite(0, "resid_pre"), torch.ones(32)), "never steers block 0"),
        (AddDirection(HookSite(1, "attn_out"), torch.ones(32)), "cannot be expressed"),
        (AddDirection(HookSite(1), torch.ones(32), positions=Positions("generated")), "every position"),
        (Ablate(HookSite(1), torch.ones(32)), "only add"),
    ],
)
def test_gguf_refuses_what_llamacpp_would_ignore(llama, tmp_path, iv, match):
    spec = Spec((iv,), models.fingerprint(llama))
    with pytest.raises(WorkbenchError, match=match):
        write_gguf(spec, tmp_path / "cv.gguf")
    assert not (tmp_path / "cv.gguf").exists()
    with pytest.raises(WorkbenchError, match=match):
        cvec_block(iv, 3)


def _repeng_style(path, directions: dict, arch="controlvector", dtype=np.float32, hint="llama"):
    """A control vector written the way repeng's ``ControlVector.export_gguf`` does."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("controlvector.model_hint", hint)
    w.add_uint32("controlvector.layer_count", len(directions))
    for layer, v in directions.items():
        w.add_tensor(f"direction.{layer}", np.asarray(v, dtype=dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_import_of_repeng_files(llama, tmp_path):
    v1, v2 = vec(32, 1).numpy(), vec(32, 2).numpy()
    spec = read_gguf(_repeng_style(tmp_path / "r.gguf", {2: v2, 1: v1}), llama)
    assert [iv.site for iv in spec.interventions] == [HookSite(1), HookSite(2)]
    assert np.array_equal(spec.interventions[0].vector.numpy(), v1)
    assert spec.provenance.method == "imported-gguf" and "sha256:" in spec.provenance.source
    with pytest.raises(WorkbenchError, match="pass --model"):
        read_gguf(tmp_path / "r.gguf")


@pytest.mark.parametrize(
    "case, match",
    [
        ("direction0", "direction.0 is invalid"),
        ("n_layer", "silently ignores"),
        ("f16", "F32"),
        ("width", "d_model is 32"),
        ("arch", "not a control vector"),
        ("garbage", "not a readable GGUF"),
    ],
)
def test_gguf_import_rejects_files_llamacpp_would_skip(llama, tmp_path, case, match):
    p = tmp_path / "bad.gguf"
    if case == "direction0":
        _repeng_style(p, {0: vec(32).numpy(), 1: vec(32).numpy()})
    elif case == "n_layer":
        _repeng_style(p, {1: vec(32).numpy(), 3: vec(32).numpy()})
    elif case == "f16":
        _repeng_style(p, {1: vec(32).numpy()}, dtype=np.float16)
    elif case == "width":
        _repeng_style(p, {1: vec(48).numpy()})
    elif case == "arch":
        _repeng_style(p, {1: vec(32).numpy()}, arch="llama")
    else:
        p.write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(WorkbenchError, match=match):
        read_gguf(p, llama)


# ------------------------------------------------------------------------------------------------------ apply_hf

SITES = [
    (0, "resid_pre"),
    (1, "resid_post"),
    (1, "resid_mid"),
    (0, "attn_out"),
    (2, "mlp_out"),
    (1, "z"),
    (2, "mlp_post"),
]


@pytest.mark.parametrize("site", SITES, ids=[f"{k}{layer}" for layer, k in SITES])
def test_apply_hf_reproduces_tl_steering_at_every_site(model, site, tmp_path):
    spec = add_spec(model, [site], scale=3.0)
    tokens = model.to_tokens(PROMPT)[0]
    steered, plain = tl_logits(model, tokens, spec), tl_logits(model, tokens)
    hf = hf_of(model)
    with apply_hf.applied(hf, spec.save(tmp_path / "s")):
        got = hf_logits(hf, tokens)
    assert float((steered - plain).abs().max()) > 1e-2  # the edit does something
    torch.testing.assert_close(got, steered, atol=5e-5, rtol=0)
    torch.testing.assert_close(hf_logits(hf, tokens), plain, atol=5e-5, rtol=0)  # hooks are gone


@pytest.mark.parametrize("kind", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"])
def test_apply_hf_reproduces_tl_ablation(model, kind, tmp_path):
    u = vec(model.cfg.d_model, 5)
    spec = Spec((Ablate(HookSite(1, kind), u),), models.fingerprint(model))
    tokens = model.to_tokens(PROMPT)[0]
    hf = hf_of(model)
    with apply_hf.applied(hf, spec.save(tmp_path / "s")):
        got = hf_logits(hf, tokens)
    torch.testing.assert_close(got, tl_logits(model, tokens, spec), atol=5e-5, rtol=0)


def test_apply_hf_refuses_and_cleans_up(llama, gpt2, tmp_path):
    hf = hf_of(llama)
    folder = add_spec(llama, [(1, "resid_post")], positions=Positions("generated")).save(tmp_path / "gen")
    with pytest.raises(apply_hf.SpecError, match="every position"):
        with apply_hf.applied(hf, folder):
            pass
    with pytest.raises(apply_hf.SpecError, match="made for another model"):
        with apply_hf.applied(hf_of(gpt2), add_spec(llama, [(1, "resid_post")]).save(tmp_path / "s")):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with apply_hf.applied(hf, tmp_path / "s"):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in hf.modules())


def test_apply_hf_imports_only_torch_and_transformers():
    code = (
        "import sys, workbench.export.apply_hf; "
        "bad = [m for m in sys.modules if m.startswith(('transformer_lens', 'gguf', 'workbench.models', "
        "'workbench.interventions', 'workbench.export.spec'))]; print(bad); sys.exit(bool(bad))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------------------------------ bake

BAKE_SITES = [
    (0, "resid_pre"),
    (2, "resid_pre"),
    (1, "resid_post"),
    (1, "resid_mid"),
    (0, "attn_out"),
    (2, "mlp_out"),
    (1, "z"),
    (2, "mlp_post"),
]


@pytest.mark.parametrize("site", BAKE_SITES, ids=[f"{k}{layer}" for layer, k in BAKE_SITES])
def test_baked_checkpoint_reproduces_tl_steering(model, site, tmp_path):
    from transformers import AutoModelForCausalLM

    spec = add_spec(model, [site, (2, "resid_post")], scale=2.0)
    out = bake_hf(spec, models.source_of(model), tmp_path / "baked", dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tokens = model.to_tokens(PROMPT)[0]
    torch.testing.assert_close(hf_logits(hf, tokens), tl_logits(model, tokens, spec), atol=5e-5, rtol=0)
    card = json.loads((out / "workbench_bake.json").read_text())
    assert card["source_model"] == models.fingerprint(model).to_dict() and len(card["edits"]) == 2


def test_ablation_everywhere_bakes_into_orthogonalised_weights(model, tmp_path):
    from transformers import AutoModelForCausalLM

    u = vec(model.cfg.d_model, 9)
    n = model.cfg.n_layers
    spec = Spec(tuple(Ablate(s, u) for s in everywhere_sites(n)), models.fingerprint(model))
    out = bake_hf(spec, models.source_of(model), tmp_path / "baked", dtype="float32")
    tokens = model.to_tokens(PROMPT)[0]
    baked = models.load(out, backend=models.backend_of(model))
    torch.testing.assert_close(tl_logits(baked, tokens), tl_logits(model, tokens, spec), atol=5e-5, rtol=0)
    _, cache = baked.run_with_cache(tokens[None])
    unit = u / u.norm()
    for layer in range(n):  # the residual never carries the direction
        assert float((cache[f"blocks.{layer}.hook_resid_post"] @ unit).abs().max()) < 1e-4
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert not hf.config.tie_word_embeddings


def test_ablation_coverage_rule():
    n = 3
    assert ablation_everywhere(everywhere_sites(n), n)
    writers = [HookSite(0, "resid_pre")] + [HookSite(layer, k) for layer in range(n) for k in ("attn_out", "mlp_out")]
    assert ablation_everywhere(writers, n)
    assert not ablation_everywhere(everywhere_sites(n)[:-1], n)  # the last block's output is read by the unembed
    assert not ablation_everywhere([HookSite(layer) for layer in range(n)], n)  # inputs of attention not covered


@pytest.mark.parametrize(
    "ivs, match",
    [
        (lambda: (AddDirection(HookSite(1), vec(32), positions=Positions("from", -1)),), "every position"),
        (lambda: (Ablate(HookSite(1), vec(32)),), "some sites only"),
        (lambda: (AddDirection(HookSite(1), vec(32)), *(Ablate(s, vec(32)) for s in everywhere_sites(3))), "mixing"),
    ],
)
def test_bake_refuses_what_does_not_fold(llama, tmp_path, ivs, match):
    spec = Spec(ivs(), models.fingerprint(llama))
    with pytest.raises(WorkbenchError, match=match):
        bake_hf(spec, models.source_of(llama), tmp_path / "baked")
    assert not (tmp_path / "baked").exists()


def test_bake_checks_the_source_checkpoint(llama, tmp_path):
    other = dataclasses.replace(models.fingerprint(llama), weights_sha256="0" * 64)
    with pytest.raises(WorkbenchError, match="made for another model"):
        bake_hf(Spec((AddDirection(HookSite(1), vec(32)),), other), models.source_of(llama), tmp_path / "baked")
    with pytest.raises(WorkbenchError, match="not a local Hugging Face checkpoint"):
        bake_hf(add_spec(llama, [(1, "resid_post")]), tmp_path / "nowhere", tmp_path / "baked")
    assert not (tmp_path / "baked").exists()


# ------------------------------------------------------------------------------------------------------ toy parity

needs_llamacpp = pytest.mark.skipif(
    not llamacpp.available() and not os.environ.get("WORKBENCH_REQUIRE_LLAMACPP"),
    reason="llama-cpp-python / converter not installed (./dev test installs them)",
)


@pytest.fixture(scope="module")
def toy_s():
    return models.load("toy-s", backend=os.environ.get("WORKBENCH_BACKEND"))


@needs_llamacpp
def test_toy_parity_on_every_deployment_path(toy_s, tmp_path):
    """TL steering == apply_hf == baked checkpoint == llama.cpp + exported control vector, and one block off fails."""
    from workbench.toy.prompts import prompts, random_attributes

    texts = [p.text for p in prompts(random_attributes(random.Random(0)), 3, seed=1)]
    d = toy_s.cfg.d_model
    spec = Spec(
        (AddDirection(HookSite(1), vec(d, 1, 1.0), 4.0), AddDirection(HookSite(3), vec(d, 2, 1.0), -3.0)),
        models.fingerprint(toy_s),
    )
    rows = {r.path: r for r in check(toy_s, spec, texts, workdir=tmp_path)}
    assert set(rows) == {"apply_hf", "baked", "llama.cpp"}
    for r in rows.values():
        assert r.effect > 1.0
        assert r.max_abs_diff < 1e-4, r
        assert r.off_by_one > 1000 * r.max_abs_diff, r


@needs_llamacpp
def test_llamacpp_without_a_vector_matches_the_checkpoint(toy_s, tmp_path):
    tokens = toy_s.to_tokens("q: what is the sky ? a:")[0]
    gguf_model = llamacpp.convert_checkpoint(models.source_of(toy_s), tmp_path / "m.gguf")
    got = torch.from_numpy(llamacpp.llama_logits(gguf_model, tokens.tolist()))
    torch.testing.assert_close(got, tl_logits(toy_s, tokens), atol=1e-4, rtol=0)


def test_tl_side_parity_paths_need_no_llamacpp(llama):
    rows = check(llama, add_spec(llama, [(1, "resid_post")], scale=3.0), [PROMPT, "a dog"], paths=("apply_hf", "baked"))
    assert [r.path for r in rows] == ["apply_hf", "baked"]
    assert all(r.max_abs_diff < 5e-5 < r.off_by_one for r in rows)
    assert n_attached_hooks(llama) == 0


def test_mistral_with_a_sliding_window_is_not_baked_as_llama(tmp_path):
    from workbench import models as m
    from workbench.export.bake import bake_hf
    from workbench.tiny import write_tiny_checkpoint

    src = write_tiny_checkpoint(tmp_path / "mistral", "mistral", n_layers=2, d_model=32)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "sliding_window": 16}))  # < max_position_embeddings
    model = m.load(src, backend="bridge")
    spec = Spec((AddDirection(HookSite(1), torch.ones(32), 1.0),), m.fingerprint(model))
    with pytest.raises(WorkbenchError, match="sliding-window attention .16 tokens.*--format gguf"):
        bake_hf(spec, src, tmp_path / "baked")
    assert not (tmp_path / "baked").exists()
