"""Tile coordinates at a target resolution over a tissue mask.

A tile is ``tile_size`` output pixels at ``target_mpp``; its footprint on level 0 is
``tile_size * downsample`` pixels. Coordinates are level-0 top-left (x, y), row-major.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsi.config import TilingConfig
from wsi.slide.base import LevelChoice, Slide
from wsi.tissue import TissueMask

__all__ = ["TileGrid", "make_grid", "tissue_fractions"]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles are and how they are read.

    ``coords`` int32 (N, 2) level-0 top-left (x, y); ``tissue`` float32 (N,) tissue
    fraction under each tile; ``footprint`` the tile side in level-0 pixels;
    ``level`` / ``scale`` how to read it (see ``Slide.choose_level``); ``tile_mpp``
    the actual resolution of the stored tiles, micrometres per pixel.
    """

    coords: np.ndarray
    tissue: np.ndarray
    footprint: float
    step: float
    choice: LevelChoice
    tile_mpp: float

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def tissue_fractions(mask: TissueMask, xy_l0: np.ndarray, footprint: float) -> np.ndarray:
    """Fraction of mask pixels set under each square tile (level-0 top-left, side)."""
    m = mask.mask.astype(np.int64)
    integral = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
    ds = mask.downsample
    hm, wm = m.shape
    x0 = np.clip(np.floor(xy_l0[:, 0] / ds).astype(np.int64), 0, wm)
    y0 = np.clip(np.floor(xy_l0[:, 1] / ds).astype(np.int64), 0, hm)
    x1 = np.clip(np.ceil((xy_l0[:, 0] + footprint) / ds).astype(np.int64), 0, wm)
    y1 = np.clip(np.ceil((xy_l0[:, 1] + footprint) / ds).astype(np.int64), 0, hm)
    x1, y1 = np.maximum(x1, x0 + 1).clip(max=wm), np.maximum(y1, y0 + 1).clip(max=hm)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return (total / area).astype(np.float32)


def make_grid(slide: Slide, mask: TissueMask, config: TilingConfig) -> TileGrid:
    """Tiles fully inside the slide whose tissue fraction is at least ``config.min_tissue``."""
    choice = slide.choose_level(slide.downsample_for_mpp(config.target_mpp))
    per_px = choice.scale * choice.level_downsample  # level-0 pixels per output pixel
    footprint = config.tile_size * per_px
    step = config.step * per_px
    w0, h0 = slide.dimensions
    nx = int(np.floor((w0 - footprint) / step)) + 1 if w0 >= footprint else 0
    ny = int(np.floor((h0 - footprint) / step)) + 1 if h0 >= footprint else 0
    # snap to whole pixels of the level read, so no reader has to interpolate a
    # fractional offset (both backends then return the same pixels)
    lds = choice.level_downsample
    xs = np.round(np.round(np.arange(nx) * step / lds) * lds).astype(np.int64)
    ys = np.round(np.round(np.arange(ny) * step / lds) * lds).astype(np.int64)
    xs, ys = xs[xs + footprint <= w0], ys[ys + footprint <= h0]
    gx, gy = np.meshgrid(xs, ys)  # row-major: y outer, x inner
    xy = np.stack([gx.ravel(), gy.ravel()], axis=1)
    frac = tissue_fractions(mask, xy, footprint) if len(xy) else np.zeros(0, np.float32)
    keep = frac >= config.min_tissue
    tile_mpp = slide.mpp.mean * per_px
    return TileGrid(xy[keep].astype(np.int32), frac[keep], footprint, step, choice, tile_mpp)
