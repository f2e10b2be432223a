"""Heat grids: tile-grid values (overlap is a mean, not blur) and rendering sized by the
output, never by the slide."""

from __future__ import annotations

import numpy as np

from wsi.heatmap import HeatGrid, TileScores, heat_grid


def _scores(stride: int = 512, footprint: float = 512.0, n: int = 8) -> TileScores:
    coords = np.array(
        [(x, y) for y in range(0, n * stride, stride) for x in range(0, n * stride, stride)]
    )
    scores = (coords[:, 0] >= n * stride // 2).astype(np.float32)
    size = (int(coords[:, 0].max() + footprint), int(coords[:, 1].max() + footprint))
    return TileScores(coords, footprint, scores, size, "test")


def test_overlapping_tiles_average_and_edges_stay_true():
    grid = heat_grid(_scores(stride=256, footprint=512.0))
    assert grid.cell_l0 == 256 and grid.values.shape == (9, 9)
    # the cell at x 1024..1280 is covered by a 0-tile (x=768) and a 1-tile (x=1024)
    assert grid.values[0, 3] == 0 and grid.values[0, 4] == 0.5 and grid.values[0, 5] == 1
    heat = grid.render(64)
    assert heat.shape == (36, 36)
    assert set(np.unique(heat[0])) == {0.0, 0.5, 1.0}  # no blur without smoothing
    smooth = grid.render(64, smooth=True)
    assert len(np.unique(smooth[0])) > 3 and np.isfinite(smooth).all()


def test_render_is_sized_by_the_output_not_the_slide():
    n = 196  # a 100k x 100k px slide tiled at 512 px
    coords = np.array([(x * 512, y * 512) for y in range(n) for x in range(n)])
    ts = TileScores(
        coords,
        512.0,
        np.random.default_rng(0).random(len(coords)).astype(np.float32),
        (100_352, 100_352),
        "big",
    )
    grid = heat_grid(ts)
    assert grid.values.shape == (n, n) and grid.values.nbytes < 200_000
    heat = grid.render(100.352)
    assert heat.shape == (1000, 1000)
    off = HeatGrid(grid.values, (5000.0, 5000.0), 512.0, (200_000, 200_000))
    assert np.isnan(off.render(1000)[0, 0])  # outside every tile
