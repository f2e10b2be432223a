"""Lesions of synthetic slides: where they lie, how they look, how much of a tile they cover.

Lesion masks share the grid of the tissue mask (:mod:`wsi.synthetic.masks`): uint8
0/255, one mask pixel per ``ds`` x ``ds`` level-0 pixels, mask pixel ``(row i,
column j)`` covering level-0 ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)`` in (x, y).
:func:`lesion_mask` places non-overlapping lesions of known area inside the tissue;
:func:`blend_lesion` paints a lesion texture into a slide image along that mask;
:func:`lesion_fraction_of_tiles` measures the ground truth a tile holds.

``numpy`` and ``pyvips`` are imported inside the functions, so importing this module
is cheap.
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any

from wsi.errors import ConfigError
from wsi.synthetic.masks import upscale_mask
from wsi.synthetic.textures import repeat_to, smooth_noise, vips_from_numpy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pyvips

__all__ = ["blend_lesion", "lesion_fraction_of_tiles", "lesion_mask"]

logger = logging.getLogger(__name__)

#: Ragged lesion border: amplitude (8-bit alpha levels) and scale (level-0 px) of noise.
_BORDER_NOISE = 60.0
_BORDER_NOISE_SIGMA = 3.0
_BORDER_NOISE_TILE = 512


def _box_sums(a: np.ndarray, half: int) -> np.ndarray:
    """Sum of ``a`` over the ``(2*half+1)``-square box centred on each pixel (zero-padded)."""
    import numpy as np

    h, w = a.shape
    s = np.zeros((h + 1, w + 1), dtype=np.float64)
    s[1:, 1:] = a.astype(np.float64).cumsum(0).cumsum(1)
    y0 = np.clip(np.arange(h) - half, 0, h)
    y1 = np.clip(np.arange(h) + half + 1, 0, h)
    x0 = np.clip(np.arange(w) - half, 0, w)
    x1 = np.clip(np.arange(w) + half + 1, 0, w)
    out: np.ndarray = s[y1][:, x1] - s[y0][:, x1] - s[y1][:, x0] + s[y0][:, x0]
    return out


def _split_areas(rng: np.random.Generator, total: float, n: int, minimum: float) -> list[float]:
    """Split ``total`` into ``n`` random parts, each at least ``minimum`` (same units)."""
    import numpy as np

    spare = max(0.0, total - n * minimum)
    weights = rng.dirichlet(np.full(n, 2.0)) if n > 1 else np.ones(1)
    return [minimum + spare * float(w) for w in weights]


def _place_lesion(
    rng: np.random.Generator,
    area: float,
    is_tissue: np.ndarray,
    lesion: np.ndarray,
    reserved: np.ndarray,
) -> dict[str, Any]:
    """Add one lesion of ``area`` mask pixels to ``lesion`` (in place); its record.

    The lesion lies where the tissue is densest and nothing is ``reserved``: an
    anisotropic blob perturbed by smooth noise, whose ``area`` best pixels form it.
    """
    import numpy as np

    h, w = is_tissue.shape
    k = max(1, int(round(area)))
    r = math.sqrt(k / math.pi)
    half = max(1, int(math.ceil(1.3 * r)))
    box = (2 * half + 1) ** 2
    score = _box_sums(is_tissue & ~reserved, half) / box
    best = float(score.max())
    cand = np.argwhere(score >= min(0.999, best - 1e-9))
    cy, cx = (int(v) for v in cand[int(rng.integers(len(cand)))])
    # Blob: anisotropic distance to the centre perturbed by smooth noise; the k
    # allowed pixels with the highest score form the lesion (area exact).
    win = int(math.ceil(3.5 * r)) + 2
    y0, y1 = max(0, cy - win), min(h, cy + win + 1)
    x0, x1 = max(0, cx - win), min(w, cx + win + 1)
    gy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    gx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    theta = rng.uniform(0, math.pi)
    aspect = rng.uniform(0.55, 1.0)
    c, s = math.cos(theta), math.sin(theta)
    u = (gx * c + gy * s) / (r / math.sqrt(aspect))
    v = (-gx * s + gy * c) / (r * math.sqrt(aspect))
    shape = (y1 - y0, x1 - x0)
    noise = 0.22 * smooth_noise(rng, shape, sigma=max(1.0, 0.4 * r))
    noise += 0.08 * smooth_noise(rng, shape, sigma=max(0.7, 0.1 * r))
    field = -np.sqrt(u * u + v * v) + noise
    allowed = is_tissue[y0:y1, x0:x1] & ~lesion[y0:y1, x0:x1]
    field = np.where(allowed, field, -np.inf)
    k = min(k, int(allowed.sum()))
    flat = np.argpartition(field.ravel(), field.size - k)[field.size - k :]
    sel = np.zeros(field.size, dtype=bool)
    sel[flat] = True
    sel = sel.reshape(shape)
    lesion[y0:y1, x0:x1] |= sel
    ys, xs = np.nonzero(sel)
    # keep later lesions apart from this one (by about a third of its radius)
    reserved |= _box_sums(lesion, max(1, int(round(r / 3)))) > 0
    bbox = [int(xs.min() + x0), int(ys.min() + y0), int(xs.max() + x0 + 1), int(ys.max() + y0 + 1)]
    return {"area_mask_px": int(k), "bbox_mask": bbox}


def lesion_mask(
    rng: np.random.Generator,
    tissue: np.ndarray,
    fraction_range: tuple[float, float],
    min_area_mask_px: float,
    max_lesions: int,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Lesion mask (uint8 0/255, same grid as ``tissue``) and one record per lesion.

    One to ``max_lesions`` lesions lie inside the tissue and do not overlap; together
    they cover a fraction of the tissue's mask pixels drawn in ``fraction_range``
    after raising its lower end so that each lesion has at least ``min_area_mask_px``
    mask pixels.  Records hold ``area_mask_px`` and ``bbox_mask`` (x0, y0, x1, y1),
    in mask pixels.
    """
    import numpy as np

    is_tissue = tissue > 0
    tissue_px = int(is_tissue.sum())
    lo, hi = fraction_range
    n_fit = int(math.floor(hi * tissue_px / min_area_mask_px))
    if n_fit < 1:
        logger.warning(
            "tissue too small for a lesion of the minimum size within %.1f%% of the tissue; "
            "using one lesion of %.1f%%",
            100 * hi,
            100 * hi,
        )
        n, min_area = 1, hi * tissue_px
    else:
        n, min_area = int(rng.integers(1, min(max_lesions, n_fit) + 1)), min_area_mask_px
    f_lo = min(hi, max(lo, n * min_area / tissue_px))
    total = float(rng.uniform(f_lo, hi)) * tissue_px
    areas = _split_areas(rng, total, n, min_area)

    lesion = np.zeros(tissue.shape, dtype=bool)
    reserved = np.zeros(tissue.shape, dtype=bool)  # lesions and a margin around them
    records = [
        _place_lesion(rng, area, is_tissue, lesion, reserved)
        for area in sorted(areas, reverse=True)
    ]
    return np.where(lesion, 255, 0).astype(np.uint8), records


def lesion_fraction_of_tiles(
    mask_path: str | os.PathLike[str] | np.ndarray,
    coords_l0: Any,
    footprint_l0: float | tuple[float, float],
    downsample: float,
) -> np.ndarray:
    """Fraction of each tile's area that lies inside the lesion mask.

    Args:
        mask_path: Lesion mask PNG (or a 2-D array); pixels > 127 are lesion.  Mask
            pixel ``(i, j)`` covers level-0 ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)``.
        coords_l0: ``(N, 2)`` level-0 top-left ``(x, y)`` of the tiles (as in a
            store's ``tiles/coords``).
        footprint_l0: Tile side in level-0 pixels, or ``(width, height)``.
        downsample: Level-0 pixels per mask pixel (``ds``).

    Returns:
        float64 ``(N,)`` in [0, 1]: exact area fractions (the mask is treated as
        piecewise constant; area outside the mask counts as non-lesion).

    Raises:
        ConfigError: On a bad shape, footprint or downsample.
    """
    import numpy as np

    if isinstance(mask_path, np.ndarray):
        mask = mask_path
    else:
        from PIL import Image

        with Image.open(mask_path) as im:
            mask = np.asarray(im.convert("L"))
    if mask.ndim != 2 or mask.size == 0:
        raise ConfigError(f"lesion mask must be a non-empty 2-D image, got shape {mask.shape}")
    xy = np.asarray(coords_l0, dtype=np.float64).reshape(-1, 2)
    if isinstance(footprint_l0, (tuple, list)):
        fw, fh = (float(v) for v in footprint_l0)
    else:
        fw = fh = float(footprint_l0)
    ds = float(downsample)
    if not (fw > 0 and fh > 0 and ds > 0):
        raise ConfigError(
            f"footprint_l0 and downsample must be positive, got {footprint_l0!r}, {downsample!r}"
        )
    h, w = mask.shape
    s = np.zeros((h + 1, w + 1), dtype=np.float64)
    s[1:, 1:] = (mask > 127).astype(np.float64).cumsum(0).cumsum(1)

    def integral(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # the cumulative integral of a piecewise-constant image is exactly the
        # bilinear interpolation of its integral image
        x = np.clip(x, 0.0, w)
        y = np.clip(y, 0.0, h)
        x0 = np.minimum(np.floor(x).astype(np.int64), w - 1)
        y0 = np.minimum(np.floor(y).astype(np.int64), h - 1)
        u, v = x - x0, y - y0
        out: np.ndarray = (
            s[y0, x0] * (1 - u) * (1 - v)
            + s[y0, x0 + 1] * u * (1 - v)
            + s[y0 + 1, x0] * (1 - u) * v
            + s[y0 + 1, x0 + 1] * u * v
        )
        return out

    x0, y0 = xy[:, 0] / ds, xy[:, 1] / ds
    x1, y1 = x0 + fw / ds, y0 + fh / ds
    area = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
    frac: np.ndarray = np.clip(area / ((fw / ds) * (fh / ds)), 0.0, 1.0)
    return frac


def blend_lesion(
    base: pyvips.Image,
    tissue: np.ndarray,
    lesion: np.ndarray,
    size: int,
    ds: int,
    texture: pyvips.Image,
    rng: np.random.Generator,
) -> pyvips.Image:
    """``base`` (level-0 RGB, ``size`` square) with the lesion ``texture`` blended in.

    The lesion alpha is the lesion mask upsampled bilinearly (pixel centres aligned,
    so its 0.5 level is the ground-truth border), roughened by smooth noise drawn
    from ``rng`` and confined to the tissue.
    """
    import numpy as np

    side = _BORDER_NOISE_TILE
    noise_np = _BORDER_NOISE * smooth_noise(rng, (side, side), _BORDER_NOISE_SIGMA)
    noise = repeat_to(vips_from_numpy(noise_np.astype(np.float32)), size, size)
    up = vips_from_numpy(lesion).resize(ds, kernel="linear")
    if up.width < size or up.height < size:
        up = up.embed(0, 0, max(size, up.width), max(size, up.height), extend="copy")
    up = up.crop(0, 0, size, size)
    alpha = ((up.cast("float") - 127.5) * 2.0 + 127.5 + noise).cast("uchar")  # cast clamps
    alpha = alpha & upscale_mask(vips_from_numpy(tissue), ds, size, size)
    blended = (texture.cast("float") * alpha + base.cast("float") * (255 - alpha)) / 255.0
    return (blended + 0.5).cast("uchar").copy(interpretation="srgb")
