"""Parity: the deployed forms of a spec reproduce the TransformerLens-steered logits.

For each deployment path (``apply_hf``: the standalone applier on a plain transformers model; ``baked``: the
checkpoint with the edit folded into its weights, loaded by transformers; ``llama.cpp``: the checkpoint converted to
GGUF plus the exported control vector in llama-cpp-python) ``check`` reports, over all positions and the whole
vocabulary of every prompt:

* ``max_abs_diff``: max |deployed - TransformerLens steered| of the logits;
* ``effect``: max |TransformerLens steered - unsteered| (the edit is not a no-op);
* ``off_by_one``: the smallest max |deployed - TransformerLens steered one block earlier or later|, which must be
  far above ``max_abs_diff`` for the comparison to mean anything.

The ``vllm`` path serves the baked checkpoint in vLLM's offline engine (float32, ``workbench.export.vllm``) and
generates greedily from the same token ids: its row (``GenerationRow``) compares log-probabilities instead of
logits (vLLM returns those), at every prompt position after the first and every generated one, over vLLM's top
``VLLM_LOGPROBS`` tokens plus the actual next token (the whole vocabulary of smaller models), and counts the prompts
whose greedy continuation equals TransformerLens's.
"""

__all__ = ["ParityRow", "GenerationRow", "PATHS", "DEFAULT_PATHS", "TOLERANCE", "tolerance", "tl_logits", "check"]

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench import models
from workbench.errors import WorkbenchError
from workbench.export.spec import Spec
from workbench.hooks import applied
from workbench.io import read_json
from workbench.models import HookedModel, hf_folder
from workbench.sites import HookSite
from workbench.tokens import tokenize

PATHS = ("apply_hf", "baked", "llama.cpp", "vllm")
#: How many of vLLM's top log-probabilities the ``vllm`` path compares at each position.
VLLM_LOGPROBS = 1024
#: What ``check`` runs unless told: vLLM only when named (its engine takes 30-90 s to start).
DEFAULT_PATHS = ("apply_hf", "baked", "llama.cpp")
#: Max |logit difference| a deployed form may show against the TransformerLens-steered model, by the dtype its
#: weights are stored in (float16/bfloat16 round the folded vector); for vLLM the same bounds hold on
#: log-probabilities. llama.cpp runs an F32 GGUF, but ggml's GELU uses a float16 table (3-6e-4 on the GELU
#: families' base models), hence its own bound. A row also fails when the difference is not far below the edit's
#: own effect (a tenth of it), and a vLLM row when a greedy continuation differs.
TOLERANCE = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 1e-1, "llama.cpp": 5e-3}


def tolerance(path: str, dtype: str = "float32") -> float:
    """The PASS bound of ``path`` (``TOLERANCE``) for weights stored in ``dtype``."""
    if path == "llama.cpp":
        return TOLERANCE["llama.cpp"]
    if dtype not in TOLERANCE:
        raise WorkbenchError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}.")
    return TOLERANCE[dtype]


@dataclass(frozen=True)
class ParityRow:
    path: str
    max_abs_diff: float
    effect: float
    off_by_one: "float | None"
    n_tokens: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def passes(self, tol: float) -> bool:
        """Whether the deployed form reproduces the steered model: within ``tol`` and far below the effect."""
        return self.max_abs_diff <= tol and self.max_abs_diff < 0.1 * self.effect


@dataclass(frozen=True)
class GenerationRow(ParityRow):
    """A row of a path that generates (vLLM): differences are of log-probabilities, and ``greedy`` is (prompts
    whose greedy continuation equals TransformerLens's, prompts); ``new_tokens`` were generated per prompt from
    weights stored in ``weights_dtype``."""

    greedy: tuple[int, int]
    new_tokens: int
    weights_dtype: str

    def passes(self, tol: float) -> bool:
        """Within ``tol`` and far below the effect; with float32 weights also every greedy continuation equal
        (float16/bfloat16 weights round the model itself, which may flip a near-tie of the steered model)."""
        greedy_ok = self.greedy[0] == self.greedy[1] or self.weights_dtype != "float32"
        return super().passes(tol) and greedy_ok


def tl_logits(model: HookedModel, tokens: torch.Tensor, spec: "Spec | None" = None) -> torch.Tensor:
    """Logits [pos, vocab] of one token sequence under the spec's interventions (none: unsteered)."""
    with torch.no_grad(), applied(model, *(spec.interventions if spec else ())):
        return model(tokens[None]).float()[0]


def _shifted(spec: Spec, delta: int) -> "Spec | None":
    n = spec.fingerprint.n_layers
    ivs = []
    for iv in spec.interventions:
        layer = iv.site.layer + delta
        if not 0 <= layer < n:
            return None
        ivs.append(dataclasses.replace(iv, site=HookSite(layer, iv.site.kind)))
    return Spec(tuple(ivs), spec.fingerprint, spec.provenance)


def _tl_greedy(model: HookedModel, tokens: torch.Tensor, spec: Spec, n: int) -> list[int]:
    """TransformerLens's greedy continuation of ``tokens`` under ``spec`` (full recompute each step)."""
    seq = tokens
    for _ in range(n):
        seq = torch.cat([seq, tl_logits(model, seq, spec)[-1].argmax()[None].to(seq.dtype)])
    return seq[len(tokens) :].tolist()


def _gathered(logprobs: torch.Tensor, entries: "list[dict[int, float]]") -> tuple[torch.Tensor, torch.Tensor]:
    """(reference logprobs at vLLM's (position, token) entries, vLLM's logprobs) as two flat tensors."""
    rows = [i for i, pos in enumerate(entries) for _ in pos]
    toks = [t for pos in entries for t in pos]
    got = torch.tensor([lp for pos in entries for lp in pos.values()], dtype=torch.float64)
    return logprobs[rows, toks].double(), got


def _vllm_row(model: HookedModel, spec: Spec, seqs: "list[torch.Tensor]", folder, engine, n_new: int) -> ParityRow:
    from workbench.export import vllm

    own = engine is None
    engine = engine or vllm.Engine()
    try:
        comps = engine.run(folder, [t.tolist() for t in seqs], max_new_tokens=n_new, logprobs=VLLM_LOGPROBS)
    finally:
        if own:
            engine.close()
    neighbours = [s for s in (_shifted(spec, -1), _shifted(spec, 1)) if s is not None]
    diff = effect = 0.0
    obo = [0.0] * len(neighbours)
    equal = n_entries = 0
    for t, c in zip(seqs, comps):
        equal += list(c.tokens) == _tl_greedy(model, t, spec, n_new)
        full = torch.cat([t, torch.tensor(c.tokens, dtype=t.dtype)])
        if len(c.logprobs) != len(full) - 1:
            raise WorkbenchError(f"vLLM returned {len(c.logprobs)} positions of logprobs for {len(full) - 1}.")

        def lp(s: "Spec | None", full=full, c=c) -> tuple[torch.Tensor, torch.Tensor]:
            return _gathered(tl_logits(model, full, s)[:-1].double().log_softmax(-1), list(c.logprobs))

        ref, got = lp(spec)
        diff = max(diff, float((got - ref).abs().max()))
        effect = max(effect, float((ref - lp(None)[0]).abs().max()))
        obo = [max(o, float((got - lp(s)[0]).abs().max())) for o, s in zip(obo, neighbours)]
        n_entries += len(c.logprobs)
    cfg = read_json(Path(folder) / "config.json")
    stored = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    return GenerationRow("vllm", diff, effect, min(obo, default=None), n_entries, (equal, len(seqs)), n_new, stored)


def _hf_logits(hf, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(tokens[None]).logits.float()[0]


def check(
    model: HookedModel,
    spec: Spec,
    prompts: "list[str]",
    *,
    paths: "tuple[str, ...]" = DEFAULT_PATHS,
    workdir: "str | Path | None" = None,
    artifacts: "dict[str, str | Path] | None" = None,
    vllm_engine=None,
    new_tokens: int = 8,
) -> list[ParityRow]:
    """Run ``spec`` on each deployment path and compare with the TransformerLens-steered model (see module doc).

    ``artifacts`` maps a path to an already exported artifact to check (``apply_hf``: a spec folder, ``baked`` and
    ``vllm``: a baked checkpoint folder, ``llama.cpp``: a control-vector file); paths without one export ``spec``
    to a temp folder (baked in float32). ``vllm_engine`` (a ``workbench.export.vllm.Engine``) is the vLLM process
    to use, kept running by the caller (default: one started and closed here); ``new_tokens`` is the length of
    its greedy continuations.
    """
    from transformers import AutoModelForCausalLM

    from workbench.export import apply_hf, llamacpp
    from workbench.export.bake import bake_hf
    from workbench.export.gguf import write_gguf

    unknown = [p for p in paths if p not in PATHS]
    if unknown or not prompts:
        raise WorkbenchError(f"paths must be among {', '.join(PATHS)} (got {unknown}) and prompts non-empty.")
    if "vllm" in paths:
        from workbench.export import vllm

        if new_tokens < 1:
            raise WorkbenchError(f"new_tokens must be >= 1, got {new_tokens}.")
        if vllm_engine is None and not vllm.available():
            raise WorkbenchError(
                "vLLM parity needs vLLM in its own environment; run `./dev test` once to install it into "
                ".venv-vllm (or set WORKBENCH_VLLM_PYTHON), or leave vllm out of paths."
            )
    spec.check(model)
    origin = models.source_of(model)
    if origin is None:
        raise WorkbenchError(
            "parity runs the deployed forms from the model's checkpoint folder, and this model was "
            "wrapped from memory: pass source=FOLDER to workbench.models.wrap (or load the folder)."
        )
    source = hf_folder(origin)
    seqs = [torch.tensor(tokenize(model, p)) for p in prompts]
    logit_paths = [p for p in paths if p != "vllm"]  # vLLM's row compares logprobs on its own continuations
    steered = [tl_logits(model, t, spec) for t in seqs] if logit_paths else []
    effect = max((float((s - tl_logits(model, t)).abs().max()) for s, t in zip(steered, seqs)), default=0.0)
    neighbours = [s for s in (_shifted(spec, -1), _shifted(spec, 1)) if s is not None] if logit_paths else []
    wrong = [[tl_logits(model, t, s) for t in seqs] for s in neighbours]

    def row(name: str, deployed: "list[torch.Tensor]") -> ParityRow:
        diff = max(float((d - s).abs().max()) for d, s in zip(deployed, steered))
        obo = min((max(float((d - w).abs().max()) for d, w in zip(deployed, ws)) for ws in wrong), default=None)
        return ParityRow(name, diff, effect, obo, sum(len(t) for t in seqs))

    rows, given = [], dict(artifacts or {})
    with tempfile.TemporaryDirectory(dir=workdir) as tmp_name:
        tmp = Path(tmp_name)
        if "apply_hf" in paths:
            hf = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32, local_files_only=True).eval()
            with apply_hf.applied(hf, given.get("apply_hf") or spec.save(tmp / "spec")):
                rows.append(row("apply_hf", [_hf_logits(hf, t) for t in seqs]))
        baked = None
        if "baked" in paths:
            baked = given.get("baked") or bake_hf(spec, source, tmp / "baked", dtype="float32")
            hf = AutoModelForCausalLM.from_pretrained(str(baked), dtype=torch.float32, local_files_only=True).eval()
            rows.append(row("baked", [_hf_logits(hf, t) for t in seqs]))
        if "llama.cpp" in paths:
            from workbench.export.gguf import NO_LLAMACPP

            if spec.fingerprint.architecture in NO_LLAMACPP:
                raise WorkbenchError(f"{NO_LLAMACPP[spec.fingerprint.architecture]}; leave llama.cpp out of paths.")
            if not llamacpp.available():
                raise WorkbenchError(
                    "llama.cpp parity needs llama-cpp-python and its converter; run `./dev test` once "
                    "to install them, or leave llama.cpp out of paths."
                )
            gguf_model = llamacpp.convert_checkpoint(source, tmp / "model-f32.gguf")
            cvec_file = given.get("llama.cpp") or write_gguf(spec, tmp / "control.gguf")
            cvec = llamacpp.control_vector_data([(cvec_file, 1.0)])
            rows.append(
                row("llama.cpp", [torch.from_numpy(llamacpp.llama_logits(gguf_model, t.tolist(), cvec)) for t in seqs])
            )
        if "vllm" in paths:
            folder = given.get("vllm") or baked or bake_hf(spec, source, tmp / "baked", dtype="float32")
            rows.append(_vllm_row(model, spec, seqs, folder, vllm_engine, new_tokens))
    return rows
