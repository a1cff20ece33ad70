"""What the toy studies share: the steering cell to study, behaviour rates of steered generations, fact items."""

__all__ = [
    "SteerCell",
    "steer_cell",
    "target_rate",
    "resolve_steer",
    "require_positive",
    "Attribute",
    "fact_items",
    "mc_truth",
    "word_ids",
    "once",
]

import random
from dataclasses import dataclass
from typing import Literal

import torch

from workbench.directions import DirectionSet
from workbench.errors import WorkbenchError
from workbench.forward import last_logits
from workbench.generate import generate
from workbench.interventions import AddDirection
from workbench.metrics import wilson
from workbench.models import HookedModel
from workbench.toy.evaluate import score
from workbench.toy.language import LEXICON, fact_value
from workbench.toy.measure import directions_for
from workbench.toy.prompts import prompts, random_attributes, steer_values

#: the toy attributes a study can steer (workbench.toy.prompts.STEER_TARGETS)
Attribute = Literal["sentiment", "topic", "register", "language", "truth"]


def resolve_steer(cfg) -> None:
    """Fill a frozen config's ``source`` / ``target`` from its ``attribute`` (validated by ``steer_values``)."""
    src, tgt = steer_values(cfg.attribute, cfg.source, cfg.target)
    object.__setattr__(cfg, "source", src)
    object.__setattr__(cfg, "target", tgt)


def require_positive(cfg, *names: str) -> None:
    """Raise naming the first of ``names`` whose value on ``cfg`` is below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise WorkbenchError(f"{name} must be >= 1, got {getattr(cfg, name)}.")


def once(path, make) -> None:
    """Write ``make().to_dict()`` as JSON at ``path`` unless it is already there (resumable study runners)."""
    from pathlib import Path

    from workbench.io import write_json

    if not Path(path).exists():
        write_json(path, make().to_dict())


@dataclass(frozen=True, eq=False)
class SteerCell:
    """One steering setting: the direction set it comes from, the site, the strength."""

    directions: DirectionSet
    layer: int
    kind: str
    strength: float

    def intervention(self, vector: "torch.Tensor | None" = None, scale: "float | None" = None) -> AddDirection:
        d = self.directions.at(self.layer, self.kind)
        return AddDirection(d.site, d.vector if vector is None else vector, self.strength if scale is None else scale)


def steer_cell(
    model: HookedModel,
    name: str,
    attribute: str,
    source: str,
    target: str,
    *,
    layer: "int | None" = None,
    strength: "float | None" = None,
    n_pairs: int = 200,
    seed: int = 0,
) -> SteerCell:
    """The study's steering cell: explicit ``layer``/``strength``, else the toy card's best cell for the attribute
    (when ``name`` is a shipped toy model and the card has one), else the middle block at strength 1."""
    kind, position = "resid_post", "last"
    if layer is None or strength is None:
        best = None
        from workbench.shipped import NAMES, card

        if name in NAMES:
            best = card(name)["measured"]["steering"][attribute]["best"]
        if best is not None:
            kind, position = best["kind"], best["position"]
            layer = best["layer"] if layer is None else layer
            strength = best["strength"] if strength is None else strength
        else:
            layer = model.cfg.n_layers // 2 if layer is None else layer
            strength = 1.0 if strength is None else strength
    if not 0 <= layer < model.cfg.n_layers:
        raise WorkbenchError(f"layer must be in 0..{model.cfg.n_layers - 1}, got {layer}.")
    ds = directions_for(model, attribute, source, target, n_pairs=n_pairs, seed=seed, kind=kind, position=position)
    return SteerCell(ds, layer, kind, float(strength))


def target_rate(
    model: HookedModel,
    texts: "list[str]",
    attribute: str,
    target: str,
    *interventions,
    max_new_tokens: int = 24,
    seed: int = 0,
) -> float:
    """Fraction of sampled continuations classified as ``target`` (exact toy classifier)."""
    with torch.no_grad():
        g = generate(model, texts, *interventions, max_new_tokens=max_new_tokens, seed=seed)
    return score(list(g.texts), attribute, target, texts).target_rate


def fact_items(n: int, truth: "str | None", seed: int, family: str = "id") -> list:
    """Fact-stem prompts of a prompt family: (text, honest word, liar word, the six value words of the subject's
    language); ``truth`` fixes the persona (None: random)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        a = random_attributes(rng, **({"truth": truth} if truth else {}))
        for p in prompts(a, n=1, seed=rng.randrange(1 << 30), family=family, fact_stem=True):
            words = p.text.split()
            lang, _, _, subj = LEXICON.info[words[-2]]
            values = sorted((i[3], w) for w, i in LEXICON.info.items() if i[1] == "VALUE" and i[0] == lang)
            out.append(
                (
                    p.text,
                    values[fact_value(subj, "honest")][1],
                    values[fact_value(subj, "liar")][1],
                    [w for _, w in values],
                )
            )
    return out[:n]


def word_ids(model: HookedModel, words: "list[str]") -> tuple:
    """Token ids of the ``words`` that are one token of ``model`` (the toy tokenizer: all of them)."""
    out = []
    for w in words:
        t = model.to_tokens(w, prepend_bos=False)[0].tolist()
        if len(t) == 1:
            out.append(t[0])
    if not out:
        raise WorkbenchError(f"none of the words {list(words)[:5]} is a single token of this model; use a toy model.")
    return tuple(out)


def _token(model: HookedModel, word: str) -> int:
    ids = model.to_tokens(word, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        raise WorkbenchError(f"value word {word!r} is not one token of this model; the study needs a toy model.")
    return ids[0]


def mc_truth(model: HookedModel, items: list, interventions: tuple = (), prefix: "list[str] | None" = None) -> dict:
    """Multiple choice over the six KB values (one-word answers: the answer log-probability): how often the true
    value wins, with a Wilson interval, and how often the liar's value does."""
    texts = [(prefix[i] + " " if prefix else "") + it[0] for i, it in enumerate(items)]
    logits = last_logits(model, texts, *interventions)
    right = wrong = 0
    token = {w: _token(model, w) for it in items for w in it[3]}  # each option word tokenised once
    for row, (_, honest, liar, options) in zip(logits, items):
        ids = [token[w] for w in options]
        pick = options[int(row[ids].argmax())]
        right += pick == honest
        wrong += pick == liar
    n = len(items)
    return {"accuracy": right / n, "accuracy_ci": wilson(right, n), "liar_rate": wrong / n, "n": n}
