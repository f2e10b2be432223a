"""Embed many stores with one loaded encoder: a bad store is reported and skipped."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pipelines.batch import ItemResult, run_item
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
) -> list[ItemResult]:
    """Embed each store's tiles; the encoder is loaded once, for the first store needing it.

    Stores already embedded with this encoder and weights are skipped without loading
    it. A missing weight file or an unknown encoder stops the batch at once (it would
    fail for every store); an error of one store is logged and the others go on.
    """
    from wsi.encoders import load_encoder

    encoder: Any = None
    results = []
    for store in stores:
        if encoder is None and not _done(store, config):
            encoder = load_encoder(
                config.encoder,
                weights=config.weights,
                device=config.device,
                precision=config.precision,
            )
        results.append(
            run_item(
                store,
                partial(
                    embed_store,
                    config=config,
                    encoder=encoder,
                    overwrite=overwrite,
                    progress=progress,
                ),
            )
        )
    return results
