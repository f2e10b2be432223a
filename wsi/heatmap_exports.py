"""Heatmap exports: PNG overlay, QuPath GeoJSON, pyramidal TIFF; and the heatmap stage.

``make_heatmap(store, model, out_dir)`` stores the grid in ``heatmaps/<model>/grid`` and
writes the chosen exports to ``out_dir``. Only the slide's main image is read (its
thumbnail); label and macro images never appear in an export.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st
from wsi.errors import ConfigError
from wsi.heatmap import HeatGrid, TileScores, colorize, heat_grid, hottest_cells, tile_scores
from wsi.store import params_hash

__all__ = [
    "HeatmapOptions",
    "make_heatmap",
    "overlay_png",
    "compose_overlay",
    "outline",
    "qupath_geojson",
    "pyramid_tiff",
    "top_regions",
    "EXPORTS",
    "DEFAULT_EXPORTS",
]

log = logging.getLogger(__name__)

EXPORTS = ("png", "geojson", "tiff", "viewer")
DEFAULT_EXPORTS = ("png", "geojson", "tiff")  #: the viewer's pyramids cost minutes on big slides


@dataclass(frozen=True)
class HeatmapOptions:
    """What a heatmap shows and which exports are written (section ``heatmap`` of a config).

    Fields:

    - ``source``: the tile scores: ``"attention"`` (default: each fold's attention
      normalised over the tiles, averaged) or ``"attention_raw"`` (the fold heads' raw
      attention, averaged).
    - ``normalise``: ``"rank"`` (default: percentiles within the slide, 0..1, comparable
      across slides) or ``"raw"`` (the scores as they are; the colour scale spans their
      minimum to maximum).
    - ``smooth``: interpolate linearly between cell centres in the PNG overlay (display
      only, labelled "smoothed for display"); off, each tile cell keeps its own value.
    - ``cmap``: a matplotlib colormap name (default ``"jet"``).
    - ``alpha``: opacity of the heat layer over the slide in the PNG, 0..1.
    - ``exports``: files ``make_heatmap`` writes, from ``EXPORTS``: ``"png"`` (overlay
      on the slide thumbnail), ``"geojson"`` (QuPath: a detection per tile, an annotation
      per top region, level-0 pixels), ``"tiff"`` (pyramidal RGBA TIFF aligned to level
      0), ``"viewer"`` (offline deep-zoom viewer, minutes on big slides); default png,
      geojson, tiff.
    - ``thumbnail_px``: longer side, in pixels, of the slide thumbnail under the PNG
      overlay (the PNG adds a 110 px colour bar and a 36 px title band).
    - ``tiff_downsample``: level-0 pixels per pixel of the heatmap TIFF (default 16;
      its resolution tags are set from the slide's mpp times this).
    - ``top_fraction``: share of the grid cells holding tiles, hottest first, that make
      up the "top regions", strictly between 0 and 1 (default 0.05: the top 5 %).

    Raises ``ConfigError`` for an unknown export, ``alpha`` outside 0..1 or
    ``top_fraction`` outside (0, 1). ``source`` and ``normalise`` are checked when the
    scores are read (``ConfigError`` then), ``cmap`` when a colour layer is drawn.

    Example::

        options = wsi.HeatmapOptions(normalise="raw", alpha=0.4, exports=("png", "geojson"))
        wsi.make_heatmap("stores/s1.zarr", "abmil", "heatmaps", options)
    """

    source: str = "attention"  #: "attention" or "attention_raw" (see wsi.heatmap)
    normalise: str = "rank"  #: "rank" (percentiles) or "raw"
    smooth: bool = False  #: display smoothing between tile cells (labelled when on)
    cmap: str = "jet"
    alpha: float = 0.5  #: heat layer opacity in the PNG
    exports: tuple[str, ...] = DEFAULT_EXPORTS
    thumbnail_px: int = 2048  #: longer side of the PNG overlay
    tiff_downsample: float = 16.0  #: level-0 px per pixel of the heatmap TIFF
    top_fraction: float = 0.05  #: share of the tissue called "top regions"

    def __post_init__(self) -> None:
        bad = sorted(set(self.exports) - set(EXPORTS))
        if bad:
            raise ConfigError(f"heatmap exports {bad}: choose from {list(EXPORTS)}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"heatmap alpha {self.alpha}: must be within 0..1")
        if not 0 < self.top_fraction < 1:
            raise ConfigError(f"heatmap top_fraction {self.top_fraction}: must be within 0..1")


@dataclass(frozen=True)
class Region:
    """A connected region of the hottest cells (level-0 px)."""

    rank: int
    mean_score: float
    bbox_l0: tuple[float, float, float, float]  #: x0, y0, x1, y1
    centroid_l0: tuple[float, float]
    polygon: Any  #: shapely geometry in level-0 px


def top_regions(grid: HeatGrid, top_fraction: float = 0.05, max_regions: int = 10) -> list[Region]:
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


def qupath_geojson(scores: TileScores, regions: list[Region], path: Path) -> Path:
    """A FeatureCollection QuPath imports: a detection per tile (its score a measurement,
    so QuPath can colour by it) and an annotation per top region; level-0 pixels."""
    from shapely.geometry import mapping

    f = scores.footprint_l0
    features = []
    for i, ((x, y), s) in enumerate(
        zip(scores.coords_l0.tolist(), scores.scores.tolist(), strict=True)
    ):
        ring = [[x, y], [x + f, y], [x + f, y + f], [x, y + f], [x, y]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "detection",
                    "name": f"tile {i}",
                    "classification": {"name": "Tile", "color": [128, 128, 128]},
                    "measurements": {"score": float(s)},
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
    tmp = path.with_suffix(".geojson.tmp")
    tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    os.replace(tmp, path)
    return path


def _resample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    iy = np.minimum((np.arange(h) * mask.shape[0] / h).astype(int), mask.shape[0] - 1)
    ix = np.minimum((np.arange(w) * mask.shape[1] / w).astype(int), mask.shape[1] - 1)
    return np.asarray(mask[np.ix_(iy, ix)], dtype=float)


def outline(tissue: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (h, w): the tissue boundary at ``shape``, two pixels wide."""
    from scipy.ndimage import binary_dilation, binary_erosion

    mask = _resample(tissue, shape) > 0.5
    return np.asarray(binary_dilation(mask & ~binary_erosion(mask)))


def _colour_bar(height: int, cmap: str, lo: float, hi: float, label: str) -> Any:
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    bar_h = max(64, int(height * 0.6))
    ramp = colormaps[cmap](np.linspace(1, 0, bar_h))[:, :3]
    strip = (np.repeat(ramp[:, None, :], 24, axis=1) * 255).astype(np.uint8)
    panel = Image.new("RGB", (110, height), "white")
    top = (height - bar_h) // 2
    panel.paste(Image.fromarray(strip), (8, top))
    draw = ImageDraw.Draw(panel)
    for frac in (0.0, 0.5, 1.0):
        y = top + int((1 - frac) * (bar_h - 1))
        draw.line([(32, y), (38, y)], fill="black")
        draw.text((42, y - 6), f"{lo + frac * (hi - lo):.2g}", fill="black")
    draw.text((4, max(0, top - 16)), label[:18], fill="black")
    return panel


def compose_overlay(
    thumb: np.ndarray,
    grid: HeatGrid,
    options: HeatmapOptions,
    title: str,
    tissue: np.ndarray | None = None,
) -> Any:
    """A PIL image: ``thumb`` (RGB of the whole slide at any size) with the heatmap over
    it, the tissue outline, a colour bar and ``title``. Memory: a few arrays of its size."""
    from PIL import Image, ImageDraw

    h, w = thumb.shape[:2]
    ds = grid.slide_size_l0[0] / w
    heat = grid.render(ds, smooth=options.smooth)[:h, :w]
    rank = options.normalise == "rank"
    finite = np.isfinite(heat)
    lo = 0.0 if rank else (float(np.nanmin(heat)) if finite.any() else 0.0)
    hi = 1.0 if rank else (float(np.nanmax(heat)) if finite.any() else 1.0)
    rgba = colorize(heat, options.cmap, lo, hi)
    a = (rgba[..., 3:4].astype(np.float32) / 255.0) * options.alpha
    out = thumb.astype(np.float32) * (1 - a) + rgba[..., :3].astype(np.float32) * a + 0.5
    image = out.astype(np.uint8)
    if tissue is not None and tissue.any() and not tissue.all():
        image[outline(tissue, (h, w))] = 0
    label = grid.label + (" (smoothed for display)" if options.smooth else "")
    canvas = Image.new("RGB", (w + 110, h + 36), "white")
    canvas.paste(Image.fromarray(image), (0, 36))
    canvas.paste(_colour_bar(h, options.cmap, lo, hi, "score"), (w, 36))
    ImageDraw.Draw(canvas).text((4, 4), f"{title}\n{label}", fill="black")
    return canvas


def overlay_png(
    slide_path: str | os.PathLike[str],
    grid: HeatGrid,
    options: HeatmapOptions,
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
        thumb = slide.thumbnail(options.thumbnail_px)
    canvas = compose_overlay(thumb, grid, options, title, tissue)
    tmp = path.with_suffix(".tmp.png")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def pyramid_tiff(grid: HeatGrid, options: HeatmapOptions, mpp: float | None, path: Path) -> Path:
    """The coloured heatmap as a pyramidal TIFF aligned to the slide: pixel (0, 0) is level-0
    (0, 0), each pixel ``tiff_downsample`` level-0 px, resolution tags set from the mpp.

    libvips upsamples the small grid lazily (nearest), so no full-size array is built.
    """
    import pyvips

    d = options.tiff_downsample
    w0, h0 = grid.slide_size_l0
    out_w, out_h = max(1, int(np.ceil(w0 / d))), max(1, int(np.ceil(h0 / d)))
    vmin, vmax = (0.0, 1.0) if options.normalise == "rank" else (None, None)
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
    tmp = path.with_suffix(".tmp.tiff")
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
    os.replace(tmp, path)
    return path


def make_heatmap(
    store: str | os.PathLike[str],
    model: str,
    out_dir: str | os.PathLike[str],
    options: HeatmapOptions | None = None,
) -> dict[str, Any]:
    """The heatmap stage: grid into ``heatmaps/<model>/grid``, exports into ``out_dir``.

    Averages the tile scores of ``predictions/<model>`` into a grid whose cell side is
    the tiling step in level-0 pixels (cell (i, j) covers level-0 x from
    ``origin_l0[0] + j * cell_l0``, y likewise with i; NaN where no tile lies), finds the
    top regions (connected hottest cells, at most 10), and stores the grid, the regions
    and the written files in the store. The stage runs again at every call (nothing is
    skipped), replacing the store's ``heatmaps/<model>`` and files of the same names.

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
    scores = tile_scores(path, model, source=options.source, normalise=options.normalise)
    grid = heat_grid(scores)
    regions = top_regions(grid, options.top_fraction)
    group = st.open_store(path, mode="r+")
    meta = st.read_meta(group)
    slide_id = str(meta.get("slide_id") or path.stem)
    keys = st.heatmap_keys(model)
    stage = keys.stage
    phash = params_hash(
        {
            "options": options.__dict__ | {"exports": list(options.exports)},
            "prediction": (st.stage_entry(group, st.prediction_keys(model).stage) or {}).get(
                "params_hash"
            ),
        }
    )
    st.begin_stage(group, stage, {"source": options.source, "normalise": options.normalise}, phash)
    if stage in group:
        del group[stage]
    arr = group.create_array(keys.grid, data=grid.values)
    arr.attrs.update(
        {
            "origin_l0": list(grid.origin_l0),
            "cell_l0": grid.cell_l0,
            "label": grid.label,
            "frame": "level-0 px; NaN: no tile",
        }
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if "png" in options.exports:
        tissue = np.asarray(group[st.TISSUE_MASK][:]) > 0 if st.TISSUE_MASK in group else None
        slide_path = meta.get("source", {}).get("path") or "(no slide file recorded)"
        png = out / f"{slide_id}_{model}.png"
        files["png"] = str(
            overlay_png(slide_path, grid, options, png, f"{slide_id}: {model}", tissue, meta)
        )
    if "geojson" in options.exports:
        files["geojson"] = str(qupath_geojson(scores, regions, out / f"{slide_id}_{model}.geojson"))
    if "tiff" in options.exports:
        mpp = (meta.get("slide", {}).get("mpp") or {}).get("x")
        files["tiff"] = str(pyramid_tiff(grid, options, mpp, out / f"{slide_id}_{model}.tiff"))
    if "viewer" in options.exports:
        from wsi.viewer import write_viewer

        files["viewer"] = str(write_viewer(path, model, out, options) / "index.html")
    region_rows = [
        {
            "rank": r.rank,
            "mean_score": r.mean_score,
            "bbox_l0": list(r.bbox_l0),
            "centroid_l0": list(r.centroid_l0),
        }
        for r in regions
    ]
    group[stage].attrs.update({"regions": region_rows, "files": files})
    st.complete_stage(
        group, stage, {"cells": int(np.isfinite(grid.values).sum()), "regions": len(regions)}
    )
    return {"grid": list(grid.values.shape), "regions": region_rows, "files": files}
