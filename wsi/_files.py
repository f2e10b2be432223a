"""File plumbing written once: atomic writes, sha256 of files, JSON read and write.

Every file wsi writes that a later run may trust goes through :func:`atomic_write` (or
:func:`atomic_path` for writers that need a path, such as safetensors or WeasyPrint):
the bytes go to a hidden temporary file beside the target, which is renamed over the
target only when complete. A killed process leaves at most a ``.<stem>.<pid>.tmp<suffix>``
file, never half a target.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_path", "write_json", "read_json", "sha256_file"]

_BLOCK = 1 << 22
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _tmp_for(path: Path) -> Path:
    """``.<stem>.<pid>.tmp<suffix>``: hidden, per process, and with the target's suffix for
    writers that choose a format by it."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed onto ``path`` when the block succeeds.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Example::

        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(state, str(tmp))
    """
    final = Path(path)
    tmp = _tmp_for(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temporary file and a
    rename: readers see the old file or the new one, never half a file. Returns ``path``."""
    final = Path(path)
    with atomic_path(final) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return final


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> Path:
    """``data`` as JSON at ``path`` (atomically; values JSON cannot hold become strings)."""
    return atomic_write(path, json.dumps(data, indent=indent, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in ``path``; ``OSError`` or ``ValueError`` as raised by reading it."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 (64 digits) of a whole file.

    Remembered per (path, size, mtime) in this process: a multi-GB checkpoint is read
    once, and a file replaced in place is hashed again.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(_BLOCK):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]
