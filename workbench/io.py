"""Atomic artifact I/O: JSON manifests and safetensors, written to a temp entry and renamed into place.

Nothing is ever unpickled. A directory artifact is built in a sibling temp directory and renamed as a whole, so
an interrupted write leaves either the old artifact or none, never a partial one. Temp entries are named
``.{name}.tmp.{host}-{pid}.{random}`` (and ``.{name}.old.{host}-{pid}`` for the artifact being replaced): a writer
killed mid-write leaves one behind, and the next write to the same target removes those whose process, on this
host, is gone. A concurrent writer's entries (its process alive) and other hosts' entries are never touched.

Every file written here gets the permissions of an ordinary file, ``0o666 & ~umask``; directories ``0o777 &
~umask``.
"""

__all__ = [
    "atomic_dir",
    "atomic_file",
    "write_json",
    "read_json",
    "write_tensors",
    "read_tensors",
    "read_tensor_file",
    "sha256_json",
    "sha256_file",
    "stale_entries",
    "display_path",
]

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from workbench import schema
from workbench.errors import WorkbenchError

#: the largest tensor file a loader reads into memory (directions and specs are kilobytes to megabytes)
MAX_TENSOR_BYTES = 4 * 1024**3


def display_path(path: "str | os.PathLike") -> str:
    """``path`` as valid UTF-8 text for pages and manifests: bytes that are not UTF-8 (a name the shell passes
    as lone surrogates) appear as ``\\xff`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK
#: this host in temp names, so a sweep on a shared filesystem only judges processes it can see
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _owner(pid: int) -> str:
    return f"{_HOST}-{pid}"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid a writer has: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: a process of another user holds the pid
        return True
    return True


def stale_entries(target: "str | os.PathLike") -> list[Path]:
    """Temp entries of ``target`` left by writers on this host whose process no longer runs."""
    final = Path(target)
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(?:tmp|old)\.{_HOST}-(\d+)(?:\..*)?$")
    try:
        names = os.listdir(final.parent)
    except OSError:
        return []
    out = []
    for name in names:
        match = pattern.match(name)
        if match and not _alive(int(match.group(1))):
            out.append(final.parent / name)
    return sorted(out)


def _sweep(target: Path) -> None:
    """Remove the stale temp entries of ``target`` (best effort: another sweeper may remove them first)."""
    for entry in stale_entries(target):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                entry.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp directory that replaces ``path`` when the block succeeds and vanishes when it fails."""
    final = Path(path)
    if final.exists() and not final.is_dir():
        raise WorkbenchError(f"out={str(final)!r} is a file; expected a directory path. Choose another --out.")
    if final.exists() and not overwrite:
        raise WorkbenchError(f"out={str(final)!r} already exists. Remove it or choose another --out.")
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp.{_owner(os.getpid())}.", dir=final.parent))
    tmp.chmod(DIR_MODE)  # mkdtemp makes 0700; artifacts are shared like any folder
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old.{_owner(os.getpid())}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_file(path: "str | os.PathLike", write: "Callable[..., Any]") -> None:
    """Call ``write(tmp_path)`` on a sibling temp file, then rename it onto ``path``; nothing is left on failure."""
    path = Path(path)
    if path.is_dir():
        raise WorkbenchError(f"{str(path)!r} is a directory; expected a file path. Choose another output path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp.{_owner(os.getpid())}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600, and some writers (safetensors) re-create the file
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
    """Read a JSON file as ``workbench.schema.read_json`` does (bounded; a directory or FIFO named as such)."""
    return schema.read_json(path, fix="re-create it with the workbench.")


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically (tensors made contiguous and moved to CPU)."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_file(Path(path), lambda p: save_file(clean, p, metadata=metadata))


def read_tensor_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """A safetensors file's tensors and the sha256 of its bytes (one read: what is hashed is what is parsed)."""
    data = schema.read_file_bytes(path, expected="a safetensors file", limit=MAX_TENSOR_BYTES, fix="Re-export it.")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError, OverflowError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise WorkbenchError(f"{str(path)!r} is not a readable safetensors file ({reason}); re-export it.") from None
    return tensors, hashlib.sha256(data).hexdigest()


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, non-regular or corrupt file raises WorkbenchError."""
    return read_tensor_file(path)[0]


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """A stable hash of JSON-able data (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
