"""Where a slide's resolution (micrometres per pixel at level 0) comes from.

All scale arithmetic starts here: a resolution is a value with its unit and its
source, never a silent default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from wsi.errors import MppError

__all__ = ["Mpp", "MPP_RANGE", "check_mpp", "mpp_from_properties", "MPP_FIX_HINT"]

#: Plausible level-0 resolutions in micrometres per pixel. Scanners work between
#: about 0.1 (100x) and 10 (1x); anything outside this range is a metadata error.
MPP_RANGE = (0.05, 20.0)

MPP_FIX_HINT = (
    "Give the level-0 resolution in micrometres per pixel: open_slide(path, mpp=0.25), "
    "`wsi tile SLIDE --mpp 0.25`, or an `mpp` column in the manifest."
)

_SOURCES = ("metadata", "tiff-resolution", "override")


@dataclass(frozen=True)
class Mpp:
    """Level-0 resolution in micrometres per pixel, with where it came from.

    ``source`` is one of ``metadata`` (the vendor's own field), ``tiff-resolution``
    (TIFF XResolution/YResolution tags) or ``override`` (given by the user).
    """

    x: float
    y: float
    source: str

    def __post_init__(self) -> None:
        if self.source not in _SOURCES:
            raise ValueError(f"unknown mpp source {self.source!r}; expected one of {_SOURCES}")

    @property
    def mean(self) -> float:
        """The mean of x and y resolution, in micrometres per pixel."""
        return (self.x + self.y) / 2.0


def check_mpp(value: float | str, path: Path | str, what: str = "mpp") -> float:
    """Return ``value`` as a float if it is a plausible resolution, else raise MppError."""
    try:
        mpp = float(value)
    except (TypeError, ValueError) as err:
        raise MppError(f"{path}: {what} {value!r} is not a number. {MPP_FIX_HINT}") from err
    lo, hi = MPP_RANGE
    if not math.isfinite(mpp) or not lo <= mpp <= hi:
        raise MppError(
            f"{path}: {what} {value!r} micrometres per pixel is implausible "
            f"(expected {lo} to {hi}). {MPP_FIX_HINT}"
        )
    return mpp


_UNIT_UM = {"centimeter": 10_000.0, "inch": 25_400.0}


def mpp_from_properties(
    props: Mapping[str, str], vendor: str | None, path: Path | str
) -> Mpp | None:
    """Read the level-0 mpp from OpenSlide-style properties, or None if absent.

    Raises MppError when a value is present but implausible.
    """
    if "openslide.mpp-x" in props and "openslide.mpp-y" in props:
        # OpenSlide fills these from TIFF resolution tags for generic TIFFs only.
        source = "tiff-resolution" if vendor == "generic-tiff" else "metadata"
        return Mpp(
            check_mpp(props["openslide.mpp-x"], path, "openslide.mpp-x"),
            check_mpp(props["openslide.mpp-y"], path, "openslide.mpp-y"),
            source,
        )
    unit = props.get("tiff.ResolutionUnit")
    xres, yres = props.get("tiff.XResolution"), props.get("tiff.YResolution")
    if unit in _UNIT_UM and xres and yres:
        try:
            mx, my = _UNIT_UM[unit] / float(xres), _UNIT_UM[unit] / float(yres)
        except (ValueError, ZeroDivisionError) as err:
            raise MppError(
                f"{path}: TIFF resolution tags {xres!r}/{yres!r} are unreadable. {MPP_FIX_HINT}"
            ) from err
        return Mpp(
            check_mpp(mx, path, "TIFF XResolution"),
            check_mpp(my, path, "TIFF YResolution"),
            "tiff-resolution",
        )
    return None
