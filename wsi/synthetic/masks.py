"""Tissue masks of synthetic slides: seeded layouts on a coarse mask grid.

A mask is a uint8 array, 0 (background) or 255 (tissue or lesion), with one mask pixel
per ``ds`` x ``ds`` level-0 pixels: mask pixel ``(row i, column j)`` covers level-0
pixels ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)`` in (x, y).  Layouts are designed on a
grid whose longest side is at most ``LAYOUT_GRID`` and resized to the mask bilinearly
(:func:`threshold_field`); :func:`upscale_mask` spreads a mask lazily over level 0.

``numpy`` and ``pyvips`` are imported inside the functions, so importing this module
is cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsi.synthetic.textures import smooth_noise

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pyvips

__all__ = [
    "COHORT_LAYOUT",
    "LAYOUT_GRID",
    "SLIDE_LAYOUT",
    "TissueLayout",
    "threshold_field",
    "tissue_fraction",
    "tissue_mask",
    "upscale_mask",
]

#: Longest side of the coarse grid on which a tissue layout is designed.
LAYOUT_GRID = 512


@dataclass(frozen=True)
class TissueLayout:
    """How a random tissue section is drawn (see :func:`tissue_mask`).

    Lengths are fractions of the slide's longest side; positions fractions of the
    slide's height (y) and width (x); ``(low, high)`` pairs are uniform ranges, and
    integer pairs ``(low, high)`` draw from ``low .. high - 1``.

    Attributes:
        blobs: Number of elliptical blobs.
        blob_centre: Range of each blob centre along each axis.
        blob_axis: Range of a blob's long semi-axis, times ``blob_axis_scale``.
        blob_axis_scale: Factor on the drawn long semi-axis.
        blob_aspect: Range of short over long semi-axis.
        holes: Number of small holes.
        hole_centre: Range of each hole centre along each axis.
        hole_radius: Range of a hole's radius.
        noise: Amplitudes of the medium- and fine-scale noise that rag the outlines.
        margin: Width of the tissue-free border, fraction of each side.
        outside: How far below the blobs the border is pushed.
        tissue_fraction: Range of the fraction of the slide that is tissue.
    """

    blobs: tuple[int, int]
    blob_centre: tuple[float, float]
    blob_axis: tuple[float, float]
    blob_axis_scale: float
    blob_aspect: tuple[float, float]
    holes: tuple[int, int]
    hole_centre: tuple[float, float]
    hole_radius: tuple[float, float]
    noise: tuple[float, float]
    margin: float
    outside: float
    tissue_fraction: tuple[float, float]


#: Synthetic slides: a few scattered blobs, about 35-55 % tissue.
SLIDE_LAYOUT = TissueLayout(
    blobs=(2, 6),
    blob_centre=(0.2, 0.8),
    blob_axis=(0.10, 0.30),
    blob_axis_scale=0.8,
    blob_aspect=(0.4, 1.0),
    holes=(1, 5),
    hole_centre=(0.15, 0.85),
    hole_radius=(0.02, 0.05),
    noise=(0.20, 0.08),
    margin=0.05,
    outside=1.0,
    tissue_fraction=(0.35, 0.55),
)
#: Cohort slides: one large ragged section, 65-80 % tissue, so small slides hold a lesion.
COHORT_LAYOUT = TissueLayout(
    blobs=(1, 3),
    blob_centre=(0.4, 0.6),
    blob_axis=(0.45, 0.6),
    blob_axis_scale=1.0,
    blob_aspect=(0.7, 1.0),
    holes=(0, 3),
    hole_centre=(0.2, 0.8),
    hole_radius=(0.015, 0.035),
    noise=(0.15, 0.06),
    margin=0.03,
    outside=2.0,
    tissue_fraction=(0.65, 0.80),
)


def _resize_bilinear_rows(
    src: np.ndarray, out_h: int, out_w: int, row0: int, row1: int
) -> np.ndarray:
    """Rows ``row0:row1`` of ``src`` (2-D float) resized bilinearly to ``out_h`` x ``out_w``.

    Uses pixel-centre alignment, edges clamped.
    """
    import numpy as np

    gh, gw = src.shape
    ys = np.clip((np.arange(row0, row1) + 0.5) * gh / out_h - 0.5, 0, gh - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * gw / out_w - 0.5, 0, gw - 1)
    y0 = np.floor(ys).astype(np.intp)
    x0 = np.floor(xs).astype(np.intp)
    y1 = np.minimum(y0 + 1, gh - 1)
    x1 = np.minimum(x0 + 1, gw - 1)
    wy = (ys - y0).astype(np.float32)[:, None]
    wx = (xs - x0).astype(np.float32)[None, :]
    top = src[y0][:, x0] * (1 - wx) + src[y0][:, x1] * wx
    bot = src[y1][:, x0] * (1 - wx) + src[y1][:, x1] * wx
    out: np.ndarray = top * (1 - wy) + bot * wy
    return out


def threshold_field(field: np.ndarray, threshold: float, mask_h: int, mask_w: int) -> np.ndarray:
    """uint8 mask (mask_h, mask_w), 255 where ``field`` (resized bilinearly when its shape
    differs) exceeds ``threshold``; built in row blocks of about 4 Mpx."""
    import numpy as np

    gh, gw = field.shape
    mask = np.empty((mask_h, mask_w), dtype=np.uint8)
    chunk = max(1, 4_000_000 // max(mask_w, 1))
    for r0 in range(0, mask_h, chunk):
        r1 = min(mask_h, r0 + chunk)
        if (gh, gw) == (mask_h, mask_w):
            rows = field[r0:r1]
        else:
            rows = _resize_bilinear_rows(field, mask_h, mask_w, r0, r1)
        mask[r0:r1] = np.where(rows > threshold, 255, 0).astype(np.uint8)
    return mask


def tissue_mask(
    rng: np.random.Generator, mask_h: int, mask_w: int, layout: TissueLayout
) -> np.ndarray:
    """Seeded random tissue layout as a ``mask_h`` x ``mask_w`` uint8 array (0 / 255).

    Elliptical blobs with ragged, noisy outlines and a few holes, kept away from the
    slide border, thresholded at the quantile that gives a tissue fraction drawn in
    ``layout.tissue_fraction``.
    """
    import numpy as np

    scale = min(1.0, LAYOUT_GRID / max(mask_h, mask_w))
    gh = max(1, round(mask_h * scale))
    gw = max(1, round(mask_w * scale))
    side = float(max(gh, gw))
    # Coordinates in units of the longest side, so blobs are round on the slide.
    yy = ((np.arange(gh, dtype=np.float32) + 0.5) / side)[:, None]
    xx = ((np.arange(gw, dtype=np.float32) + 0.5) / side)[None, :]
    hy, wx = gh / side, gw / side

    field = np.zeros((gh, gw), dtype=np.float32)
    for _ in range(int(rng.integers(*layout.blobs))):
        cy = rng.uniform(*layout.blob_centre) * hy
        cx = rng.uniform(*layout.blob_centre) * wx
        a = rng.uniform(*layout.blob_axis) * max(hy, wx) * layout.blob_axis_scale
        b = a * rng.uniform(*layout.blob_aspect)
        theta = rng.uniform(0, math.pi)
        c, s = math.cos(theta), math.sin(theta)
        dy, dx = yy - cy, xx - cx
        u = (dx * c + dy * s) / a
        v = (-dx * s + dy * c) / b
        field = np.maximum(field, np.exp(-0.5 * (u * u + v * v) ** 1.5))
    for _ in range(int(rng.integers(*layout.holes))):  # small negative bumps
        cy = rng.uniform(*layout.hole_centre) * hy
        cx = rng.uniform(*layout.hole_centre) * wx
        r = rng.uniform(*layout.hole_radius) * max(hy, wx)
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (r * r)
        field -= 0.8 * np.exp(-0.5 * d2)
    medium, fine = layout.noise
    field += medium * smooth_noise(rng, (gh, gw), sigma=max(0.6, 0.04 * side))
    field += fine * smooth_noise(rng, (gh, gw), sigma=max(0.5, 0.012 * side))
    # Keep tissue away from the slide border.
    ey = np.clip(np.minimum(yy, hy - yy) / (layout.margin * hy + 1e-6), 0, 1)
    ex = np.clip(np.minimum(xx, wx - xx) / (layout.margin * wx + 1e-6), 0, 1)
    field = field * (ey * ex) - layout.outside * (1.0 - ey * ex)
    target = float(rng.uniform(*layout.tissue_fraction))
    threshold = float(np.quantile(field, 1.0 - target))
    return threshold_field(field, threshold, mask_h, mask_w)


def tissue_fraction(mask: np.ndarray, width: int, height: int, ds: int) -> float:
    """Tissue fraction of a ``width`` x ``height`` level-0 area, in [0, 1], from its mask
    (``ds`` level-0 pixels per mask pixel), weighting partial edge mask pixels by coverage."""
    import numpy as np

    tissue = mask > 0
    mh, mw = tissue.shape
    wx_last = (width - (mw - 1) * ds) / ds
    wy_last = (height - (mh - 1) * ds) / ds
    rows = tissue.sum(axis=1, dtype=np.float64) - tissue[:, -1] * (1.0 - wx_last)
    rows[-1] *= wy_last
    return float(rows.sum() * ds * ds / (width * height))


def upscale_mask(mask_img: pyvips.Image, ds: int, width: int, height: int) -> pyvips.Image:
    """Lazily upscale the 0/255 mask to ``width`` x ``height`` level-0 pixels (uchar 0/255).

    The mask is upscaled bilinearly by a small factor ``k`` (the largest divisor
    of ``ds`` up to 8) and thresholded, which rounds the outlines, then enlarged
    by ``ds / k`` with nearest-neighbour ``zoom`` (cheap).  Outlines thus have
    ``ds / k``-pixel steps rather than ``ds``-pixel ones, for a fraction of the
    cost of a full bilinear upscale.
    """
    k = max(d for d in range(1, min(ds, 8) + 1) if ds % d == 0)
    if k == 1 and ds > 1:
        k = ds  # prime-ish downsample: one full bilinear upscale (slower, still lazy)
    cond = mask_img.resize(k, kernel="linear") > 127 if k > 1 else mask_img > 127
    if ds // k > 1:
        cond = cond.zoom(ds // k, ds // k)
    if cond.width < width or cond.height < height:
        cond = cond.embed(0, 0, max(width, cond.width), max(height, cond.height), extend="copy")
    return cond.crop(0, 0, width, height)
