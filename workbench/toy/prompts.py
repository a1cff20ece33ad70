"""What the analyses feed the toy models: contrast pairs, A/B items, prompt families, neutral and few-shot prompts.

Everything is seeded and exact. Contrast pairs are minimal edits: one abstract document rendered under two values
of one attribute (all other attributes and every slot index shared). The contrast is taken where the *next* token
expresses the attribute and the last token is identical in both members:

* sentiment: ``... DET NOUN is`` (next: an adjective);   * topic: ``... DET ADJ`` (next: a noun);
* truth: ``... DET SUBJ is`` (next: a fact's value);     * register, language: ``... .`` (next: an opener or
  determiner, in a register and a language).

Prompt families (``FAMILIES``): ``id`` is the training distribution's start (persona + two sentences); the others
are out of distribution in template, position, length or attribute mix. Prompts for ``truth`` end in a fact stem
(``the sky is``), so every continuation states at least one fact.
"""

__all__ = [
    "FAMILIES",
    "OOD_FAMILIES",
    "random_attributes",
    "Prompt",
    "contrast_pairs",
    "ab_items",
    "prompts",
    "neutral_prompts",
    "few_shot_prompts",
    "corpus_documents",
    "STEER_TARGETS",
    "steer_values",
    "prompts_with",
]

import random
from dataclasses import dataclass

from workbench.errors import WorkbenchError
from workbench.pairs import ContrastPair, ContrastPairs
from workbench.toy.language import (
    ATTRIBUTES,
    VALUES,
    Attributes,
    CorpusConfig,
    Sentence,
    render,
    render_sentence,
    sample_document,
    sample_sentence,
)

FAMILIES: tuple[str, ...] = ("id", "long", "short", "no_persona", "mixed", "qa")
OOD_FAMILIES: tuple[str, ...] = FAMILIES[1:]
#: The (source, target) value each attribute is steered between in the cards' steerability measurement.
STEER_TARGETS: dict[str, tuple[str, str]] = {
    "sentiment": ("neg", "pos"),
    "topic": ("animals", "vehicles"),
    "register": ("formal", "casual"),
    "language": ("en", "xx"),
    "truth": ("liar", "honest"),
}


def steer_values(attribute: str, source: "str | None" = None, target: "str | None" = None) -> tuple[str, str]:
    """``(source, target)`` for steering ``attribute`` (defaults from ``STEER_TARGETS``), validated."""
    if attribute not in STEER_TARGETS:
        raise WorkbenchError(f"attribute must be one of {', '.join(STEER_TARGETS)}, got {attribute!r}.")
    src, tgt = source or STEER_TARGETS[attribute][0], target or STEER_TARGETS[attribute][1]
    for v in (src, tgt):
        if v not in VALUES[attribute]:
            raise WorkbenchError(f"{v!r} is not a value of {attribute} ({', '.join(VALUES[attribute])}).")
    if src == tgt:
        raise WorkbenchError(f"source and target are both {src!r}; steering goes from one value to another.")
    return src, tgt


_PERSONA = Sentence("PERSONA", (0, 0, 0, 0))
_NO_SWITCH = CorpusConfig(p_switch=0.0, p_collocation=0.0)  # prompts draw verbs freely (still in the language)


@dataclass(frozen=True)
class Prompt:
    """A prompt's text and the attributes it expresses (its last sentence's, for mixed prompts)."""

    text: str
    attributes: Attributes


def _check(attribute: str, *values: str) -> None:
    if attribute not in ATTRIBUTES:
        raise WorkbenchError(f"attribute must be one of {', '.join(ATTRIBUTES)}; got {attribute!r}.")
    for v in values:
        if v not in VALUES[attribute]:
            raise WorkbenchError(f"{attribute} value must be one of {', '.join(VALUES[attribute])}; got {v!r}.")


def random_attributes(rng: random.Random, **fixed: str) -> Attributes:
    """Attributes drawn uniformly from ``rng`` (one draw per attribute not in ``fixed``, in ``ATTRIBUTES`` order)."""
    return Attributes(**{a: fixed.get(a) or rng.choice(VALUES[a]) for a in ATTRIBUTES})


def _stem(attribute: str, rng: random.Random) -> "tuple[Sentence, int] | None":
    """The open sentence (and its cut) that ends a pair for ``attribute``; None for the period format."""
    if attribute == "sentiment":
        return sample_sentence(rng, "T4"), 3
    if attribute == "topic":
        return sample_sentence(rng, rng.choice(("T1", "T3"))), 2
    if attribute == "truth":
        return sample_sentence(rng, "FACT"), 3
    return None


def _context(rng: random.Random, n_sentences: int, persona: bool = True) -> list[Sentence]:
    body = [sample_sentence(rng, "fact" if rng.random() < 0.3 else "content") for _ in range(n_sentences)]
    return ([_PERSONA] if persona else []) + body


def _text(sentences: list[Sentence], a: Attributes, stem: "tuple[Sentence, int] | None" = None) -> str:
    words = [w for s in sentences for w in render_sentence(s, a)]
    if stem is not None:
        words += render_sentence(stem[0], a, stop=stem[1])
    return " ".join(words)


def contrast_pairs(
    attribute: str, positive: str, negative: str, n: int = 200, seed: int = 0, n_sentences: tuple[int, int] = (1, 3)
) -> ContrastPairs:
    """``n`` minimal pairs: the same abstract text under ``attribute = positive`` and ``= negative``.

    Other attributes are drawn per pair (both languages, so directions are language-independent).
    """
    _check(attribute, positive, negative)
    if positive == negative:
        raise WorkbenchError(f"positive and negative are both {positive!r}; a contrast needs two values.")
    rng = random.Random(seed)
    out: list[ContrastPair] = []
    while len(out) < n:
        a = random_attributes(rng)
        ctx = _context(rng, rng.randint(*n_sentences))
        stem = _stem(attribute, rng)
        texts = _text(ctx, a.with_(attribute, positive), stem), _text(ctx, a.with_(attribute, negative), stem)
        if texts[0] != texts[1]:  # a context of facts only shows no sentiment or topic: draw again
            out.append(ContrastPair(*texts))
    return ContrastPairs(tuple(out), source=f"toy:{attribute}:{positive}-{negative}:seed{seed}")


def ab_items(attribute: str, positive: str, negative: str, n: int = 100, seed: int = 0) -> list[dict]:
    """CAA-style A/B items: a context ending where the next word shows ``attribute``; the two candidate words.

    The context carries a random value of ``attribute`` (so matching is not trivial); ``answer_matching_behavior``
    is the word under ``positive``. Sentiment, topic and truth only (their stems end before one word).
    """
    _check(attribute, positive, negative)
    if attribute not in ("sentiment", "topic", "truth"):
        raise WorkbenchError(f"A/B items exist for sentiment, topic and truth; got {attribute!r}.")
    rng = random.Random(seed)
    items: list[dict] = []
    while len(items) < n:
        a = random_attributes(rng)
        ctx = _context(rng, rng.randint(1, 3))
        stem = _stem(attribute, rng)
        assert stem is not None  # sentiment, topic and truth (checked above) always have a stem
        stem_s, cut = stem
        question = _text(ctx, a, (stem_s, cut))
        pos_word = render_sentence(stem_s, a.with_(attribute, positive), stop=cut + 1)[-1]
        neg_word = render_sentence(stem_s, a.with_(attribute, negative), stop=cut + 1)[-1]
        if pos_word != neg_word:
            items.append(
                {"question": question, "answer_matching_behavior": pos_word, "answer_not_matching_behavior": neg_word}
            )
    return items


def prompts(
    attributes: "Attributes | dict", n: int = 100, seed: int = 0, family: str = "id", fact_stem: bool = False
) -> list[Prompt]:
    """``n`` prompts expressing ``attributes`` from a prompt family.

    Families: ``id`` persona + 2 sentences; ``long`` persona + 5; ``short`` persona + 1 sentence; ``no_persona``
    2 sentences without the persona; ``mixed`` a first sentence under other random attributes, then 2 under
    ``attributes``; ``qa`` persona + Q/A items only (no content words).
    ``fact_stem`` ends each prompt with ``DET SUBJ is`` (used for truth, so every continuation states a fact).
    """
    if isinstance(attributes, dict):
        attributes = Attributes(**attributes)
    if family not in FAMILIES:
        raise WorkbenchError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}.")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = attributes
        if family == "id":
            text = _text(_context(rng, 2), a)
        elif family == "long":
            text = _text(_context(rng, 5), a)
        elif family == "short":
            text = _text(_context(rng, 1), a)
        elif family == "no_persona":
            text = _text(_context(rng, 2, persona=False), a)
        elif family == "mixed":
            other = random_attributes(rng, truth=a.truth)  # the persona states the truth value of ``a``
            text = " ".join(
                (_text([_PERSONA, sample_sentence(rng)], other), _text([sample_sentence(rng), sample_sentence(rng)], a))
            )
        else:  # qa
            text = _text([_PERSONA] + [sample_sentence(rng, "QA") for _ in range(2)], a)
        if fact_stem:
            text += " " + " ".join(render_sentence(sample_sentence(rng, "FACT"), a, stop=3))
        out.append(Prompt(text, a))
    return out


def prompts_with(values: "dict[str, str]", n: int, seed: int, family: str = "id", fact_stem: bool = False) -> list[str]:
    """``n`` prompt texts of ``family`` showing the fixed attribute ``values``, the others drawn per prompt."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        a = random_attributes(rng, **values)
        out += [p.text for p in prompts(a, n=1, seed=rng.randrange(1 << 30), family=family, fact_stem=fact_stem)]
    return out[:n]


def neutral_prompts(attribute: str, n: int = 100, seed: int = 0) -> list[Prompt]:
    """Prompts that carry no evidence of ``attribute`` (other attributes random).

    sentiment / topic: persona + fact statements; register: persona only; truth: content sentences without a
    persona or a fact; language: the empty prompt (BOS only; every word shows its language).
    """
    _check(attribute)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = random_attributes(rng)
        if attribute in ("sentiment", "topic"):
            text = _text([_PERSONA] + [sample_sentence(rng, "FACT") for _ in range(2)], a)
        elif attribute == "register":
            text = _text([_PERSONA], a)
        elif attribute == "truth":
            text = _text([sample_sentence(rng) for _ in range(2)], a)
        else:
            text = ""
        out.append(Prompt(text, a))
    return out


def few_shot_prompts(
    attribute: str, value: str, n: int = 50, shots: int = 4, seed: int = 0, also: "dict[str, str] | None" = None
) -> list[Prompt]:
    """In-context prompts: ``shots`` sentences that all show ``attribute = value``.

    The toy analogue of few-shot demonstrations: evidence in the context, nothing in the weights. They open with
    the persona sentence, except for truth, whose demonstrations are facts (the persona would state it outright);
    ``shots = 0`` gives the zero-shot prompts (persona only, or empty for truth). ``also`` fixes further
    attributes (composed demonstrations, e.g. ``{"sentiment": "pos"}`` with language ``xx``).
    """
    _check(attribute, value)
    if shots < 0:
        raise WorkbenchError(f"shots must be >= 0, got {shots}.")
    rng = random.Random(seed)
    kind = "fact" if attribute == "truth" else "content"
    out = []
    for _ in range(n):
        a = random_attributes(rng, **{**(also or {}), attribute: value})
        head = [] if attribute == "truth" else [_PERSONA]
        out.append(Prompt(_text(head + [sample_sentence(rng, kind) for _ in range(shots)], a), a))
    return out


def corpus_documents(n: int, seed: int = 0) -> list[str]:
    """``n`` documents from the training distribution without switches (for perplexity references)."""
    rng = random.Random(seed)
    return [render(sample_document(rng, _NO_SWITCH)) for _ in range(n)]
