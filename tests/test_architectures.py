"""The architecture matrix: every family of ``workbench.tiny.FAMILIES`` through every path on the backend under
test, each cell measured against plain Hugging Face or refused with the reason (``analyses.architectures``)."""

import os
from pathlib import Path

import pytest

from analyses.architectures import measure
from tests.conftest import BACKEND
from workbench.export import llamacpp
from workbench.tiny import FAMILIES, write_tiny_checkpoint

TOY_TOKENIZER = Path(__file__).resolve().parents[1] / "workbench" / "toy" / "checkpoints" / "toy-s"
HOOKED = {"llama", "gpt2"}  # what TransformerLens 3.9 reproduces exactly; the rest is refused naming the bridge
NOT_BAKED = {"gemma", "gemma2", "gemma3", "olmo", "olmo2", "qwen3", "phi3", "mixtral", "qwen3-moe"}
#: llama.cpp's converter has no OPT; the rest converts and runs. Families with a BPE tokenizer convert with
#: $WORKBENCH_LLAMA_PRE_TOKENIZER (the tiny tokenizers are not among the published ones llama.cpp knows by hash).
NO_LLAMACPP = {"opt"}
#: ggml evaluates GELU through a float16 table: 3-6e-4 on the GELU families' base models already.
GELU = {"gemma", "gemma2", "gemma3", "gpt-neox", "gpt2", "phi"}
WITH_LLAMACPP = llamacpp.available() or bool(os.environ.get("WORKBENCH_REQUIRE_LLAMACPP"))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family(family, tmp_path, monkeypatch):
    kw = dict(n_layers=3, d_model=32, n_heads=4, n_kv_heads=2)
    folder = write_tiny_checkpoint(tmp_path / family, family, **kw)
    gguf = None
    if WITH_LLAMACPP and BACKEND == "bridge":
        monkeypatch.setenv("WORKBENCH_LLAMA_PRE_TOKENIZER", "gpt-2")
        gguf = (
            folder
            if FAMILIES[family].tokenizer == "bpe"
            else write_tiny_checkpoint(tmp_path / "spm", family, tokenizer_from=TOY_TOKENIZER, **kw)
        )
    r = measure(folder, BACKEND, gguf_folder=gguf, workdir=tmp_path)
    if BACKEND == "hooked" and family not in HOOKED:
        assert set(r) == {"load"} and "backend='bridge'" in r["load"]["refused"]
        return
    assert r["load"]["self_check"] < 1e-4
    assert r["activations"]["blocks"] < 1e-4 and r["activations"]["last_after_final_norm"] < 1e-4
    assert r["directions"]["min_cosine"] >= 0.9999
    assert r["directions"]["first_token_is_bos"] == (FAMILIES[family].bos == "bos")
    assert r["steer"]["tokens_equal"] and r["steer"]["max_logit_diff"] < 1e-4
    assert r["apply_hf"]["max_abs_diff"] < 1e-4 < 0.1 < r["apply_hf"]["effect"]
    if family in NOT_BAKED:
        assert "Deploy it as a spec" in r["baked"]["refused"]
    else:
        assert r["baked"]["max_abs_diff"] < 1e-4 < 0.1 < r["baked"]["effect"]
    if gguf is None:
        return
    cell = r["llama.cpp"]
    if family in NO_LLAMACPP:
        assert "refused" in cell, cell
    else:
        assert cell["max_abs_diff"] < (5e-3 if family in GELU else 1e-4) and cell["effect"] > 0.1, cell


def test_hooked_refusals_name_the_reason(tmp_path):
    from workbench import models
    from workbench.errors import WorkbenchError

    if "hooked" not in models.available_backends():
        pytest.skip("needs transformer_lens 3.9")
    for family, why in (("llama-bias", "biases"), ("llama3", "rope scaling"), ("mistral", "not supported")):
        folder = write_tiny_checkpoint(tmp_path / family, family, n_layers=2, d_model=32, n_heads=4)
        with pytest.raises(WorkbenchError, match=f"{why}.*backend='bridge'"):
            models.load(folder, backend="hooked")
    # a baked checkpoint carries its edit in MLP biases: HookedTransformer would run it unsteered, so it is refused
    import torch

    from workbench.export.bake import bake_hf
    from workbench.export.spec import Spec
    from workbench.interventions import AddDirection
    from workbench.sites import HookSite

    src = write_tiny_checkpoint(tmp_path / "src", "llama", n_layers=2, d_model=32, n_heads=4)
    model = models.load(src, backend="bridge")
    spec = Spec((AddDirection(HookSite(1), torch.ones(32), 1.0),), models.fingerprint(model))
    baked = bake_hf(spec, src, tmp_path / "baked", dtype="float32")
    with pytest.raises(WorkbenchError, match="biases.*backend='bridge'"):
        models.load(baked, backend="hooked")
    assert models.load(baked, backend="bridge") is not None
