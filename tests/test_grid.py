"""Tile grid: tiles only over tissue, at the target resolution, stride and overlap."""

from __future__ import annotations

import numpy as np

from wsi.config import TilingConfig
from wsi.grid import make_grid, tissue_fractions
from wsi.slide import open_slide
from wsi.tissue import TissueMask, detect_tissue


def test_grid_only_over_tissue(real_slide):
    with open_slide(real_slide) as s:
        mask = detect_tissue(s)
        grid = make_grid(s, mask, TilingConfig())
        w, h = s.dimensions
    assert len(grid) > 10
    assert grid.coords.dtype == np.int32
    assert (grid.tissue >= 0.5).all()
    assert (grid.coords >= 0).all()
    assert (grid.coords[:, 0] + grid.footprint <= w).all()
    assert (grid.coords[:, 1] + grid.footprint <= h).all()
    # every kept tile is over the mask: recompute from the mask itself
    assert np.allclose(tissue_fractions(mask, grid.coords, grid.footprint), grid.tissue)


def test_coarser_level_where_target_allows(pyramid):
    with open_slide(pyramid) as s:
        mask = detect_tissue(s)
        grid = make_grid(s, mask, TilingConfig(target_mpp=2.0, tile_size=64))
    assert grid.choice.level == 2 and grid.choice.scale == 1.0
    assert abs(grid.tile_mpp - 2.0) < 0.01


def test_stride_gives_overlap():
    mask = TissueMask(np.ones((100, 100), bool), downsample=16.0, threshold=0.1, mpp=8.0)

    from pathlib import Path

    from wsi.slide.base import Slide
    from wsi.slide.mpp import Mpp

    class Square(Slide):  # the geometry only: 1600 x 1600 level-0 pixels at 0.5 um/px
        backend = "test"
        level_dimensions = ((1600, 1600),)
        level_downsamples = (1.0,)
        vendor = None
        objective_power = None
        associated_images = ()

        def _read_level(self, location, level, size):
            raise NotImplementedError

    s = Square(path=Path("square"), mpp=Mpp(0.5, 0.5, "override"))
    plain = make_grid(s, mask, TilingConfig(tile_size=100))
    half = make_grid(s, mask, TilingConfig(tile_size=100, stride=50))
    assert len(plain) == 16 * 16
    assert len(half) == 31 * 31
    assert tuple(half.coords[1]) == (50, 0)
