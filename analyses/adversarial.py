"""Adversarial reversal: can a short prompt suffix undo a steering vector? (The CAE study: EPO inputs reverse it.)

The attacked system is the steered model (``source`` prompts pushed towards ``target``). The adversary appends
``suffix_len`` tokens to the prompt and minimises the steered model's log-odds of target evidence over source
evidence (``logsumexp`` of the logits of the attribute's target words minus its source words) at the end of a fixed
probe stem placed after the suffix, where the next word must show the attribute (sentiment: ``. the cat is`` ->
an adjective; topic: ``. the big`` -> a noun; register and language: ``.`` -> a determiner or opener), averaged
over ``n_train`` prompts:

* ``gcg`` (greedy coordinate gradient): gradient of the loss w.r.t. the one-hot suffix, top-k tokens per position,
  ``candidates`` random single-token swaps evaluated exactly, the best kept;
* ``epo`` (evolutionary, after Thompson et al.'s EPO): a population of suffixes mutated by the same gradient-guided
  swaps, selected on loss + ``ce_weight`` x the suffix's cross-entropy under the model (how unnatural the prompt is),
  so the search trades reversal against fluency.

Reported on held-out prompts: reversal rate (fraction of prompts whose steered log-odds are > 0 without the suffix
and < 0 with it), sampled target rates (unsteered / steered, each with and without the suffix), the suffix's
cross-entropy; transfer of the found suffix to other model sizes (the toy family shares one vocabulary, each model
steered at its own card cell); and the negated-vector symmetry check (log-odds shift at +s vs -s).
"""

__all__ = ["Config", "Result", "TokenSets", "PROBE_STEMS", "search", "run", "plot", "section", "summary", "STUDY"]

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from analyses.common import Attribute, require_positive, resolve_steer, steer_cell, target_rate, word_ids
from workbench import models
from workbench.errors import WorkbenchError
from workbench.forward import batch_logits, last_logits
from workbench.models import HookedModel
from workbench.report.sections import Section, rate_ci, who
from workbench.sites import EMBED
from workbench.studies import Context, Study, StudyResult, register
from workbench.tokens import make_batch, pad_id_of, tokenize
from workbench.toy.evaluate import evidence_words
from workbench.toy.measure import steer_prompts


@dataclass(frozen=True)
class TokenSets:
    """Per row: logsumexp of the logits of ``target_ids`` minus that of ``source_ids``."""

    target_ids: tuple
    source_ids: tuple

    def value(self, last_logits: torch.Tensor) -> torch.Tensor:
        return last_logits[:, list(self.target_ids)].logsumexp(-1) - last_logits[:, list(self.source_ids)].logsumexp(-1)


class _EmbedSuffix:
    """Replaces each row's suffix embeddings with ``onehot @ W_E`` (so the loss has a gradient w.r.t. the one-hot)."""

    def __init__(self, onehot: torch.Tensor, starts: "list[int]", w_e: torch.Tensor) -> None:
        self.onehot, self.starts, self.w_e = onehot, starts, w_e

    def to_hooks(self, model: Any, layout: Any = None) -> list:
        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            emb = (self.onehot @ self.w_e).to(x)  # [L, d]
            x = x.clone()
            for row, s in enumerate(self.starts):
                x[row, s : s + emb.shape[0]] = emb
            return x

        if EMBED not in model.hook_dict:
            raise WorkbenchError(f"the model has no {EMBED!r} hook; the suffix search needs it.")
        return [(EMBED, hook)]


def _banned(model: HookedModel) -> list:
    tok = model.tokenizer
    return sorted(
        {i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) if i is not None}
    )


def _evaluate(
    model: HookedModel,
    prompts: "list[list[int]]",
    suffixes: "list[list[int]]",
    ivs: tuple,
    metric: TokenSets,
    stem: "list[int]" = (),
    batch_rows: int = 256,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """Mean loss over prompts and mean suffix cross-entropy, per suffix."""
    stem = list(stem)
    rows = [(c, len(p), p + s + stem) for c, s in enumerate(suffixes) for p in prompts]
    loss = torch.zeros(len(suffixes))
    ce = torch.zeros(len(suffixes))
    with torch.no_grad():
        for i in range(0, len(rows), batch_rows):
            chunk = rows[i : i + batch_rows]
            b = make_batch([r[2] for r in chunk], pad_id_of(model), "right")
            logits = batch_logits(model, b, *ivs).float().log_softmax(-1)
            last = b.end - 1
            m = metric.value(logits[torch.arange(len(chunk)), last])
            for j, (c, start, seq) in enumerate(chunk):
                end = start + len(suffixes[c])
                nll = -logits[j, start - 1 : end - 1].gather(-1, torch.tensor(seq[start:end])[:, None]).mean()
                loss[c] += float(m[j]) / len(prompts)
                ce[c] += float(nll) / len(prompts)
    return loss, ce


def _gradient(
    model: HookedModel,
    prompts: "list[list[int]]",
    suffix: "list[int]",
    ivs: tuple,
    metric: TokenSets,
    stem: "list[int]" = (),
) -> torch.Tensor:
    """d(mean loss)/d(one-hot suffix), [L, vocab]."""
    w_e = model.W_E.detach()
    onehot = torch.nn.functional.one_hot(torch.tensor(suffix), w_e.shape[0]).float().requires_grad_(True)
    seqs = [p + suffix + list(stem) for p in prompts]
    b = make_batch(seqs, pad_id_of(model), "right")
    try:
        with torch.enable_grad():
            logits = batch_logits(model, b, *ivs, _EmbedSuffix(onehot, [len(p) for p in prompts], w_e))
            loss = metric.value(logits.float()[torch.arange(len(seqs)), b.end - 1]).mean()
            loss.backward()
        return onehot.grad.detach()
    finally:
        model.zero_grad(set_to_none=True)


def search(
    model: HookedModel,
    prompts: "list[list[int]]",
    ivs: tuple,
    metric: TokenSets,
    *,
    method: str = "gcg",
    suffix_len: int = 4,
    steps: int = 40,
    topk: int = 16,
    candidates: int = 64,
    population: int = 8,
    ce_weight: float = 0.1,
    stem: "list[int]" = (),
    seed: int = 0,
) -> dict:
    """Find a suffix minimising the steered loss (see the module docstring); returns the suffix and its trace."""
    if method not in ("gcg", "epo"):
        raise WorkbenchError(f"method must be 'gcg' or 'epo', got {method!r}.")
    rng = random.Random(seed)
    banned = _banned(model)
    vocab = [t for t in range(model.cfg.d_vocab) if t not in banned]

    def fitness(loss: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
        return loss + (ce_weight * ce if method == "epo" else 0.0)

    def mutations(suffix: "list[int]", n: int) -> "list[list[int]]":
        grad = _gradient(model, prompts, suffix, ivs, metric, stem)
        grad[:, banned] = float("inf")
        top = (-grad).topk(topk, dim=-1).indices  # [L, topk] tokens that lower the loss most
        out = []
        for _ in range(n):
            new = list(suffix)
            pos = rng.randrange(len(new))
            new[pos] = int(top[pos, rng.randrange(topk)])
            out.append(new)
        return out

    pop = [[rng.choice(vocab) for _ in range(suffix_len)] for _ in range(population if method == "epo" else 1)]
    loss, ce = _evaluate(model, prompts, pop, ivs, metric, stem)
    trace = []
    for step in range(steps):
        if method == "gcg":
            cands = mutations(pop[0], candidates)
            c_loss, c_ce = _evaluate(model, prompts, cands, ivs, metric, stem)
            i = int(c_loss.argmin())
            pop, loss, ce = [cands[i]], c_loss[i : i + 1], c_ce[i : i + 1]
        else:
            cands = [m for s in pop for m in mutations(s, max(1, candidates // len(pop)))]
            c_loss, c_ce = _evaluate(model, prompts, cands, ivs, metric, stem)
            allp, all_l, all_c = pop + cands, torch.cat([loss, c_loss]), torch.cat([ce, c_ce])
            keep = fitness(all_l, all_c).argsort()[:population].tolist()
            pop, loss, ce = [allp[i] for i in keep], all_l[keep], all_c[keep]
        best = int(fitness(loss, ce).argmin())
        trace.append({"step": step, "loss": float(loss[best]), "ce": float(ce[best])})
    best = int(fitness(loss, ce).argmin())
    frontier = [{"suffix": s, "loss": float(l_), "ce": float(c_)} for s, l_, c_ in zip(pop, loss, ce)]
    return {
        "suffix": pop[best],
        "loss": float(loss[best]),
        "ce": float(ce[best]),
        "trace": trace,
        "population": frontier,
    }


@dataclass(frozen=True)
class Config:
    attribute: Attribute = "sentiment"
    """Toy attribute whose steering the suffix reverses (not truth)."""
    source: "str | None" = None
    """Value the prompts carry (default: the attribute's usual source)."""
    target: "str | None" = None
    """Value the steering pushes towards (default: the attribute's usual target)."""
    layer: "int | None" = field(default=None, metadata={"none": "card"})
    """0-based block steered (default: the toy card's best cell, else the middle block)."""
    strength: "float | None" = field(default=None, metadata={"none": "card"})
    """Steering strength (default: the toy card's best cell, else 1)."""
    method: Literal["gcg", "epo"] = "gcg"
    """Search: GCG (greedy coordinate gradient) or EPO (evolutionary, with a fluency term)."""
    suffix_len: int = 4
    """Suffix length in tokens."""
    steps: int = 40
    """Search steps."""
    topk: int = 16
    """Candidate tokens per position from the gradient."""
    candidates: int = 64
    """Candidate suffixes evaluated per step."""
    population: int = 8
    """EPO: population size."""
    ce_weight: float = 0.1
    """EPO: weight of the suffix's cross-entropy (fluency)."""
    n_train: int = 8
    """Prompts the suffix is optimised on."""
    n_heldout: int = 48
    """Held-out prompts it is evaluated on."""
    transfer: "tuple[str, ...]" = ()
    """Other models to try the suffix on, e.g. toy-s,toy-l."""
    max_new_tokens: int = 16
    """Tokens generated per prompt in the sampled evaluation."""
    seed: int = 0
    """Seed of prompts, search and sampling."""

    def __post_init__(self) -> None:
        resolve_steer(self)
        if self.attribute == "truth":
            raise WorkbenchError(
                "truth evidence depends on the fact stem the suffix would displace; attack "
                "sentiment, topic, register or language."
            )
        if self.method not in ("gcg", "epo"):
            raise WorkbenchError(f"method must be 'gcg' or 'epo', got {self.method!r}.")
        require_positive(self, "suffix_len", "steps", "topk", "candidates", "population", "n_train", "n_heldout")


@dataclass(frozen=True)
class Result(StudyResult):
    KIND = "adversarial"

    config: dict
    model: dict
    site: dict
    suffix: dict  # tokens, text, loss, cross-entropy, trace, final population
    heldout: dict
    transfer: list
    symmetry: dict
    cost: dict = field(default_factory=dict)


PROBE_STEMS = {"sentiment": ". the cat is", "topic": ". the big", "register": ".", "language": "."}


def _stem(model: HookedModel, attribute: str) -> "list[int]":
    return model.to_tokens(PROBE_STEMS[attribute], prepend_bos=False)[0].tolist()


def _metric(model: HookedModel, cfg: Config) -> TokenSets:
    return TokenSets(
        word_ids(model, evidence_words(cfg.attribute, cfg.target)),
        word_ids(model, evidence_words(cfg.attribute, cfg.source)),
    )


def _heldout(model: HookedModel, name: str, cfg: Config, texts: "list[str]", suffix: "list[int]", cell) -> dict:
    metric = _metric(model, cfg)
    seqs = [tokenize(model, t) for t in texts]
    stem = _stem(model, cfg.attribute)
    iv = (cell.intervention(),)
    plain = metric.value(last_logits(model, [s + stem for s in seqs], *iv))
    attacked = metric.value(last_logits(model, [s + suffix + stem for s in seqs], *iv))
    was = plain > 0
    suffixed = [t + " " + model.tokenizer.decode(suffix) for t in texts]
    kw = {"max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}
    return {
        "model": name,
        "site": {"layer": cell.layer, "kind": cell.kind, "strength": cell.strength},
        "n": len(texts),
        "steered_logodds_positive": int(was.sum()),
        "reversal_rate": float(((attacked < 0) & was).sum() / max(int(was.sum()), 1)),
        "mean_logodds": {"steered": float(plain.mean()), "steered_with_suffix": float(attacked.mean())},
        "target_rate": {
            "unsteered": target_rate(model, texts, cfg.attribute, cfg.target, **kw),
            "steered": target_rate(model, texts, cfg.attribute, cfg.target, *iv, **kw),
            "unsteered_with_suffix": target_rate(model, suffixed, cfg.attribute, cfg.target, **kw),
            "steered_with_suffix": target_rate(model, suffixed, cfg.attribute, cfg.target, *iv, **kw),
        },
    }


def run(
    model: HookedModel,
    cfg: Config = Config(),
    *,
    name: str = "",
    others: "dict[str, HookedModel] | None" = None,
    progress: bool = True,
) -> Result:
    """Search a reversing suffix on ``model``; evaluate it held out, on ``others`` (transfer) and the symmetry."""
    t0 = time.perf_counter()
    cell = steer_cell(
        model, name, cfg.attribute, cfg.source, cfg.target, layer=cfg.layer, strength=cfg.strength, seed=cfg.seed
    )
    texts = [p.text for p in steer_prompts(cfg.attribute, cfg.source, cfg.n_train + cfg.n_heldout, cfg.seed + 11)]
    train, held = texts[: cfg.n_train], texts[cfg.n_train :]
    metric = _metric(model, cfg)
    stem = _stem(model, cfg.attribute)
    found = search(
        model,
        [tokenize(model, t) for t in train],
        (cell.intervention(),),
        metric,
        method=cfg.method,
        suffix_len=cfg.suffix_len,
        steps=cfg.steps,
        topk=cfg.topk,
        candidates=cfg.candidates,
        population=cfg.population,
        ce_weight=cfg.ce_weight,
        stem=stem,
        seed=cfg.seed,
    )
    suffix = found["suffix"]
    heldout = _heldout(model, name, cfg, held, suffix, cell)
    transfer = []
    fp = models.fingerprint(model)
    for other_name, other in (others or {}).items():
        if models.fingerprint(other).vocab_sha256 != fp.vocab_sha256:
            transfer.append({"model": other_name, "skipped": "different vocabulary"})
            continue
        ocell = steer_cell(other, other_name, cfg.attribute, cfg.source, cfg.target, seed=cfg.seed)
        transfer.append(_heldout(other, other_name, cfg, held, suffix, ocell))
    seqs = [tokenize(model, t) + stem for t in held]
    shifts = {
        label: float(metric.value(last_logits(model, seqs, cell.intervention(scale=s))).mean())
        for label, s in (("0", 0.0), ("+s", cell.strength), ("-s", -cell.strength))
    }
    kw = {"max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}
    rates = {
        label: target_rate(model, held, cfg.attribute, cfg.target, cell.intervention(scale=s), **kw)
        for label, s in (("0", 0.0), ("+s", cell.strength), ("-s", -cell.strength))
    }
    symmetry = {
        "mean_logodds": shifts,
        "logodds_shift_plus": shifts["+s"] - shifts["0"],
        "logodds_shift_minus": shifts["0"] - shifts["-s"],
        "target_rate": rates,
        "rate_gain_plus": rates["+s"] - rates["0"],
        "rate_drop_minus": rates["0"] - rates["-s"],
    }
    tok = model.tokenizer
    return Result(
        asdict(cfg),
        {"name": name, "fingerprint": fp.to_dict()},
        {"layer": cell.layer, "kind": cell.kind, "strength": cell.strength},
        {**found, "tokens": suffix, "text": tok.decode(suffix), "length": len(suffix)},
        heldout,
        transfer,
        symmetry,
        {"seconds": round(time.perf_counter() - t0, 1)},
    )


def plot(result: "Result | dict") -> dict:
    from workbench.plotting import lines

    r = result.to_dict() if isinstance(result, Result) else result
    tr = r["suffix"]["trace"]
    fig = lines(
        {
            "loss (target - source log-odds)": ([t["step"] for t in tr], [t["loss"] for t in tr]),
            "suffix cross-entropy": ([t["step"] for t in tr], [t["ce"] for t in tr]),
        },
        title=f"{r['model'].get('name') or 'model'}: {r['config']['method']} search for a reversing suffix "
        f"({r['config']['attribute']})",
        x_title="step",
        y_title="nats",
    )
    return {"adversarial_search": fig}


def section(r: dict) -> Section:
    """The report's section: the suffix, its held-out reversal rate, and the negated-vector symmetry."""
    h = r["heldout"]
    n_pos = h["steered_logodds_positive"]
    text = (
        f"{r['config']['method'].upper()} search on {who(r)} ({r['config']['attribute']}): suffix "
        f"`{r['suffix']['text']}` ({r['suffix']['length']} tokens, cross-entropy {r['suffix']['ce']:.2f} "
        f"nats/token). Held-out reversal rate {rate_ci(h['reversal_rate'], max(n_pos, 1))} of {n_pos} prompts; "
        f"sampled target rate {h['target_rate']['steered']:.2f} steered, "
        f"{h['target_rate']['steered_with_suffix']:.2f} with the suffix. Negated-vector symmetry: log-odds shift "
        f"{r['symmetry']['logodds_shift_plus']:+.2f} at +s vs {r['symmetry']['logodds_shift_minus']:+.2f} at -s."
    )
    return Section(
        Result.KIND,
        f"Adversarial reversal: {r['config']['attribute']} ({who(r)}, {r['config']['method']})",
        text,
        plot(r),
        43,
    )


def summary(r: Result) -> str:
    h, cfg = r.heldout, r.config
    lines = [
        f"adversarial ({cfg['method']}) on {r.model['name']}, {cfg['attribute']}: suffix {r.suffix['text']!r} "
        f"(cross-entropy {r.suffix['ce']:.2f} nats/token); held-out reversal rate {h['reversal_rate']:.2f}; "
        f"target rate steered {h['target_rate']['steered']:.2f} -> with suffix "
        f"{h['target_rate']['steered_with_suffix']:.2f}"
    ]
    for t in r.transfer:
        if "reversal_rate" in t:
            lines.append(
                f"  transfer to {t['model']}: reversal {t['reversal_rate']:.2f}, target rate "
                f"{t['target_rate']['steered']:.2f} -> {t['target_rate']['steered_with_suffix']:.2f}"
            )
    sy = r.symmetry
    lines.append(f"symmetry: log-odds shift +s {sy['logodds_shift_plus']:+.3f}, -s {sy['logodds_shift_minus']:+.3f}")
    return "\n".join(lines)


def execute(ctx: Context, cfg: Config) -> Result:
    return run(
        ctx.model(),
        cfg,
        name=ctx.model_name or "",
        others={n: ctx.get(n) for n in cfg.transfer},
        progress=ctx.progress,
    )


STUDY = register(
    Study(
        "adversarial",
        "search a suffix that reverses steering (GCG / EPO)",
        Config,
        Result,
        execute,
        plot,
        section,
        summary,
    )
)
