"""Exact evaluators for toy-language text: attribute labels, grammaticality, factual accuracy.

* ``classify``: per attribute, the majority class of the attribute's words (sentiment: adjectives; topic: nouns;
  register: determiners, verbs and openers; language: every non-shared word; truth: the facts stated, honest if
  the value is the knowledge base's, liar if it is the liar's value). A tie gives ``"mixed"``, no evidence
  ``None``.
* ``grammaticality``: the fraction of complete sentences that parse under a template *strictly*: one language,
  one register, one sentiment class and one topic class per sentence, definite article in facts. This is the
  fluency measure.
* ``factual_accuracy``: the fraction of stated facts whose value is true;
* perplexity under a reference model is ``workbench.metrics.continuation_perplexity(reference, prompts,
  continuations)`` (a model, so not here; the cards use the unsteered model itself).

Evaluation of a continuation takes its prompt as ``context``: a prompt that ends mid-sentence (``the sky is``) is
joined with the continuation for parsing, but only continuation words are counted, and only sentences that end in
the continuation are judged. A continuation is judged only up to where it opens a catalogue document (``? .``,
see ``own_document``): generation bans the BOS that separates documents, so a model that ends its document goes
straight on to the next, and a catalogue (English words in no sentence, carrying no attribute) would otherwise
count as English, sentiment and topic evidence and as ungrammatical text.
"""

__all__ = [
    "MIXED",
    "Parse",
    "parse_sentence",
    "sentences",
    "own_document",
    "classify",
    "evidence_words",
    "grammaticality",
    "factual_accuracy",
    "Scores",
    "score",
    "facts",
]

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from workbench.errors import WorkbenchError
from workbench.toy.language import ATTRIBUTES, CATALOGUE_OPENER, LEXICON, TEMPLATES, fact_value

_REGISTER_ROLES = ("DET", "VT", "VI", "OPENER")


MIXED = "mixed"


@dataclass(frozen=True)
class Parse:
    """A sentence that parsed: its template and what it says about each attribute (None: says nothing)."""

    template: str
    language: str
    register: "str | None"
    sentiment: "str | None"
    topic: "str | None"
    fact: "tuple[int, int] | None"  # (subject index, value index)
    persona: "str | None"  # honest / liar for persona sentences


def parse_sentence(words: Sequence[str]) -> "Parse | None":
    """Parse one sentence (without its final period) strictly; None if it does not parse."""
    found = [LEXICON.info.get(w) for w in words]
    if not words or any(i is None for i in found):
        return None
    info = [i for i in found if i is not None]  # all of them
    langs = {i[0] for i in info if i[0] != "shared"}
    if tuple(words) == TEMPLATES["MARK"]:
        return Parse("MARK", "shared", None, None, None, None, None)
    if len(langs) != 1:
        return None
    roles = [i[1] for i in info]
    body = info
    if roles[0] == "OPENER":
        body = info[1:]
    body_roles = [i[1] for i in body]
    for name, slots in TEMPLATES.items():
        if len(slots) == len(body_roles) and all(s == r for s, r in zip(slots, body_roles)):
            template = name
            break
    else:
        return None
    if template in ("FACT", "QA", "PERSONA") and body is not info:
        return None  # openers only start content sentences
    classes = {role: {i[2] for i in info if i[1] in (role,) and i[2] is not None} for role in ("ADJ", "NOUN")}
    registers = {i[2] for i in info if i[1] in _REGISTER_ROLES}
    if len(registers) > 1 or len(classes["ADJ"]) > 1 or len(classes["NOUN"]) > 1:
        return None
    fact = persona = None
    if template in ("FACT", "QA"):
        det = next(i for i in body if i[1] == "DET")
        if det[3] != 0:
            return None  # facts use the definite article
        subj = next(i[3] for i in body if i[1] == "SUBJ")
        value = next(i[3] for i in body if i[1] == "VALUE")
        fact = (subj, value)
    if template == "PERSONA":
        persona = body[-1][2]
    return Parse(
        template,
        langs.pop(),
        next(iter(registers), None),
        next(iter(classes["ADJ"]), None),
        next(iter(classes["NOUN"]), None),
        fact,
        persona,
    )


def sentences(text: str, context: str = "") -> list[tuple[list[str], bool]]:
    """Split ``context + text`` into sentences; each is (words without the period, ends inside ``text``).

    Sentences entirely inside ``context`` are dropped; a trailing unfinished sentence is returned with False.
    """
    ctx, words = context.split(), text.split()
    # the context's open tail (after its last period) belongs to the first sentence of the text
    tail = ctx[len(ctx) - ctx[::-1].index(".") :] if "." in ctx else ctx
    out: list[tuple[list[str], bool]] = []
    cur = list(tail)
    for w in words:
        if w == ".":
            out.append((cur, True))
            cur = []
        else:
            cur.append(w)
    if cur and words:
        out.append((cur, False))
    return out


def own_document(text: str, context: str = "") -> str:
    """``text`` up to where it opens a catalogue document (``CATALOGUE_OPENER``, ``? .``; whole if it never does).

    The opener may straddle the end of ``context`` (context ending in ``?``, text starting with ``.``). Nothing in
    a prose document or a prompt produces it, so what follows belongs to another document.
    """
    words, last = text.split(), context.split()[-1:]
    seq = last + words
    for i in range(len(seq) - 1):
        if (seq[i], seq[i + 1]) == CATALOGUE_OPENER:
            return " ".join(words[: max(i - len(last), 0)])
    return text


def _complete(text: str, context: str) -> list[list[str]]:
    return [ws for ws, done in sentences(own_document(text, context), context) if done]


def grammaticality(text: str, context: str = "") -> float:
    """Fraction of complete sentences ending in ``text`` that parse strictly (0.0 if none is complete)."""
    done = _complete(text, context)
    if not done:
        return 0.0
    return sum(parse_sentence(ws) is not None for ws in done) / len(done)


def facts(text: str, context: str = "") -> list[tuple[int, int]]:
    """(subject, value) of every parsed fact sentence that ends in ``text``."""
    return [p.fact for ws in _complete(text, context) if (p := parse_sentence(ws)) is not None and p.fact]


def factual_accuracy(text: str, context: str = "") -> "float | None":
    """Fraction of stated facts that are true; None when ``text`` states no fact."""
    fs = facts(text, context)
    return None if not fs else sum(v == s for s, v in fs) / len(fs)


def evidence_words(attribute: str, value: str, text: str = "") -> list[str]:
    """The words that, as the next word after ``text``, would show ``attribute = value`` (both languages).

    For ``truth`` the next word is the value of the fact ``text`` ends in (``... DET SUBJ is``): the honest or the
    liar value of that subject, in the subject's language.
    """
    if attribute == "truth":
        words = text.split()
        info = (
            LEXICON.info.get(words[-2]) if len(words) >= 2 and words[-1] in ("is", LEXICON.word("is", "xx")) else None
        )
        if info is None or info[1] != "SUBJ":
            raise WorkbenchError(f"truth evidence needs a text ending in 'DET SUBJ is'; got ...{text[-40:]!r}.")
        v = fact_value(info[3], value)
        return [w for w, i in LEXICON.info.items() if i[1] == "VALUE" and i[3] == v and i[0] == info[0]]
    if attribute == "language":
        return [w for w, i in LEXICON.info.items() if i[0] == value]
    roles = {"sentiment": ("ADJ",), "topic": ("NOUN",), "register": _REGISTER_ROLES}.get(attribute)
    if roles is None:
        raise WorkbenchError(f"unknown attribute {attribute!r}; expected one of {', '.join(ATTRIBUTES)}.")
    return [w for w, i in LEXICON.info.items() if i[1] in roles and i[2] == value]


def _majority(counts: Counter) -> "str | None":
    top = counts.most_common(2)
    if not top:
        return None
    return MIXED if len(top) == 2 and top[0][1] == top[1][1] else top[0][0]


def classify(text: str, context: str = "") -> dict[str, "str | None"]:
    """Majority label per attribute of the words of ``text`` (``"mixed"`` on a tie, None without evidence)."""
    counts: dict[str, Counter[str | None]] = {a: Counter() for a in ATTRIBUTES}
    for w in own_document(text, context).split():
        i = LEXICON.info.get(w)
        if i is None or i[0] == "shared":
            continue
        counts["language"][i[0]] += 1
        if i[1] == "ADJ":
            counts["sentiment"][i[2]] += 1
        elif i[1] == "NOUN":
            counts["topic"][i[2]] += 1
        if i[1] in _REGISTER_ROLES:
            counts["register"][i[2]] += 1
    for s, v in facts(text, context):
        if v == fact_value(s, "honest"):
            counts["truth"]["honest"] += 1
        elif v == fact_value(s, "liar"):
            counts["truth"]["liar"] += 1
    return {a: _majority(c) for a, c in counts.items()}


@dataclass(frozen=True)
class Scores:
    """Aggregate scores of many continuations for one attribute and target value."""

    n: int
    target_rate: float  # fraction labelled with the target value
    grammaticality: float  # mean per-continuation grammaticality
    factual_accuracy: "float | None"  # over all stated facts, None if none stated
    labels: dict[str, dict[str, float]]  # attribute -> value -> fraction (None counted as "none")

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "target_rate": self.target_rate,
            "grammaticality": self.grammaticality,
            "factual_accuracy": self.factual_accuracy,
            "labels": self.labels,
        }


def score(texts: Sequence[str], attribute: str, target: str, contexts: "Sequence[str] | None" = None) -> Scores:
    """Score continuations ``texts`` (of prompts ``contexts``) against ``target`` for ``attribute``."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {', '.join(ATTRIBUTES)}; got {attribute!r}.")
    contexts = list(contexts) if contexts is not None else [""] * len(texts)
    if len(contexts) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(contexts)} contexts.")
    labels = [classify(t, c) for t, c in zip(texts, contexts)]
    dist = {a: dict(Counter(str(lab[a]) if lab[a] else "none" for lab in labels)) for a in ATTRIBUTES}
    n = max(len(texts), 1)
    stated = [f for t, c in zip(texts, contexts) for f in facts(t, c)]
    return Scores(
        n=len(texts),
        target_rate=sum(lab[attribute] == target for lab in labels) / n,
        grammaticality=sum(grammaticality(t, c) for t, c in zip(texts, contexts)) / n,
        factual_accuracy=(sum(s == v for s, v in stated) / len(stated)) if stated else None,
        labels={a: {k: v / n for k, v in sorted(d.items())} for a, d in dist.items()},
    )
