"""What wsi writes into folders a person names (heatmap exports, reports), and the rule that
keeps everything else there safe: wsi never replaces a file it did not write.

Each such folder holds ``.wsi-outputs.json``, the manifest of the files wsi wrote there
(name -> size and sha256; a folder export such as the viewer -> ``{"kind": "folder"}``).
Before an output replaces an existing file, the file must be in the manifest with the
same size and content; otherwise :class:`OutputExistsError` names it and the fix. The
manifest is updated under an exclusive lock on the folder, so the workers of a run can
write into one folder at once. ``is_output`` tells the slide collector of ``wsi run``
which files are wsi's own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wsi._files import atomic_path, atomic_write, read_json, sha256_file, write_json
from wsi.errors import OutputError, OutputExistsError, WsiError

__all__ = ["MANIFEST", "check_output", "record_output", "output_path", "write_output",
           "is_output", "output_error", "FOLDER_ERRNOS"]  # fmt: skip

#: the manifest's file name, in each folder wsi writes exports or reports into
MANIFEST = ".wsi-outputs.json"
_VERSION = 1
#: errors of a write that say the folder (not one slide) is the problem: no space, no quota,
#: a read-only file system, no permission
FOLDER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def _entries(folder: Path) -> dict[str, dict[str, Any]]:
    try:
        data = read_json(folder / MANIFEST)
        files = data["files"] if isinstance(data, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # none (or unreadable): nothing there is known to be wsi's
    return dict(files) if isinstance(files, dict) else {}


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (flock on the directory itself: no lock file)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _written_by_wsi(path: Path, entry: dict[str, Any] | None) -> bool:
    if entry is None or path.is_symlink():
        return False
    if entry.get("kind") == "folder":
        return path.is_dir()
    if not path.is_file():
        return False
    return path.stat().st_size == entry.get("size") and sha256_file(path) == entry.get("sha256")


def is_output(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file (or folder) wsi wrote, unchanged since."""
    p = Path(path)
    return _written_by_wsi(p, _entries(p.parent).get(p.name))


def check_output(path: str | os.PathLike[str]) -> None:
    """Nothing at ``path``, or wsi's own unchanged output: it may be (re)written.

    Raises:
        OutputExistsError: a file or folder wsi did not write (or one changed since wsi
            wrote it) is at ``path``.
    """
    p = Path(path)
    if not (p.exists() or p.is_symlink()) or is_output(p):
        return
    raise OutputExistsError(
        f"{p}: a file that wsi did not write (or that changed since wsi wrote it) is in the "
        f"way, and wsi never replaces such a file. Choose another --out folder, or move "
        f"{p.name} away."
    )


def record_output(path: str | os.PathLike[str]) -> None:
    """Enter ``path`` (just written by wsi) in its folder's manifest."""
    p = Path(path)
    if p.is_dir():
        entry: dict[str, Any] = {"kind": "folder"}
    else:
        entry = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    with _locked(p.parent):
        files = _entries(p.parent)
        files[p.name] = entry
        write_json(p.parent / MANIFEST, {"version": _VERSION, "files": files}, indent=1)


@contextlib.contextmanager
def output_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """``wsi._files.atomic_path`` for an output in a person's folder: refuses to replace a
    file wsi did not write (``check_output``) and records the new file when complete."""
    check_output(path)
    with atomic_path(path) as tmp:
        yield tmp
    record_output(path)


def write_output(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """``data`` (text as UTF-8, or bytes) written atomically to ``path`` as an output
    (see ``output_path``); returns ``path``."""
    check_output(path)
    final = atomic_write(path, data)
    record_output(final)
    return final


def output_error(folder: str | os.PathLike[str], err: OSError) -> OutputError:
    """The job-level error for ``err``, raised writing into ``folder``: names the folder,
    the file and the fix."""
    if isinstance(err, WsiError):
        return OutputError(str(err))
    what = err.strerror or str(err)
    where = f" ({err.filename})" if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space on its disk"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make it writable"
    else:
        fix = "check the folder and its disk"
    out = OutputError(
        f"cannot write to the output folder {folder}: {what}{where}. {fix.capitalize()}, or "
        "choose another output folder (--out); a re-run finishes only what is missing."
    )
    out.errno = err.errno
    return out
