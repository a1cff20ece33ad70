"""Contrastive data: pairs of texts that differ in one property.

Two file formats are read (one JSON object per line, or a JSON array of such objects):

* pairs: ``{"positive": "...", "negative": "...", "prompt": "..."}`` (``prompt`` optional, shared by both);
* CAA A/B items: ``{"question": "...", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}``.

Each pair becomes ``prompt + sep + completion`` for both members, where ``sep`` is a space when neither side
supplies whitespace. Errors name the file, the line and the fix.
"""

__all__ = ["ContrastPair", "ContrastPairs", "load_pairs", "join"]

import json
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.io import sha256_json

_AB_KEYS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")


def join(prompt: str, completion: str) -> str:
    """``prompt`` followed by ``completion``, with a space between unless either side supplies whitespace."""
    if not prompt or not completion or prompt[-1].isspace() or completion[0].isspace():
        return prompt + completion
    return f"{prompt} {completion}"


@dataclass(frozen=True)
class ContrastPair:
    """Two completions of one (possibly empty) prompt: ``positive`` has the property, ``negative`` lacks it."""

    positive: str
    negative: str
    prompt: str = ""

    def __post_init__(self) -> None:
        for field in ("positive", "negative", "prompt"):
            if not isinstance(getattr(self, field), str):
                raise WorkbenchError(
                    f"ContrastPair.{field} must be a string, got {type(getattr(self, field)).__name__}."
                )
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

    def subset(self, indices: "list[int]") -> "ContrastPairs":
        return ContrastPairs(tuple(self.pairs[i] for i in indices), source=f"{self.source}[subset]")

    @classmethod
    def from_list(cls, items: "list[dict] | list[tuple[str, str]]", source: str = "<memory>") -> "ContrastPairs":
        """Pairs from dicts (either format) or ``(positive, negative)`` tuples."""
        out = []
        for i, item in enumerate(items):
            out.append(ContrastPair(*item) if isinstance(item, tuple) else _parse_item(item, f"{source} item {i}"))
        return cls(tuple(out), source)


def _parse_item(obj: object, where: str) -> ContrastPair:
    if not isinstance(obj, dict):
        raise WorkbenchError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
    if "positive" in obj or "negative" in obj:
        missing = [k for k in ("positive", "negative") if k not in obj]
        if missing:
            raise WorkbenchError(f"{where}: missing key {missing[0]!r}; a pair needs 'positive' and 'negative'.")
        fields = {"positive": obj["positive"], "negative": obj["negative"], "prompt": obj.get("prompt", "")}
    elif any(k in obj for k in _AB_KEYS):
        missing = [k for k in _AB_KEYS if k not in obj]
        if missing:
            raise WorkbenchError(f"{where}: missing key {missing[0]!r}; an A/B item needs {', '.join(_AB_KEYS)}.")
        fields = {
            "positive": obj["answer_matching_behavior"],
            "negative": obj["answer_not_matching_behavior"],
            "prompt": obj["question"],
        }
    else:
        raise WorkbenchError(
            f"{where}: unknown format with keys {sorted(obj)}; expected 'positive'/'negative' (optional 'prompt') "
            f"or the CAA A/B keys {', '.join(_AB_KEYS)}."
        )
    for key, value in fields.items():
        if not isinstance(value, str):
            raise WorkbenchError(f"{where}: {key!r} must be a string, got {type(value).__name__}.")
    try:
        return ContrastPair(**fields)
    except WorkbenchError as e:
        raise WorkbenchError(f"{where}: {e}") from None


def load_pairs(path: "str | Path") -> ContrastPairs:
    """Read contrast pairs from a JSONL file (or a JSON array), validating every line."""
    p = Path(path)
    if not p.is_file():
        raise WorkbenchError(f"pairs file {str(p)!r} does not exist; pass a JSONL file of contrast pairs.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise WorkbenchError(f"{p}: not UTF-8 text ({e}); save the pairs file as UTF-8 JSONL.") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise WorkbenchError(
                f"{p}:{e.lineno}: invalid JSON array ({e.msg}); fix the file or write JSONL."
            ) from None
        pairs = [_parse_item(obj, f"{p} item {i}") for i, obj in enumerate(items)]
    else:
        pairs = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise WorkbenchError(
                    f"{p}:{lineno}: invalid JSON ({e.msg} at column {e.colno}); each line must be one JSON object."
                ) from None
            pairs.append(_parse_item(obj, f"{p}:{lineno}"))
    return ContrastPairs(tuple(pairs), source=str(p))
