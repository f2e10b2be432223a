"""One item of a batch job (a slide, a store, a file) and its outcome: a bad item is
recorded with its reason and the batch goes on."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi.errors import WsiError

__all__ = ["ItemResult", "run_item", "run_items", "report"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemResult:
    """``ok`` with its output (a path) and the work's return value, or ``failed`` with why."""

    item: str
    status: str
    output: str | None = None
    error: str | None = None
    seconds: float = 0.0
    value: Any = None


def run_item(item: str | Path, work: Callable[[str | Path], Any]) -> ItemResult:
    """Run ``work(item)``; a WsiError or OSError (a full disk, a vanished file) is recorded.

    A returned path becomes ``output``; anything else is kept as ``value``.
    """
    t0 = time.perf_counter()
    try:
        value = work(item)
    except WsiError as err:
        msg = str(err)
    except OSError as err:
        msg = f"{item}: {err.strerror or err} ({type(err).__name__}); nothing was marked done"
    else:
        output = str(value) if isinstance(value, (str, Path)) else None
        return ItemResult(str(item), "ok", output, None, time.perf_counter() - t0, value)
    log.error("%s", msg)
    return ItemResult(str(item), "failed", error=msg, seconds=time.perf_counter() - t0)


def run_items(items: Sequence[str | Path], work: Callable[[str | Path], Any]) -> list[ItemResult]:
    return [run_item(item, work) for item in items]


def report(header: str, results: Sequence[ItemResult]) -> int:
    """Print the header, one line per item, failures last; 1 if any failed, else 0."""
    print(header)
    for r in results:
        if r.status == "ok":
            arrow = f" -> {r.output}" if r.output and r.output != r.item else ""
            print(f"  ok      {r.item}{arrow} ({r.seconds:.1f} s)")
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        print(f"  FAILED  {r.item}: {r.error}")
    return 1 if failed else 0
