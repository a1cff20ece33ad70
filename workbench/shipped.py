"""The toy models shipped in the package: their names, folders and cards.

A leaf module (standard library and ``workbench.errors`` only), so the loader can resolve ``toy-m`` to a folder
without importing the toy world. The checkpoints live in ``workbench/toy/checkpoints/<name>/``.
"""

__all__ = ["NAMES", "checkpoint_dir", "card"]

import json
from pathlib import Path

from workbench.errors import WorkbenchError

NAMES: tuple[str, ...] = ("toy-s", "toy-m", "toy-l")
_ROOT = Path(__file__).parent / "toy" / "checkpoints"


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


def card(name: str) -> dict:
    """The card (training config, validation loss, measured properties) of the shipped toy model ``name``."""
    return json.loads((checkpoint_dir(name) / "card.json").read_text())
