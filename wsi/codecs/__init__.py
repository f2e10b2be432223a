"""Tile codecs: the one registry of how ``tiles/pixels`` can be stored.

``CODECS`` maps a name (``TilingConfig.codec``, ``wsi tile --codec``) to a ``TileCodec``:
whether it is lossless, the range and default of its quality or level, and the zarr codecs
it writes with. Importing this module loads no zarr; the JPEG codec itself is in
``wsi.codecs.jpeg`` (measurements behind the choice: ``docs/codecs.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["TileCodec", "CODECS", "SUBSAMPLING", "register", "JpegTilesCodec", "CODEC_NAME"]

#: JPEG chroma subsampling: "444" (none; H&E stain lives in the chroma) or "420"
SUBSAMPLING = ("444", "420")


@dataclass(frozen=True)
class TileCodec:
    """How a stack of RGB tiles is stored in a zarr chunk."""

    name: str
    lossless: bool
    levels: tuple[int, int]  #: inclusive range of ``quality`` (JPEG) or level (zstd)
    default_level: int
    description: str

    def zarr_codecs(self, level: int, subsampling: str) -> tuple[Any, Any]:
        """(serializer, compressors) for ``zarr.create_array`` at ``level``."""
        if self.name == "jpeg":
            from wsi.codecs.jpeg import JpegTilesCodec

            return JpegTilesCodec(quality=level, subsampling=subsampling), None
        from zarr.codecs import ZstdCodec

        return "auto", ZstdCodec(level=level)


CODECS: Mapping[str, TileCodec] = MappingProxyType(
    {
        "jpeg": TileCodec("jpeg", False, (1, 100), 90, "per-tile JPEG (lossy; default q90 4:4:4)"),
        "zstd": TileCodec("zstd", True, (1, 22), 1, "zstd over raw pixels (lossless)"),
    }
)


def register() -> None:
    """Make the JPEG tile codec known to zarr in this process (the package's entry point
    does it when wsi is installed)."""
    from wsi.codecs.jpeg import register as _register

    _register()


def __getattr__(name: str) -> Any:
    if name in ("JpegTilesCodec", "CODEC_NAME"):
        from wsi.codecs import jpeg

        return getattr(jpeg, name)
    raise AttributeError(f"module 'wsi.codecs' has no attribute {name!r}")
