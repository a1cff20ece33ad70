"""The toy models shipped in the package: their names, folders and cards.

A leaf module (standard library, ``workbench.errors`` and ``workbench.schema`` only), so the loader can resolve
``toy-m`` to a folder without importing the toy world. The checkpoints live in ``workbench/toy/checkpoints/<name>/``.

A card (``card.json``, written by ``workbench toy train``, completed by ``workbench toy measure``) holds many
measured numbers; :class:`Card` declares the fields the workbench reads (the cards table, the report's card
section) with exact types and lets the others through, since a card is a record of everything measured.
"""

__all__ = ["NAMES", "Card", "checkpoint_dir", "card", "check_card"]

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from workbench.errors import WorkbenchError
from workbench.schema import Strict, read_json, validate

NAMES: tuple[str, ...] = ("toy-s", "toy-m", "toy-l")
_ROOT = Path(__file__).parent / "toy" / "checkpoints"
_FIX = "re-measure it with `workbench toy measure`, or re-train it with `workbench toy train`."


class _Open(Strict):
    """A card part: the fields below are checked (exact types, finite numbers); other fields are kept as they are."""

    model_config = ConfigDict(extra="allow")


class _Training(_Open):
    steps: int = Field(ge=0)
    lr: float
    n_layers: int = Field(ge=1)
    d_model: int = Field(ge=1)


class _Seconds(_Open):
    wall: float
    cpu: float


class _Unsteered(_Open):
    grammaticality: float
    consistency: dict[str, float]


class _Persona(_Open):
    factual_accuracy: float


class _Truth(_Open):
    honest: _Persona
    liar: _Persona
    best_probe_accuracy: float


class _Best(_Open):
    target_rate: float
    grammaticality: float
    layer: int = Field(ge=0)
    kind: str
    strength: float


class _Steering(_Open):
    best: "_Best | None"


class _Measured(_Open):
    checks: dict[str, bool]
    unsteered: _Unsteered
    truth: _Truth
    steering: dict[str, _Steering]


class Card(_Open):
    """``card.json`` of a toy checkpoint: the fields the workbench reads; ``measured`` once measured."""

    kind: Literal["card"]
    name: str
    architecture: str
    parameters: int = Field(ge=1)
    training: _Training
    train_seconds: _Seconds
    validation_loss: float
    measured: "_Measured | None" = None


def checkpoint_dir(name: str) -> Path:
    """The folder of the shipped toy checkpoint ``name`` (a Hugging Face Llama checkpoint with ``card.json``)."""
    if name not in NAMES:
        raise WorkbenchError(f"unknown toy model {name!r}; the toy family is {', '.join(NAMES)}.")
    path = _ROOT / name
    if not (path / "model.safetensors").is_file():
        raise WorkbenchError(
            f"toy model {name!r} is not installed at {path}; reinstall the package or train it with "
            f"`workbench toy train --size {name}`."
        )
    return path


def check_card(data: Any, source: str) -> dict:
    """``data`` (a parsed ``card.json`` read from ``source``) checked against :class:`Card`; a failure is one
    WorkbenchError naming ``source``, the field path and the fix."""
    validate(data, Card, source=source, fix=_FIX)
    return data


def card(name: str) -> dict:
    """The card (training config, validation loss, measured properties) of the shipped toy model ``name``."""
    path = checkpoint_dir(name) / "card.json"
    return check_card(read_json(path, fix=_FIX), str(path))
