"""DAC on the toy world: property accuracy and fluency cost per strength strategy, one and two properties.

In-context vectors come from ``n_icl`` parallel 4-shot prompts with the target value vs the source value
(``workbench.toy.prompts.few_shot_prompts``, same seed: identical texts but for the attribute), decoded by plain
greedy argmax as the seed's extraction (``ban_special`` bans padding/BOS there instead). Test prompts are short
prompts (persona + one sentence) showing the *source* value, so the zero-shot model continues in it. Steered
decoding is greedy and bans nothing, as the seed's.

Per strategy (fixed alphas, start, diminishing, dynamic, and dynamic with the one-pass lagged timing) and
property set:

* property accuracy: fraction of continuations classified with the target value (exact classifier), per property;
* fluency: grammaticality of the steered continuations, and **delta-ppl** (the seed's measure): perplexity of the
  ICL model's own continuation teacher-forced through the steered zero-shot model, minus the ICL model's
  perplexity on it (the ICL reference: the 4-shot prompt with the target value(s) before the test prompt);
  like the exact evaluators, it stops where the continuation opens another (catalogue) document, whose table
  values no context predicts (``workbench.toy.evaluate.own_document``). The ICL reference is decoded with
  padding/BOS banned, unlike the seed's: the toy few-shot context ends at a document boundary, so an unbanned
  argmax opens a new document at once for most prompts (29-37 of 50 per group on toy-m) and leaves no continuation
  to score;
* for ``dynamic``: the per-step alpha traces (mean over prompts).

The dynamic strategies run once per KL normalisation of ``normalisations``: ``none`` (the plain KL on the
renormalised nucleus) and ``seed`` (that KL divided by the nucleus size |S|, as the DAC code's
``F.kl_div(..., reduction='batchmean')`` on a 1-D tensor computes it).
"""

__all__ = ["Config", "Result", "run", "plot", "section", "summary", "PAIRS", "STUDY"]

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from analyses.common import require_positive
from workbench import models
from workbench.composition import StepAdd, generate_composed, icv
from workbench.errors import WorkbenchError
from workbench.forward import batch_logits
from workbench.generate import generate
from workbench.models import HookedModel
from workbench.positions import TokenLayout
from workbench.report.sections import Section, who
from workbench.studies import Study, StudyResult, on_model, register
from workbench.tokens import make_batch, pad_id_of, tokenize
from workbench.toy.evaluate import grammaticality, own_document, score
from workbench.toy.prompts import few_shot_prompts, prompts_with, steer_values

PAIRS = (("language", "sentiment"), ("sentiment", "register"))


@dataclass(frozen=True)
class Config:
    properties: "tuple[str, ...]" = ("language", "sentiment", "register")
    """Toy attributes steered one at a time (not truth)."""
    pairs: "tuple[tuple[str, str], ...]" = PAIRS
    """Property pairs composed, e.g. language+sentiment,sentiment+register."""
    fixed_alphas: "tuple[float, ...]" = (0.5, 1.0, 2.0, 3.0, 4.0)
    """Strengths of the fixed strategy."""
    alpha: float = 2.0
    """Strength of the start and diminishing strategies."""
    alpha_max: float = 2.0
    """Cap of the dynamic strategy's per-step alpha."""
    top_p: float = 0.9
    """Nucleus the dynamic KL is computed on."""
    normalisations: "tuple[Literal['none', 'seed'], ...]" = ("none", "seed")
    """KL normalisations of the dynamic strategies, each run: none (plain KL) and seed (KL divided by the nucleus
    size |S|, as the DAC code computes it)."""
    kind: Literal["z", "resid_post"] = "z"
    """Site of the in-context vectors: attention head outputs (z) or the block output."""
    ban_special: bool = False
    """Ban padding and BOS tokens in the in-context vectors' greedy extraction (default: no ban, as the seed's
    extraction and the steered decoding)."""
    n_icl: int = 30
    """In-context prompts per property the vectors are extracted from."""
    n_test: int = 50
    """Test prompts per setting."""
    steps: int = 20
    """Tokens generated (greedy) per prompt."""
    seed: int = 0
    """Seed of prompts."""

    def __post_init__(self) -> None:
        for p in (*self.properties, *(x for pair in self.pairs for x in pair)):
            steer_values(p)
            if p == "truth":
                raise WorkbenchError("truth is not composed here (its evidence is facts, not words of a style).")
        if any(p not in self.properties for pair in self.pairs for p in pair):
            raise WorkbenchError("every property of a pair must also be in properties.")
        if self.kind not in ("z", "resid_post"):
            raise WorkbenchError(f"kind must be 'z' or 'resid_post', got {self.kind!r}.")
        norms = tuple(self.normalisations)
        if not norms or any(n not in ("none", "seed") for n in norms) or len(set(norms)) != len(norms):
            raise WorkbenchError(f"normalisations must list distinct values among none, seed; got {norms!r}.")
        object.__setattr__(self, "normalisations", norms)
        require_positive(self, "n_icl", "n_test", "steps")


@dataclass(frozen=True)
class Result(StudyResult):
    KIND = "composition"

    config: dict
    model: dict
    single: list  # rows: property, strategy, alpha, accuracy, grammaticality, delta_ppl
    composed: list  # rows: pair, strategy, accuracies per property, grammaticality, delta_ppl
    traces: dict  # normalisation -> "property" or "a+b" -> mean alpha per step per property (dynamic, exact)
    cost: dict = field(default_factory=dict)


def _icl_prefix(values: dict, n: int, seed: int) -> "list[str]":
    """4-shot contexts showing every attribute value of ``values`` (the composed ICL reference)."""
    (first, v), *rest = values.items()
    return [p.text for p in few_shot_prompts(first, v, n=n, shots=4, seed=seed, also=dict(rest))]


def _nll(model: HookedModel, contexts: "list[str]", conts: "list[str]", ivs_for=None) -> float:
    """Mean per-token NLL of ``conts`` after ``contexts``; ``ivs_for(batch)`` gives interventions for the batch."""
    seqs, spans = [], []
    for c, x in zip(contexts, conts):
        a, full = tokenize(model, c), tokenize(model, c + " " + x if x else c)
        seqs.append(full)
        spans.append((len(a), len(full)))
    total = count = 0.0
    for i in range(0, len(seqs), 32):
        chunk = seqs[i : i + 32]
        b = make_batch(chunk, pad_id_of(model), "left")
        ivs = ivs_for(b, i) if ivs_for else ()
        layout = TokenLayout(b.start, b.start + torch.tensor([spans[i + j][0] for j in range(len(chunk))]))
        with torch.no_grad():
            lp = batch_logits(model, b, *ivs, layout=layout).float().log_softmax(-1)
        for j, (a, e) in enumerate(spans[i : i + 32]):
            if e <= a:
                continue
            off = int(b.start[j])
            tgt = torch.tensor(chunk[j][a:e])
            total -= float(lp[j, off + a - 1 : off + e - 1].gather(-1, tgt[:, None].to(lp.device)).sum())
            count += e - a
    return total / max(count, 1)


def run(model: HookedModel, cfg: Config = Config(), *, name: str = "", progress: bool = True) -> Result:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    vectors, tests, refs = {}, {}, {}
    for i, p in enumerate(cfg.properties):
        src, tgt = steer_values(p)
        a = [x.text for x in few_shot_prompts(p, tgt, n=cfg.n_icl, shots=4, seed=cfg.seed + i)]
        b = [x.text for x in few_shot_prompts(p, src, n=cfg.n_icl, shots=4, seed=cfg.seed + i)]
        vectors[p] = icv(model, a, b, steps=cfg.steps, kind=cfg.kind, ban_special=cfg.ban_special)
    groups = [(p,) for p in cfg.properties] + [tuple(pair) for pair in cfg.pairs]
    for g in groups:
        src = {p: steer_values(p)[0] for p in g}
        tgt = {p: steer_values(p)[1] for p in g}
        tests[g] = prompts_with(src, cfg.n_test, cfg.seed + 17, family="short")
        prefix = _icl_prefix(tgt, cfg.n_test, cfg.seed + 29)
        icl_texts = [f"{x} {t}" for x, t in zip(prefix, tests[g])]
        ref = generate(model, icl_texts, max_new_tokens=cfg.steps, temperature=0.0)
        conts = [own_document(t, c) for t, c in zip(ref.texts, icl_texts)]  # not a next document it opens
        refs[g] = (icl_texts, conts, _nll(model, icl_texts, conts))
    single, composed = [], []
    traces: dict = {n: {} for n in cfg.normalisations}
    plans = [("fixed", "fixed", a, "exact", None) for a in cfg.fixed_alphas] + [
        ("start", "start", cfg.alpha, "exact", None),
        ("diminishing", "diminishing", cfg.alpha, "exact", None),
    ]
    for n in cfg.normalisations:
        plans += [
            ("dynamic", "dynamic", cfg.alpha_max, "exact", n),
            ("dynamic-lagged", "dynamic", cfg.alpha_max, "lagged", n),
        ]
    for g in tqdm(groups, desc="DAC study", disable=not progress):
        props = [vectors[p] for p in g]
        icl_texts, icl_conts, icl_nll = refs[g]
        for label, strategy, alpha, timing, norm in plans:
            if len(g) > 1 and strategy in ("start", "diminishing"):
                continue
            out = generate_composed(
                model,
                tests[g],
                props,
                strategy,
                alpha=alpha,
                alpha_max=cfg.alpha_max,
                top_p=cfg.top_p,
                normalisation=norm or "none",
                max_new_tokens=cfg.steps,
                timing=timing,
            )
            used = out.alphas  # [rows, k, T]: teacher-force the ICL continuation with the same per-step alphas

            def ivs_for(b, i, used=used, props=props):
                return (StepAdd(props, [used[i : i + b.tokens.shape[0], j] for j in range(len(props))]),)

            dppl = math.exp(_nll(model, tests[g], icl_conts, ivs_for)) - math.exp(icl_nll)
            gram = sum(grammaticality(t, c) for t, c in zip(out.texts, tests[g])) / len(tests[g])
            acc = {p: score(list(out.texts), p, steer_values(p)[1], tests[g]).target_rate for p in g}
            row = {
                "properties": list(g),
                "strategy": label,
                "normalisation": norm,
                "alpha": alpha,
                "accuracy": acc,
                "grammaticality": gram,
                "delta_ppl": dppl,
                "mean_alpha": used.mean((0, 2)).tolist(),
                "example": out.texts[0],
            }
            (single if len(g) == 1 else composed).append(row)
            if label == "dynamic" and norm is not None:
                traces[norm]["+".join(g)] = used.mean(0).tolist()
    fp = models.fingerprint(model)
    return Result(
        asdict(cfg),
        {"name": name, "fingerprint": fp.to_dict()},
        single,
        composed,
        traces,
        {"seconds": round(time.perf_counter() - t0, 1)},
    )


_NORM = {"none": "KL", "seed": "KL/|S|"}


def _strategy(row: dict) -> str:
    """A row's strategy with the KL normalisation of the dynamic ones, e.g. ``dynamic [KL/|S|]``."""
    norm = row.get("normalisation")
    return row["strategy"] if norm is None else f"{row['strategy']} [{_NORM[norm]}]"


def plot(result: "Result | dict") -> dict:
    from workbench.plotting import lines, points

    r = result.to_dict() if isinstance(result, Result) else result
    who = r["model"].get("name") or "model"
    series = {}
    for p in r["config"]["properties"]:
        rows = [x for x in r["single"] if x["properties"] == [p] and x["strategy"] == "fixed"]
        series[f"{p} fixed"] = (
            [x["delta_ppl"] for x in rows],
            [x["accuracy"][p] for x in rows],
            [f"alpha {x['alpha']}" for x in rows],
            "lines+markers",
        )
        for norm in r["config"]["normalisations"]:
            dyn = [
                x
                for x in r["single"]
                if x["properties"] == [p] and x["strategy"] == "dynamic" and x["normalisation"] == norm
            ]
            series[f"{p} dynamic [{_NORM[norm]}]"] = (
                [x["delta_ppl"] for x in dyn],
                [x["accuracy"][p] for x in dyn],
                None,
                "markers",
            )
    sweep = points(
        series,
        title=f"{who}: property accuracy vs delta-ppl (fixed alpha sweep and dynamic)",
        x_title="delta ppl vs the ICL reference",
        y_title="accuracy",
    )
    tr = lines(
        {
            f"{g} / {prop} [{_NORM[norm]}]": (list(range(len(s[j]))), s[j])
            for norm, by_group in r["traces"].items()
            for g, s in by_group.items()
            for j, prop in enumerate(g.split("+"))
        },
        title=f"{who}: dynamic alpha per step (mean over prompts)",
        x_title="step",
        y_title="alpha",
    )
    return {"dac_tradeoff": sweep, "dac_alpha_traces": tr}


def section(r: dict) -> Section:
    """The report's section: accuracy, grammaticality and perplexity change per property, strategy and alpha."""
    rows = ["| properties | strategy | alpha | accuracy | grammaticality | delta ppl |", "|---|---|---|---|---|---|"]
    for x in r["single"] + r["composed"]:
        acc = ", ".join(f"{k} {v:.2f}" for k, v in x["accuracy"].items())
        rows.append(
            f"| {'+'.join(x['properties'])} | {_strategy(x)} | {x['alpha']:g} | {acc} | "
            f"{x['grammaticality']:.2f} | {x['delta_ppl']:+.2f} |"
        )
    text = f"Dynamic Activation Composition on {who(r)} (greedy, {r['config']['steps']} tokens).\n\n" + "\n".join(rows)
    return Section(Result.KIND, f"DAC: composing properties ({who(r)})", text, plot(r), 50)


def summary(r: Result) -> str:
    lines = [f"DAC on {r.model['name']} ({r.cost['seconds']} s): property accuracy / grammaticality / delta-ppl"]
    for x in r.single + r.composed:
        acc = ", ".join(f"{k} {v:.2f}" for k, v in x["accuracy"].items())
        lines.append(
            f"  {'+'.join(x['properties']):<20} {_strategy(x):<25} alpha {x['alpha']:<4g} {acc:<32} "
            f"gram {x['grammaticality']:.2f}  dppl {x['delta_ppl']:+.2f}"
        )
    return "\n".join(lines)


def table(results: "list[dict]") -> str:
    """The DAC study's table and alpha traces (``analyses.composition.Result`` as saved)."""
    if len(results) != 1:
        raise WorkbenchError(f"this table takes one result; got {len(results)}.")
    r = results[0]
    cfg = r["config"]
    ban = "banning BOS/pad" if cfg["ban_special"] else "that bans nothing, as the seed's"
    lines = [
        f"# DAC on {r['model']['name']} (`workbench analyze composition --model {r['model']['name']}`: "
        f"{cfg['n_icl']} parallel 4-shot ICL prompts per property, {cfg['n_test']} short test prompts with the "
        f"source value, greedy {cfg['steps']} tokens, hook_{cfg['kind']} at every layer, alpha_max "
        f"{cfg['alpha_max']}, top-p {cfg['top_p']}, KL normalisations {', '.join(cfg['normalisations'])}, "
        f"in-context vectors extracted by greedy decoding {ban})",
        "",
        "`dynamic` is the exact method (two forwards per step); `dynamic-lagged` runs unsteered, probe and "
        "steered rows in one batched forward per step, using the previous step's alpha (alpha_max at step 0). "
        "[KL] = the plain KL on the renormalised nucleus S; [KL/|S|] = that KL divided by |S|, as the DAC code "
        "computes it (`normalisation='seed'`).",
        "",
        "| properties | strategy | alpha | accuracy (target value) | grammaticality | delta ppl vs ICL "
        "reference | mean alpha used |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["single"] + r["composed"]:
        acc = ", ".join(f"{p} {a:.2f}" for p, a in row["accuracy"].items())
        alphas = ", ".join(f"{a:.2f}" for a in row["mean_alpha"])
        lines.append(
            f"| {'+'.join(row['properties'])} | {_strategy(row)} | {row['alpha']:g} | {acc} | "
            f"{row['grammaticality']:.2f} | {row['delta_ppl']:+.2f} | {alphas} |"
        )
    for norm, by_group in r["traces"].items():
        lines += ["", f"Dynamic (exact) alpha per step [{_NORM[norm]}] (mean over prompts):", ""]
        for key, traces in sorted(by_group.items()):
            for prop, trace in zip(key.split("+"), traces):
                lines.append(f"- {key} / {prop}: " + " ".join(f"{a:.2f}" for a in trace))
    lines += ["", f"({r['cost']['seconds']} s on 2 CPU cores.)"]
    return "\n".join(lines) + "\n"


STUDY = register(
    Study(
        "composition",
        "DAC: fixed / start / diminishing / dynamic strengths, 1-2 properties",
        Config,
        Result,
        on_model(run),
        plot,
        section,
        summary,
        table=table,
    )
)
