"""Progress of a long stage or job: a tqdm bar on a terminal, log lines every 10% otherwise."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "progress_reporter"]

log = logging.getLogger(__name__)


class Progress:
    """``total`` items of ``name``: ``update(n)`` as they finish, ``stage(text)`` for what
    is going on now, ``close()`` at the end.

    ``progress`` True forces a bar, False forces log lines (INFO, every 10%; the stage
    text at DEBUG), None picks a bar when stderr is a terminal. ``leave`` keeps the
    finished bar on the screen.
    """

    def __init__(
        self, total: int, name: str, progress: bool | None, unit: str = "tile", leave: bool = False
    ) -> None:
        self.total, self.name, self.unit = total, name, unit
        self.done = 0
        self._next = 0.1
        self._bar: Any = None
        if sys.stderr.isatty() if progress is None else progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=name, unit=unit, leave=leave)

    def update(self, n: int = 1) -> None:
        """``n`` more items finished."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        frac = self.done / max(self.total, 1)
        if frac >= self._next or self.done == self.total:
            log.info("%s: %d/%d %ss (%.0f%%)", self.name, self.done, self.total, self.unit,
                     100 * frac)  # fmt: skip
            self._next = math.floor(frac * 10 + 1) / 10

    def stage(self, text: str) -> None:
        """What is happening now (shown beside the bar, at most 60 characters)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text[:60], refresh=True)
        else:
            log.debug("%s: %s", self.name, text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def progress_reporter(
    total: int, name: str, progress: bool | None, unit: str = "tile"
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(update(n), close()) of a ``Progress`` of ``total`` items of ``name``.

    ``progress`` True forces a bar, False forces log lines, None picks a bar when
    stderr is a terminal.
    """
    p = Progress(total, name, progress, unit)
    return p.update, p.close
