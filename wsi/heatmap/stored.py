"""The heatmap as the store holds it (``heatmaps/<model>/``): written by the stage, read
back by the viewer, reports and notebooks.

``heatmaps/<model>/grid`` is the float32 heat grid (attrs: ``origin_l0``, ``cell_l0``,
``slide_size_l0``, ``label``; ``vmin``, ``vmax`` (the fixed colour scale of evidence,
null otherwise) and ``scale_label`` (what the colour bar measures); level-0 px, NaN where
no tile lies); the group's attrs
hold the ``options`` it was made with (``HeatmapOptions.to_attrs``), the top
``regions`` and the exported ``files``. For predictions with per-class attention,
``heatmaps/<model>/grid_classes`` (C, rows, cols) holds one grid per class, on the same
cells (attrs ``classes``, ``labels``), and the group's attrs hold the ``classes`` and the
per-class files (``class_files``: export -> {class: path}). A ``caption`` (what the
attention means for the task; see ``wsi.heatmap.classes``) is in the group's attrs when
there is one. The stage's record holds the params hash of the
prediction it was made from (``params["prediction"]``), so a stored heatmap of a
prediction made since is never read.

:func:`stored_grid` is the one way to get a slide's heat grid: the stored one when it is
complete, made from the current prediction and (when options are given) with the same
``source`` and ``normalise``; otherwise it is computed by :func:`compute`, the function
the stage runs, and nothing is written. :func:`stored_layers` is the same for the
per-class grids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st
from wsi.errors import ConfigError
from wsi.heatmap.classes import NO_CLASSES, ClassLayers, class_layers
from wsi.heatmap.grid import HeatGrid, TileScores, heat_grid, tile_scores
from wsi.heatmap.options import HeatmapOptions
from wsi.heatmap.regions import MAX_REGIONS, Region, region_rows, top_regions

__all__ = [
    "compute",
    "prediction_hash",
    "write_grid",
    "stored_options",
    "stored_grid",
    "stored_layers",
]

log = logging.getLogger(__name__)


def compute(
    store: str | os.PathLike[str], model: str, options: HeatmapOptions
) -> tuple[TileScores, HeatGrid]:
    """The tile scores of ``predictions/<model>`` and their heat grid, as ``options``
    (``source``, ``normalise``) ask. Reads the store; writes nothing. StoreError without a
    complete prediction; ConfigError for an unknown source or normalise."""
    scores = tile_scores(store, model, source=options.source, normalise=options.normalise)
    return scores, heat_grid(scores)


def prediction_hash(group: Any, model: str) -> str | None:
    """The params hash of the complete ``predictions/<model>`` of a store (None if none)."""
    entry = st.stage_entry(group, st.prediction_keys(model).stage) or {}
    return entry.get("params_hash")


def write_grid(
    group: Any,
    model: str,
    grid: HeatGrid,
    options: HeatmapOptions,
    regions: Sequence[Region],
    files: dict[str, str],
    *,
    layers: ClassLayers = NO_CLASSES,
    class_files: dict[str, dict[str, str]] | None = None,
    caption: str = "",
) -> None:
    """Write ``heatmaps/<model>/`` (replacing it) into a store opened for writing: the
    grid, the options and the regions, with ``files`` the exports written (export ->
    path); with per-class ``layers`` also their grids (``grid_classes``), the class names
    and ``class_files`` (export -> {class: path}); the ``caption`` when there is one. The
    stage's record is the caller's (``begin_stage`` before, ``complete_stage`` after)."""
    keys = st.heatmap_keys(model)
    st.remove_member(group, keys.stage)
    arr = group.create_array(keys.grid, data=grid.values)
    arr.attrs.update(
        {
            "origin_l0": list(grid.origin_l0),
            "cell_l0": grid.cell_l0,
            "slide_size_l0": list(grid.slide_size_l0),
            "label": grid.label,
            "vmin": grid.vmin,
            "vmax": grid.vmax,
            "scale_label": grid.scale_label,
            "frame": "level-0 px; NaN: no tile",
        }
    )
    attrs: dict[str, Any] = {
        "options": options.to_attrs(),
        "regions": region_rows(regions),
        "files": files,
    }
    if layers:
        stack = np.stack([g.values for g in layers.grids]).astype(np.float32)
        per_class = group.create_array(keys.classes, data=stack)
        per_class.attrs.update(
            {
                "classes": list(layers.classes),
                "labels": [g.label for g in layers.grids],
                "scale_labels": [g.scale_label for g in layers.grids],
                "vmin": layers.grids[0].vmin,
                "vmax": layers.grids[0].vmax,
                "shown": layers.shown,
                "measure": layers.measure,
                "frame": "(class, row, col) on the cells of grid; NaN: no tile",
            }
        )
        attrs.update({"classes": list(layers.classes), "class_files": class_files or {}})
    if caption:
        attrs["caption"] = caption
    group[keys.stage].attrs.update(attrs)


def _current(group: Any, model: str) -> tuple[HeatGrid, HeatmapOptions] | None:
    """The stored grid and options of ``model`` if they are complete and made from the
    store's current prediction; None otherwise (absent, interrupted, stale, or written by
    a wsi that stored no options)."""
    keys = st.heatmap_keys(model)
    entry = st.stage_entry(group, keys.stage)
    if entry is None or keys.grid not in group:
        return None
    made_from = (entry.get("params") or {}).get("prediction")
    if (
        made_from is None
        or made_from != prediction_hash(group, model)
        or st.stale_reason(group, keys.stage)
    ):
        log.debug("%s: stored heatmap of %s is stale or unverifiable", group.store, model)
        return None
    attrs = dict(group[keys.stage].attrs)
    arr = group[keys.grid]
    a = dict(arr.attrs)
    if "options" not in attrs or "slide_size_l0" not in a:
        return None
    try:
        options = HeatmapOptions.from_attrs(dict(attrs["options"]))
    except (ConfigError, TypeError) as err:
        log.warning("%s: stored heatmap options unreadable (%s); recomputing", group.store, err)
        return None
    grid = HeatGrid(
        np.asarray(arr[:], dtype=np.float32),
        (float(a["origin_l0"][0]), float(a["origin_l0"][1])),
        float(a["cell_l0"]),
        (int(a["slide_size_l0"][0]), int(a["slide_size_l0"][1])),
        str(a.get("label") or ""),
        _maybe_float(a.get("vmin")),  # grids stored before fixed scales: none
        _maybe_float(a.get("vmax")),
        str(a.get("scale_label") or ""),
    )
    return grid, options


def _maybe_float(v: Any) -> float | None:
    return None if v is None else float(v)


def stored_options(store: str | os.PathLike[str], model: str) -> HeatmapOptions | None:
    """The options of the stored heatmap of ``model`` when it is complete and made from
    the current prediction; None otherwise. Opens the store read-only."""
    found = _current(st.open_store(Path(store)), model)
    return found[1] if found else None


def stored_grid(
    store: str | os.PathLike[str],
    model: str,
    options: HeatmapOptions | None = None,
    *,
    max_regions: int = MAX_REGIONS,
) -> tuple[HeatGrid, HeatmapOptions, list[Region]]:
    """The heat grid of ``model``'s prediction in a store, the options to draw it with,
    and its top regions (hottest first, at most ``max_regions``).

    With ``options`` None: the stored grid and the options the stage ran with, when
    ``heatmaps/<model>`` is complete and made from the current prediction; otherwise the
    grid computed with ``HeatmapOptions()``. With ``options``: the stored grid when it was
    made with the same ``source`` and ``normalise`` (and is current), else the grid
    computed with ``options``; the options returned are ``options``.

    The store is opened read-only; nothing is written. Raises StoreError when the store
    holds no complete ``predictions/<model>``; ConfigError for an unknown source or
    normalise.

    Example::

        grid, options, regions = stored_grid("stores/s1.zarr", "abmil")
        grid.render(32)            # heat values, one pixel per 32 level-0 px
    """
    path = Path(store)
    group = st.open_store(path)
    found = _current(group, model)
    if found is not None and (options is None or options.same_grid(found[1])):
        grid, used = found[0], options or found[1]
        log.debug("%s: heat grid of %s read from the store", path, model)
    else:
        used = options or HeatmapOptions()
        grid = compute(path, model, used)[1]
    return grid, used, top_regions(grid, used.top_fraction, max_regions)


def _stored_layers(group: Any, model: str, grid: HeatGrid) -> ClassLayers | None:
    """The stored per-class grids on the cells of ``grid`` (the current stored one);
    None when the store holds none (a heatmap without classes, or written before)."""
    keys = st.heatmap_keys(model)
    if keys.classes not in group:
        return None
    arr = group[keys.classes]
    a = dict(arr.attrs)
    values = np.asarray(arr[:], dtype=np.float32)
    names = tuple(str(c) for c in a.get("classes") or ())
    labels = [str(x) for x in a.get("labels") or names]
    if (
        values.ndim != 3
        or values.shape[1:] != grid.values.shape
        or not len(names) == len(labels) == len(values)
    ):
        return None
    bars = [str(x) for x in a.get("scale_labels") or [""] * len(labels)]
    vmin, vmax = _maybe_float(a.get("vmin")), _maybe_float(a.get("vmax"))
    if len(bars) != len(labels):
        bars = [""] * len(labels)
    grids = tuple(
        HeatGrid(v, grid.origin_l0, grid.cell_l0, grid.slide_size_l0, label, vmin, vmax, bar)
        for v, label, bar in zip(values, labels, bars, strict=True)
    )
    measure = str(a.get("measure") or "attention")  # stored before evidence: attention
    return ClassLayers(names, (), grids, str(a.get("shown") or ""), measure)


def stored_layers(
    store: str | os.PathLike[str], model: str, options: HeatmapOptions | None = None
) -> ClassLayers:
    """The per-class heat grids of ``model``'s prediction in a store, as
    :func:`stored_grid` gets the main one: the stored ``grid_classes`` when the stored
    heatmap is current (and, with ``options``, of the same ``source`` and
    ``normalise``), else computed (``wsi.heatmap.classes.class_layers``). Stored ones
    come without tile scores (``scores`` empty). ``NO_CLASSES`` when the prediction has
    no per-class attention (or the source is not "attention"). Read-only; StoreError
    without a complete prediction.

    Example::

        layers = stored_layers("stores/s1.zarr", "clam_mb")
        dict(zip(layers.classes, layers.grids))   # class -> HeatGrid
    """
    path = Path(store)
    group = st.open_store(path)
    found = _current(group, model)
    if found is not None and (options is None or options.same_grid(found[1])):
        stored = _stored_layers(group, model, found[0])
        if stored is not None:
            return stored
    used = options or (found[1] if found is not None else HeatmapOptions())
    return class_layers(path, model, source=used.source, normalise=used.normalise)
