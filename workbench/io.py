"""Atomic artifact I/O: JSON manifests and safetensors, written to a temp file and renamed into place.

Nothing is ever unpickled. A directory artifact is built in a sibling temp directory and renamed as a whole, so
an interrupted write leaves either the old artifact or none, never a partial one.
"""

__all__ = ["atomic_dir", "atomic_file", "write_json", "read_json", "write_tensors", "read_tensors", "sha256_json"]

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from workbench.errors import WorkbenchError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp directory that replaces ``path`` when the block succeeds and vanishes when it fails."""
    final = Path(path)
    if final.exists() and not final.is_dir():
        raise WorkbenchError(f"out={str(final)!r} is a file; expected a directory path. Choose another --out.")
    if final.exists() and not overwrite:
        raise WorkbenchError(f"out={str(final)!r} already exists. Remove it or choose another --out.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700; artifacts are shared like any folder
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_file(path: "str | os.PathLike", write) -> None:
    """Call ``write(tmp_path)`` on a sibling temp file, then rename it onto ``path``; nothing is left on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_file(Path(path), lambda p: Path(p).write_text(text))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning missing or corrupt files into a WorkbenchError."""
    p = Path(path)
    if not p.is_file():
        raise WorkbenchError(f"{str(p)!r} does not exist; expected a JSON file written by the workbench.")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"{str(p)!r} is not valid JSON ({e}); re-create it with the workbench.") from None


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically (tensors made contiguous and moved to CPU)."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_file(Path(path), lambda p: save_file(clean, p, metadata=metadata))


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file; missing or corrupt files raise WorkbenchError."""
    p = Path(path)
    if not p.is_file():
        raise WorkbenchError(f"{str(p)!r} does not exist; expected a safetensors file written by the workbench.")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise WorkbenchError(f"{str(p)!r} is not a readable safetensors file ({e}); re-export it.") from None


def sha256_json(obj: Any) -> str:
    """A stable hash of JSON-able data (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
