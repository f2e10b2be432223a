"""The heatmap stage, :func:`make_heatmap`, and :func:`write_viewer` (the viewer export of
one store on its own).

The stage stores the grid and the options it ran with in ``heatmaps/<model>/`` (see
``wsi.heatmap.stored``) and writes the exports named in ``options.exports`` (see
``wsi.heatmap.EXPORTS``) to a folder outside the store.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st
from wsi.heatmap.classes import caption, class_layers
from wsi.heatmap.exports import EXPORTS, ExportJob, class_files
from wsi.heatmap.options import HeatmapOptions
from wsi.heatmap.regions import MAX_REGIONS, region_rows, top_regions
from wsi.heatmap.stored import compute, prediction_hash, stored_grid, stored_layers, write_grid
from wsi.heatmap.viewer import viewer_folder

__all__ = ["make_heatmap", "write_viewer"]

log = logging.getLogger(__name__)


def make_heatmap(
    store: str | os.PathLike[str],
    model: str,
    out_dir: str | os.PathLike[str],
    options: HeatmapOptions | None = None,
) -> dict[str, Any]:
    """The heatmap stage: grid and options into ``heatmaps/<model>/``, exports into ``out_dir``.

    Averages the tile scores of ``predictions/<model>`` into a grid whose cell side is
    the tiling step in level-0 pixels (cell (i, j) covers level-0 x from
    ``origin_l0[0] + j * cell_l0``, y likewise with i; NaN where no tile lies), finds the
    top regions (connected hottest cells, at most 10), and stores the grid, the options,
    the regions and the written files in the store, with the prediction it was made from
    (``wsi.heatmap.stored_grid`` reads them back). The stage runs again at every call
    (nothing is skipped), replacing the store's ``heatmaps/<model>`` and files of the
    same names.

    The main grid is the decided class's attention (binary: the positive class's). When
    the prediction has per-class attention (CLAM-MB) the stage also stores one grid per
    class (``heatmaps/<model>/grid_classes``, the class names in the group's attrs;
    ``wsi.heatmap.stored_layers`` reads them back), and the exports carry them (see
    ``wsi.heatmap.exports``). For tasks other than binary the PNG title and the viewer
    say what the attention means (``wsi.heatmap.classes.caption``).

    Args:
        store: a slide store with a complete ``predictions/<model>`` (``wsi.predict_store``).
        model: the model's name (``TrainedModel.name``, the ``predictions/<model>`` group),
            not a loaded model.
        out_dir: folder of the exports (created): ``<slide_id>_<model>.png``,
            ``<slide_id>_<model>.geojson``, ``<slide_id>_<model>.tiff`` and
            ``<slide_id>_<model>_viewer/index.html``, as ``options.exports`` asks.
        options: what to show and export; None: ``HeatmapOptions()``.

    Returns:
        ``{"grid": [rows, cols], "regions": [...], "files": {export: path}}``: each region
        a dict of ``rank`` (1 = hottest), ``mean_score``, ``bbox_l0`` ``[x0, y0, x1, y1]``
        and ``centroid_l0`` ``[x, y]`` in level-0 pixels; ``files`` maps each written
        export (``"png"``, ``"geojson"``, ``"tiff"``, ``"viewer"``) to its path as a str.
        With per-class layers also ``"classes"`` (the class names) and ``"class_files"``
        (export -> {class: path}: the PNG per class).

    Raises:
        StoreError: ``store`` is not a slide store, has no complete
            ``predictions/<model>``, or no tiles.
        ConfigError: ``options.source`` or ``options.normalise`` is unknown; or the PNG
            (or viewer) export needs the slide file and it is not at the path the store
            recorded (the viewer also refuses a file of another level-0 size).
        SlideOpenError: the recorded slide file cannot be opened for the PNG.
        ImportError: the ``tiff`` or ``viewer`` export without pyvips installed (raised
            as is, not as a ``WsiError``).

    Example::

        result = wsi.make_heatmap("stores/s1.zarr", "abmil", "heatmaps")
        result["files"]["geojson"]        # "heatmaps/s1_abmil.geojson"
        result["regions"][0]["bbox_l0"]   # level-0 box of the hottest region
    """
    options = options or HeatmapOptions()
    path = Path(store)
    st.open_store(path)  # not a store: say so before taking its lock
    with st.store_lock(path):  # one writer per store; a second is refused
        return _heatmap_locked(path, model, out_dir, options)


def _heatmap_locked(
    path: Path, model: str, out_dir: str | os.PathLike[str], options: HeatmapOptions
) -> dict[str, Any]:
    scores, grid = compute(path, model, options)
    layers = class_layers(path, model, source=options.source, normalise=options.normalise)
    regions = top_regions(grid, options.top_fraction, MAX_REGIONS)
    group = st.open_store(path, mode="r+")
    meta = st.read_meta(group)
    stage = st.heatmap_keys(model).stage
    made_from = prediction_hash(group, model)
    # the record holds what its hash is of: the options and the prediction it is made from
    params = {"options": options.to_attrs(), "prediction": made_from}
    st.begin_stage(
        group, stage, params, st.params_hash(params), made_from=st.prediction_keys(model).stage
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tissue = None
    if "png" in options.exports and st.TISSUE_MASK in group:
        tissue = np.asarray(group[st.TISSUE_MASK][:]) > 0
    job = ExportJob(
        store=path,
        model=model,
        slide_id=str(meta.get("slide_id") or path.stem),
        meta=meta,
        scores=scores,
        grid=grid,
        regions=regions,
        options=options,
        out_dir=out,
        tissue=tissue,
        layers=layers,
        caption=caption(path, model),
    )
    files: dict[str, str] = {}
    for name, write in EXPORTS.items():  # in the registry's order
        if name in options.exports:
            files[name] = str(write(job))
    per_class = class_files(job, files)
    write_grid(
        group,
        model,
        grid,
        options,
        regions,
        files,
        layers=layers,
        class_files=per_class,
        caption=job.caption,
    )
    st.complete_stage(
        group, stage, {"cells": int(np.isfinite(grid.values).sum()), "regions": len(regions)}
    )
    result: dict[str, Any] = {
        "grid": list(grid.values.shape),
        "regions": region_rows(regions),
        "files": files,
    }
    if layers:
        result.update({"classes": list(layers.classes), "class_files": per_class})
    return result


def write_viewer(
    store: str | os.PathLike[str],
    model: str,
    out_dir: str | os.PathLike[str],
    options: HeatmapOptions | None = None,
    max_regions: int = MAX_REGIONS,
) -> Path:
    """Write the offline deep-zoom viewer of one store's heatmap:
    ``<out_dir>/<slide_id>_<model>_viewer/`` (see ``wsi.heatmap.viewer``); returns that
    folder. Writes nothing into the store.

    The grid is the stored one when it is current (``wsi.heatmap.stored_grid``): with
    ``options`` None it is drawn with the options the heatmap stage ran with (or
    ``HeatmapOptions()`` when there is no stored heatmap). The viewer lists at most
    ``max_regions`` top regions; with per-class layers (``wsi.heatmap.stored_layers``)
    it has a class picker. Raises StoreError without a complete
    ``predictions/<model>``, ConfigError when the slide file is missing or not the one
    the store was tiled from.

    Example::

        wsi.heatmap.write_viewer("stores/s1.zarr", "abmil", "viewers")  # viewers/s1_abmil_viewer
    """
    path = Path(store)
    grid, used, regions = stored_grid(path, model, options, max_regions=max_regions)
    layers = stored_layers(path, model, used)
    meta = st.read_meta(st.open_store(path))
    return viewer_folder(
        grid,
        regions,
        used,
        store=path,
        meta=meta,
        model=model,
        out_dir=out_dir,
        layers=layers,
        caption=caption(path, model),
    )
