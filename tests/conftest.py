"""Shared fixtures: tiny random Llama and GPT-2 checkpoints written offline, loaded on each backend.

The backend under test is ``$WORKBENCH_BACKEND`` when set (CI runs the suite once on TransformerLens 4.x's
bridge and once on 3.9's HookedTransformer), else the installed line's default.
"""

import warnings

import pytest
import torch

from workbench import models
from workbench.tiny import write_tiny_checkpoint

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

BACKEND = models.default_backend()


@pytest.fixture(scope="session")
def ckpt_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "llama": write_tiny_checkpoint(root / "tiny-llama", "llama", n_layers=3, d_model=32, n_heads=4, n_kv_heads=2),
        "gpt2": write_tiny_checkpoint(root / "tiny-gpt2", "gpt2", n_layers=3, d_model=32, n_heads=4),
    }


@pytest.fixture(scope="session")
def llama(ckpt_dirs):
    return models.load(ckpt_dirs["llama"], backend=BACKEND)


@pytest.fixture(scope="session")
def gpt2(ckpt_dirs):
    return models.load(ckpt_dirs["gpt2"], backend=BACKEND)


@pytest.fixture(params=["llama", "gpt2"])
def model(request, llama, gpt2):
    return {"llama": llama, "gpt2": gpt2}[request.param]


def n_attached_hooks(model) -> int:
    unique = {id(h): h for h in model.hook_dict.values()}  # the bridge lists aliases of one HookPoint
    return sum(len(h._forward_hooks) + len(h._backward_hooks) for h in unique.values())


def planted_llama(root, seed: int, edit, backend: str = BACKEND):
    """A tiny 2-layer Llama where nothing writes the unit direction u (embeddings, attention and MLP outputs are
    orthogonalised against it), the final norm is the identity and the unembedding reads u as "yes" minus "no";
    ``edit(hf, tok, u)`` then plants what a test needs. Returns ``(model, u, tok)``."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = write_tiny_checkpoint(root / "src", "llama", n_layers=2, d_model=32, n_heads=4, n_kv_heads=4)
    hf = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(src))
    u = torch.randn(32, generator=torch.Generator().manual_seed(seed))
    u /= u.norm()
    yes, no = tok.convert_tokens_to_ids(["yes", "no"])
    with torch.no_grad():
        e = hf.model.embed_tokens.weight
        e -= torch.outer(e @ u, u)
        for block in hf.model.layers:
            for w in (block.self_attn.o_proj.weight, block.mlp.down_proj.weight):
                w -= torch.outer(u, u @ w)
        hf.model.norm.weight.fill_(1.0)
        hf.lm_head.weight[yes], hf.lm_head.weight[no] = 4 * u, -4 * u
        edit(hf, tok, u)
    out = root / "planted"
    hf.save_pretrained(str(out))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special")):
            shutil.copy(f, out / f.name)
    return models.load(out, backend=backend), u, tok
