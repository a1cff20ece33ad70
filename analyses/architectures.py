"""The architecture support matrix: every family, on a backend, through every workbench path, each measured
against an independent Hugging Face computation or refused with the reason.

For one checkpoint folder ``measure`` reports:

* ``load``: the load self-check (max |logit difference| to the HF model), or the backend's refusal;
* ``activations``: max |block output - HF ``hidden_states[l + 1]``| over every block but the last, and for the last
  max |final norm(last block output) - HF ``hidden_states[-1]``|;
* ``directions``: the smallest cosine, over layers, between the workbench's mean-difference directions and a plain
  HF mean difference of the pairs' last-token hidden states (pairs of unequal lengths, HF's own tokenisation);
* ``steer``: whether KV-cached steered greedy generation equals full recompute (tokens, and max |logit diff|);
* ``apply_hf`` / ``baked`` / ``llama.cpp``: ``workbench.export.parity`` of an add at a middle block's output
  (max |deployed - TransformerLens steered| logits, and the edit's own effect), or the exporter's refusal.
llama.cpp needs a vocabulary its converter reads: ``gguf_folder`` is the checkpoint to convert for that path (the
same architecture with a SentencePiece tokenizer, or the BPE checkpoint itself with
``$WORKBENCH_LLAMA_PRE_TOKENIZER`` set, see ``workbench.export._convert``).
"""

__all__ = ["PAIRS", "PROMPTS", "measure"]

from pathlib import Path

import torch

from workbench import models
from workbench.errors import WorkbenchError

#: Contrast pairs of unequal lengths in the tiny vocabulary (``workbench.tiny.TINY_WORDS``).
PAIRS = [
    ("the cat is good", "the dog is very bad"),
    ("a big red car", "a small car"),
    ("we love the sun", "they hate the big moon"),
    ("i see a bird", "you see the fish and a tree"),
]
PROMPTS = ["the cat sees a big red bus and", "we love the"]


def _cell(fn):
    try:
        return fn()
    except WorkbenchError as e:
        return {"refused": str(e)}


def _hf(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()


def _blocks_hidden(hf, ids: list[int]) -> tuple:
    with torch.no_grad():
        return hf(torch.tensor([ids]), output_hidden_states=True).hidden_states


def _activations(model, hf, tok) -> dict:
    from workbench.sites import HookSite, final_hidden

    ids = tok(PROMPTS[0])["input_ids"]
    hs = _blocks_hidden(hf, ids)
    n = model.cfg.n_layers
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([ids]))
        last = float((final_hidden(model, cache) - hs[n]).abs().max())
    inner = max(float((cache[HookSite(layer).name] - hs[layer + 1]).abs().max()) for layer in range(n - 1))
    return {"blocks": inner, "last_after_final_norm": last}


def _directions(model, hf, tok) -> dict:
    from workbench.activations import collect_pairs
    from workbench.directions import compute_directions
    from workbench.pairs import ContrastPairs

    pairs = ContrastPairs.from_list(PAIRS)
    acts = collect_pairs(model, pairs, position="last")
    ds = compute_directions(acts, "mean")
    n = model.cfg.n_layers
    diffs = []
    for p, q in PAIRS:
        hp, hq = _blocks_hidden(hf, tok(p)["input_ids"]), _blocks_hidden(hf, tok(q)["input_ids"])
        diffs.append(torch.stack([hp[layer + 1][0, -1] - hq[layer + 1][0, -1] for layer in range(n - 1)]))
    ref = torch.stack(diffs).mean(0)
    cos = [
        float(torch.nn.functional.cosine_similarity(ds.at(layer).vector.double(), ref[layer].double(), dim=0))
        for layer in range(n - 1)
    ]
    return {"min_cosine": min(cos), "first_token_is_bos": tok(PAIRS[0][0])["input_ids"][0] == tok.bos_token_id}


def _vector(model, seed: int = 1) -> torch.Tensor:
    return torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))


def _steer(model) -> dict:
    from workbench.generate import generate
    from workbench.interventions import AddDirection
    from workbench.sites import HookSite

    iv = AddDirection(HookSite(model.cfg.n_layers // 2), _vector(model), 4.0)
    kw = dict(max_new_tokens=5, temperature=0.0, return_logits=True)
    cached = generate(model, PROMPTS, iv, **kw)
    full = generate(model, PROMPTS, iv, use_cache=False, **kw)
    return {
        "tokens_equal": cached.tokens == full.tokens,
        "max_logit_diff": float((cached.logits - full.logits).abs().max()),
    }


def _spec(model):
    from workbench.export.spec import Spec
    from workbench.interventions import AddDirection
    from workbench.sites import HookSite

    return Spec((AddDirection(HookSite(model.cfg.n_layers // 2), _vector(model), 4.0),), models.fingerprint(model))


def _parity(model, path: str, workdir) -> dict:
    from workbench.export.parity import check

    (row,) = check(model, _spec(model), PROMPTS, paths=(path,), workdir=workdir)
    return {"max_abs_diff": row.max_abs_diff, "effect": row.effect}


def _gguf(folder: Path, backend: str, workdir) -> dict:
    from workbench.export import llamacpp
    from workbench.export.gguf import NO_LLAMACPP
    from workbench.export.parity import check

    if not llamacpp.available():
        return {"skipped": "llama-cpp-python is not installed (./dev test installs it)"}
    model = models.load(folder, backend=backend)
    spec = _spec(model)
    arch = spec.fingerprint.architecture
    if arch in NO_LLAMACPP:
        return {"refused": NO_LLAMACPP[arch]}
    base = check(model, spec, PROMPTS, paths=("llama.cpp",), workdir=workdir)[0]
    return {"max_abs_diff": base.max_abs_diff, "effect": base.effect}


def measure(
    folder: "str | Path", backend: str, *, gguf_folder: "str | Path | None" = None, workdir: "str | Path | None" = None
) -> dict:
    """Every cell of the matrix for the checkpoint in ``folder`` on ``backend`` (see module doc)."""
    from transformers import AutoTokenizer

    from workbench.export.bake import bake_support

    folder = Path(folder)
    try:
        model = models.load(folder, backend=backend)
    except WorkbenchError as e:
        return {"load": {"refused": str(e)}}
    hf, tok = _hf(folder), AutoTokenizer.from_pretrained(str(folder))
    out = {
        "load": {"self_check": models.info(model).self_check},
        "activations": _activations(model, hf, tok),
        "directions": _directions(model, hf, tok),
        "steer": _steer(model),
        "apply_hf": _cell(lambda: _parity(model, "apply_hf", workdir)),
    }
    why = bake_support(hf.config.model_type)
    out["baked"] = {"refused": why} if why else _cell(lambda: _parity(model, "baked", workdir))
    if gguf_folder is not None:
        out["llama.cpp"] = _cell(lambda: _gguf(Path(gguf_folder), backend, workdir))
    return out
