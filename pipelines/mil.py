"""Predict many stores with one trained model: a bad store is reported and skipped."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.tiling import SlideResult
from wsi.errors import WsiError

__all__ = ["predict_stores"]

log = logging.getLogger(__name__)


def predict_stores(
    stores: Sequence[str | Path], model_dir: str | Path, *, overwrite: bool = False
) -> list[tuple[SlideResult, dict[str, Any] | None]]:
    """Each store's prediction (or its error); the model is loaded once."""
    from wsi.mil.predict import load_model, predict_store

    model = load_model(model_dir)
    out: list[tuple[SlideResult, dict[str, Any] | None]] = []
    for store in stores:
        t0 = time.perf_counter()
        try:
            result = predict_store(store, model, overwrite=overwrite)
        except (WsiError, OSError) as err:
            msg = str(err) if isinstance(err, WsiError) else f"{store}: {err}"
            log.error("%s", msg)
            out.append(
                (
                    SlideResult(str(store), "failed", error=msg, seconds=time.perf_counter() - t0),
                    None,
                )
            )
            continue
        out.append(
            (
                SlideResult(str(store), "ok", store=str(store), seconds=time.perf_counter() - t0),
                result,
            )
        )
    return out
