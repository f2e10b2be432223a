"""Embed many stores with one loaded encoder: a bad store is reported and skipped."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.tiling import SlideResult
from wsi.config import EmbedConfig
from wsi.embed import embed_store, is_embedded
from wsi.errors import WsiError

__all__ = ["embed_stores"]

log = logging.getLogger(__name__)


def _done(store: str | Path, config: EmbedConfig) -> bool:
    try:
        return is_embedded(store, config)
    except WsiError:  # not a store, or unreadable: embed_store reports it below
        return False


def embed_stores(
    stores: Sequence[str | Path],
    config: EmbedConfig,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
) -> list[SlideResult]:
    """Embed each store's tiles; the encoder is loaded once, for the first store needing it.

    Stores already embedded with this encoder and weights are skipped without loading
    it. A missing weight file or an unknown encoder stops the batch at once (it would
    fail for every store); an error of one store is logged and the others go on.
    """
    from wsi.encoders import load_encoder

    encoder: Any = None
    results = []
    for store in stores:
        t0 = time.perf_counter()
        if encoder is None and not _done(store, config):
            encoder = load_encoder(
                config.encoder,
                weights=config.weights,
                device=config.device,
                precision=config.precision,
            )
        try:
            out = embed_store(
                store, config, encoder=encoder, overwrite=overwrite, progress=progress
            )
        except (WsiError, OSError) as err:
            msg = str(err) if isinstance(err, WsiError) else f"{store}: {err}"
            log.error("%s", msg)
            results.append(
                SlideResult(str(store), "failed", error=msg, seconds=time.perf_counter() - t0)
            )
            continue
        results.append(
            SlideResult(str(store), "ok", store=str(out), seconds=time.perf_counter() - t0)
        )
    return results
