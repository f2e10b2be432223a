"""Open whole-slide images: one ``Slide`` interface over OpenSlide and libvips."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import MappingProxyType
from typing import cast

from wsi.errors import ConfigError, SlideNotFoundError, SlideOpenError
from wsi.slide.base import LevelChoice, Slide, SlideInfo
from wsi.slide.dicom import dicom_folder
from wsi.slide.mpp import Mpp, check_mpp

__all__ = [
    "open_slide",
    "tile_backend",
    "Slide",
    "SlideInfo",
    "LevelChoice",
    "Mpp",
    "Backend",
    "BACKENDS",
]


@dataclass(frozen=True)
class Backend:
    """A slide reader: its ``Slide`` class (``"module:Class"``, imported when first used)."""

    name: str
    impl: str
    description: str

    def opener(self) -> Callable[[Path, Mpp | None], Slide]:
        """The ``Slide`` class: called with (path, mpp override or None)."""
        module, cls = self.impl.split(":")
        return cast(Callable[[Path, Mpp | None], Slide], getattr(import_module(module), cls))


#: The one registry of slide readers (``open_slide(backend=)``, ``TilingConfig.backend``,
#: ``wsi tile --backend``); the first is the default.
BACKENDS: Mapping[str, Backend] = MappingProxyType(
    {
        "openslide": Backend(
            "openslide",
            "wsi.slide.openslide_backend:OpenSlideSlide",
            "OpenSlide: every format, detects corrupt tile data (default)",
        ),
        "pyvips": Backend(
            "pyvips",
            "wsi.slide.vips_backend:VipsSlide",
            "libvips decodes TIFF-based slides, about 4x faster reads, no corrupt-data check",
        ),
    }
)


def open_slide(
    path: str | os.PathLike[str], mpp: float | None = None, *, backend: str = "openslide"
) -> Slide:
    """Open a whole-slide image for reading: a ``Slide`` with its metadata and pixels.

    Coordinates on the returned slide are level-0 pixels, ``(x, y)`` of the top-left
    corner; sizes are ``(w, h)`` in pixels; resolution is in micrometres per pixel (mpp).
    Pixels come back as RGB ``uint8`` arrays of shape ``(h, w, 3)``, transparent areas on
    white. The slide holds a file handle: close it, or use it as a context manager.

    Args:
        path: the slide file (SVS, NDPI, MRXS, SCN, Philips TIFF, tiled TIFF ...), or a
            DICOM slide: the folder of its ``.dcm`` files, or any one of them (the slide's
            ``path`` is then the folder; ``wsi.slide.dicom``).
        mpp: level-0 resolution in micrometres per pixel, the same for x and y; it
            overrides what the file states (for slides whose metadata lacks it, or states
            it wrongly) and is recorded with source ``"override"``. None: read it from the
            file's metadata or TIFF resolution tags.
        backend: ``"openslide"`` (default; every format) or ``"pyvips"`` (libvips decodes
            the pixels of TIFF-based slides, faster for many small reads, but without
            OpenSlide's detection of corrupt tile data). Both read the metadata and level
            geometry through OpenSlide.

    Returns:
        The opened ``Slide``: ``dimensions`` (level-0 ``(w, h)`` px), ``level_dimensions``,
        ``level_downsamples``, ``mpp`` (an ``Mpp`` with ``x``, ``y`` in µm/px and its
        ``source``), ``read_region``, ``thumbnail``, ``info()``.

    Raises:
        SlideNotFoundError: ``path`` does not exist.
        SlideOpenError: ``path`` is a folder without ``.dcm`` files, an empty file, not a
            slide format the backend can read, or corrupt or truncated; a DICOM folder
            holds two slides' files or lacks the full-resolution level; ``"pyvips"`` is
            asked to read DICOM.
        MppError: ``mpp`` is given but not a number between 0.05 and 20 µm/px. A slide
            without a (plausible) stated resolution still opens: ``slide.mpp`` raises
            ``MppError`` when it is first asked for (``slide.has_mpp`` tells beforehand).
        ConfigError: ``backend`` is neither ``"openslide"`` nor ``"pyvips"``.
        BackendUnavailableError: OpenSlide (or, for ``"pyvips"``, libvips) is not
            installed.

    Example::

        with wsi.open_slide("slides/s1.svs") as slide:
            slide.dimensions                # level-0 (w, h) in pixels, e.g. (98304, 71680)
            slide.mpp.x                     # level-0 µm per pixel, e.g. 0.2526
            tile = slide.read_region((12_000, 8_000), (256, 256), mpp=0.5)  # (256, 256, 3)

        slide = wsi.open_slide("slides/scan_without_mpp.tiff", mpp=0.25)
    """
    p = Path(path)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown slide backend {backend!r}; choose one of {tuple(BACKENDS)}")
    if not p.exists():
        raise SlideNotFoundError(f"{p}: no such file. Check the path.")
    folder = dicom_folder(p)
    if folder is not None:  # a DICOM slide: the folder of its .dcm files is the slide
        p = folder
    elif p.is_dir():
        raise SlideOpenError(
            f"{p}: is a folder with no DICOM (.dcm) files, not a slide. Give a slide file, "
            "or a folder that holds the .dcm files of one DICOM slide."
        )
    elif p.stat().st_size == 0:
        raise SlideOpenError(f"{p}: the file is empty (0 bytes). Re-copy it from the scanner.")
    override = None if mpp is None else Mpp(check_mpp(mpp, p), check_mpp(mpp, p), "override")
    return BACKENDS[backend].opener()(p, override)


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
