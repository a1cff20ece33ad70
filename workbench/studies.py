"""Studies as registered objects: one module declares a study's Config, run, plot, summary and report section.

A study module ends with ``register(Study(...))``; the CLI's ``analyze`` commands (flags generated from the
Config's fields, help from their docstrings, defaults never copied) and the report's sections come from the
registry, so adding a study touches one file::

    @dataclass(frozen=True)
    class Config:
        layer: int = 0
        \"\"\"0-based block to read.\"\"\"

    @dataclass(frozen=True)
    class Result(StudyResult):
        KIND = "my_study"
        config: dict
        value: float

    def run(ctx: Context, cfg: Config) -> Result: ...

    register(Study("my-study", "what it measures", Config, Result, run, plot, section, summary))

Studies are found through the ``workbench.studies`` entry-point group (each entry names a module or a package,
all of whose modules are imported; the project's own ``analyses`` package is one) and the ``WORKBENCH_STUDIES``
environment variable (comma-separated module or package names). The core never imports a study by name.

Every result a study writes carries ``kind`` and ``schema_version``, and :func:`load_result` reads it back into its
typed Result.
"""

__all__ = [
    "Study",
    "on_model",
    "StudyResult",
    "Context",
    "register",
    "discover",
    "studies",
    "get",
    "load_result",
    "field_docs",
    "add_config_flags",
    "config_from_flags",
    "format_default",
    "ENTRY_POINT_GROUP",
    "RESERVED_FLAGS",
]

import argparse
import ast
import dataclasses
import importlib
import inspect
import math
import os
import pkgutil
import re
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from workbench.errors import WorkbenchError, closest
from workbench.schema import Strict, validate

ENTRY_POINT_GROUP = "workbench.studies"
#: flags every ``analyze`` command owns; a Config field may not take their names
RESERVED_FLAGS = frozenset(
    {"model", "backend", "bos", "chat_template", "out", "overwrite", "help", "command", "analysis", "func", "study"}
)


class StudyResult:
    """Base of a study's frozen Result dataclass: ``to_dict`` adds ``kind`` and ``schema_version``, ``from_dict``
    reads them back (refusing another kind or a newer schema, a missing or unknown field, or a field whose JSON
    type is not its annotation's: ``cells: list`` must be a list, ``rate: float`` a number, never a boolean)."""

    KIND: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict:
        return {"kind": self.KIND, "schema_version": self.SCHEMA_VERSION, **asdict(self)}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping, *, source: "str | None" = None) -> Any:
        """The Result held by ``data`` (read from ``source``, named in errors)."""
        if not isinstance(data, Mapping):
            raise WorkbenchError(f"a {cls.KIND} result must be a JSON object, got {type(data).__name__}.")
        if data.get("kind") != cls.KIND:
            raise WorkbenchError(f"this result is of kind {data.get('kind')!r}, not {cls.KIND!r}.")
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= cls.SCHEMA_VERSION:
            raise WorkbenchError(
                f"{cls.KIND} result schema_version {version!r} is not one this workbench reads "
                f"(1..{cls.SCHEMA_VERSION}); upgrade the workbench or re-run the study."
            )
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        required = [
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in data]
        if missing:
            raise WorkbenchError(f"{cls.KIND} result lacks {', '.join(missing)}; it is not a complete result file.")
        values = {k: v for k, v in data.items() if k not in ("kind", "schema_version")}
        validate(
            values,
            _fields_schema(cls),
            source=source or f"{cls.KIND} result",
            fix=f"re-run the study (its fields are {', '.join(names)}).",
        )
        return cls(**{n: data[n] for n in names if n in data})


_FIELD_SCHEMAS: "dict[type, type[Strict]]" = {}


def _fields_schema(cls: type) -> "type[Strict]":
    """A strict schema of a Result dataclass's fields, typed by its annotations (``Any`` where pydantic has no
    schema for one), built once per class."""
    if cls not in _FIELD_SCHEMAS:
        from pydantic import Field, TypeAdapter, create_model
        from pydantic.errors import PydanticSchemaGenerationError

        hints = typing.get_type_hints(cls)
        spec: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            hint = hints.get(f.name, Any)
            try:
                TypeAdapter(hint)
            except PydanticSchemaGenerationError:
                hint = Any
            if f.default is not dataclasses.MISSING:
                spec[f.name] = (hint, f.default)
            elif f.default_factory is not dataclasses.MISSING:
                spec[f.name] = (hint, Field(default_factory=f.default_factory))
            else:
                spec[f.name] = (hint, ...)
        _FIELD_SCHEMAS[cls] = create_model(f"{cls.__name__}Fields", __base__=Strict, **spec)
    return _FIELD_SCHEMAS[cls]


@dataclass
class Context:
    """What a study's ``run`` gets from its caller: the model it names and any other (``model`` / ``get``, each
    loaded the caller's way, once), and a folder for files beside ``result.json`` (kept with the result)."""

    model_name: "str | None"
    load: "Callable[[str], Any]"
    workdir: Path
    progress: bool = True
    _loaded: dict = field(default_factory=dict, repr=False)

    def get(self, name: str) -> Any:
        """The model ``name``, loaded on first use."""
        if name not in self._loaded:
            self._loaded[name] = self.load(name)
        return self._loaded[name]

    def model(self) -> Any:
        if self.model_name is None:
            raise WorkbenchError("this study needs --model.")
        return self.get(self.model_name)


@dataclass(frozen=True)
class Study:
    """A registered study: ``name`` is its ``analyze`` command, ``kind`` (its Result's ``KIND``) tags its results;
    ``run`` computes, ``plot`` draws a saved result, ``section`` writes its report section, ``summary`` the lines
    the command prints."""

    name: str
    help: str
    config: type
    result: "type[StudyResult]"
    run: "Callable[[Context, Any], StudyResult]"
    plot: "Callable[[dict], dict]"
    section: "Callable[[dict], Any]"
    summary: "Callable[[Any], str]"
    needs_model: bool = True
    table: "Callable[[list[dict]], str] | None" = None
    """Markdown tables over saved results (e.g. the head of a results/<study>/SUMMARY.md), if the study has them."""

    @property
    def kind(self) -> str:
        return self.result.KIND

    def __post_init__(self) -> None:
        if not self.kind:
            raise WorkbenchError(f"study {self.name!r}: its Result class must set KIND.")
        if not (dataclasses.is_dataclass(self.config) and dataclasses.is_dataclass(self.result)):
            raise WorkbenchError(f"study {self.name!r}: Config and Result must be dataclasses.")
        clash = sorted({f.name for f in dataclasses.fields(self.config)} & RESERVED_FLAGS)
        if clash:
            raise WorkbenchError(
                f"study {self.name!r}: Config field(s) {clash} take a flag every analyze command owns; rename them."
            )


def on_model(run: "Callable[..., StudyResult]") -> "Callable[[Context, Any], StudyResult]":
    """A study's ``run`` for the usual signature ``run(model, cfg, *, name, progress)`` on the model the command
    names."""

    def execute(ctx: Context, cfg: Any) -> StudyResult:
        return run(ctx.model(), cfg, name=ctx.model_name or "", progress=ctx.progress)

    return execute


_REGISTRY: "dict[str, Study]" = {}
_DISCOVERED = False


def register(study: Study) -> Study:
    """Add ``study`` (once per kind and command name; re-importing its module replaces it)."""
    for other in list(_REGISTRY.values()):
        if other.kind != study.kind and other.name != study.name:
            continue
        if other.config.__module__ != study.config.__module__:
            raise WorkbenchError(
                f"study {study.name!r} ({study.kind}) clashes with {other.name!r} ({other.kind}) "
                f"from {other.config.__module__}; give it another name and KIND."
            )
        del _REGISTRY[other.kind]
    _REGISTRY[study.kind] = study
    return study


def _sources() -> "list[str]":
    from importlib.metadata import entry_points

    names = [ep.module for ep in entry_points(group=ENTRY_POINT_GROUP)]
    names += [s.strip() for s in os.environ.get("WORKBENCH_STUDIES", "").split(",") if s.strip()]
    return list(dict.fromkeys(names))


def _import_tree(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            return  # that study package is not installed here
        raise
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        importlib.import_module(f"{name}.{info.name}")


def discover() -> None:
    """Import every study package named by the entry points and ``WORKBENCH_STUDIES`` now (again after either
    changed); ``studies()`` does it once by itself."""
    global _DISCOVERED
    for name in _sources():
        _import_tree(name)
    _DISCOVERED = True


def studies() -> "list[Study]":
    """Every registered study (discovering the installed study packages on first use), by command name."""
    if not _DISCOVERED:
        discover()
    return sorted(_REGISTRY.values(), key=lambda s: s.name)


def get(kind_or_name: str) -> Study:
    """The study registered under a result ``kind`` or an ``analyze`` command name."""
    known = studies()
    for s in known:
        if kind_or_name in (s.kind, s.name):
            return s
    options = [s.name for s in known]
    raise WorkbenchError(
        f"no study {kind_or_name!r} is installed"
        + (f"; did you mean {closest(kind_or_name, options)}?" if options else ".")
    )


def load_result(data: "Mapping | str | os.PathLike") -> StudyResult:
    """A study's ``result.json`` (or its parsed dict) as its typed Result."""
    source = None
    if not isinstance(data, Mapping):
        from workbench.schema import read_json

        source = str(data)
        data = read_json(data, fix="pass a result.json written by `workbench analyze`.")
    if not isinstance(data, Mapping) or not isinstance(data.get("kind"), str):
        where = f"{source}: " if source else ""
        raise WorkbenchError(
            f"{where}this JSON has no study 'kind'; it is not a study result written by the workbench."
        )
    return get(data["kind"]).result.from_dict(data, source=source)


# --- Config fields as command-line flags -----------------------------------------------------------------------


def field_docs(cls: type) -> "dict[str, str]":
    """The docstring of each field of a dataclass: the string literal on the line after the field (and its bases')."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for a, b in zip(body, body[1:]):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                out[a.target.id] = " ".join(b.value.value.split())
    return out


def _members(hint: Any) -> "list[Any]":
    """The non-None members of a union hint (a plain hint: itself)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def _element(hint: Any) -> Any:
    """The element type of ``tuple[X, ...]`` (a bare ``tuple``: str)."""
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    return args[0] if args else str


def _parse_scalar(hint: Any, text: str) -> Any:
    if typing.get_origin(hint) is typing.Literal:
        allowed = typing.get_args(hint)
        if text not in [str(a) for a in allowed]:
            raise ValueError(f"choose from {', '.join(map(str, allowed))}")
        return next(a for a in allowed if str(a) == text)
    if typing.get_origin(hint) is tuple or hint is tuple:  # nested: "a+b"
        parts = text.split("+")
        args = typing.get_args(hint)
        if args and Ellipsis not in args:  # fixed length, e.g. tuple[str, str]
            if len(parts) != len(args):
                raise ValueError(f"{text!r} needs {len(args)} parts joined by '+'")
            return tuple(_parse_scalar(a, p) for a, p in zip(args, parts))
        return tuple(_parse_scalar(_element(hint), part) for part in parts)
    if hint is int:
        a, sep, b = text.partition("-")
        if sep and a.isdigit() and b.isdigit():
            raise ValueError("a range is only allowed in a list")
        if not re.fullmatch(r"\s*-?[0-9]{1,9}\s*", text):
            raise ValueError("not a whole number of at most 9 digits")
        return int(text)
    if hint is float:
        if not re.fullmatch(r"\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*", text):
            raise ValueError("not a number")
        value = float(text)
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return value
    if hint is str:
        return text
    raise ValueError(f"no command-line form for {hint!r}")


def _parse_tuple(hint: Any, text: str) -> tuple:
    element = _element(hint)
    if not text.strip():
        return ()
    out: list = []
    for part in text.split(","):
        part = part.strip()
        a, sep, b = part.partition("-")
        if element is int and sep and a and b:  # 2-5: an inclusive range of blocks
            lo, hi = _parse_scalar(int, a), _parse_scalar(int, b)
            if hi < lo:
                raise ValueError(f"empty range {part}")
            out.extend(range(lo, hi + 1))
        else:
            out.append(_parse_scalar(element, part))
    twice = next((x for i, x in enumerate(out) if x in out[:i]), None)
    if twice is not None:
        raise ValueError(f"{format_default(twice)} is listed twice")
    return tuple(out)


def _parser_for(hint: Any, none_word: "str | None") -> "Callable[[str], Any]":
    members = _members(hint)

    def parse(text: str) -> Any:
        if none_word is not None and text == none_word:
            return None
        errors = []
        for m in members:
            try:
                if typing.get_origin(m) is tuple or m is tuple:
                    return _parse_tuple(m, text)
                return _parse_scalar(m, text)
            except ValueError as e:
                errors.append(str(e))
        raise argparse.ArgumentTypeError(f"invalid value {text!r} ({'; '.join(dict.fromkeys(errors))})")

    return parse


def format_default(value: Any, none_word: "str | None" = None) -> str:
    """A Config default as the CLI would write it (tuples comma-separated, pairs with '+')."""
    if value is None:
        return none_word or "none"
    if isinstance(value, tuple):
        return ",".join("+".join(map(str, v)) if isinstance(v, tuple) else format_default(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _supported(hint: Any) -> bool:
    """Whether a field's annotation has a command-line form (bool, int, float, str, Literal, tuples of these)."""
    if typing.get_origin(hint) is typing.Literal or hint in (bool, int, float, str, tuple):
        return True
    if typing.get_origin(hint) is tuple:
        return all(_supported(a) for a in typing.get_args(hint) if a is not Ellipsis)
    return False


def add_config_flags(parser: argparse.ArgumentParser, config: type) -> None:
    """One ``--flag`` per field of ``config``: type and choices from its annotation, help from its docstring, the
    default shown but never copied (an omitted flag leaves the Config's own default). A field's metadata may set
    ``none`` (the word that means None, e.g. "all") and ``metavar``."""
    hints = typing.get_type_hints(config)
    docs = field_docs(config)
    for f in dataclasses.fields(config):
        if not f.init or f.metadata.get("cli") is False:
            continue
        hint, none_word = hints[f.name], f.metadata.get("none")
        default = _default(f)
        flag = "--" + f.name.replace("_", "-")
        doc = docs.get(f.name, "")
        if default is dataclasses.MISSING:
            help_text = f"{doc.rstrip('.')} (required)."
        elif "(default" in doc:
            help_text = doc
        else:
            help_text = f"{doc.rstrip('.')} (default: {format_default(default, none_word)})."
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text.strip()}
        if default is dataclasses.MISSING:
            kw["required"] = True
        members = _members(hint)
        if not all(_supported(m) for m in members):
            raise WorkbenchError(
                f"{config.__module__}.{config.__name__}.{f.name}: {hint!r} has no command-line form; use bool, "
                f"int, float, str, a Literal or a tuple of them, or mark the field metadata={{'cli': False}}."
            )
        if any((typing.get_origin(m) is tuple or m is tuple) and _element(m) in (int, float) for m in members):
            help_text += f" A list that starts with '-' goes as {flag}=-1,2."
        kw["help"] = help_text.replace("%", "%%")
        if members == [bool]:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if len(members) == 1 and typing.get_origin(members[0]) is typing.Literal:
            kw["choices"] = list(typing.get_args(members[0]))
            kw["type"] = type(kw["choices"][0])
        else:
            kw["type"] = _parser_for(hint, none_word)
            if "metavar" in f.metadata:
                kw["metavar"] = f.metadata["metavar"]
            elif any(typing.get_origin(m) is tuple or m is tuple for m in members):
                kw["metavar"] = "A,B,..."
            else:
                kw["metavar"] = {int: "N", float: "X"}.get(members[0], "TEXT")
        parser.add_argument(flag, **kw)


def config_from_flags(config: type, args: argparse.Namespace, *, command: str = "") -> Any:
    """The Config built from the flags given (omitted ones keep the Config's defaults); a bad value is one
    WorkbenchError naming its flag."""
    names = [f.name for f in dataclasses.fields(config) if f.init]
    given = {n: getattr(args, n) for n in names if hasattr(args, n)}
    try:
        return config(**given)
    except WorkbenchError as e:
        raise WorkbenchError(f"{command + ': ' if command else ''}{_flagged(str(e), names)}") from None
    except (TypeError, ValueError) as e:
        raise WorkbenchError(f"{command + ': ' if command else ''}{_flagged(str(e), names)}") from None


def _flagged(message: str, names: "list[str]") -> str:
    """``message`` with the first field name it mentions written as its flag."""
    import re

    for n in sorted(names, key=len, reverse=True):
        m = re.search(rf"(?<![\w-]){re.escape(n)}(?![\w])", message)
        if m:
            return message[: m.start()] + "--" + n.replace("_", "-") + message[m.end() :]
    return message
