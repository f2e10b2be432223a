"""wsi: a whole-slide pathology pipeline.

The stages are functions and the results objects that show themselves in Jupyter:

    import wsi

    slide = wsi.open_slide("slides/s1.svs")          # a Slide: thumbnail and metadata
    store = wsi.tile_slide("slides/s1.svs", "stores")  # -> stores/s1.zarr
    wsi.embed_store(store, wsi.EmbedConfig(device="cpu"))
    folder = wsi.train_model("stores", "labels.csv", "models/abmil")
    model = wsi.load_model(folder)
    wsi.predict_store(store, model)
    wsi.evaluate_model(stores, "site_b.csv", model, "eval")  # an external cohort
    wsi.open_store(store)                              # thumbnail, stages, predictions
    wsi.Heatmap(store, model)                          # the overlay and top regions
    wsi.report([store], model, "reports")              # HTML and PDF reports

Coordinates are level-0 pixels, sizes ``(w, h)`` in pixels, resolution in micrometres
per pixel (mpp). See docs/api.md and docs/tutorial.py.

The public API is imported lazily, so ``import wsi`` loads no OpenSlide, libvips,
Dask, torch or numpy until they are used. (``wsi.heatmap`` is the package of heat grids;
the notebook's heatmap object is ``wsi.Heatmap``.)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from wsi._version import __version__

__all__ = [
    # slides and tiles
    "open_slide",
    "tile_slide",
    "TilingConfig",
    # features
    "load_encoder",
    "embed_store",
    "EmbedConfig",
    "features_of",
    # models
    "train_model",
    "TrainConfig",
    "load_model",
    "predict_store",
    "predict_patient",
    "evaluate_model",
    # what a person sees
    "open_store",
    "SlideStore",
    "Heatmap",
    "make_heatmap",
    "HeatmapOptions",
    "report",
    "report_slide",
    "ReportOptions",
    # data
    "make_cohort",
    "WsiError",
    "__version__",
]

_LAZY = {
    "open_slide": "wsi.slide",
    "tile_slide": "wsi.tiling",
    "TilingConfig": "wsi.config",
    "EmbedConfig": "wsi.config",
    "embed_store": "wsi.embed",
    "features_of": "wsi.embed",
    "load_encoder": "wsi.encoders",
    "train_model": "wsi.mil.train",
    "TrainConfig": "wsi.mil.train",
    "load_model": "wsi.mil.predict",
    "predict_store": "wsi.mil.predict",
    "predict_patient": "wsi.mil.predict",
    "evaluate_model": "wsi.mil.external",
    "open_store": "wsi.notebook",
    "SlideStore": "wsi.notebook",
    "Heatmap": "wsi.notebook",
    "make_heatmap": "wsi.heatmap",
    "HeatmapOptions": "wsi.heatmap",
    "report": "wsi.reports",
    "report_slide": "wsi.reports",
    "ReportOptions": "wsi.reports",
    "make_cohort": "wsi.synthetic",
    "WsiError": "wsi.errors",
}

if TYPE_CHECKING:
    from wsi.config import EmbedConfig, TilingConfig
    from wsi.embed import embed_store, features_of
    from wsi.encoders import load_encoder
    from wsi.errors import WsiError
    from wsi.heatmap import HeatmapOptions, make_heatmap
    from wsi.mil.external import evaluate_model
    from wsi.mil.predict import load_model, predict_store
    from wsi.mil.train import TrainConfig, train_model
    from wsi.notebook import Heatmap, SlideStore, open_store
    from wsi.reports import ReportOptions, report, report_slide
    from wsi.slide import open_slide
    from wsi.synthetic import make_cohort
    from wsi.tiling import tile_slide


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wsi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
