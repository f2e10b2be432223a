"""Slide backend over libvips (pyvips): its own TIFF/JPEG decoding, one page per level.

Used for formats libvips decodes itself (tiled TIFF pyramids, SVS with JPEG tiles);
metadata and level geometry still come from OpenSlide so both backends agree exactly.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from wsi.errors import BackendUnavailableError, SlideOpenError
from wsi.slide.base import read_error
from wsi.slide.mpp import Mpp
from wsi.slide.openslide_backend import OpenSlideSlide

__all__ = ["VipsSlide", "import_pyvips"]


def import_pyvips() -> Any:
    try:
        import pyvips
    except (ImportError, OSError) as err:
        raise BackendUnavailableError(
            f"libvips is not available ({err}). Try `pip install pyvips pyvips-binary`."
        ) from err
    return pyvips


class VipsSlide(OpenSlideSlide):
    """Reads pixels with libvips ``tiffload`` per level page; metadata from OpenSlide."""

    backend = "pyvips"

    def __init__(self, path: Path, mpp_override: Mpp | None = None) -> None:
        super().__init__(path, mpp_override)
        if self.vendor == "dicom":
            self.close()
            raise SlideOpenError(
                f"{path}: a DICOM slide; libvips does not decode DICOM. Use "
                "backend='openslide' (the default; `--backend openslide`)."
            )
        pyvips = import_pyvips()
        self._pages: list[Any] = []
        self._local = threading.local()  # a libvips Region must not be shared by threads
        try:
            n_pages = pyvips.Image.new_from_file(str(path), access="random").get_n_pages()
            by_size: dict[tuple[int, int], Any] = {}
            for page in range(n_pages):
                img = pyvips.Image.tiffload(str(path), page=page, access="random")
                by_size.setdefault((img.width, img.height), img)
            for dims in self.level_dimensions:
                img = by_size.get((dims[0], dims[1]))
                if img is None:
                    raise SlideOpenError(
                        f"{path}: no TIFF page of size {dims}; libvips cannot read this layout, "
                        "use backend='openslide'."
                    )
                if img.bands == 4:
                    img = img.flatten(background=[255, 255, 255])
                if img.bands != 3 or img.format != "uchar":
                    raise SlideOpenError(
                        f"{path}: level {dims} has {img.bands} bands of {img.format}; "
                        "use backend='openslide'."
                    )
                self._pages.append(img)
        except pyvips.Error as err:
            raise SlideOpenError(
                f"{path}: libvips cannot read this file ({str(err).strip()}); "
                "use backend='openslide'."
            ) from err

    def _read_level(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        ds = self.level_downsamples[level]
        lx, ly = round(location[0] / ds), round(location[1] / ds)
        w, h = size
        lw, lh = self.level_dimensions[level]
        # the region may extend past the level: read the inside part, pad with white
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if (x0, y0, x1, y1) == (lx, ly, lx + w, ly + h):  # wholly inside: no white padding
            buf = self._fetch(level, location, lx, ly, w, h)
            return np.frombuffer(buf, np.uint8).reshape(h, w, 3).copy()
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        if x1 <= x0 or y1 <= y0:
            return out
        buf = self._fetch(level, location, x0, y0, x1 - x0, y1 - y0)
        out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = np.frombuffer(buf, dtype=np.uint8).reshape(
            y1 - y0, x1 - x0, 3
        )
        return out

    def _fetch(self, level: int, location: tuple[int, int], x: int, y: int, w: int, h: int) -> Any:
        pyvips = import_pyvips()
        try:
            regions = getattr(self._local, "regions", None)
            if regions is None:
                regions = self._local.regions = [pyvips.Region.new(p) for p in self._pages]
            return regions[level].fetch(x, y, w, h)
        except pyvips.Error as err:
            raise read_error(self.path, location, level, (x, y, w, h), err) from err
