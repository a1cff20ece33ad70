"""Contrastive data: pairs of texts that differ in one property.

Two file formats are read (one JSON object per line, or a JSON array of such objects):

* pairs: ``{"positive": "...", "negative": "...", "prompt": "..."}`` (``prompt`` optional, shared by both);
* CAA A/B items: ``{"question": "...", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}``,
  optionally with the metadata Anthropic's model-written evaluations carry (``statement``, ``label_confidence``),
  which is checked and ignored.

Every record is checked against its declared schema (``PairRecord``, ``ABRecord``): texts are JSON strings of valid
Unicode (a lone surrogate escape such as ``"\\ud800"`` is refused), other fields are refused. The file is UTF-8 (a
BOM is accepted) of at most ``MAX_JSON_BYTES``; lines holding only spaces or tabs are skipped. Each pair becomes
``prompt + sep + completion`` for both members, where ``sep`` is a space when neither side supplies whitespace.
Errors name the file, the line (or the array item), the field and the fix.
"""

__all__ = ["ContrastPair", "ContrastPairs", "PairRecord", "ABRecord", "load_pairs", "join"]

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from workbench.errors import WorkbenchError
from workbench.io import sha256_json
from workbench.schema import MAX_JSON_BYTES, Strict, parse_json, read_file_bytes, validate

_AB_KEYS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
_FIX = 'write each record as {"positive": "...", "negative": "..."[, "prompt": "..."]} or a CAA A/B item.'
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _surrogate(text: str) -> "str | None":
    """The first lone surrogate in ``text`` as a ``\\uXXXX`` escape, or None when ``text`` is valid Unicode."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"\\u{ord(text[e.start]):04x}"
    return None


def _text(value: object) -> object:
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "must be a string in double quotes")
    bad = _surrogate(value)
    if bad is not None:
        raise PydanticCustomError("surrogate", "contains a lone surrogate {code}, which is not text", {"code": bad})
    return value


#: a text field: a str of valid Unicode (no lone surrogates)
Text = Annotated[str, BeforeValidator(_text)]


class PairRecord(Strict):
    """One record of the pairs format."""

    positive: Text
    negative: Text
    prompt: Text = ""


class ABRecord(Strict):
    """One CAA A/B item; ``statement`` and ``label_confidence`` (model-written evaluations' metadata) are ignored."""

    question: Text
    answer_matching_behavior: Text
    answer_not_matching_behavior: Text
    statement: "Text | None" = None
    label_confidence: "float | None" = None


def join(prompt: str, completion: str) -> str:
    """``prompt`` followed by ``completion``, with a space between unless either side supplies whitespace."""
    if not prompt or not completion or prompt[-1].isspace() or completion[0].isspace():
        return prompt + completion
    return f"{prompt} {completion}"


@dataclass(frozen=True)
class ContrastPair:
    """Two completions of one (possibly empty) prompt: ``positive`` has the property, ``negative`` lacks it.

    ``line`` is the 1-based line of the JSONL file the pair was read from (None for other sources); it is not part
    of the pair's identity."""

    positive: str
    negative: str
    prompt: str = ""
    line: "int | None" = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("positive", "negative", "prompt"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise WorkbenchError(f"ContrastPair.{name} must be a string, got {type(value).__name__}.")
            bad = _surrogate(value)
            if bad is not None:
                raise WorkbenchError(f"ContrastPair.{name} contains a lone surrogate {bad}, which is not text.")
        if not self.positive.strip() or not self.negative.strip():
            raise WorkbenchError("ContrastPair.positive and .negative must be non-empty text.")
        if self.positive == self.negative:
            raise WorkbenchError(f"ContrastPair members are identical ({self.positive!r}); a pair must differ.")

    @property
    def texts(self) -> tuple[str, str]:
        """The full positive and negative texts."""
        return join(self.prompt, self.positive), join(self.prompt, self.negative)


@dataclass(frozen=True)
class ContrastPairs:
    """An ordered, hashable set of contrast pairs with where it came from."""

    pairs: tuple[ContrastPair, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if not self.pairs:
            raise WorkbenchError(f"no contrast pairs in {self.source}; supply at least one pair.")

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def data_hash(self) -> str:
        """sha256 of the pairs' content (not of the file's bytes), so reformatting keeps the hash."""
        return sha256_json([[p.prompt, p.positive, p.negative] for p in self.pairs])

    def describe(self, i: int) -> str:
        """Pair ``i`` for an error message: its index, and its file and line when it was read from a JSONL file."""
        line = self.pairs[i].line
        return f"pair {i} ({self.source} line {line})" if line is not None else f"pair {i} of {self.source}"

    def subset(self, indices: "list[int]") -> "ContrastPairs":
        return ContrastPairs(tuple(self.pairs[i] for i in indices), source=f"{self.source}[subset]")

    @classmethod
    def from_list(cls, items: "list[dict] | list[tuple[str, str]]", source: str = "<memory>") -> "ContrastPairs":
        """Pairs from dicts (either format) or ``(positive, negative)`` tuples."""
        out = []
        for i, item in enumerate(items):
            out.append(ContrastPair(*item) if isinstance(item, tuple) else _parse_item(item, f"{source} item {i}"))
        return cls(tuple(out), source)


def _parse_item(obj: object, where: str, line: "int | None" = None) -> ContrastPair:
    """The pair in one record, checked against its format's schema; errors start with ``where``."""
    if not isinstance(obj, dict):
        kind = "null" if obj is None else _JSON_TYPES.get(type(obj), type(obj).__name__)
        raise WorkbenchError(f"{where}: expected a JSON object, got a JSON {kind}; {_FIX}")
    if "positive" in obj or "negative" in obj:
        missing = [k for k in ("positive", "negative") if k not in obj]
        if missing:
            raise WorkbenchError(f"{where}: missing key {missing[0]!r}; a pair needs 'positive' and 'negative'.")
        rec = validate(obj, PairRecord, source=where, fix=_FIX)
        positive, negative, prompt = rec.positive, rec.negative, rec.prompt
    elif any(k in obj for k in _AB_KEYS):
        missing = [k for k in _AB_KEYS if k not in obj]
        if missing:
            raise WorkbenchError(f"{where}: missing key {missing[0]!r}; an A/B item needs {', '.join(_AB_KEYS)}.")
        ab = validate(obj, ABRecord, source=where, fix=_FIX)
        positive, negative, prompt = ab.answer_matching_behavior, ab.answer_not_matching_behavior, ab.question
    else:
        keys = sorted(map(repr, obj))[:8]
        raise WorkbenchError(
            f"{where}: unknown format with keys [{', '.join(keys)}]; expected 'positive'/'negative' (optional "
            f"'prompt') or the CAA A/B keys {', '.join(_AB_KEYS)}."
        )
    try:
        return ContrastPair(positive, negative, prompt, line)
    except WorkbenchError as e:
        raise WorkbenchError(f"{where}: {e}") from None


def _read_text(p: Path) -> str:
    """The text of a pairs file: a regular file of at most ``MAX_JSON_BYTES``, UTF-8 with or without a BOM."""
    data = read_file_bytes(
        p, expected="a JSONL file of contrast pairs", limit=MAX_JSON_BYTES, fix="Split a larger file into several.",
        name=f"pairs file {str(p)!r}",
    )  # fmt: skip
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1
        raise WorkbenchError(
            f"{p}:{line}: not UTF-8 text (byte {e.object[e.start : e.start + 1]!r}); save the pairs file as UTF-8."
        ) from None


def load_pairs(path: "str | os.PathLike") -> ContrastPairs:
    """Read contrast pairs from a JSONL file (or a JSON array), validating every record.

    JSONL lines are split on ``\\n`` only (a ``\\r`` before it is ignored), so a U+2028 inside a string stays
    in its line; pairs read from JSONL carry their line number (``ContrastPair.line``)."""
    p = Path(path)
    text = _read_text(p)
    if text.lstrip(" \t\r\n").startswith("["):
        items = parse_json(text, str(p), _FIX)
        pairs = [_parse_item(obj, f"{p} item {i}") for i, obj in enumerate(items)]
    else:
        pairs = []
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip(" \t\r"):
                continue
            where = f"{p}:{lineno}"
            pairs.append(_parse_item(parse_json(line, where, _FIX), where, lineno))
    return ContrastPairs(tuple(pairs), source=str(p))
