"""Shared fixtures: tiny random Llama and GPT-2 checkpoints written offline, loaded on each backend.

The backend under test is ``$WORKBENCH_BACKEND`` when set (CI runs the suite once on TransformerLens 4.x's
bridge and once on 3.9's HookedTransformer), else the installed line's default.
"""

import os
import warnings

import pytest
import torch

from workbench import models
from workbench.tiny import write_tiny_checkpoint

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

BACKEND = os.environ.get("WORKBENCH_BACKEND") or ("bridge" if models._tl_major() >= 4 else "hooked")


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
