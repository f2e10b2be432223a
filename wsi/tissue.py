"""Tissue mask on a low-resolution image of the slide.

Otsu threshold on HSV saturation after a median blur (clamped to a sensible range),
pen ink removed, morphological closing, small holes filled, small objects removed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from wsi.config import TissueConfig
from wsi.qc import hsv, pen_mask
from wsi.slide.base import Slide

__all__ = ["TissueMask", "detect_tissue", "tissue_mask_from_rgb"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask; one mask pixel covers ``downsample`` level-0 pixels."""

    mask: np.ndarray
    downsample: float
    threshold: float
    mpp: float  #: resolution of the mask, micrometres per pixel

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def _median(values: np.ndarray, size: int) -> np.ndarray:
    """Median blur of a [0, 1] float image over a ``size`` square, borders mirrored.

    Done by libvips on 8-bit values: ten times faster than scipy's median_filter here, and
    the same result as ``ndimage.median_filter(..., mode="reflect")`` on those values.
    """
    import pyvips

    if size <= 1:
        return values
    u8 = np.ascontiguousarray(np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8))
    h, w = u8.shape
    r = size // 2
    img = pyvips.Image.new_from_array(u8)
    out = img.embed(r, r, w + 2 * r, h + 2 * r, extend="mirror").median(size).crop(r, r, w, h)
    return np.ndarray(buffer=out.write_to_memory(), dtype=np.uint8, shape=(h, w)) / np.float32(255)


def tissue_mask_from_rgb(
    rgb: np.ndarray, mpp: float, config: TissueConfig | None = None
) -> tuple[np.ndarray, float]:
    """Tissue mask of an RGB uint8 image at ``mpp`` micrometres per pixel.

    Returns (boolean mask, saturation threshold used).
    """
    from scipy import ndimage
    from skimage import filters, morphology

    config = config or TissueConfig()
    h, s, v = hsv(rgb)
    s = _median(s, config.median_size)
    px_area = mpp * mpp
    pen = np.zeros(s.shape, bool)
    if config.exclude_pen:
        # ink comes in strokes: scattered dark or bluish pixels inside tissue are not pen
        pen = ndimage.binary_opening(pen_mask(h, s, v), structure=morphology.disk(1))
        pen = morphology.remove_small_objects(pen, max_size=math.ceil(config.min_pen_um2 / px_area))
        if pen.any() and config.pen_margin_um > 0:
            r = max(1, round(config.pen_margin_um / mpp))
            pen = ndimage.binary_dilation(pen, structure=morphology.disk(r))
    candidates = s[~pen]
    if candidates.size and float(candidates.max() - candidates.min()) > 1e-3:
        otsu = float(filters.threshold_otsu(candidates))
    else:
        otsu = config.max_saturation
    threshold = float(np.clip(otsu, config.min_saturation, config.max_saturation))
    mask = (s > threshold) & ~pen
    radius = max(1, round(config.closing_um / mpp))
    mask = ndimage.binary_closing(mask, structure=morphology.disk(radius), border_value=0)
    max_hole = math.ceil(config.max_hole_um2 / px_area)
    min_obj = math.ceil(config.min_object_um2 / px_area)
    mask = morphology.remove_small_holes(mask, max_size=max_hole)
    mask = morphology.remove_small_objects(mask, max_size=min_obj)
    mask &= ~pen  # holes filled around ink must not bring it back
    return mask, threshold


def detect_tissue(slide: Slide, config: TissueConfig | None = None) -> TissueMask:
    """Tissue mask of ``slide`` (a ``wsi.slide.Slide``) at ``config.mask_mpp``.

    The low-resolution image is read block by block from the best pyramid level, so no
    full-resolution array is ever built.
    """
    config = config or TissueConfig()
    slide_mpp = slide.mpp.mean
    downsample = max(1.0, config.mask_mpp / slide_mpp)
    rgb = slide.read_downsampled(downsample)
    mask, threshold = tissue_mask_from_rgb(rgb, downsample * slide_mpp, config)
    log.debug("%s: tissue %.1f%% at threshold %.3f", slide.path, 100 * mask.mean(), threshold)
    return TissueMask(mask, downsample, threshold, downsample * slide_mpp)
