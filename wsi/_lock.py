"""Advisory file locks: one writer per store and per run folder.

A writer holds an exclusive ``flock`` on a lock file while it writes; the file holds the
holder's pid, host, start time and command line, so a second writer is refused with a
message naming the holder (or waits, when asked). The kernel drops the lock when its
holder dies, however it dies: a lock file left by a killed process is stale, and the next
writer takes it over (and logs that it did). Locks are re-entrant within one thread, so a
stage called from inside another stage on the same store does not refuse itself.

Lock files live in ``<folder>/.wsi-locks/<name>.lock`` and are never deleted (deleting a
lock file another process has open would let two writers in).

``flock`` locks are reliable on local file systems and on NFS v4 (Linux maps them to
byte-range locks); on other network file systems two hosts may not see each other's
locks.

The wait, when no ``wait`` is passed, comes from ``WSI_LOCK_WAIT`` (seconds; default 0:
refuse at once), so ``wsi run --wait`` reaches the stages running in Dask workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wsi.errors import ConfigError, LockedError, StoreError

__all__ = ["LOCK_DIR", "WAIT_ENV", "lock_file", "holding", "default_wait", "read_holder"]

log = logging.getLogger(__name__)

LOCK_DIR = ".wsi-locks"
WAIT_ENV = "WSI_LOCK_WAIT"
_POLL_S = 0.2

_held = threading.local()  # lock path -> (fd, depth) held by this thread


def lock_file(folder: str | os.PathLike[str], name: str) -> Path:
    """The lock file of ``name`` (a store's folder name, or ``run``) in ``folder``."""
    return Path(folder) / LOCK_DIR / f"{name}.lock"


def default_wait() -> float:
    """Seconds to wait for a held lock: ``WSI_LOCK_WAIT``, or 0 (refuse at once)."""
    raw = os.environ.get(WAIT_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise ConfigError(f"{WAIT_ENV}={raw!r}: give the seconds to wait for a lock, 0 or more.")
    return value


def read_holder(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What the lock file says about its (last) holder; {} when it says nothing readable."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    cmd = holder.get("command") or ""
    cmd = f", running `{cmd[:120]}`" if cmd else ""
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')}{cmd})"
    )


def _table() -> dict[str, list[int]]:
    table = getattr(_held, "table", None)
    if table is None:
        table = _held.table = {}
    return table


@contextlib.contextmanager
def holding(
    path: str | os.PathLike[str], what: str, *, wait: float | None = None
) -> Iterator[None]:
    """Hold the exclusive lock ``path`` for the block.

    ``what`` names what is locked for the message ("store stores/s1.zarr"). With ``wait``
    0 a held lock raises :class:`LockedError` at once, naming the holder; otherwise it is
    retried for up to ``wait`` seconds (None: :func:`default_wait`).
    """
    key = str(Path(path).absolute())
    table = _table()
    if key in table:  # this thread holds it already
        table[key][1] += 1
        try:
            yield
        finally:
            table[key][1] -= 1
        return
    wait = default_wait() if wait is None else wait
    lock = Path(key)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise StoreError(
            f"{what}: cannot make its lock file {lock} ({err.strerror or err}). The folder "
            "must be writable to write into it: check its permissions and free space."
        ) from err
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = read_holder(lock)
                    raise LockedError(
                        f"{what} is being written by {_describe(holder)}. Wait for it to "
                        f"finish (or pass --wait SECONDS to wait), then re-run. Lock: {lock}"
                    ) from None
                time.sleep(_POLL_S)
        stale = read_holder(lock)
        if stale:
            log.info(
                "%s: taking over a stale lock of %s (no longer running)", what, _describe(stale)
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        table[key] = [fd, 1]
        try:
            yield
        finally:
            del table[key]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released cleanly: nothing stale to report
    finally:
        os.close(fd)  # closing drops the flock
