"""Heatmap exports: one registry, :data:`EXPORTS`, of name -> the function writing it.

``"png"`` (overlay on the slide thumbnail), ``"geojson"`` (QuPath objects), ``"tiff"``
(pyramidal RGBA aligned to level 0) and ``"viewer"`` (offline deep-zoom viewer). Every
writer takes an :class:`ExportJob` (one slide's heatmap and its output folder) and
returns the path it wrote. ``HeatmapOptions`` validation, the CLI's help and the docs read
this registry; :data:`DEFAULT_EXPORTS` is the one default.

Only the slide's main image is read (for the PNG and the viewer); label and macro images
never appear in an export. Files are named ``<slide_id>_<model>.<ext>`` (the viewer:
``<slide_id>_<model>_viewer/``) so that models never overwrite each other's exports.

With per-class layers (``ExportJob.layers``, see ``wsi.heatmap.classes``) the GeoJSON
gives each tile one measurement per class (``attention <class>``) besides ``score``, the
PNG export also writes ``<slide_id>_<model>_<class>.png`` per class (:func:`class_files`
names them), and the viewer gets a class picker. The TIFF stays one layer (the main).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from wsi import store as st
from wsi.errors import ConfigError
from wsi.heatmap.classes import NO_CLASSES, ClassLayers, class_caption, class_slugs
from wsi.heatmap.draw import HeatStyle, compose_overlay
from wsi.heatmap.grid import HeatGrid, TileScores, colorize, colour_range
from wsi.heatmap.regions import Region
from wsi.heatmap.viewer import viewer_folder
from wsi.outputs import output_path, write_output

__all__ = [
    "ExportJob",
    "ExportStyle",
    "EXPORTS",
    "DEFAULT_EXPORTS",
    "overlay_png",
    "qupath_geojson",
    "pyramid_tiff",
    "class_files",
]

log = logging.getLogger(__name__)


class ExportStyle(HeatStyle, Protocol):
    """What the writers read of ``HeatmapOptions`` (which validates its ``exports``
    against this registry, so the writers do not import it): the drawing fields and the
    sizes of the PNG and the TIFF."""

    @property
    def thumbnail_px(self) -> int:
        """Longer side, in pixels, of the slide thumbnail under the PNG overlay."""
        ...

    @property
    def tiff_downsample(self) -> float:
        """Level-0 pixels per pixel of the heatmap TIFF."""
        ...


@dataclass(frozen=True)
class ExportJob:
    """What an export writer gets: one slide's heatmap and where its files go.

    ``meta`` is the store's ``wsi`` attrs (source slide, slide metadata); ``tissue`` the
    store's tissue mask (bool, covering the slide at any resolution) or None.
    Coordinates in ``scores``, ``grid`` and ``regions`` are level-0 pixels. ``layers``
    holds one layer per class (with its tile scores) when the prediction has per-class
    attention; ``caption`` says what the main layer shows for the task ("" for binary).
    """

    store: Path
    model: str
    slide_id: str
    meta: dict[str, Any]
    scores: TileScores
    grid: HeatGrid
    regions: list[Region]
    options: ExportStyle  #: the stage's ``HeatmapOptions``
    out_dir: Path
    tissue: np.ndarray | None = None
    layers: ClassLayers = NO_CLASSES
    caption: str = ""

    def path(self, suffix: str) -> Path:
        """``<out_dir>/<slide_id>_<model><suffix>``."""
        return self.out_dir / f"{self.slide_id}_{self.model}{suffix}"

    def class_paths(self, suffix: str) -> dict[str, Path]:
        """Class -> ``<out_dir>/<slide_id>_<model>_<class><suffix>`` (the class name made
        safe for a file name) for each per-class layer."""
        slugs = class_slugs(self.layers.classes)
        pairs = zip(self.layers.classes, slugs, strict=True)
        return {c: self.path(f"_{slug}{suffix}") for c, slug in pairs}

    @property
    def slide_path(self) -> str:
        """The slide file the store recorded (a placeholder when it recorded none)."""
        return str(self.meta.get("source", {}).get("path") or "(no slide file recorded)")


def qupath_geojson(
    scores: TileScores, regions: list[Region], path: Path, layers: ClassLayers = NO_CLASSES
) -> Path:
    """A FeatureCollection QuPath imports: a detection per tile (its score a measurement,
    so QuPath can colour by it; with per-class ``layers`` also ``evidence <class>`` (or
    ``attention <class>`` for attention layers), the class's tile score on the same
    scale) and an annotation per top region; level-0 pixels."""
    from shapely.geometry import mapping

    f = scores.footprint_l0
    per_class = [
        (f"{layers.measure} {c}", s.scores.tolist())
        for c, s in zip(layers.classes, layers.scores, strict=True)
    ]
    features = []
    for i, ((x, y), s) in enumerate(
        zip(scores.coords_l0.tolist(), scores.scores.tolist(), strict=True)
    ):
        ring = [[x, y], [x + f, y], [x + f, y + f], [x, y + f], [x, y]]
        measurements = {"score": float(s)}
        measurements.update({name: float(values[i]) for name, values in per_class})
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "detection",
                    "name": f"tile {i}",
                    "classification": {"name": "Tile", "color": [128, 128, 128]},
                    "measurements": measurements,
                },
            }
        )
    for r in regions:
        features.append(
            {
                "type": "Feature",
                "geometry": mapping(r.polygon),
                "properties": {
                    "objectType": "annotation",
                    "name": f"top region {r.rank}",
                    "classification": {"name": "Top attention", "color": [255, 0, 0]},
                    "measurements": {"mean score": r.mean_score, "rank": r.rank},
                },
            }
        )
    return write_output(path, json.dumps({"type": "FeatureCollection", "features": features}))


def overlay_png(
    slide_path: str | os.PathLike[str],
    grid: HeatGrid,
    options: ExportStyle,
    path: Path,
    title: str,
    tissue: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """The slide thumbnail with the heatmap over it, a colour bar and the tissue outline.

    ``source`` is the store's metadata (``wsi`` attrs); when given, the file at
    ``slide_path`` must be the one the store was tiled from (ConfigError otherwise).

    ``tissue`` is a boolean mask covering the slide at any resolution (the store's
    ``tissue/mask``). Only the slide's main image is read: no label or macro image.
    Memory: the thumbnail and a few arrays of its size.
    """
    thumb = _thumbnail(slide_path, options, source)
    return _save_overlay(thumb, grid, options, path, title, tissue)


def _thumbnail(
    slide_path: str | os.PathLike[str], options: ExportStyle, source: dict[str, Any] | None
) -> np.ndarray:
    """The slide's thumbnail for the PNG overlay, after checking the file is there and
    (with ``source``) is the one the store was tiled from."""
    from wsi.slide import open_slide

    if not Path(slide_path).exists():
        raise ConfigError(
            f"{slide_path}: the slide file is not at the path its store recorded; the PNG "
            "overlay needs its thumbnail. Put the slide back, or leave png out of --exports."
        )
    if source is not None and not st.same_source(source, slide_path):
        raise ConfigError(
            f"{slide_path}: not the file the store was tiled from (its fingerprint "
            "differs). Put the original slide back, or leave png out of --exports."
        )
    with open_slide(slide_path) as slide:
        return np.asarray(slide.thumbnail(options.thumbnail_px))


def _save_overlay(
    thumb: np.ndarray,
    grid: HeatGrid,
    options: ExportStyle,
    path: Path,
    title: str,
    tissue: np.ndarray | None,
) -> Path:
    canvas = compose_overlay(thumb, grid, options, title, tissue)
    with output_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def pyramid_tiff(grid: HeatGrid, options: ExportStyle, mpp: float | None, path: Path) -> Path:
    """The coloured heatmap as a pyramidal TIFF aligned to the slide: pixel (0, 0) is level-0
    (0, 0), each pixel ``tiff_downsample`` level-0 px, resolution tags set from the mpp.

    libvips upsamples the small grid lazily (nearest), so no full-size array is built.
    """
    import pyvips

    d = options.tiff_downsample
    w0, h0 = grid.slide_size_l0
    out_w, out_h = max(1, int(np.ceil(w0 / d))), max(1, int(np.ceil(h0 / d)))
    vmin, vmax = colour_range(grid, options.normalise)
    rgba = colorize(grid.values, options.cmap, vmin, vmax)
    rows, cols = rgba.shape[:2]
    img = pyvips.Image.new_from_memory(np.ascontiguousarray(rgba).tobytes(), cols, rows, 4, "uchar")
    scale = grid.cell_l0 / d
    img = img.affine(
        [scale, 0, 0, scale], interpolate=pyvips.Interpolate.new("nearest"), odx=0, ody=0
    )
    img = img.embed(
        int(round(grid.origin_l0[0] / d)),
        int(round(grid.origin_l0[1] / d)),
        out_w,
        out_h,
        extend="background",
        background=[0, 0, 0, 0],
    )
    img = img.copy(interpretation="srgb")
    kwargs: dict[str, Any] = {}
    if mpp:
        px_per_mm = 1000.0 / (mpp * d)  # libvips resolution unit: pixels per millimetre
        kwargs.update(xres=px_per_mm, yres=px_per_mm, resunit="cm")
    with output_path(path) as tmp:
        img.tiffsave(
            str(tmp),
            tile=True,
            pyramid=True,
            compression="deflate",
            tile_width=256,
            tile_height=256,
            bigtiff=True,
            **kwargs,
        )
    return path


def _png(job: ExportJob) -> Path:
    """PNG overlay on the slide thumbnail (needs the slide file); one per class too."""
    title = f"{job.slide_id}: {job.model}"
    thumb = _thumbnail(job.slide_path, job.options, job.meta)
    main = _save_overlay(
        thumb,
        job.grid,
        job.options,
        job.path(".png"),
        f"{title} | {job.caption}" if job.caption else title,
        job.tissue,
    )
    for grid, (name, path) in zip(job.layers.grids, job.class_paths(".png").items(), strict=True):
        _save_overlay(
            thumb, grid, job.options, path, f"{title} | {class_caption(name)}", job.tissue
        )
    return main


def _geojson(job: ExportJob) -> Path:
    """QuPath GeoJSON: a detection per tile, an annotation per top region."""
    return qupath_geojson(job.scores, job.regions, job.path(".geojson"), job.layers)


def _tiff(job: ExportJob) -> Path:
    """pyramidal RGBA TIFF aligned to level 0."""
    mpp = (job.meta.get("slide", {}).get("mpp") or {}).get("x")
    return pyramid_tiff(job.grid, job.options, mpp, job.path(".tiff"))


def _viewer(job: ExportJob) -> Path:
    """offline deep-zoom viewer (minutes on big slides); returns its index.html."""
    folder = viewer_folder(
        job.grid,
        job.regions,
        job.options,
        store=job.store,
        meta=job.meta,
        model=job.model,
        out_dir=job.out_dir,
        layers=job.layers,
        caption=job.caption,
    )
    return folder / "index.html"


Writer = Callable[[ExportJob], Path]


def class_files(job: ExportJob, written: Iterable[str]) -> dict[str, dict[str, str]]:
    """The per-class files of the exports in ``written``: export -> {class: path} (only
    ``"png"`` writes them, and only with per-class layers)."""
    if not job.layers or "png" not in written:
        return {}
    return {"png": {c: str(p) for c, p in job.class_paths(".png").items()}}


#: every heatmap export: name -> the function writing it (the first docstring line says what)
EXPORTS: Mapping[str, Writer] = MappingProxyType(
    {"png": _png, "geojson": _geojson, "tiff": _tiff, "viewer": _viewer}
)
#: what ``make_heatmap`` writes unless told otherwise: the viewer's pyramids cost minutes
#: on big slides, so it is asked for by name
DEFAULT_EXPORTS: tuple[str, ...] = ("png", "geojson", "tiff")
