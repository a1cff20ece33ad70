"""Fuzzing ``workbench.pairs.load_pairs``: mutated pairs files, each outcome checked against an oracle.

``run(n, seed, workdir)`` writes ``n`` files, each a valid pairs file (JSONL or a JSON array, pairs or CAA A/B
items) put through a few random mutations: of records (values of other JSON types, lone surrogate escapes, renamed,
missing, extra and repeated keys, deep nesting, non-object lines, huge texts, blank lines), of the text (line
endings, BOMs, comments, another format) and of the bytes (flips, inserts, cuts, other encodings). A few cases
name a directory, a FIFO or a missing file instead.

The oracle, ``expected(data)``, reads the file format as documented in ``workbench/pairs.py`` with the standard
library alone: the pairs a loader must return (text, prompt and line of each), or None when it must refuse. Each
outcome is one of

* ``accepted_valid``: loaded, and equal to the oracle's pairs;
* ``refused``: a ``WorkbenchError`` where the oracle refuses too;
* ``raw_exception``: any other exception (a bug);
* ``silent_acceptance``: loaded although the oracle refuses, or loaded with other pairs than the oracle's (a bug);
* ``refused_valid``: a ``WorkbenchError`` for a file the oracle accepts (a bug).

The same ``(n, seed)`` writes the same files and gives the same counts.
"""

import json
import math
import os
import random
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.pairs import load_pairs
from workbench.schema import MAX_DEPTH, MAX_JSON_BYTES

KINDS = ("accepted_valid", "refused", "raw_exception", "silent_acceptance", "refused_valid")
BUGS = ("raw_exception", "silent_acceptance", "refused_valid")
N_EXAMPLES = 5

PAIR_KEYS = ("positive", "negative", "prompt")
AB_KEYS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
AB_METADATA = ("statement", "label_confidence")

TEXTS = (
    "good",
    "bad",
    "very good",
    "is sad and small",
    "the cat is",
    "(A)",
    " (B)",
    "Q?\n (A) yes (B) no",
    "héllo wörld",
    "日本語のテキスト",
    "emoji 😀 here",
    "line\u2028separator",
    "tab\tinside",
    'quote " and backslash \\',
    "nul\x00char",
    "  padded  ",
)
#: JSON fragments put in place of a value
FRAGMENTS = (
    "1",
    "-0",
    "2.5",
    "1e999",
    "-1e400",
    "NaN",
    "Infinity",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    '["x"]',
    '{"a": "b"}',
    '""',
    '"   "',
    '"\\u3000"',
    '"\\ud800"',
    '"a\\udc00b"',
    '"\\ude00\\ud83d"',
    '"\\ud83d\\ude00"',
    '"\\u0000"',
    '"x\\ny"',
    '"bad \\q escape"',
    "'single'",
    '"unterminated',
    "1" * 5000,
    "1" * 400,
    "0x10",
    "+1",
    ".5",
)
RENAMES = ("Positive", "positive ", "pos", "negatve", "prompts", "questions", "", "p\u043esitive", "answer")
BLANKS = ("", "   ", "\t", "\r", " \t ", "\x0c", "\u00a0", "\u2028", "\ufeff", "\x00")
JUNK_LINES = ("3", '"text"', "null", "true", "[]", "{}", "// comment", "#", "{,}", "[{}]")
JUNK_BYTES = (b"\x00", b"\x0b", b"\x1f", b"\x7f", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\xff")
JUNK_BYTES += (b"\\", b'"', b"{", b"}", b"[", b",", b"\n", b"\r\n", b"\xe2\x80\xa8")


# ---------------------------------------------------------------------------------------------------- the oracle


def _no_constant(name: str) -> None:
    raise ValueError(name)


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(token)
    return value


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _unique(pairs: "list[tuple[str, object]]") -> dict:
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError("a key appears twice")
    return dict(pairs)


def _json(text: str) -> object:
    """A JSON value as the loader must read it, or the exception it must refuse it with."""
    value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, object_pairs_hook=_unique)
    if _depth(value) > MAX_DEPTH:
        raise ValueError("too deep")
    return value


def _is_text(value: object) -> bool:
    if type(value) is not str:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _record(obj: object, line: "int | None") -> "tuple[str, str, str, int | None] | None":
    """The pair one record holds, or None when it is invalid."""
    if not isinstance(obj, dict):
        return None
    if "positive" in obj or "negative" in obj:
        if not set(obj) <= set(PAIR_KEYS) or not {"positive", "negative"} <= set(obj):
            return None
        pos, neg, prompt = obj["positive"], obj["negative"], obj.get("prompt", "")
    elif any(k in obj for k in AB_KEYS):
        if not set(obj) <= set(AB_KEYS + AB_METADATA) or not set(AB_KEYS) <= set(obj):
            return None
        if "statement" in obj and obj["statement"] is not None and not _is_text(obj["statement"]):
            return None
        conf = obj.get("label_confidence")
        if conf is not None:
            if type(conf) not in (int, float):
                return None
            try:
                float(conf)
            except OverflowError:
                return None
        pos, neg, prompt = obj["answer_matching_behavior"], obj["answer_not_matching_behavior"], obj["question"]
    else:
        return None
    if not all(_is_text(t) for t in (pos, neg, prompt)):
        return None
    if not pos.strip() or not neg.strip() or pos == neg:
        return None
    return pos, neg, prompt, line


def expected(data: bytes) -> "list[tuple[str, str, str, int | None]] | None":
    """``(positive, negative, prompt, line)`` of every pair a loader must return for ``data``, or None when it must
    refuse the file."""
    if len(data) > MAX_JSON_BYTES:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    records: list[tuple[object, int | None]] = []
    try:
        if text.lstrip(" \t\r\n").startswith("["):
            items = _json(text)
            assert isinstance(items, list)
            records = [(item, None) for item in items]
        else:
            for lineno, line in enumerate(text.split("\n"), start=1):
                if line.strip(" \t\r"):
                    records.append((_json(line), lineno))
    except (ValueError, RecursionError):
        return None
    out = [_record(obj, line) for obj, line in records]
    if not out or any(r is None for r in out):
        return None
    return [r for r in out if r is not None]


# ---------------------------------------------------------------------------------------------------- valid files

#: a record is a list of (key, JSON fragment) so that mutations can write any fragment, also invalid ones; a line
#: that is not a record is a plain string
Record = list[tuple[str, str]]


def _dump(rng: random.Random, value: str) -> str:
    return json.dumps(value, ensure_ascii=rng.random() < 0.5)


def _two_texts(rng: random.Random) -> tuple[str, str]:
    pos, neg = rng.sample(TEXTS, 2)
    return pos, neg


def _pair_record(rng: random.Random) -> Record:
    pos, neg = _two_texts(rng)
    rec = [("positive", _dump(rng, pos)), ("negative", _dump(rng, neg))]
    if rng.random() < 0.6:
        rec.append(("prompt", _dump(rng, rng.choice(TEXTS + ("",)))))
    rng.shuffle(rec)
    return rec


def _ab_record(rng: random.Random) -> Record:
    pos, neg = _two_texts(rng)
    rec = [
        ("question", _dump(rng, rng.choice(TEXTS))),
        ("answer_matching_behavior", _dump(rng, pos)),
        ("answer_not_matching_behavior", _dump(rng, neg)),
    ]
    if rng.random() < 0.2:
        rec.append(("statement", _dump(rng, rng.choice(TEXTS))))
    if rng.random() < 0.2:
        rec.append(("label_confidence", rng.choice(["0.97", "1", "0"])))
    return rec


class Doc:
    """A pairs file before serialisation."""

    def __init__(self, rng: random.Random) -> None:
        make = _pair_record if rng.random() < 0.6 else _ab_record
        self.lines: list[Record | str] = [make(rng) for _ in range(rng.randint(1, 6))]
        self.array = rng.random() < 0.2
        self.eol = "\n" if rng.random() < 0.8 else "\r\n"
        self.final_eol = rng.random() < 0.8
        self.bom = rng.random() < 0.1

    def text(self) -> str:
        parts = [
            line if isinstance(line, str) else "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in line) + "}"
            for line in self.lines
        ]
        if self.array:
            body = "[" + ("," + self.eol).join(parts) + "]"
        else:
            body = self.eol.join(parts)
        return ("\ufeff" if self.bom else "") + body + (self.eol if self.final_eol else "")

    def records(self) -> list[Record]:
        return [line for line in self.lines if not isinstance(line, str)]


# ---------------------------------------------------------------------------------------------------- mutations


def _pick(rng: random.Random, doc: Doc) -> "Record | None":
    recs = doc.records()
    return rng.choice(recs) if recs else None


def m_value(rng: random.Random, doc: Doc) -> str:
    rec = _pick(rng, doc)
    if rec:
        i = rng.randrange(len(rec))
        rec[i] = (rec[i][0], rng.choice(FRAGMENTS))
    return "value"


def m_same_texts(rng: random.Random, doc: Doc) -> str:
    rec = _pick(rng, doc)
    if rec and len(rec) >= 2:
        rec[1] = (rec[1][0], rec[0][1])
    return "same-texts"


def m_rename(rng: random.Random, doc: Doc) -> str:
    rec = _pick(rng, doc)
    if rec:
        i = rng.randrange(len(rec))
        rec[i] = (rng.choice(RENAMES + (rec[i][0].upper(), rec[i][0] + "_")), rec[i][1])
    return "rename"


def m_drop_key(rng: random.Random, doc: Doc) -> str:
    rec = _pick(rng, doc)
    if rec:
        del rec[rng.randrange(len(rec))]
    return "drop-key"


def m_extra_key(rng: random.Random, doc: Doc) -> str:
    rec = _pick(rng, doc)
    if rec is not None:
        key = rng.choice(PAIR_KEYS + AB_KEYS + AB_METADATA + ("system", "id", "\ud800"))
        rec.insert(rng.randrange(len(rec) + 1), (key, rng.choice(FRAGMENTS + ('"text"', "0.5"))))
    return "extra-key"


def m_repeat_key(rng: random.Random, doc: Doc) -> str:
    rec = _pick(rng, doc)
    if rec:
        key, _ = rng.choice(rec)
        rec.append((key, _dump(rng, rng.choice(TEXTS))))
    return "repeat-key"


def m_escape_key(rng: random.Random, doc: Doc) -> str:
    """A key written with a \\u escape: the same key once decoded (the record stays valid)."""
    rec = _pick(rng, doc)
    if rec:
        i = rng.randrange(len(rec))
        key = rec[i][0]
        rec[i] = ("\x00ESC" + key, rec[i][1])  # serialised by _escape_keys
    return "escape-key"


def m_nest(rng: random.Random, doc: Doc) -> str:
    depth = rng.choice([2, 5, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 100, 3000])
    rec = _pick(rng, doc)
    if rec and rng.random() < 0.5:
        i = rng.randrange(len(rec))
        rec[i] = (rec[i][0], "[" * depth + rec[i][1] + "]" * depth)
    elif doc.lines:
        i = rng.randrange(len(doc.lines))
        line = doc.lines[i]
        inner = line if isinstance(line, str) else "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in line) + "}"
        doc.lines[i] = "[" * depth + inner + "]" * depth
    return f"nest-{depth}"


def m_non_object(rng: random.Random, doc: Doc) -> str:
    doc.lines.insert(rng.randrange(len(doc.lines) + 1), rng.choice(JUNK_LINES))
    return "non-object"


def m_blank(rng: random.Random, doc: Doc) -> str:
    for _ in range(rng.randint(1, 3)):
        doc.lines.insert(rng.randrange(len(doc.lines) + 1), rng.choice(BLANKS))
    return "blank-lines"


def m_empty(rng: random.Random, doc: Doc) -> str:
    doc.lines = [rng.choice(BLANKS[:5]) for _ in range(rng.randint(0, 3))]
    return "empty"


def m_duplicate(rng: random.Random, doc: Doc) -> str:
    if doc.lines:
        line = rng.choice(doc.lines)
        doc.lines.append(list(line) if not isinstance(line, str) else line)
    return "duplicate-record"


def m_many(rng: random.Random, doc: Doc) -> str:
    if len(doc.lines) <= 12:
        doc.lines = [list(line) if not isinstance(line, str) else line for line in doc.lines * rng.choice([50, 400])]
    return "many-records"


def m_huge_text(rng: random.Random, doc: Doc) -> str:
    rec = _pick(rng, doc)
    if rec:
        i = rng.randrange(len(rec))
        size = rng.choice([10_000, 100_000, 400_000]) if len(doc.lines) <= 12 else 1000
        rec[i] = (rec[i][0], json.dumps(rng.choice(TEXTS[:4]) + "x" * size))
    return "huge-text"


def m_format(rng: random.Random, doc: Doc) -> str:
    doc.array = not doc.array
    return "format"


def m_eol(rng: random.Random, doc: Doc) -> str:
    doc.eol = rng.choice(["\r", "\n\n", "\r\r\n", "\n \n", "\u2028", "\x85"])
    return "eol"


def m_bom(rng: random.Random, doc: Doc) -> str:
    doc.bom = True
    return "bom"


STRUCTURE = (
    m_value,
    m_same_texts,
    m_rename,
    m_drop_key,
    m_extra_key,
    m_repeat_key,
    m_escape_key,
    m_nest,
    m_non_object,
    m_blank,
    m_empty,
    m_duplicate,
    m_many,
    m_huge_text,
    m_format,
    m_eol,
    m_bom,
)


def _escape_keys(text: str) -> str:
    """Write each key marked by ``m_escape_key`` with its first letter as a \\u escape."""
    while '"\\u0000ESC' in text:
        at = text.index('"\\u0000ESC') + 1
        first = text[at + 9]
        text = text[:at] + f"\\u{ord(first):04x}" + text[at + 10 :]
    return text


def t_insert(rng: random.Random, text: str) -> tuple[str, str]:
    at = rng.randrange(len(text) + 1)
    return text[:at] + rng.choice(["\ufeff", "\ud800", '"', ",", "}", "\\", "\n", "/*x*/", "\u2028"]) + text[
        at:
    ], "t-insert"


def t_trailing_comma(rng: random.Random, text: str) -> tuple[str, str]:
    at = text.rfind("}")
    return (text[:at] + ", }" + text[at + 1 :] if at >= 0 else text), "t-trailing-comma"


def t_extra_data(rng: random.Random, text: str) -> tuple[str, str]:
    return text + rng.choice(["[]", "x", '{"positive": "a", "negative": "b"}', "\x00"]), "t-extra-data"


TEXTUAL = (t_insert, t_trailing_comma, t_extra_data)


def _encode(rng: random.Random, text: str) -> tuple[bytes, str]:
    r = rng.random()
    if r < 0.9:
        return text.encode("utf-8", "surrogatepass"), "utf-8"
    if r < 0.93:
        return text.encode("utf-16", "surrogatepass"), "utf-16"
    if r < 0.96:
        return text.encode("latin-1", "replace"), "latin-1"
    if r < 0.98:
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass"), "double-bom"
    return text.encode("utf-8", "surrogatepass").replace(b"\xf0\x9f\x98\x80", b"\xed\xa0\xbd\xed\xb8\x80"), "cesu-8"


def b_flip(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    if not data:
        return data, "b-flip"
    at = rng.randrange(len(data))
    return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :], "b-flip"


def b_insert(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.choice(JUNK_BYTES) + data[at:], "b-insert"


def b_delete(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[at + rng.randint(1, 8) :], "b-delete"


def b_truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    return data[: rng.randrange(len(data) + 1)], "b-truncate"


def b_repeat(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    a = rng.randrange(len(data) + 1)
    b = min(len(data), a + rng.randint(1, 40))
    return data[:b] + data[a:b] + data[b:], "b-repeat"


BYTES = (b_flip, b_insert, b_delete, b_truncate, b_repeat)


def mutate(rng: random.Random) -> tuple[bytes, list[str]]:
    """A valid pairs file put through a few random mutations, and the mutations' names."""
    doc, names = Doc(rng), []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        names.append(rng.choice(STRUCTURE)(rng, doc))
    text = _escape_keys(doc.text())
    if rng.random() < 0.15:
        text, name = rng.choice(TEXTUAL)(rng, text)
        names.append(name)
    data, encoding = _encode(rng, text)
    if encoding != "utf-8":
        names.append(encoding)
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):
        data, name = rng.choice(BYTES)(rng, data)
        names.append(name)
    return data, names


# ---------------------------------------------------------------------------------------------------- the run


def _special_path(rng: random.Random, path: Path) -> str:
    """Make ``path`` something that is not a pairs file; the kind of thing it is."""
    kind = rng.choice(["directory", "fifo", "missing", "dangling-link", "link-to-directory"])
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling-link":
        path.symlink_to(path.with_name(path.name + ".nowhere"))
    elif kind == "link-to-directory":
        path.symlink_to(path.parent)
    return kind


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def run(n: int, seed: int, workdir: Path) -> dict:
    """Load ``n`` mutated pairs files written under ``workdir``; the count of each outcome kind (``KINDS``) and
    up to ``N_EXAMPLES`` examples of each bug kind (``examples[kind]``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(KINDS, 0)
    examples: dict[str, list[str]] = {kind: [] for kind in BUGS}
    for k in range(n):
        rng = random.Random(f"pairs:{seed}:{k}")
        path = workdir / f"{k:06d}.jsonl"
        if rng.random() < 0.02:
            names, want = [_special_path(rng, path)], None
        else:
            data, names = mutate(rng)
            path.write_bytes(data)
            want = expected(data)
        try:
            got = load_pairs(path)
        except WorkbenchError as e:
            kind = "refused" if want is None else "refused_valid"
            detail = f"refused: {_clip(str(e))}"
        except Exception as e:  # every other exception is what the harness counts
            kind, detail = "raw_exception", f"{type(e).__name__}: {_clip(str(e))}"
        else:
            pairs = [(p.positive, p.negative, p.prompt, p.line) for p in got.pairs]
            typed = all(type(t) is str for p in got.pairs for t in (p.positive, p.negative, p.prompt))
            kind = "accepted_valid" if typed and want is not None and pairs == want else "silent_acceptance"
            detail = f"expected {_clip(repr(want))}, got {_clip(repr(pairs))}"
        counts[kind] += 1
        if kind in BUGS and len(examples[kind]) < N_EXAMPLES:
            examples[kind].append(f"{path.name} [{', '.join(names)}]: {detail}")
    return {**counts, "examples": examples}
