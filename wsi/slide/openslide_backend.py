"""Slide backend over OpenSlide (SVS incl. JPEG 2000, NDPI, MRXS, SCN, Philips, DICOM, TIFF)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsi.errors import BackendUnavailableError, MppError, SlideOpenError, SlideReadError
from wsi.slide.base import Slide, composite_on_white, read_error
from wsi.slide.dicom import read_series
from wsi.slide.mpp import Mpp, mpp_from_properties

__all__ = ["OpenSlideSlide", "import_openslide"]


def import_openslide() -> Any:
    try:
        import openslide
    except ImportError as err:  # the wheel or its native library is missing
        raise BackendUnavailableError(
            f"OpenSlide is not available ({err}). Try `pip install openslide-python openslide-bin`."
        ) from err
    return openslide


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _looks_like_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in _TIFF_MAGIC


#: Vendors whose levels OpenSlide paints from a grid of whole-pixel tiles, so a region read
#: at a whole-pixel offset copies decoded pixels: cut from a larger read, a tile is the read
#: of the tile alone (checked byte for byte in tests/test_tiling_regions.py). MRXS and
#: Ventana place tiles at fractional offsets; the other formats are not checked here.
_EXACT_REGION_VENDORS = frozenset({"aperio", "generic-tiff"})


class OpenSlideSlide(Slide):
    """A slide read through OpenSlide."""

    backend = "openslide"

    def __init__(self, path: Path, mpp_override: Mpp | None = None) -> None:
        openslide = import_openslide()
        target = path
        if path.is_dir():  # a DICOM slide: its folder is the slide, OpenSlide reads a file
            target = read_series(path).base
        try:
            self._osr = openslide.OpenSlide(str(target))
        except openslide.OpenSlideUnsupportedFormatError as err:
            if _looks_like_tiff(target):
                raise SlideOpenError(
                    f"{path}: a TIFF file that OpenSlide cannot read: it is probably truncated "
                    "or corrupt. Re-copy or re-export it from the scanner."
                ) from err
            raise SlideOpenError(
                f"{path}: not a slide format OpenSlide can read (SVS, NDPI, MRXS, SCN, "
                "Philips TIFF, DICOM, tiled TIFF). Check the file type and extension."
            ) from err
        except openslide.OpenSlideError as err:
            raise SlideOpenError(
                f"{path}: the slide file is corrupt or truncated ({err}). "
                "Re-copy or re-export it from the scanner."
            ) from err
        props = dict(self._osr.properties)
        self.properties = props
        self.vendor = props.get("openslide.vendor")
        self.level_dimensions = tuple(tuple(d) for d in self._osr.level_dimensions)  # type: ignore[misc]
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        power = props.get("openslide.objective-power")
        try:
            self.objective_power = float(power) if power else None
        except ValueError:
            self.objective_power = None
        self.associated_images = tuple(sorted(self._osr.associated_images.keys()))
        mpp: Mpp | None = mpp_override
        mpp_error: MppError | None = None
        if mpp is None:
            try:
                mpp = mpp_from_properties(props, self.vendor, path)
            except MppError as err:
                mpp_error = err
        super().__init__(path, mpp, mpp_error)
        if min(min(d) for d in self.level_dimensions) <= 0:
            raise SlideOpenError(f"{path}: the slide has an empty level {self.level_dimensions}.")

    def _read_level(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        openslide = import_openslide()
        try:
            image = self._osr.read_region(location, level, size)
        except openslide.OpenSlideError as err:
            ds = self.level_downsamples[level]
            region = (round(location[0] / ds), round(location[1] / ds), *size)
            raise read_error(self.path, location, level, region, err) from err
        if image.mode != "RGBA":
            raise SlideReadError(f"{self.path}: unexpected pixel mode {image.mode} from OpenSlide.")
        if image.getchannel("A").getextrema()[0] == 255:
            # opaque: Pillow drops alpha in C, 3-4x faster than numpy's strided RGB copy
            # (the same bytes as composite_on_white gives)
            return np.array(image.convert("RGB"))
        return composite_on_white(np.asarray(image))

    def exact_region_reads(self, level: int) -> bool:
        """True for the vendors of ``_EXACT_REGION_VENDORS`` at levels whose downsample is a
        whole number (elsewhere OpenSlide interpolates fractional offsets)."""
        ds = self.level_downsamples[level]
        return self.vendor in _EXACT_REGION_VENDORS and abs(ds - round(ds)) < 1e-9

    def close(self) -> None:
        self._osr.close()
