"""Representation tuning (Ackerman 2024): fine-tune a direction into the weights, compared with online steering.

The model is tuned as a plain Hugging Face checkpoint (its deployment form), with forward hooks reading the
residual stream at the output of the tuned blocks (``resid_post``), at the last prompt token:

* **projection loss** ``(1 - cos(a_l, v_l)) / 2`` averaged over tuned layers and examples (tune in; ``sign=-1``
  tunes in the negated vector; ``mode="out"`` uses ``|cos|`` to tune it out);
* **token loss**: cross-entropy of the answer token, times ``token_weight`` (the seed: ``outputs.loss / 100``);
* **gradient routing** (``routing``): ``"seed-code"`` is what the seed's code does: its zero-grad hooks
  (``enhanced_hooking.disable_grad``) return ``None``, which leaves a gradient unchanged, so both losses train
  every parameter of the tuned layers; ``"intended"`` is what those hooks were meant to do: the projection loss
  reaches only the attention value and output projections (v/o), the token loss every parameter of the tuned
  layers. Everything outside the tuned layers is frozen (bit-identical, tested);
* AdamW (eps 1e-4) with v/o at ``lr_vo`` and the rest at ``lr_rest``, ``weight_decay``, a ``schedule`` and early
  stopping (``stopping``).

``recipe("seed" | "ours", ...)`` gives the two complete settings. **seed** is ``custom_fine_tune.ipynb`` (cell 5)
with rates scaled to the toy models (its 1e-5 / 1e-6 become 1e-3 / 1e-4, the same 10x ratio): token loss / 100,
weight decay 0.1, 10 linear warm-up steps then linear decay to 0 over 3 epochs (``get_linear_schedule_with_warmup``),
batch 4 of fixed contiguous batches in shuffled order (its ``CustomBatchSampler``), and early stopping on the mean
validation loss of the last 20 batches (one validation batch per step; patience 10, not before 20 steps nor
before batch 80 of the first epoch, no rollback to the best). Its token-only baseline ("Truth tuned") trains
every tuned weight at one rate (the rest's), token loss unweighted, batch 2, stopping on the token loss.
**ours** is the workbench's own recipe, run as an ablation: token weight 1, v/o at 10x the rest in both
models, no weight decay, constant rate, batch 16 reshuffled each epoch, at most 200 steps, early stopping on the
whole validation set every 10 steps (patience 10 evaluations) with rollback to the best, intended routing.

The study (``run``) on toy truthfulness: v_l = unit mean difference of honest- minus liar-persona activations at the
fact stem; training items are fact stems under both personas labelled with the true value. Compared: untuned, online
steering (the card's best truth cell), and per recipe a token-only and a dual-loss tuned model (the seed recipe's
dual loss once per routing; the main one routes as ``seed-code``, because that is how the authors' code trained the
models behind their reported numbers, and ``intended`` runs beside it); multiple-choice accuracy on liar-persona
items in distribution and in the out-of-distribution prompt families, on honest items, under opposite-sign steering,
and perplexity / grammaticality changes. The main dual-loss model (first recipe, first routing) is saved as a
Hugging Face checkpoint with ``tuning_card.json``.
"""

__all__ = [
    "RECIPES",
    "ROUTINGS",
    "TuneConfig",
    "recipe",
    "tune",
    "routed_grads",
    "lr_factor",
    "encode_items",
    "losses",
    "Config",
    "Result",
    "run",
    "plot",
    "section",
    "summary",
    "STUDY",
]

import dataclasses
import math
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from analyses.common import fact_items, mc_truth, require_positive, steer_cell
from workbench import models
from workbench.errors import WorkbenchError
from workbench.generate import generate
from workbench.io import atomic_dir, write_json
from workbench.metrics import perplexity
from workbench.models import HookedModel, hf_folder, source_of
from workbench.report.sections import Section, who
from workbench.studies import Context, Study, StudyResult, register
from workbench.toy.evaluate import grammaticality
from workbench.toy.measure import directions_for
from workbench.toy.prompts import corpus_documents

Recipe = Literal["seed", "ours"]
Routing = Literal["seed-code", "intended"]
RECIPES: tuple[str, ...] = ("seed", "ours")
ROUTINGS: tuple[str, ...] = ("seed-code", "intended")
_CHOICES = {
    "mode": ("in", "out"),
    "routing": ROUTINGS,
    "schedule": ("linear-warmup", "constant"),
    "batching": ("fixed", "shuffled"),
    "stopping": ("seed", "best"),
}


@dataclass(frozen=True)
class TuneConfig:
    """One tuning run. The defaults are the seed's dual-loss recipe with toy-scaled rates (``recipe("seed")``)."""

    layers: tuple = (1, 2)
    """0-based blocks whose parameters are trained."""
    mode: str = "in"
    """'in' tunes the direction in, 'out' tunes it out (|cos|)."""
    sign: float = 1.0
    """-1 tunes in the negated vector."""
    projection: bool = True
    """False: token loss only."""
    token_weight: float = 0.01
    """Weight of the token loss beside the projection loss (the seed: ``outputs.loss / 100``)."""
    routing: str = "seed-code"
    """'seed-code' (both losses train every tuned weight) or 'intended' (the projection loss only v/o)."""
    lr_vo: float = 1e-3
    """Learning rate of the attention value and output projections of the tuned layers."""
    lr_rest: float = 1e-4
    """Learning rate of the other tuned parameters."""
    weight_decay: float = 0.1
    """AdamW weight decay of every tuned parameter (the seed: 0.1)."""
    schedule: str = "linear-warmup"
    """'linear-warmup': ``warmup_steps`` linear warm-up, then linear decay to 0 at the planned last step (epochs x
    batches per epoch), as ``transformers.get_linear_schedule_with_warmup``; 'constant'."""
    warmup_steps: int = 10
    """Warm-up steps of the linear schedule."""
    batch_size: int = 4
    """Items per optimiser step."""
    batching: str = "fixed"
    """'fixed': contiguous batches of the item list, their order shuffled each epoch (the seed's sampler);
    'shuffled': all items reshuffled each epoch."""
    epochs: "int | None" = 3
    """Most passes over the training items (None: until ``max_steps``)."""
    max_steps: "int | None" = None
    """Most optimiser steps (None: ``epochs`` only)."""
    stopping: str = "seed"
    """'seed': one validation batch per step, stop when the mean over the last ``avg_over`` batches has not improved
    for ``patience`` steps (checked from step ``avg_over``, never before batch ``min_steps`` of the first epoch), no
    rollback; 'best': the whole validation set every ``eval_every`` steps, ``patience`` evaluations, rollback to the
    best. Both watch the projection loss, or the token loss when ``projection`` is off."""
    patience: int = 10
    """Non-improving checks before stopping."""
    avg_over: int = 20
    """Validation batches averaged by the seed's stopping rule."""
    min_steps: int = 80
    """The seed's rule never stops before this batch of the first epoch."""
    eval_every: int = 10
    """Steps between whole-validation-set evaluations (the trace; the 'best' rule's checks)."""
    seed: int = 0
    """Seed of the batch order."""

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise WorkbenchError(
                    f"TuneConfig.{name} must be one of {', '.join(map(repr, allowed))}; got {getattr(self, name)!r}."
                )
        if self.sign not in (1.0, -1.0):
            raise WorkbenchError(f"TuneConfig.sign must be +1 or -1, got {self.sign!r}.")
        if not self.layers:
            raise WorkbenchError("layers is empty; pass the 0-based blocks to tune.")
        if self.epochs is None and self.max_steps is None:
            raise WorkbenchError("set epochs or max_steps (or both); with neither, tuning would never end.")
        for name in ("token_weight", "lr_vo", "lr_rest", "weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise WorkbenchError(f"TuneConfig.{name} must be a finite number >= 0, got {v!r}.")
        require_positive(self, "batch_size", "patience", "eval_every", "avg_over", "warmup_steps")
        for name in ("epochs", "max_steps"):
            if getattr(self, name) is not None:
                require_positive(self, name)


def recipe(name: str, *, projection: bool, routing: "str | None" = None, **overrides) -> TuneConfig:
    """The complete settings of recipe ``name`` (module docstring) for a dual-loss (``projection=True``) or a
    token-only model; ``routing`` picks the seed recipe's routing (ours is always 'intended'), ``overrides`` set any
    other ``TuneConfig`` field (layers, seed, max_steps, ...)."""
    if name == "seed":
        base = TuneConfig(projection=projection, routing=routing or "seed-code")
        if not projection:  # "Truth tuned": one rate for all tuned weights, CE unweighted, batch 2
            base = dataclasses.replace(base, token_weight=1.0, lr_vo=base.lr_rest, batch_size=2)
    elif name == "ours":
        if routing not in (None, "intended"):
            raise WorkbenchError(f"recipe 'ours' routes as intended; got routing {routing!r}.")
        base = TuneConfig(
            projection=projection,
            token_weight=1.0,
            routing="intended",
            weight_decay=0.0,
            schedule="constant",
            batch_size=16,
            batching="shuffled",
            epochs=None,
            max_steps=200,
            stopping="best",
        )
    else:
        raise WorkbenchError(f"recipe must be one of {', '.join(RECIPES)}, got {name!r}.")
    try:
        return dataclasses.replace(base, **overrides)
    except TypeError as e:
        fields = ", ".join(f.name for f in dataclasses.fields(TuneConfig))
        raise WorkbenchError(f"recipe {name!r}: {e}; TuneConfig's fields are {fields}.") from None


def lr_factor(cfg: TuneConfig, step: int, total: int) -> float:
    """The learning-rate multiplier of optimiser step ``step`` (0-based) out of ``total`` planned steps."""
    if cfg.schedule == "constant":
        return 1.0
    if step < cfg.warmup_steps:
        return step / max(1, cfg.warmup_steps)
    return max(0.0, (total - step) / max(1, total - cfg.warmup_steps))


def _batches(items: list, size: int, rng: random.Random, batching: str):
    """Endless batches: epoch after epoch, ``len(items) // size`` batches each (the remainder dropped)."""
    order = list(range(len(items)))
    n = len(items) // size
    while True:
        if batching == "shuffled":
            rng.shuffle(order)
            chunks = [order[i * size : (i + 1) * size] for i in range(n)]
        else:
            chunks = [order[i * size : (i + 1) * size] for i in range(n)]
            rng.shuffle(chunks)
        for chunk in chunks:
            yield [items[j] for j in chunk]


def encode_items(tok, items: list, device) -> tuple:
    """Right-padded prompts (BOS first), the index of each last prompt token and the answer token ids."""
    ids = [[tok.bos_token_id] + tok.encode(text, add_special_tokens=False) for text, _ in items]
    ans = torch.tensor([tok.encode(a, add_special_tokens=False)[0] for _, a in items], device=device)
    width = max(len(x) for x in ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
    return t, mask, torch.tensor([len(x) - 1 for x in ids], device=device), ans


def losses(hf, batch, vectors: dict, cfg: TuneConfig) -> tuple:
    """Projection loss, token loss and mean cosine to the vectors of one ``encode_items`` batch."""
    tokens, mask, last, ans = batch
    acts = {}
    hooks = [
        hf.model.layers[layer].register_forward_hook(
            lambda m, i, o, layer=layer: acts.__setitem__(layer, o[0] if isinstance(o, tuple) else o)
        )
        for layer in cfg.layers
    ]
    try:
        logits = hf(input_ids=tokens, attention_mask=mask).logits
    finally:
        for h in hooks:
            h.remove()
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    tok_loss = torch.nn.functional.cross_entropy(logits[rows, last].float(), ans)
    cos = torch.stack(
        [
            torch.nn.functional.cosine_similarity(
                acts[layer][rows, last].float(), cfg.sign * vectors[layer][None].to(tokens.device), dim=-1
            )
            for layer in cfg.layers
        ]
    )
    proj = ((1 - cos) / 2).mean() if cfg.mode == "in" else cos.abs().mean()
    return proj, tok_loss, float(cos.mean().detach())


def routed_grads(proj: torch.Tensor, tok_loss: torch.Tensor, vo: list, rest: list, cfg: TuneConfig) -> list:
    """The gradient of each of ``vo + rest`` under ``cfg.routing`` (None where a loss does not reach it)."""
    params = vo + rest
    if not cfg.projection:
        return list(torch.autograd.grad(cfg.token_weight * tok_loss, params, allow_unused=True))
    if cfg.routing == "seed-code":  # zero-grad hooks that return None change nothing: both losses reach everything
        return list(torch.autograd.grad(cfg.token_weight * tok_loss + proj, params, allow_unused=True))
    g_tok = torch.autograd.grad(cfg.token_weight * tok_loss, params, allow_unused=True, retain_graph=True)
    g_proj = torch.autograd.grad(proj, vo, allow_unused=True)
    out = []
    for i, g in enumerate(g_tok):
        if i < len(vo) and g_proj[i] is not None:
            g = g_proj[i] if g is None else g + g_proj[i]
        out.append(g)
    return out


class _SeedStopping:
    """The seed's early-stopping rule (``custom_fine_tune.ipynb``, cell 5), fed one validation-batch loss per step:
    from batch ``avg_over`` of the first epoch on, the mean of the last ``avg_over`` losses either improves on the
    best so far or counts one more step without improvement; stop at ``patience`` of those, once past batch
    ``min_steps`` of the first epoch (any batch of a later one)."""

    def __init__(self, cfg: TuneConfig) -> None:
        self.cfg, self.values, self.best, self.bad = cfg, [], math.inf, 0

    def update(self, epoch: int, i: int, value: float) -> bool:
        """Record batch ``i`` (0-based within ``epoch``)'s validation loss; True when training should stop."""
        c = self.cfg
        self.values.append(value)
        if i < c.avg_over and epoch == 0:
            return False
        window = self.values[-c.avg_over :]
        avg = sum(window) / len(window)
        if avg < self.best:
            self.best, self.bad = avg, 0
        else:
            self.bad += 1
        return self.bad >= c.patience and (i > c.min_steps or epoch > 0)


def _evaluate_val(hf, val_batch, vectors: dict, cfg: TuneConfig, step: int) -> dict:
    with torch.no_grad():
        vp, vt, vc = losses(hf, val_batch, vectors, cfg)
    return {"step": step, "val_proj": float(vp), "val_token": float(vt), "val_cos": vc}


def tune(hf, tok, train: list, val: list, vectors: dict, cfg: TuneConfig) -> dict:
    """Tune ``hf`` in place on ``(prompt, answer)`` items; returns the training trace (losses, cosines, stop)."""
    per_epoch = len(train) // cfg.batch_size
    if per_epoch < 1 or len(val) < (cfg.batch_size if cfg.stopping == "seed" else 1):
        raise WorkbenchError(
            f"need at least batch_size ({cfg.batch_size}) training items and validation items; got {len(train)} "
            f"and {len(val)}."
        )
    n_layers = len(hf.model.layers)
    if min(cfg.layers) < 0 or max(cfg.layers) >= n_layers:
        raise WorkbenchError(f"layers {list(cfg.layers)} must be 0-based blocks of this model (0..{n_layers - 1}).")
    layers = [hf.model.layers[layer] for layer in cfg.layers]
    vo = [p for b in layers for p in (*b.self_attn.v_proj.parameters(), *b.self_attn.o_proj.parameters())]
    vo_ids = {id(p) for p in vo}
    rest = [p for b in layers for p in b.parameters() if id(p) not in vo_ids]
    for p in hf.parameters():
        p.requires_grad_(False)
    for p in vo + rest:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(
        [{"params": vo, "lr": cfg.lr_vo}, {"params": rest, "lr": cfg.lr_rest}],
        eps=1e-4,
        weight_decay=cfg.weight_decay,
    )
    planned = per_epoch * cfg.epochs if cfg.epochs is not None else int(cfg.max_steps or 0)
    limit = min(planned, cfg.max_steps) if cfg.max_steps is not None else planned
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, planned))
    device = next(hf.parameters()).device
    val_all = encode_items(tok, val, device)
    gen = _batches(train, cfg.batch_size, random.Random(cfg.seed), cfg.batching)
    val_gen = _batches(val, cfg.batch_size, random.Random(cfg.seed + 1), "fixed")
    hf.train(False)  # no dropout in the toy checkpoints; keep eval-mode numerics
    trace = [_evaluate_val(hf, val_all, vectors, cfg, 0)]
    best, best_state, bad, stop = math.inf, None, 0, "limit"
    rule = _SeedStopping(cfg)
    step = 0
    for step in range(1, limit + 1):
        epoch, i = divmod(step - 1, per_epoch)
        proj, tok_loss, cos = losses(hf, encode_items(tok, next(gen), device), vectors, cfg)
        opt.zero_grad(set_to_none=True)
        for p, g in zip(vo + rest, routed_grads(proj, tok_loss, vo, rest, cfg)):
            p.grad = g
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == limit:
            trace.append(
                {
                    **_evaluate_val(hf, val_all, vectors, cfg, step),
                    "train_proj": float(proj.detach()),
                    "train_token": float(tok_loss.detach()),
                    "train_cos": cos,
                }
            )
        if cfg.stopping == "seed":
            with torch.no_grad():
                vp, vt, _ = losses(hf, encode_items(tok, next(val_gen), device), vectors, cfg)
            if rule.update(epoch, i, float(vp) if cfg.projection else float(vt)):
                stop = "early"
                break
        elif step % cfg.eval_every == 0 or step == limit:
            last = trace[-1]
            score = last["val_proj"] if cfg.projection else last["val_token"]
            if score < best - 1e-5:
                best, bad = score, 0
                best_state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience:
                    stop = "early"
                    break
    if best_state is not None:
        hf.load_state_dict(best_state)
    for p in hf.parameters():
        p.requires_grad_(False)
    final = _evaluate_val(hf, val_all, vectors, cfg, step)
    return {
        "steps": step,
        "stop": stop,
        "best_val": None if min(rule.best, best) == math.inf else min(rule.best, best),
        "final": final,
        "trace": trace,
        "tune_config": {**asdict(cfg), "layers": list(cfg.layers)},
    }


@dataclass(frozen=True)
class Config:
    layers: "tuple[int, ...] | None" = field(default=None, metadata={"none": "middle"})
    """Blocks to tune: 'middle' (n_layers // 4 .. 3 n_layers // 4) or e.g. '1,2'."""
    n_train: int = 600
    """Training items."""
    n_val: int = 100
    """Validation items (early stopping)."""
    n_eval: int = 200
    """Items per evaluation set."""
    recipes: "tuple[Recipe, ...]" = ("seed", "ours")
    """Training recipes, each tuning a token-only and a dual-loss model; the first is the main result, the others
    ablations. seed: the authors' code with toy-scaled rates (token loss /100, v/o at 10x, weight decay 0.1,
    linear warm-up and decay over 3 epochs, batch 4, the seed's early stopping; token-only: one rate, no /100,
    batch 2); ours: token weight 1, v/o at 10x in both models, no weight decay, constant rate, batch 16, at most
    200 steps, rollback to the best validation check (module docstring)."""
    routings: "tuple[Routing, ...]" = ("seed-code", "intended")
    """Gradient routings of the seed recipe's dual loss, one model each, the first the main one. seed-code: as the
    seed's code runs (its zero-grad hooks return None, so the projection loss also trains every non-v/o weight of
    the tuned layers); intended: the projection loss reaches only v_proj/o_proj. The ours recipe always routes as
    intended."""
    max_steps: "int | None" = field(default=None, metadata={"none": "recipe"})
    """Cap on optimiser steps per tuned model ('recipe': each recipe's own limit: 3 epochs for seed, 200 steps for
    ours)."""
    oppose_strength: "float | None" = field(default=None, metadata={"none": "card"})
    """Opposite-sign steering strength for the robustness column (default: the toy card's)."""
    max_new_tokens: int = 16
    """Tokens generated per prompt for grammaticality."""
    seed: int = 0
    """Seed of items, initialisation order and sampling."""

    def __post_init__(self) -> None:
        require_positive(self, "n_train", "n_val", "n_eval", "max_new_tokens")
        if self.max_steps is not None:
            require_positive(self, "max_steps")
        for name, allowed in (("recipes", RECIPES), ("routings", ROUTINGS)):
            value = tuple(getattr(self, name))
            if not value or any(v not in allowed for v in value) or len(set(value)) != len(value):
                raise WorkbenchError(f"{name} must list distinct values among {', '.join(allowed)}; got {value!r}.")
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class Result(StudyResult):
    KIND = "tuning"

    config: dict
    model: dict
    settings: list  # rows per setting
    training: dict
    saved: str = ""
    cost: dict = field(default_factory=dict)


OOD = ("long", "no_persona", "qa")


def _evaluate(
    model: HookedModel,
    label: str,
    eval_sets: dict,
    steer: tuple,
    oppose: tuple,
    docs: list,
    n_gen: int,
    max_new_tokens: int,
) -> dict:
    row = {"setting": label}
    for name, items in eval_sets.items():
        row[name] = mc_truth(model, items, steer)
    row["liar_id_opposed"] = mc_truth(model, eval_sets["liar_id"], oppose)
    row["perplexity"] = perplexity(model, docs, *steer)
    texts = [it[0] for it in eval_sets["liar_id"][:n_gen]]
    with torch.no_grad():
        g = generate(model, texts, *steer, max_new_tokens=max_new_tokens, seed=0)
    row["grammaticality"] = sum(grammaticality(t, c) for t, c in zip(g.texts, texts)) / len(texts)
    return row


def _plan(cfg: Config) -> "list[tuple[str, str, bool, str | None]]":
    """(label, recipe, projection, routing) of every tuned model, the main recipe's first."""
    plan = []
    for rec in cfg.recipes:
        name = "seed recipe" if rec == "seed" else "ours"
        plan.append((f"token-only tuned ({name})", rec, False, None))
        for routing in cfg.routings if rec == "seed" else ("intended",):
            plan.append((f"dual-loss tuned ({name}, {routing} routing)", rec, True, routing))
    return plan


def run(
    model: HookedModel,
    cfg: Config = Config(),
    *,
    name: str = "",
    out: "str | Path | None" = None,
    progress: bool = True,
) -> Result:
    """The comparison on toy truthfulness (module docstring); ``out`` receives the main dual-loss tuned checkpoint
    (first recipe, first routing)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    n = model.cfg.n_layers
    layers = tuple(cfg.layers) if cfg.layers is not None else tuple(range(max(1, n // 4), max(2, 3 * n // 4)))
    ds = directions_for(model, "truth", "liar", "honest", seed=cfg.seed)
    vectors = {layer: (ds.at(layer).vector / ds.at(layer).vector.norm()).float() for layer in layers}
    items = fact_items(cfg.n_train + cfg.n_val, None, cfg.seed + 50)
    data = [(text, honest) for text, honest, _, _ in items]
    train, val = data[: cfg.n_train], data[cfg.n_train :]
    eval_sets = {
        "liar_id": fact_items(cfg.n_eval, "liar", cfg.seed + 1),
        "honest_id": fact_items(cfg.n_eval, "honest", cfg.seed + 2),
    }
    for fam in OOD:
        eval_sets[f"liar_{fam}"] = fact_items(cfg.n_eval, "liar", cfg.seed + 3, family=fam)
    docs = corpus_documents(40, seed=cfg.seed + 4)
    cell = steer_cell(model, name, "truth", "liar", "honest", seed=cfg.seed)
    strength = cfg.oppose_strength if cfg.oppose_strength is not None else cell.strength
    src = hf_folder(source_of(model) or name)
    backend = models.backend_of(model)
    rows, training = [], {}
    kw = {"n_gen": 60, "max_new_tokens": cfg.max_new_tokens}
    opposed = (cell.intervention(scale=-strength),)  # opposite-sign steering at the card's truth cell
    untouched = {"recipe": None, "routing": None}
    rows.append({**_evaluate(model, "untuned", eval_sets, (), opposed, docs, **kw), **untouched})
    steered = _evaluate(
        model,
        f"online steering ({cell.kind} L{cell.layer} x{cell.strength:g})",
        eval_sets,
        (cell.intervention(),),
        opposed,
        docs,
        **kw,
    )
    rows.append({**steered, **untouched})
    tuned_dir = None
    for label, rec, projection, routing in _plan(cfg):
        hf = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
        overrides = {"layers": layers, "seed": cfg.seed}
        if cfg.max_steps is not None:
            overrides["max_steps"] = cfg.max_steps
        tcfg = recipe(rec, projection=projection, routing=routing, **overrides)
        training[label] = tune(hf, tok, train, val, vectors, tcfg)
        main = tuned_dir is None and projection
        folder = Path(tempfile.mkdtemp(prefix="wb-tuned-")) / "model"
        if main:
            with atomic_dir(folder) as tmp:
                hf.save_pretrained(str(tmp))
                tok.save_pretrained(str(tmp))
                write_json(
                    tmp / "tuning_card.json",
                    {
                        "format": "workbench.tuned",
                        "base_model": models.fingerprint(model).to_dict(),
                        "setting": label,
                        "recipe": rec,
                        "tune_config": training[label]["tune_config"],
                        "direction": "truth: honest minus liar persona, unit, resid_post",
                        "training": training[label],
                    },
                )
        else:
            hf.save_pretrained(str(folder))
            tok.save_pretrained(str(folder))
        tuned = models.load(folder, backend=backend)
        row = _evaluate(tuned, label, eval_sets, (), opposed, docs, **kw)
        rows.append({**row, "recipe": rec, "routing": tcfg.routing if projection else None})
        if main:
            tuned_dir = folder
        else:
            shutil.rmtree(folder.parent, ignore_errors=True)
        if progress:
            t = training[label]
            print(f"  {label}: {t['steps']} steps ({t['stop']}), val cos {t['final']['val_cos']:.3f}", flush=True)
    saved = ""
    if out is not None and tuned_dir is not None:
        final = Path(out) / "tuned-model"
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        shutil.move(str(tuned_dir), str(final))
        saved = str(final)
    if tuned_dir is not None:
        shutil.rmtree(tuned_dir.parent, ignore_errors=True)
    fp = models.fingerprint(model)
    return Result(
        {**asdict(cfg), "layers": list(layers), "oppose_strength": strength},
        {"name": name, "fingerprint": fp.to_dict()},
        rows,
        training,
        saved,
        {"seconds": round(time.perf_counter() - t0, 1)},
    )


def plot(result: "Result | dict") -> dict:
    from workbench.plotting import bars

    r = result.to_dict() if isinstance(result, Result) else result
    keys = [k for k in r["settings"][0] if isinstance(r["settings"][0][k], dict)]
    fig = bars(
        {
            row["setting"]: (keys, [row[k]["accuracy"] for k in keys], [row[k]["accuracy_ci"] for k in keys])
            for row in r["settings"]
        },
        title=f"{r['model'].get('name') or 'model'}: truthful MC accuracy per setting (95% CI)",
        y_title="accuracy",
        x_title="item set",
    )
    return {"tuning": fig}


def section(r: dict) -> Section:
    """The report's section: truthful multiple-choice accuracy per setting and item set, with fluency."""
    keys = [k for k in r["settings"][0] if isinstance(r["settings"][0][k], dict)]
    rows = ["| setting | " + " | ".join(keys) + " | perplexity | grammaticality |", "|---" * (len(keys) + 3) + "|"]
    for x in r["settings"]:
        rows.append(
            f"| {x['setting']} | "
            + " | ".join(
                f"{x[k]['accuracy']:.2f} [{x[k]['accuracy_ci'][0]:.2f}, {x[k]['accuracy_ci'][1]:.2f}]" for k in keys
            )
            + f" | {x['perplexity']:.3f} | {x['grammaticality']:.2f} |"
        )
    best = max(r["settings"], key=lambda x: x["liar_id"]["accuracy"])
    text = (
        f"Representation tuning on {who(r)} (layers {r['config']['layers']}): truthful multiple-choice accuracy "
        f"on liar-persona items is highest for {best['setting']} ({best['liar_id']['accuracy']:.2f}); columns are "
        f"item sets (liar_* under the liar persona in each prompt family, *_opposed under opposite-sign "
        f"steering).\n\n" + "\n".join(rows)
    )
    return Section(Result.KIND, f"Representation tuning: {who(r)}", text, plot(r), 55)


def summary(r: Result) -> str:
    lines = [
        f"representation tuning on {r.model['name']}, layers {r.config['layers']} ({r.cost['seconds']} s); "
        f"truthful MC accuracy [95% CI] on liar-persona items:"
    ]
    for row in r.settings:
        a = row["liar_id"]
        ood = " ".join(
            f"{k[5:]} {row[k]['accuracy']:.2f}"
            for k in row
            if k.startswith("liar_") and k not in ("liar_id", "liar_id_opposed")
        )
        lines.append(
            f"  {row['setting']:<52} ID {a['accuracy']:.2f} {a['accuracy_ci']}  OOD {ood}  opposed "
            f"{row['liar_id_opposed']['accuracy']:.2f}  honest items {row['honest_id']['accuracy']:.2f}"
        )
    if r.saved:
        lines.append(f"tuned checkpoint (Hugging Face, with tuning_card.json): {r.saved} beside result.json")
    return "\n".join(lines)


def execute(ctx: Context, cfg: Config) -> Result:
    r = run(ctx.model(), cfg, name=ctx.model_name or "", out=ctx.workdir, progress=ctx.progress)
    return dataclasses.replace(r, saved="tuned-model" if r.saved else "")


def table(results: "list[dict]") -> str:
    """The representation-tuning study's table (``analyses.tuning.Result`` as saved)."""
    if len(results) != 1:
        raise WorkbenchError(f"this table takes one result; got {len(results)}.")
    r = results[0]
    cfg, name = r["config"], r["model"]["name"]
    cols = [k for k in r["settings"][0] if k.startswith(("honest_", "liar_"))]
    lines = [
        f"# Representation tuning on {name} (`workbench analyze tuning --model {name}`; layers {cfg['layers']}, "
        f"{cfg['n_train']} training items (fact stems, both personas, labelled with the true value), "
        f"{cfg['n_eval']} items per evaluation set, recipes {', '.join(cfg['recipes'])} (the first is the main "
        f"result), seed-recipe routings {', '.join(cfg['routings'])}, step cap "
        f"{'each recipe' + chr(39) + 's own' if cfg['max_steps'] is None else cfg['max_steps']})",
        "",
        "Recipes (`analyses/tuning.py`): **seed recipe** = the authors' `custom_fine_tune.ipynb` with rates scaled "
        "to the toy (token loss /100 beside the cosine loss, v/o at 10x the other tuned weights' rate, weight decay "
        "0.1, 10 warm-up steps then linear decay over 3 epochs, batch 4, early stopping on the 20-batch mean "
        "validation loss without rollback; its token-only baseline: one rate for every tuned weight, loss not "
        "divided, batch 2). Routing: **seed-code** = as the seed's code runs (its zero-grad hooks return None, so "
        "the projection loss trains every weight of the tuned layers), **intended** = the projection loss reaches "
        "only v_proj/o_proj. **ours** = the workbench's own recipe (token weight 1, v/o at 10x in both models, "
        "no weight decay, constant rate, batch 16, at most 200 steps, rollback to the best validation check, "
        "intended routing).",
        "",
        "| setting | " + " | ".join(cols) + " | corpus perplexity | grammaticality |",
        "|---|" + "---|" * (len(cols) + 2),
    ]
    for s in r["settings"]:
        cells = " | ".join(
            f"{s[c]['accuracy']:.2f} [{s[c]['accuracy_ci'][0]:.2f}, {s[c]['accuracy_ci'][1]:.2f}]" for c in cols
        )
        lines.append(f"| {s['setting']} | {cells} | {s['perplexity']:.3f} | {s['grammaticality']:.2f} |")
    lines += [
        "",
        "Columns: truthful multiple-choice accuracy (the true value has the highest log-probability among "
        "the six KB values) with 95% Wilson intervals; liar_* = liar-persona items in the in-distribution (id) "
        "and out-of-distribution prompt families; liar_id_opposed = the same ID items under opposite-sign "
        f"steering at the card's truth cell (x-{cfg['oppose_strength']:g}); honest_id = honest-persona items.",
        "",
    ]
    for label in (s["setting"] for s in r["settings"] if s["setting"] in r["training"]):
        t = r["training"][label]
        c, first, final = t["tune_config"], t["trace"][0], t["final"]
        lines.append(
            f"- {label}: {t['steps']} steps ({'early stop' if t['stop'] == 'early' else 'step limit'}; token weight "
            f"{c['token_weight']:g}, lr v/o {c['lr_vo']:g} / rest {c['lr_rest']:g}, weight decay "
            f"{c['weight_decay']:g}, {c['schedule']} schedule, batch {c['batch_size']}, {c['stopping']} stopping"
            + (f", {c['routing']} routing" if c["projection"] else "")
            + f"); validation cosine to v {first['val_cos']:.3f} -> {final['val_cos']:.3f}, validation token loss "
            f"{first['val_token']:.3f} -> {final['val_token']:.3f}"
        )
    return "\n".join(lines) + "\n"


STUDY = register(
    Study(
        "tuning",
        "representation tuning vs online steering on toy truthfulness",
        Config,
        Result,
        execute,
        plot,
        section,
        summary,
        table=table,
    )
)
