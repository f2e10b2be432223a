"""Heatmaps of a prediction's tile scores: the grid, its exports, the viewer and the stage.

A heatmap is a small grid (one cell per tiling step), never an array at slide resolution;
the heatmap stage stores it, with the options it ran with, in ``heatmaps/<model>/`` of
the slide's store, and everything that shows a heatmap reads it back through
:func:`stored_grid`. Coordinates are level-0 pixels.

Modules (each imports only those above it; the writers read options through the
``HeatStyle`` and ``ExportStyle`` protocols, since ``HeatmapOptions`` validates its exports
against the registry of writers):

- ``grid``: ``TileScores``, ``HeatGrid``, ``tile_scores``, ``heat_grid``, ``colorize``;
- ``classes``: ``ClassLayers``, ``class_layers`` (one layer per class, for heads with
  per-class attention) and ``caption`` (what the attention means for the task);
- ``regions``: ``Region``, ``top_regions`` (connected hottest cells);
- ``draw``: ``compose_overlay`` (the picture of the PNG, the report and the notebook);
- ``viewer``: the offline deep-zoom viewer (HTML, CSS and JS in ``assets/``) and ``serve``;
- ``exports``: ``EXPORTS``, the registry of export writers, and ``DEFAULT_EXPORTS``;
- ``options``: ``HeatmapOptions``;
- ``stored``: ``heatmaps/<model>/`` written and read back (``stored_grid``,
  ``stored_layers``);
- ``stage``: ``make_heatmap`` (the stage) and ``write_viewer``.

Example::

    from wsi.heatmap import make_heatmap, stored_grid

    make_heatmap("stores/s1.zarr", "abmil", "heatmaps")
    grid, options, regions = stored_grid("stores/s1.zarr", "abmil")
"""

from __future__ import annotations

from wsi.heatmap.classes import ClassLayers, caption, class_layers
from wsi.heatmap.draw import compose_overlay, outline
from wsi.heatmap.exports import DEFAULT_EXPORTS, EXPORTS, ExportJob
from wsi.heatmap.grid import (
    NORMALISE,
    SOURCES,
    HeatGrid,
    TileScores,
    colorize,
    heat_grid,
    hottest_cells,
    tile_scores,
)
from wsi.heatmap.options import HeatmapOptions
from wsi.heatmap.regions import Region, top_regions
from wsi.heatmap.stage import make_heatmap, write_viewer
from wsi.heatmap.stored import stored_grid, stored_layers, stored_options
from wsi.heatmap.viewer import serve

__all__ = [
    # the grid
    "TileScores",
    "HeatGrid",
    "tile_scores",
    "heat_grid",
    "colorize",
    "hottest_cells",
    "SOURCES",
    "NORMALISE",
    "Region",
    "top_regions",
    # per-class layers and captions
    "ClassLayers",
    "class_layers",
    "caption",
    # options and exports
    "HeatmapOptions",
    "EXPORTS",
    "DEFAULT_EXPORTS",
    "ExportJob",
    "compose_overlay",
    "outline",
    # the stage and its readers
    "make_heatmap",
    "stored_grid",
    "stored_options",
    "stored_layers",
    "write_viewer",
    "serve",
]
