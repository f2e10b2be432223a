"""Tile many slides on one Dask client: a bad slide is reported and skipped."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi.config import TilingConfig
from wsi.errors import WsiError
from wsi.store import slide_id_for
from wsi.tiling import tile_slide

__all__ = ["SlideResult", "tile_slides"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideResult:
    """Outcome of one slide: ``ok`` with its store, or ``failed`` with the reason."""

    slide: str
    status: str
    store: str | None = None
    error: str | None = None
    seconds: float = 0.0


def tile_slides(
    slides: Sequence[str | Path],
    out_dir: str | Path,
    config: TilingConfig,
    *,
    client: Any,
    mpp: float | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> list[SlideResult]:
    """Tile each slide into ``out_dir``; errors of one slide never stop the others.

    Slides whose ids (file names without extension) collide would share one store: the
    first is tiled, the others fail with a message saying so.
    """
    results = []
    first_of: dict[str, str] = {}
    for path in slides:
        t0 = time.perf_counter()
        sid = slide_id_for(path)
        if first_of.setdefault(sid, str(path)) != str(path):
            msg = (
                f"{path}: slide id {sid!r} is also that of {first_of[sid]} in this batch, and "
                "both would write the same store. Rename one, or tile them into separate --out "
                "folders."
            )
            log.error("%s", msg)
            results.append(SlideResult(str(path), "failed", error=msg))
            continue
        try:
            store = tile_slide(
                path,
                out_dir,
                config,
                mpp=mpp,
                client=client,
                overwrite=overwrite,
                progress=progress,
            )
        except WsiError as err:
            log.error("%s", err)
            results.append(
                SlideResult(str(path), "failed", error=str(err), seconds=time.perf_counter() - t0)
            )
            continue
        except OSError as err:  # a full disk or a vanished file: name the slide, go on
            msg = f"{path}: {err.strerror or err} ({type(err).__name__}); nothing was marked done"
            log.error("%s", msg)
            results.append(
                SlideResult(str(path), "failed", error=msg, seconds=time.perf_counter() - t0)
            )
            continue
        results.append(
            SlideResult(str(path), "ok", store=str(store), seconds=time.perf_counter() - t0)
        )
    return results
