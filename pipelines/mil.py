"""Predict many stores with one trained model: a bad store is reported and skipped."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipelines.batch import ItemResult, run_items

__all__ = ["predict_stores"]


def predict_stores(
    stores: Sequence[str | Path], model_dir: str | Path, *, overwrite: bool = False
) -> list[ItemResult]:
    """Each store's prediction (``value``, a dict) or its error; the model is loaded once."""
    from wsi.mil.predict import load_model, predict_store

    model = load_model(model_dir)
    return run_items(stores, lambda s: predict_store(s, model, overwrite=overwrite))
