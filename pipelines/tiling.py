"""Tile many slides on one Dask client: a bad slide is reported and skipped."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.batch import ItemResult, run_item
from wsi.config import TilingConfig
from wsi.store import slide_id_for
from wsi.tiling import tile_slide

__all__ = ["tile_slides"]

log = logging.getLogger(__name__)


def tile_slides(
    slides: Sequence[str | Path],
    out_dir: str | Path,
    config: TilingConfig,
    *,
    client: Any,
    mpp: float | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> list[ItemResult]:
    """Tile each slide into ``out_dir``; errors of one slide never stop the others.

    Slides whose ids (file names without extension) collide would share one store: the
    first is tiled, the others fail with a message saying so.
    """
    results = []
    first_of: dict[str, str] = {}
    for path in slides:
        sid = slide_id_for(path)
        if first_of.setdefault(sid, str(path)) != str(path):
            msg = (
                f"{path}: slide id {sid!r} is also that of {first_of[sid]} in this batch, and "
                "both would write the same store. Rename one, or tile them into separate --out "
                "folders."
            )
            log.error("%s", msg)
            results.append(ItemResult(str(path), "failed", error=msg))
            continue
        results.append(
            run_item(
                path,
                lambda p: tile_slide(
                    p,
                    out_dir,
                    config,
                    mpp=mpp,
                    client=client,
                    overwrite=overwrite,
                    progress=progress,
                ),
            )
        )
    return results
