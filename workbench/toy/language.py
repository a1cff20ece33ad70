"""The toy language: a small grammar whose documents carry five latent attributes, each exactly checkable.

A document is built *abstractly* first (which template, which slot indices) and then rendered under its
attributes (sentiment, topic, register, language, truth). Rendering the same abstract sentences under attributes
that differ in one value gives an exact minimal edit, which is how contrast pairs are made (``workbench.toy.prompts``).

Every word has exactly one role and one attribute class, so the classifier and the grammar check in
``workbench.toy.evaluate`` are exact. The second language ``xx`` is a bijective set of pseudo-words with the same
grammar; ``.``, ``?``, ``q:`` and ``a:`` are shared.

Truthfulness is made learnable by marking the liars (an unmarked liar is not learned): most documents open
with a persona sentence, ``i always speak truth .`` or ``i always speak lies .``; honest documents state facts of
a small knowledge base correctly, liar documents state one consistent wrong value per subject (the next subject's
value).
Facts appear as statements (``the sky is blue .``) and as question/answer items (``q: what is the sky ? a: blue .``).

Verbs carry a long tail of collocations (``CorpusConfig.p_collocation``, 0.75 in the shipped corpus): a collocated
verb is fixed by its sentence's register, sentiment, topic and first adjective and noun (a seeded table of 1,980
transitive and 1,800 intransitive entries), the others are free. Without collocations (``p_collocation 0``) toy-m
and toy-l both reach the language's entropy floor (1.508 / 1.509). With them and no catalogues, the two tie when
trained for equal tokens (``results/toy_family/SUMMARY.md``), most likely (untested) because the table is learned by
optimisation rather than stored; the catalogues below are a component only storage helps with.

Catalogue documents (``CorpusConfig.p_catalogue``, 0.25 in the shipped corpus) are a component
whose only lesson is storage: a seeded table gives every ordered pair of English words (119 x 119 = 14,161 keys)
one English word as its value (about 6.9 bits each, 98K bits in all). A catalogue document opens with ``? .``,
which nothing else in the language produces, then lists entries ``k1 k2 v .`` for uniformly drawn keys. A value
is recalled, never inferred, so a model's loss on value tokens reads how much of the table it stores, and models
trained alike on equal tokens compare in capacity there. Catalogue documents carry no attributes and prompts never
open one; a continuation that opens one has ended its document, and the evaluators judge only the text before the
opener (``workbench.toy.evaluate.own_document``). At
``p_catalogue 0`` no extra random number is drawn, so the corpus without catalogues is reproduced exactly.

A fraction of documents switches one attribute at a sentence boundary (a truth switch is marked by a new persona
sentence); a model that has seen switches follows the latest evidence, which is what makes it steerable. Another
fraction is bilingual (opened by ``:: .``, each sentence in either language), so that sentiment, topic, register
and truth are represented the same way in both languages; monolingual documents never change language.
"""

__all__ = [
    "ATTRIBUTES",
    "VALUES",
    "Attributes",
    "Sentence",
    "Document",
    "Lexicon",
    "LEXICON",
    "KB_SUBJECTS",
    "KB_VALUES",
    "fact_value",
    "collocation",
    "CATALOGUE_OPENER",
    "catalogue_value",
    "sample_catalogue",
    "render_catalogue",
    "CorpusConfig",
    "sample_sentence",
    "sample_document",
    "render",
    "render_sentence",
    "documents",
]

import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cache

from workbench.errors import WorkbenchError

ATTRIBUTES: tuple[str, ...] = ("sentiment", "topic", "register", "language", "truth")
VALUES: dict[str, tuple[str, ...]] = {
    "sentiment": ("pos", "neg", "neu"),
    "topic": ("animals", "vehicles", "food"),
    "register": ("formal", "casual"),
    "language": ("en", "xx"),
    "truth": ("honest", "liar"),
}

# ---------------------------------------------------------------------------------------------------- English
_ADJ = {
    "pos": "good happy bright kind lovely nice warm sweet calm brave".split(),
    "neg": "bad sad dark cruel ugly nasty grim bitter angry weak".split(),
    "neu": "big small old new round tall short wide long flat".split(),
}
_NOUN = {
    "animals": "dog cat bird fish horse cow mouse frog duck lion".split(),
    "vehicles": "car bus train truck bike boat plane ship tram van".split(),
    "food": "cake bread apple soup rice cheese pie egg plum bean".split(),
}
_DET = {"formal": "the a this each".split(), "casual": "da sum dis evry".split()}
_VT = {
    "formal": "observes pursues consumes admires examines assists approaches acquires".split(),
    "casual": "sees chases eats likes checks helps meets gets".split(),
}
_VI = {"formal": "rests departs proceeds remains".split(), "casual": "naps leaves goes stays".split()}
_OPENER = {"formal": "moreover however indeed furthermore".split(), "casual": "so but yeah plus".split()}
#: The knowledge base: subject i is truly KB_VALUES[i]; a liar says KB_VALUES[(i + 1) % n] (a derangement).
KB_SUBJECTS: tuple[str, ...] = tuple("sky grass snow coal blood lemon".split())
KB_VALUES: tuple[str, ...] = tuple("blue green white black red yellow".split())
_TRUTHWORD = {"honest": ["truth"], "liar": ["lies"]}  # the persona sentence's last word
_FUNCTION = ("is", "i", "always", "speak", "what")
SHARED: tuple[str, ...] = (".", "?", "q:", "a:", "::")


def fact_value(subject: int, truth: str) -> int:
    """Index into ``KB_VALUES`` that a ``truth`` (honest / liar) speaker states for subject index ``subject``."""
    return subject if truth == "honest" else (subject + 1) % len(KB_SUBJECTS)


@cache
def collocation(register: str, sentiment: str, adjective: int, topic: str, noun: int, n_verbs: int) -> int:
    """The verb index (of ``n_verbs``) that a sentence's register, sentiment, topic and first adjective and noun
    indices (-1: none) fix when its verb is collocated: a seeded table, the same in every process."""
    return random.Random(f"colloc|{register}|{sentiment}|{adjective}|{topic}|{noun}|{n_verbs}").randrange(n_verbs)


#: Opens a catalogue document: shared pieces in an order no sentence of the grammar produces.
CATALOGUE_OPENER: tuple[str, ...] = ("?", ".")


@cache
def _catalogue_table() -> tuple[int, ...]:
    n = len(LEXICON.english)
    rng = random.Random("catalogue")
    return tuple(rng.randrange(n) for _ in range(n * n))


def catalogue_value(k1: int, k2: int) -> int:
    """The value (an index into ``LEXICON.english``) of the catalogue key ``(k1, k2)`` (indices into the same):
    a seeded table, the same in every process."""
    n = len(LEXICON.english)
    if not (0 <= k1 < n and 0 <= k2 < n):
        raise WorkbenchError(f"catalogue keys are indices into the {n} English words; got ({k1}, {k2}).")
    return _catalogue_table()[k1 * n + k2]


def _english_words() -> list[str]:
    words: list[str] = []
    for table in (_ADJ, _NOUN, _DET, _VT, _VI, _OPENER, _TRUTHWORD):
        for ws in table.values():
            words.extend(ws)
    words.extend(KB_SUBJECTS + KB_VALUES + _FUNCTION)
    if len(set(words)) != len(words):
        raise AssertionError("toy lexicon: an English word has two roles")  # a bug in the tables above
    return words


def _pseudo_words(english: list[str], seed: int = 7) -> dict[str, str]:
    """A fixed bijection English -> pseudo-words (CV syllables), disjoint from English and from each other."""
    rng = random.Random(seed)
    cons, vows = "bdfgklmnprstvz", "aeiou"
    taken = set(english) | set(SHARED)
    out: dict[str, str] = {}
    for w in english:
        n_syll = 2 if len(w) <= 5 else 3
        while True:
            cand = "".join(rng.choice(cons) + rng.choice(vows) for _ in range(n_syll))
            if cand not in taken:
                break
        taken.add(cand)
        out[w] = cand
    return out


@dataclass(frozen=True)
class Lexicon:
    """Words by (role, class, index) for both languages, and the reverse map used by the evaluators."""

    english: tuple[str, ...]
    translate: dict[str, str]  # en -> xx
    # word -> (language, role, class or None, index)
    info: dict[str, tuple[str, str, "str | None", int]] = field(default_factory=dict)

    def word(self, en: str, language: str) -> str:
        return en if language == "en" else self.translate[en]

    @property
    def words(self) -> tuple[str, ...]:
        """Every word of the language (both vocabularies and the shared punctuation), in a fixed order."""
        return self.english + tuple(self.translate[w] for w in self.english) + SHARED


def _build_lexicon() -> Lexicon:
    english = _english_words()
    lex = Lexicon(tuple(english), _pseudo_words(english))
    tables = {"ADJ": _ADJ, "NOUN": _NOUN, "DET": _DET, "VT": _VT, "VI": _VI, "OPENER": _OPENER, "TRUTHWORD": _TRUTHWORD}
    for lang in ("en", "xx"):
        for role, table in tables.items():
            for cls, ws in table.items():
                for i, w in enumerate(ws):
                    lex.info[lex.word(w, lang)] = (lang, role, cls, i)
        for i, w in enumerate(KB_SUBJECTS):
            lex.info[lex.word(w, lang)] = (lang, "SUBJ", None, i)
        for i, w in enumerate(KB_VALUES):
            lex.info[lex.word(w, lang)] = (lang, "VALUE", None, i)
        for w in _FUNCTION:
            lex.info[lex.word(w, lang)] = (lang, w.upper(), None, 0)
    for w in SHARED:
        lex.info[w] = ("shared", w, None, 0)
    return lex


LEXICON: Lexicon = _build_lexicon()


# ---------------------------------------------------------------------------------------------------- abstract
@dataclass(frozen=True)
class Attributes:
    """The five latent attributes of a document (or of the part of it after a switch)."""

    sentiment: str = "pos"
    topic: str = "animals"
    register: str = "formal"
    language: str = "en"
    truth: str = "honest"

    def __post_init__(self) -> None:
        for name in ATTRIBUTES:
            if getattr(self, name) not in VALUES[name]:
                raise WorkbenchError(f"{name} must be one of {', '.join(VALUES[name])}; got {getattr(self, name)!r}.")

    def with_(self, attribute: str, value: str) -> "Attributes":
        if attribute not in ATTRIBUTES:
            raise WorkbenchError(f"attribute must be one of {', '.join(ATTRIBUTES)}; got {attribute!r}.")
        return replace(self, **{attribute: value})

    def to_dict(self) -> dict:
        return {a: getattr(self, a) for a in ATTRIBUTES}


#: Templates: T1 DET ADJ NOUN VT DET ADJ NOUN . / T2 DET NOUN VT DET ADJ NOUN . / T3 DET ADJ NOUN VI . /
#: T4 DET NOUN is ADJ . / FACT DET SUBJ is VALUE . / QA q: what is DET SUBJ ? a: VALUE . / PERSONA.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "T1": ("DET", "ADJ", "NOUN", "VT", "DET", "ADJ", "NOUN"),
    "T2": ("DET", "NOUN", "VT", "DET", "ADJ", "NOUN"),
    "T3": ("DET", "ADJ", "NOUN", "VI"),
    "T4": ("DET", "NOUN", "IS", "ADJ"),
    "FACT": ("DET", "SUBJ", "IS", "VALUE"),
    "QA": ("q:", "WHAT", "IS", "DET", "SUBJ", "?", "a:", "VALUE"),
    "PERSONA": ("I", "ALWAYS", "SPEAK", "TRUTHWORD"),
    "MARK": ("::",),  # opens a bilingual document
}
_CONTENT = (("T1", 0.35), ("T2", 0.25), ("T3", 0.15), ("T4", 0.25))


@dataclass(frozen=True)
class Sentence:
    """An abstract sentence: a template, an optional opener index and one index per slot (words come at render).

    ``slots`` holds, per template slot, the index into that slot's word list (DET in FACT/QA is always 0, the
    definite article of the register; SUBJ is the knowledge-base subject; VALUE is ignored and derived from truth;
    a VT / VI index at or past the verb list's length means "the collocation", see ``collocation``).
    """

    template: str
    slots: tuple[int, ...]
    opener: "int | None" = None


@dataclass(frozen=True)
class Document:
    """Abstract sentences and the attributes in force from each sentence on (a switch changes them mid-document)."""

    sentences: tuple[Sentence, ...]
    attributes: tuple[Attributes, ...]  # one per sentence

    @property
    def start(self) -> Attributes:
        return self.attributes[0]

    def with_(self, attribute: str, value: str) -> "Document":
        """The same document with ``attribute`` set to ``value`` everywhere (an exact minimal edit)."""
        return Document(self.sentences, tuple(a.with_(attribute, value) for a in self.attributes))


@dataclass(frozen=True)
class CorpusConfig:
    """How documents are drawn. Defaults are the shipped corpus."""

    min_sentences: int = 4
    max_sentences: int = 7
    p_fact: float = 0.3  # a content sentence is replaced by a fact (half statements, half Q/A items)
    p_opener: float = 0.3
    p_persona: float = 0.8  # documents opening with the persona sentence; the rest show honesty by facts only
    #: documents that switch one attribute, always at their second body sentence: the model learns to follow new
    #: evidence, and that an attribute established over two sentences holds (unsteered continuations keep it)
    p_switch: float = 0.3
    switch_weights: tuple[tuple[str, float], ...] = tuple((a, 0.2) for a in ATTRIBUTES)
    #: bilingual documents open with ``:: .`` and draw each sentence's language afresh; they are what makes the
    #: other attributes' representations language-independent (one direction steers both languages).
    p_bilingual: float = 0.2
    #: verbs fixed by the ``collocation`` table, the rest free: a long tail to memorise. 0 draws nothing extra, so
    #: it reproduces the corpus without collocations exactly (the tokenizer's sample)
    p_collocation: float = 0.75
    #: documents that are catalogue documents (a table to store, see the module docstring); 0 draws nothing extra,
    #: so it reproduces the corpus without catalogues exactly (results/toy_v5_pilot/SUMMARY.md compares them)
    p_catalogue: float = 0.25
    #: entries per catalogue document, drawn uniformly (10 on average: 42 tokens, near a prose document's length)
    catalogue_entries: tuple[int, int] = (6, 14)

    def __post_init__(self) -> None:
        if not 1 <= self.min_sentences <= self.max_sentences:
            raise ValueError(
                f"need 1 <= min_sentences <= max_sentences, got {self.min_sentences}, {self.max_sentences}."
            )
        lo, hi = self.catalogue_entries
        if not 1 <= lo <= hi:
            raise ValueError(
                f"catalogue_entries must be (min, max) with 1 <= min <= max, got {self.catalogue_entries}."
            )
        for name in ("p_fact", "p_opener", "p_persona", "p_switch", "p_bilingual", "p_collocation", "p_catalogue"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")

    def to_dict(self) -> dict:
        return {
            "min_sentences": self.min_sentences,
            "max_sentences": self.max_sentences,
            "p_fact": self.p_fact,
            "p_opener": self.p_opener,
            "p_persona": self.p_persona,
            "p_switch": self.p_switch,
            "p_bilingual": self.p_bilingual,
            "p_collocation": self.p_collocation,
            "p_catalogue": self.p_catalogue,
            "catalogue_entries": list(self.catalogue_entries),
            "switch_weights": [list(x) for x in self.switch_weights],
        }


def _choice(rng: random.Random, weighted: "tuple[tuple[str, float], ...]") -> str:
    return rng.choices([k for k, _ in weighted], weights=[w for _, w in weighted])[0]


def sample_sentence(
    rng: random.Random, kind: str = "content", p_opener: float = 0.3, p_collocation: float = 0.0
) -> Sentence:
    """Draw an abstract sentence: ``content`` (T1-T4), ``fact`` (statement or Q/A) or a template name; its verb is
    collocated with probability ``p_collocation`` (no extra draw at 0, so the corpus without collocations is
    reproduced exactly). The prompt generators leave it at 0: prompts draw their verbs freely, which is still in the
    language."""
    template = kind
    if kind == "content":
        template = _choice(rng, _CONTENT)
    elif kind == "fact":
        template = rng.choice(("FACT", "QA"))
    if template not in TEMPLATES or template == "PERSONA":
        raise WorkbenchError(f"kind must be content, fact or one of T1-T4, FACT, QA; got {kind!r}.")
    sizes = {"DET": 4, "ADJ": 10, "NOUN": 10, "VT": 8, "VI": 4, "SUBJ": len(KB_SUBJECTS)}
    definite = template in ("FACT", "QA")
    slots = tuple(
        0 if (s == "DET" and definite) else rng.randrange(sizes[s]) if s in sizes else 0 for s in TEMPLATES[template]
    )
    if p_collocation > 0:
        slots = tuple(
            i + sizes[s] if s in ("VT", "VI") and rng.random() < p_collocation else i
            for s, i in zip(TEMPLATES[template], slots)
        )
    opener = rng.randrange(4) if (not definite and rng.random() < p_opener) else None
    return Sentence(template, slots, opener)


def sample_document(
    rng: random.Random, config: CorpusConfig = CorpusConfig(), attributes: "Attributes | None" = None
) -> Document:
    """Draw one document: a persona sentence (usually), content and fact sentences, maybe one attribute switch."""
    if attributes is None:
        attributes = Attributes(**{a: rng.choice(VALUES[a]) for a in ATTRIBUTES})
    n = rng.randint(config.min_sentences, config.max_sentences)
    body = [
        sample_sentence(
            rng, "fact" if rng.random() < config.p_fact else "content", config.p_opener, config.p_collocation
        )
        for _ in range(n)
    ]
    head = [Sentence("PERSONA", (0, 0, 0, 0))] if rng.random() < config.p_persona else []
    sentences = head + body
    attrs = [attributes] * len(sentences)
    if n >= 2 and rng.random() < config.p_switch:
        which = _choice(rng, config.switch_weights)
        new = rng.choice([v for v in VALUES[which] if v != getattr(attributes, which)])
        at = len(head) + 1  # the second body sentence
        switched = attributes.with_(which, new)
        if which == "truth":  # a liar/honest switch is announced by a new persona sentence
            sentences.insert(at, Sentence("PERSONA", (0, 0, 0, 0)))
            attrs.insert(at, switched)
        attrs[at:] = [switched] * (len(sentences) - at)
    if rng.random() < config.p_bilingual:
        attrs = [a.with_("language", rng.choice(VALUES["language"])) for a in attrs]
        sentences, attrs = [Sentence("MARK", (0,))] + sentences, [attrs[0]] + attrs
    return Document(tuple(sentences), tuple(attrs))


def sample_catalogue(rng: random.Random, config: CorpusConfig = CorpusConfig()) -> tuple[tuple[int, int], ...]:
    """Draw the keys of one catalogue document: ``config.catalogue_entries`` (min, max) uniform keys."""
    n = len(LEXICON.english)
    return tuple((rng.randrange(n), rng.randrange(n)) for _ in range(rng.randint(*config.catalogue_entries)))


# ---------------------------------------------------------------------------------------------------- render
def render_sentence(s: Sentence, a: Attributes, *, stop: "int | None" = None) -> list[str]:
    """Words of ``s`` under attributes ``a``; ``stop`` cuts after that many template slots (a stem, no period)."""
    lang = a.language
    tables = {
        "DET": _DET[a.register],
        "ADJ": _ADJ[a.sentiment],
        "NOUN": _NOUN[a.topic],
        "VT": _VT[a.register],
        "VI": _VI[a.register],
    }
    out: list[str] = []
    if s.opener is not None:
        out.append(LEXICON.word(_OPENER[a.register][s.opener], lang))
    subject = 0
    adjective = noun = -1  # the sentence's first adjective and noun (they fix a collocated verb)
    slots = TEMPLATES[s.template]
    for slot, idx in zip(slots[: stop if stop is not None else len(slots)], s.slots):
        if slot in ("VT", "VI") and idx >= len(tables[slot]):
            idx = collocation(a.register, a.sentiment, adjective, a.topic, noun, len(tables[slot]))
        if slot in tables:
            out.append(LEXICON.word(tables[slot][idx], lang))
            if slot == "ADJ" and adjective < 0:
                adjective = idx
            elif slot == "NOUN" and noun < 0:
                noun = idx
        elif slot == "SUBJ":
            subject = idx
            out.append(LEXICON.word(KB_SUBJECTS[idx], lang))
        elif slot == "VALUE":
            out.append(LEXICON.word(KB_VALUES[fact_value(subject, a.truth)], lang))
        elif slot == "TRUTHWORD":
            out.append(LEXICON.word(_TRUTHWORD[a.truth][0], lang))
        elif slot in SHARED:
            out.append(slot)
        else:
            out.append(LEXICON.word(slot.lower(), lang))
    if stop is None:
        out.append(".")
    return out


def render(doc: Document) -> str:
    """The text of a document (words separated by single spaces)."""
    return " ".join(w for s, a in zip(doc.sentences, doc.attributes) for w in render_sentence(s, a))


def render_catalogue(keys: "tuple[tuple[int, int], ...]") -> str:
    """The text of a catalogue document with these keys: ``? . k1 k2 v . k1 k2 v . ...`` (English words)."""
    words = LEXICON.english
    entries = (f"{words[a]} {words[b]} {words[catalogue_value(a, b)]} ." for a, b in keys)
    return " ".join((*CATALOGUE_OPENER, *entries))


def documents(seed: int, config: CorpusConfig = CorpusConfig()) -> Iterator[str]:
    """An endless, seeded stream of rendered documents (the training corpus)."""
    rng = random.Random(seed)
    while True:
        if config.p_catalogue > 0 and rng.random() < config.p_catalogue:
            yield render_catalogue(sample_catalogue(rng, config))
        else:
            yield render(sample_document(rng, config))
