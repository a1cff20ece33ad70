"""Declared schemas for the files the workbench reads: one strict pydantic model per format, read one way.

Every JSON artifact (pairs records, ``directions.json``, ``intervention.json``, ``workbench_bake.json``, GGUF
metadata, cards, study results) is parsed by :func:`read_json` (size and nesting bounded before parsing) and
checked by :func:`validate` against a :class:`Strict` model: types exact (no bool for a number, no float for an
int, no string for a number), numbers finite, unknown fields refused. A failure is one ``WorkbenchError`` naming
the file, the field path and the fix.

The bounds a value must keep are declared once here and shared by the library and the CLI (``MAX_SCALE``, ...).
"""

__all__ = [
    "Strict",
    "validate",
    "read_json",
    "read_file_bytes",
    "parse_json",
    "field_path",
    "MAX_JSON_BYTES",
    "MAX_DEPTH",
    "MAX_SCALE",
    "Scale",
    "Layer",
    "Sha256",
]

import json
import math
import os
import stat
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from workbench.errors import WorkbenchError

#: the largest JSON file any loader reads (manifests are kilobytes; a result with examples a few megabytes)
MAX_JSON_BYTES = 64 * 1024 * 1024
#: the deepest nesting any of our formats has is 6; this bounds a malicious file long before Python's recursion
MAX_DEPTH = 32
#: the largest |strength| the workbench accepts anywhere (library, CLI, files): far past any useful steering, far
#: below float overflow in float16 (65504) once multiplied by a direction's norm
MAX_SCALE = 1e4

T = TypeVar("T", bound="Strict")


class Strict(BaseModel):
    """Base of every file schema: exact types, finite numbers, unknown fields refused, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


def _finite_scale(v: float) -> float:
    if not math.isfinite(v) or abs(v) > MAX_SCALE:
        raise ValueError(f"must be finite with |scale| <= {MAX_SCALE:g}")
    return v


#: a steering strength: a finite number with |value| <= MAX_SCALE (an int is accepted as a number)
Scale = Annotated[float, AfterValidator(_finite_scale)]
#: a 0-based block index (checked against a model where one is known)
Layer = Annotated[int, Field(ge=0, le=100_000)]
#: a lowercase hex sha256 digest
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def field_path(loc: "tuple[Any, ...]") -> str:
    """A pydantic error location as a JSON path: ``interventions[0].positions.start``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(text: str, source: str, fix: str) -> Any:
    """Parse JSON text from ``source``, bounded in nesting; NaN, Infinity, overflowing numbers and a key repeated
    within one object are refused."""
    if _depth(text) > MAX_DEPTH:
        raise WorkbenchError(f"{source}: JSON nested deeper than {MAX_DEPTH} levels; {fix}")

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    def finite(token: str) -> float:
        value = float(token)
        if not math.isfinite(value):
            raise ValueError(f"{token} overflows a float")
        return value

    def unique(pairs: "list[tuple[str, Any]]") -> dict:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set = set()
            for key, _ in pairs:
                if key in seen:
                    raise ValueError(f"the key {key!r} appears twice in one object")
                seen.add(key)
        return out

    try:
        return json.loads(text, parse_constant=no_constant, parse_float=finite, object_pairs_hook=unique)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise WorkbenchError(f"{source}: not valid JSON ({e}); {fix}") from None


def read_file_bytes(
    path: "str | os.PathLike", *, expected: str, limit: int, fix: str, name: "str | None" = None
) -> bytes:
    """The bytes of the regular file ``path`` (shown as ``name``, default its quoted path), read only after its
    kind and size are checked: a missing file, a directory, a FIFO or device, or one larger than ``limit`` bytes
    is one WorkbenchError naming what it is, what was ``expected`` and the ``fix``."""
    p = Path(path)
    shown = name or repr(str(p))
    try:
        st = p.stat()
    except FileNotFoundError:
        raise WorkbenchError(f"{shown} does not exist; expected {expected}. {fix}") from None
    except (OSError, ValueError) as e:
        raise WorkbenchError(f"{shown} could not be read ({e}); expected {expected}. {fix}") from None
    if stat.S_ISDIR(st.st_mode):
        raise WorkbenchError(f"{shown} is a directory; expected {expected}. {fix}")
    if not stat.S_ISREG(st.st_mode):
        what = ": it is a FIFO, which can be read only once" if stat.S_ISFIFO(st.st_mode) else ""
        raise WorkbenchError(f"{shown} is not a regular file (a FIFO or device?){what}; expected {expected}. {fix}")
    too_big = f"{shown} is larger than {limit} bytes; expected {expected}. {fix}"
    if st.st_size > limit:
        raise WorkbenchError(too_big)
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)  # a file that grew since the stat is still bounded
    except OSError as e:
        raise WorkbenchError(f"{shown} could not be read ({type(e).__name__}: {e.strerror}). {fix}") from None
    if len(data) > limit:
        raise WorkbenchError(too_big)
    return data


def read_json(path: "str | os.PathLike", *, fix: str = "re-create it with the workbench.") -> Any:
    """Read a JSON file: it must be a regular file of at most ``MAX_JSON_BYTES``, UTF-8 (a BOM is accepted), not
    nested deeper than ``MAX_DEPTH``."""
    data = read_file_bytes(path, expected="a JSON file", limit=MAX_JSON_BYTES, fix=fix)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise WorkbenchError(f"{str(path)!r} is not UTF-8 (byte {e.start}). {fix}") from None
    return parse_json(text, repr(str(path)), fix)


def validate(data: Any, schema: "type[T]", *, source: str, fix: str) -> T:
    """``data`` checked against ``schema``; the first failure is one WorkbenchError naming ``source``, the field
    path, what was wrong and ``fix``."""
    try:
        return schema.model_validate(data, strict=True)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        got = err.get("input")
        shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise WorkbenchError(
            f"{source}: {field_path(err['loc'])}: {err['msg'].lower()}, got {shown}{more}; {fix}"
        ) from None
