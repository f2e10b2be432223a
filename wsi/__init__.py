"""wsi: a whole-slide pathology pipeline.

The public API is imported lazily, so ``import wsi`` loads no OpenSlide, libvips,
Dask or torch until they are used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "open_slide",
    "tile_slide",
    "TilingConfig",
    "EmbedConfig",
    "embed_store",
    "features_of",
    "load_encoder",
    "WsiError",
    "report",
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
    "WsiError": "wsi.errors",
    "report": "wsi.reports",
}

if TYPE_CHECKING:
    from wsi.config import EmbedConfig, TilingConfig
    from wsi.embed import embed_store, features_of
    from wsi.encoders import load_encoder
    from wsi.errors import WsiError
    from wsi.reports import report
    from wsi.slide import open_slide
    from wsi.tiling import tile_slide


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wsi' has no attribute {name!r}")
