"""Open whole-slide images: one ``Slide`` interface over OpenSlide and libvips."""

from __future__ import annotations

import os
from pathlib import Path

from wsi.errors import ConfigError, SlideNotFoundError, SlideOpenError
from wsi.slide.base import LevelChoice, Slide, SlideInfo
from wsi.slide.mpp import Mpp, check_mpp

__all__ = ["open_slide", "tile_backend", "Slide", "SlideInfo", "LevelChoice", "Mpp", "BACKENDS"]

BACKENDS = ("openslide", "pyvips")


def open_slide(
    path: str | os.PathLike[str], mpp: float | None = None, *, backend: str = "openslide"
) -> Slide:
    """Open a whole-slide image.

    ``mpp`` overrides the level-0 resolution in micrometres per pixel (for slides whose
    metadata lacks it). ``backend`` is ``openslide`` (every format) or ``pyvips``
    (libvips decoding of TIFF-based slides; faster for many small reads).
    Raises SlideOpenError naming the file if it is missing, not a slide, or corrupt.
    """
    p = Path(path)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown slide backend {backend!r}; choose one of {BACKENDS}")
    if not p.exists():
        raise SlideNotFoundError(f"{p}: no such file. Check the path.")
    if p.is_dir():
        raise SlideOpenError(f"{p}: is a directory, not a slide file.")
    if p.stat().st_size == 0:
        raise SlideOpenError(f"{p}: the file is empty (0 bytes). Re-copy it from the scanner.")
    override = None if mpp is None else Mpp(check_mpp(mpp, p), check_mpp(mpp, p), "override")
    if backend == "pyvips":
        from wsi.slide.vips_backend import VipsSlide

        return VipsSlide(p, override)
    from wsi.slide.openslide_backend import OpenSlideSlide

    return OpenSlideSlide(p, override)


def tile_backend(slide: Slide, level: int = 0) -> str:
    """The fastest backend that reads ``level`` of ``slide`` as OpenSlide does.

    libvips decodes TIFF pages itself, about 4x faster per tile than OpenSlide here
    (docs/tiling.md), but only plain JPEG tiled TIFFs are safe for it: generic tiled
    TIFFs and Aperio SVS with JPEG tiles. libvips does not report corrupt JPEG data
    (it decodes garbage where OpenSlide raises), so this is an opt-in fast path.
    JPEG 2000 SVS (Aperio 33003/33005), NDPI, MRXS, SCN, Philips TIFF, DICOM and others
    go through OpenSlide. So do levels whose
    downsample is not a whole number: OpenSlide interpolates their fractional offsets,
    and only OpenSlide itself gives the same pixels there.
    """
    from wsi.slide.openslide_backend import OpenSlideSlide

    if not isinstance(slide, OpenSlideSlide):
        return "openslide"
    ds = slide.level_downsamples[level]
    if abs(ds - round(ds)) > 1e-9:
        return "openslide"
    if slide.vendor == "generic-tiff":
        return "pyvips"
    if slide.vendor == "aperio":
        description = slide.properties.get("tiff.ImageDescription", "")
        if "JPEG/RGB" in description and "J2K" not in description:
            return "pyvips"
    return "openslide"
