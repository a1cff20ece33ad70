"""Representation tuning (Ackerman 2024): fine-tune a direction into the weights, compared with online steering.

The model is tuned as a plain Hugging Face checkpoint (its deployment form), with forward hooks reading the
residual stream at the output of the tuned blocks (``resid_post``), at the last prompt token:

* **projection loss** ``(1 - cos(a_l, v_l)) / 2`` averaged over tuned layers and examples (tune in; ``sign=-1``
  tunes in the negated vector; ``mode="out"`` uses ``|cos|`` to tune it out);
* **token loss**: cross-entropy of the answer token, times ``token_weight``;
* **gradient routing** as in the seed: the projection loss updates only the attention value and output
  projections of the tuned layers, the token loss every parameter of the tuned layers; everything else is frozen
  (bit-identical, tested);
* AdamW, early stopping on the validation split's projection (or token) loss with patience.

The study (``run``) on toy truthfulness: v_l = unit mean difference of honest- minus liar-persona activations at the
fact stem; training items are fact stems under both personas labelled with the true value. Compared: untuned,
online steering (the card's best truth cell), token-only tuned, dual-loss tuned; multiple-choice accuracy on
liar-persona items in distribution and in the out-of-distribution prompt families, on honest items, under
opposite-sign steering, and perplexity / grammaticality changes. The dual-loss model is saved as a Hugging Face
checkpoint with ``tuning_card.json``.
"""

__all__ = [
    "TuneConfig",
    "tune",
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

import math
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class TuneConfig:
    layers: tuple = (1, 2)
    mode: str = "in"  # in | out
    sign: float = 1.0  # -1 tunes in the negated vector
    projection: bool = True  # False: token loss only
    token_weight: float = 1.0
    lr_vo: float = 1e-3
    lr_rest: float = 1e-4
    batch_size: int = 16
    max_steps: int = 200
    patience: int = 10
    eval_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("in", "out") or self.sign not in (1.0, -1.0, 1, -1):
            raise WorkbenchError(f"mode must be 'in' or 'out' and sign +-1; got {self.mode!r}, {self.sign!r}.")
        if not self.layers:
            raise WorkbenchError("layers is empty; pass the 0-based blocks to tune.")
        require_positive(self, "batch_size", "max_steps", "patience", "eval_every")


def _batches(items: list, size: int, rng: random.Random):
    order = list(range(len(items)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            yield [items[j] for j in order[i : i + size]]


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


def tune(hf, tok, train: list, val: list, vectors: dict, cfg: TuneConfig) -> dict:
    """Tune ``hf`` in place on ``(prompt, answer)`` items; returns the training trace (losses, cosines, stop)."""
    layers = [hf.model.layers[layer] for layer in cfg.layers]
    vo = [p for b in layers for p in (*b.self_attn.v_proj.parameters(), *b.self_attn.o_proj.parameters())]
    vo_ids = {id(p) for p in vo}
    rest = [p for b in layers for p in b.parameters() if id(p) not in vo_ids]
    for p in hf.parameters():
        p.requires_grad_(False)
    for p in vo + rest:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(
        [{"params": vo, "lr": cfg.lr_vo}, {"params": rest, "lr": cfg.lr_rest}], eps=1e-4, weight_decay=0.0
    )
    device = next(hf.parameters()).device
    val_batch = encode_items(tok, val, device)
    gen = _batches(train, cfg.batch_size, random.Random(cfg.seed))
    best, best_state, bad, trace = math.inf, None, 0, []
    hf.train(False)  # no dropout in the toy checkpoints; keep eval-mode numerics
    for step in range(1, cfg.max_steps + 1):
        proj, tok_loss, cos = losses(hf, encode_items(tok, next(gen), device), vectors, cfg)
        opt.zero_grad(set_to_none=True)
        g_tok = torch.autograd.grad(
            cfg.token_weight * tok_loss, vo + rest, allow_unused=True, retain_graph=cfg.projection
        )
        g_proj = torch.autograd.grad(proj, vo, allow_unused=True) if cfg.projection else [None] * len(vo)
        for i, p in enumerate(vo + rest):
            g = g_tok[i]
            if i < len(vo) and g_proj[i] is not None:
                g = g_proj[i] if g is None else g + g_proj[i]
            p.grad = g
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            with torch.no_grad():
                vp, vt, vc = losses(hf, val_batch, vectors, cfg)
            score = float(vp) if cfg.projection else float(vt)
            trace.append(
                {
                    "step": step,
                    "train_proj": float(proj.detach()),
                    "train_token": float(tok_loss.detach()),
                    "train_cos": cos,
                    "val_proj": float(vp),
                    "val_token": float(vt),
                    "val_cos": vc,
                }
            )
            if score < best - 1e-5:
                best, bad = score, 0
                best_state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    if best_state is not None:
        hf.load_state_dict(best_state)
    for p in hf.parameters():
        p.requires_grad_(False)
    return {"steps": step, "best_val": None if best == math.inf else best, "trace": trace}


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
    max_steps: int = 200
    """Most optimiser steps per tuned setting."""
    token_weight: float = 1.0
    """Weight of the token (cross-entropy) loss beside the cosine loss."""
    oppose_strength: "float | None" = field(default=None, metadata={"none": "card"})
    """Opposite-sign steering strength for the robustness column (default: the toy card's)."""
    max_new_tokens: int = 16
    """Tokens generated per prompt for grammaticality."""
    seed: int = 0
    """Seed of items, initialisation order and sampling."""

    def __post_init__(self) -> None:
        require_positive(self, "n_train", "n_val", "n_eval", "max_steps", "max_new_tokens")


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


def run(
    model: HookedModel,
    cfg: Config = Config(),
    *,
    name: str = "",
    out: "str | Path | None" = None,
    progress: bool = True,
) -> Result:
    """The comparison on toy truthfulness (module docstring); ``out`` receives the dual-loss tuned checkpoint."""
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
    rows.append(_evaluate(model, "untuned", eval_sets, (), opposed, docs, **kw))
    rows.append(
        _evaluate(
            model,
            f"online steering ({cell.kind} L{cell.layer} x{cell.strength:g})",
            eval_sets,
            (cell.intervention(),),
            opposed,
            docs,
            **kw,
        )
    )
    tuned_dir = None
    for label, projection in (("token-only tuned", False), ("dual-loss tuned", True)):
        hf = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
        tcfg = TuneConfig(
            layers=layers, projection=projection, token_weight=cfg.token_weight, max_steps=cfg.max_steps, seed=cfg.seed
        )
        training[label] = tune(hf, tok, train, val, vectors, tcfg)
        folder = Path(tempfile.mkdtemp(prefix="wb-tuned-")) / "model"
        with atomic_dir(folder) as tmp:
            hf.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            write_json(
                tmp / "tuning_card.json",
                {
                    "format": "workbench.tuned",
                    "base_model": models.fingerprint(model).to_dict(),
                    "setting": label,
                    "tune_config": asdict(tcfg),
                    "direction": "truth: honest minus liar persona, unit, resid_post",
                    "training": training[label],
                },
            )
        tuned = models.load(folder, backend=backend)
        rows.append(_evaluate(tuned, label, eval_sets, (), opposed, docs, **kw))
        if projection:
            tuned_dir = folder
        else:
            shutil.rmtree(folder.parent, ignore_errors=True)
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
            f"  {row['setting']:<42} ID {a['accuracy']:.2f} {a['accuracy_ci']}  OOD {ood}  opposed "
            f"{row['liar_id_opposed']['accuracy']:.2f}  honest items {row['honest_id']['accuracy']:.2f}"
        )
    if r.saved:
        lines.append(f"tuned checkpoint (Hugging Face, with tuning_card.json): {r.saved} beside result.json")
    return "\n".join(lines)


def execute(ctx: Context, cfg: Config) -> Result:
    import dataclasses

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
        f"{cfg['n_eval']} items per evaluation set, max {cfg['max_steps']} steps, early stopping)",
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
    for label, t in sorted(r["training"].items()):
        first, last = t["trace"][0], t["trace"][-1]
        lines.append(
            f"- {label}: stopped after {t['steps']} steps; validation cosine to v {first['val_cos']:.3f} -> "
            f"{last['val_cos']:.3f}, validation token loss {first['val_token']:.3f} -> "
            f"{last['val_token']:.3f}"
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
