import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import BACKEND
from workbench import models
from workbench.errors import WorkbenchError
from workbench.sites import HookSite, final_hidden


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_activations_equal_hf_hidden_states(ckpt_dirs, arch, llama, gpt2):
    model = {"llama": llama, "gpt2": gpt2}[arch]
    hf = AutoModelForCausalLM.from_pretrained(str(ckpt_dirs[arch]), dtype=torch.float32).eval()
    tokens = model.to_tokens("the cat sees a big red bus and the dog is sad")
    with torch.no_grad():
        out = hf(tokens, output_hidden_states=True)
        logits, cache = model.run_with_cache(tokens)
    n = model.cfg.n_layers
    for layer in range(n - 1):  # HF hidden_states[l + 1] is the output of block l ...
        torch.testing.assert_close(cache[HookSite(layer).name], out.hidden_states[layer + 1], atol=1e-5, rtol=1e-5)
    # ... except the last, which HF returns after the final norm (its weight and bias included).
    torch.testing.assert_close(final_hidden(model, cache), out.hidden_states[n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=1e-4)


def test_backend_is_the_requested_one(llama):
    assert models.backend_of(llama) == BACKEND
    assert isinstance(llama, models.HookedModel)


def test_fingerprint_identifies_weights_and_vocab(ckpt_dirs, llama, gpt2, tmp_path):
    fp = models.fingerprint(llama)
    assert fp.architecture == "LlamaForCausalLM" and fp.n_layers == 3 and fp.d_model == 32
    assert fp == models.fingerprint(models.load(ckpt_dirs["llama"], backend=BACKEND))
    assert fp.weights_sha256 != models.fingerprint(gpt2).weights_sha256
    from workbench.tiny import write_tiny_checkpoint

    other = models.load(
        write_tiny_checkpoint(tmp_path / "seed1", "llama", n_layers=3, n_kv_heads=2, seed=1), backend=BACKEND
    )
    with pytest.raises(WorkbenchError, match="weights_sha256"):
        fp.check(models.fingerprint(other))


@pytest.mark.skipif(len(models.available_backends()) < 2, reason="needs transformer_lens 3.9 (both backends)")
def test_both_backends_agree(ckpt_dirs):
    a = models.load(ckpt_dirs["llama"], backend="hooked")
    b = models.load(ckpt_dirs["llama"], backend="bridge")
    assert models.fingerprint(a) == models.fingerprint(b)
    tokens = a.to_tokens("the cat is good")
    with torch.no_grad():
        _, ca = a.run_with_cache(tokens)
        _, cb = b.run_with_cache(tokens)
    torch.testing.assert_close(ca["blocks.1.hook_resid_post"], cb["blocks.1.hook_resid_post"], atol=1e-5, rtol=1e-5)


def test_load_errors(tmp_path):
    with pytest.raises(WorkbenchError, match="does not exist"):
        models.load("./no/such/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkbenchError, match="no config.json"):
        models.load(tmp_path / "empty")
    with pytest.raises(WorkbenchError, match="neither a local folder"):
        models.load("gtp2-smal")
    with pytest.raises(WorkbenchError, match="unknown toy model 'toy-xl'; the toy family is toy-s, toy-m, toy-l"):
        models.load("toy-xl")
    with pytest.raises(WorkbenchError, match="backend must be"):
        models.load(tmp_path / "empty", backend="jax")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"architectures": ["BertForMaskedLM"], "model_type": "bert"}')
    with pytest.raises(WorkbenchError, match="not supported"):
        models.load(tmp_path / "m")


def test_tl_name_in_offline_mode_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WorkbenchError, match="could not download 'gpt2': offline mode.*local folder"):
        models.load("gpt2")


@pytest.mark.slow
def test_tl_name_without_network_fails_clearly(monkeypatch):
    """A real download attempt (this machine has no route to the hub): one clear error, no traceback text."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    try:
        models.load("gpt2")
    except WorkbenchError as e:
        assert "could not download 'gpt2'" in str(e) and "local folder" in str(e)
    else:  # pragma: no cover - only where the hub is reachable
        pytest.skip("the model hub is reachable here")


# ------------------------------------------------------------------------------------ tokenisation, self-check, cache


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])  # adds a BOS / has one but adds none / has none
def test_tokenize_follows_the_hf_tokenizer_and_the_bos_override(family, tmp_path):
    from transformers import AutoTokenizer

    from workbench.tiny import write_tiny_checkpoint
    from workbench.tokens import tokenize

    folder = write_tiny_checkpoint(tmp_path / family, family, n_layers=2, d_model=32, n_heads=4)
    backend = "bridge" if family == "qwen2" else BACKEND  # TransformerLens 3.9's HookedTransformer refuses Qwen2
    tok = AutoTokenizer.from_pretrained(str(folder))
    text = "the cat sees a dog"
    plain = tok(text)["input_ids"]
    body = tok(text, add_special_tokens=False)["input_ids"]
    assert tokenize(models.load(folder, backend=backend), text) == plain
    assert tokenize(models.load(folder, backend=backend, bos="never"), text) == body
    if tok.bos_token_id is None:
        with pytest.raises(WorkbenchError, match="no BOS token"):
            models.load(folder, backend=backend, bos="always")
    else:
        assert tokenize(models.load(folder, backend=backend, bos="always"), text) == [tok.bos_token_id, *body]


def test_chat_template_wraps_the_prompt_as_a_user_turn(tmp_path):
    from transformers import AutoTokenizer

    from workbench.tiny import write_tiny_checkpoint
    from workbench.tokens import tokenize

    folder = write_tiny_checkpoint(tmp_path / "chat", "llama", n_layers=2, chat_template=True)
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = models.load(folder, backend=BACKEND, chat_template=True)
    turn = tok.apply_chat_template([{"role": "user", "content": "the cat"}], tokenize=False, add_generation_prompt=True)
    assert tokenize(model, "the cat", "good") == tok(turn + "good", add_special_tokens=False)["input_ids"]
    assert models.tokenization_of(model).to_dict() == {"bos": "auto", "chat_template": True}
    with pytest.raises(WorkbenchError, match="has no chat template"):
        models.load(write_tiny_checkpoint(tmp_path / "plain", "llama", n_layers=2), backend=BACKEND, chat_template=True)


def test_self_check_refuses_a_backend_that_does_not_reproduce(ckpt_dirs, monkeypatch):
    real = models.transformer_lens_model

    def broken(*a, **k):
        m = real(*a, **k)
        with torch.no_grad():
            next(p for n, p in m.named_parameters() if "embed" in n.lower()).mul_(1.5)
        return m

    monkeypatch.setattr(models, "transformer_lens_model", broken)
    with pytest.raises(WorkbenchError, match=f"the '{BACKEND}' backend does not reproduce this LlamaForCausalLM"):
        models.load(ckpt_dirs["llama"], backend=BACKEND)


def test_fingerprint_is_cached_by_weight_file_stat(tmp_path, monkeypatch):
    from workbench.tiny import write_tiny_checkpoint

    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_tiny_checkpoint(tmp_path / "m", "llama", n_layers=2)
    first = models.fingerprint(models.load(folder, backend=BACKEND))
    assert (tmp_path / "cache" / "fingerprints.json").is_file()
    calls = []
    real = models.weights_hash
    monkeypatch.setattr(models, "weights_hash", lambda named: calls.append(1) or real(named))
    assert models.fingerprint(models.load(folder, backend=BACKEND)) == first and not calls  # O(1): no re-hash
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # "rewritten"
    assert models.fingerprint(models.load(folder, backend=BACKEND)) == first and calls  # hashed again, same value


def test_wrap_an_in_memory_model_and_load_bf16_sharded(tmp_path):
    from transformers import AutoTokenizer

    from workbench.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path / "m", "llama", n_layers=2, dtype=torch.bfloat16, max_shard_size="20KB")
    assert len(list(folder.glob("*.safetensors"))) > 1
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    wrapped = models.wrap(hf, AutoTokenizer.from_pretrained(str(folder)), backend=BACKEND)
    assert models.source_of(wrapped) is None
    loaded = models.load(folder, backend=BACKEND)
    assert models.fingerprint(wrapped) == models.fingerprint(loaded)  # bf16 weights held in float32 either way
    half = models.load(folder, backend=BACKEND, dtype=torch.bfloat16)
    assert models.info(half).self_check <= models.SELF_CHECK_TOLERANCE[torch.bfloat16] * 100
    with pytest.raises(WorkbenchError, match="hf_model must be a transformers model"):
        models.wrap(object(), None)
    from transformers import LlamaForCausalLM

    built = LlamaForCausalLM(hf.config.__class__(**{**hf.config.to_dict(), "architectures": None})).eval()
    assert (
        models.fingerprint(models.wrap(built, AutoTokenizer.from_pretrained(str(folder)), backend=BACKEND)).architecture
        == "LlamaForCausalLM"
    )
    from workbench.export.parity import check
    from workbench.export.spec import Spec
    from workbench.interventions import AddDirection

    spec = Spec((AddDirection(HookSite(1), torch.ones(32), 1.0),), models.fingerprint(wrapped))
    with pytest.raises(WorkbenchError, match="pass source=FOLDER"):
        check(wrapped, spec, ["the cat"], paths=("apply_hf",))


def test_tl_name_fails_fast_when_the_hub_is_unreachable(monkeypatch):
    import time

    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1:9")  # nothing listens on the discard port
    t = time.perf_counter()
    with pytest.raises(WorkbenchError, match="not reachable.*local folder"):
        models.load("gpt2")
    assert time.perf_counter() - t < 2.5
