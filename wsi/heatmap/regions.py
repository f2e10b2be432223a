"""Top regions of a heat grid: connected groups of its hottest cells, in level-0 pixels.

A region is a set of edge-connected grid cells among the top ``top_fraction`` of the cells
holding tiles, merged into one polygon; regions are ranked by their mean score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsi.heatmap.grid import HeatGrid, hottest_cells

__all__ = ["Region", "top_regions", "region_rows", "MAX_REGIONS"]

#: regions listed by the heatmap stage and the viewer unless told otherwise
MAX_REGIONS = 10


@dataclass(frozen=True)
class Region:
    """A connected region of the hottest cells (level-0 px)."""

    rank: int  #: 1 = the hottest
    mean_score: float
    bbox_l0: tuple[float, float, float, float]  #: x0, y0, x1, y1
    centroid_l0: tuple[float, float]
    polygon: Any  #: shapely geometry in level-0 px


def top_regions(
    grid: HeatGrid, top_fraction: float = 0.05, max_regions: int = MAX_REGIONS
) -> list[Region]:
    """Connected regions of the cells in the top ``top_fraction``, hottest first."""
    from scipy import ndimage
    from shapely.geometry import box
    from shapely.ops import unary_union

    hot = hottest_cells(grid, top_fraction)
    labels, n = ndimage.label(hot)
    regions = []
    c, (ox, oy) = grid.cell_l0, grid.origin_l0
    for lab in range(1, n + 1):
        rows, cols = np.nonzero(labels == lab)
        poly = unary_union(
            [
                box(ox + j * c, oy + i * c, ox + (j + 1) * c, oy + (i + 1) * c)
                for i, j in zip(rows, cols, strict=True)
            ]
        )
        x0, y0, x1, y1 = poly.bounds
        regions.append((float(np.nanmean(grid.values[rows, cols])), poly, (x0, y0, x1, y1)))
    regions.sort(key=lambda r: -r[0])
    return [
        Region(i + 1, score, bbox, (poly.centroid.x, poly.centroid.y), poly)
        for i, (score, poly, bbox) in enumerate(regions[:max_regions])
    ]


def region_rows(regions: Sequence[Region]) -> list[dict[str, Any]]:
    """JSON-able rows of ``regions``: ``rank``, ``mean_score``, ``bbox_l0`` ``[x0, y0, x1,
    y1]`` and ``centroid_l0`` ``[x, y]`` in level-0 pixels (the polygon left out)."""
    return [
        {
            "rank": r.rank,
            "mean_score": float(r.mean_score),
            "bbox_l0": [float(v) for v in r.bbox_l0],
            "centroid_l0": [float(v) for v in r.centroid_l0],
        }
        for r in regions
    ]
