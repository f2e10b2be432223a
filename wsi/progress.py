"""Progress of a long stage: a tqdm bar on a terminal, log lines every 10% otherwise."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable

__all__ = ["progress_reporter"]

log = logging.getLogger(__name__)


def progress_reporter(
    total: int, name: str, progress: bool | None, unit: str = "tile"
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(update(n), close()) for ``total`` items of ``name``.

    ``progress`` True forces a bar, False forces log lines, None picks a bar when
    stderr is a terminal.
    """
    use_bar = sys.stderr.isatty() if progress is None else progress
    if use_bar:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=name, unit=unit, leave=False)
        return bar.update, bar.close
    state = {"done": 0, "next": 0.1}

    def update(n: int) -> None:
        state["done"] += n
        frac = state["done"] / max(total, 1)
        if frac >= state["next"] or state["done"] == total:
            log.info("%s: %d/%d %ss (%.0f%%)", name, state["done"], total, unit, 100 * frac)
            state["next"] = math.floor(frac * 10 + 1) / 10

    return update, lambda: None
