"""Notebook views: a slide store and a heatmap that display themselves in Jupyter.

``wsi.open_store(path)`` gives a :class:`SlideStore`, a read-only view of one
``<slide_id>.zarr``; ``wsi.Heatmap(store, model)`` (or ``store.heatmap(model)``) the
heatmap of one of its predictions. In Jupyter both show themselves as HTML
(``_repr_html_``): a thumbnail of the slide's main image only (never its label or macro
image), tables of allow-listed facts (never the slide file's path), and for a heatmap
its overlay and top regions. Every string is escaped and images are embedded as
``data:`` URIs, so the views hold no script and load nothing.

Coordinates are level-0 pixels, ``(x, y)`` of the top-left corner; sizes are ``(w, h)``
in pixels; resolution is in micrometres per pixel (mpp).

Example::

    import wsi

    store = wsi.open_store("stores/slide_001.zarr")
    store                          # Jupyter: thumbnail, slide facts, stages, predictions
    heat = store.heatmap("abmil")  # the same as wsi.Heatmap(store, "abmil")
    heat                           # Jupyter: the overlay and the top regions
    heat.save("heatmaps")          # PNG, GeoJSON, TIFF (wsi.make_heatmap)
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Sequence
from dataclasses import fields, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsi import store as st
from wsi.errors import ConfigError, StoreError, WsiError

if TYPE_CHECKING:
    from PIL.Image import Image

    from wsi.heatmap import HeatGrid, HeatmapOptions, Region, TileScores
    from wsi.mil.predict import TrainedModel

__all__ = ["SlideStore", "Heatmap", "open_store"]

#: Longer side, in pixels, of the thumbnail in a store's HTML view.
VIEW_PX = 384
#: Longer side, in pixels, of the slide under a heatmap's HTML and PNG views.
OVERLAY_VIEW_PX = 768

_TABLE = "border-collapse:collapse;font-size:13px;margin:0 0 8px 0"
_CELL = "padding:2px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(rows: Sequence[Sequence[object]], header: tuple[str, ...] | None = None) -> str:
    """An HTML table of escaped cells; without ``header`` the first column holds names."""
    head = ""
    if header:
        head = "<tr>" + "".join(f'<th style="{_CELL}">{_e(h)}</th>' for h in header) + "</tr>"
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            tag = "th" if i == 0 and not header else "td"
            cells.append(f'<{tag} style="{_CELL}">{_e(cell)}</{tag}>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table style="{_TABLE}">{head}{"".join(body)}</table>'


def _img(image: Any, alt: str, fmt: str = "JPEG") -> str:
    from wsi.reports.render import data_uri

    src = data_uri(image, fmt=fmt)  # base64: nothing to escape
    return f'<img src="{src}" alt="{_e(alt)}" style="max-width:100%;height:auto">'


def _mpp_text(mpp: dict[str, Any] | None) -> str:
    if not mpp or not mpp.get("x"):
        return "unknown"
    x, y = float(mpp["x"]), float(mpp.get("y") or mpp["x"])
    value = f"{x:.4g} µm/px" if abs(x - y) < 1e-9 else f"{x:.4g} × {y:.4g} µm/px"
    return f"{value} ({mpp.get('source') or 'source unknown'})"


def _power_text(power: Any) -> str:
    return "unknown" if power is None else f"{float(power):g}×"


class SlideStore:
    """A read-only view of one slide store (``<slide_id>.zarr``, see ``wsi.store``).

    Every property reads the store when asked, so the view follows stages that run
    after it was opened. It writes nothing. A ``SlideStore`` is path-like
    (``os.fspath(store)`` is its folder), so it can be passed wherever a store path is
    accepted: ``wsi.predict_store(store, model)``, ``wsi.report_slide(store, ...)``.

    Parameters
    ----------
    path:
        The store folder written by ``wsi.tile_slide`` (``wsi tile``).

    Raises ``StoreError`` naming the path and the fix when ``path`` is missing, is a
    slide file, or is not a slide store.

    Example::

        store = wsi.open_store("stores/slide_001.zarr")
        store.tiles, store.coords[:3]     # tile count; level-0 (x, y) of the first tiles
        store.predictions["abmil"]["decision"]
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        if p.is_file():
            raise StoreError(
                f"{p}: a file, not a slide store. Tile the slide first "
                "(wsi.tile_slide(slide, out_dir) or `wsi tile`) and open the store it returns."
            )
        if not p.exists():
            raise StoreError(
                f"{p}: no such slide store. Give the <slide_id>.zarr folder written by "
                "wsi.tile_slide (or `wsi tile`)."
            )
        if not st.read_meta(st.open_store(p)):  # open_store: StoreError without zarr.json
            raise StoreError(
                f"{p}: a Zarr group but not a slide store (no 'wsi' attributes). Open a store "
                "written by wsi.tile_slide (or `wsi tile`)."
            )
        self._path = p

    # -- what the store holds -----------------------------------------------------------
    @property
    def path(self) -> Path:
        """The store folder."""
        return self._path

    def _group(self) -> Any:
        return st.open_store(self._path)

    @property
    def meta(self) -> dict[str, Any]:
        """The store's ``wsi`` attributes: schema, source slide, slide metadata, stages."""
        return st.read_meta(self._group())

    @property
    def slide_id(self) -> str:
        """The slide's id: what reports show (by default the slide file name's stem)."""
        return str(self.meta.get("slide_id") or self._path.name.removesuffix(".zarr"))

    @property
    def slide_info(self) -> dict[str, Any]:
        """The slide's metadata as tiled: backend, vendor, ``level_dimensions`` (w, h) in
        pixels, ``level_downsamples``, ``mpp`` ({x, y, source} in µm/px, or None),
        ``objective_power`` and the names of its associated images."""
        return dict(self.meta.get("slide") or {})

    @property
    def size_l0(self) -> tuple[int, int]:
        """Level-0 size (w, h) in pixels (for a store without slide metadata: the extent
        of its tiles; (0, 0) without tiles)."""
        return self._size_l0(self._group(), self.meta)

    @staticmethod
    def _size_l0(group: Any, meta: dict[str, Any]) -> tuple[int, int]:
        dims = (meta.get("slide") or {}).get("level_dimensions")
        if dims:
            return int(dims[0][0]), int(dims[0][1])
        if st.TILES_COORDS not in group or group[st.TILES_COORDS].shape[0] == 0:
            return 0, 0
        coords = np.asarray(group[st.TILES_COORDS][:])
        foot = float(group[st.TILES_COORDS].attrs.get("footprint_l0") or 0)
        return int(coords[:, 0].max() + foot), int(coords[:, 1].max() + foot)

    @property
    def stages(self) -> dict[str, str]:
        """Complete stages (``tiles``, ``features/<encoder>``, ``predictions/<model>``,
        ``heatmaps/<model>``) with the time each finished (ISO 8601, UTC)."""
        done = self.meta.get("stages") or {}
        return {name: str(entry.get("finished")) for name, entry in done.items() if entry}

    @property
    def tiles(self) -> int:
        """Number of tiles (0 before tiling)."""
        group = self._group()
        return int(group[st.TILES_COORDS].shape[0]) if st.TILES_COORDS in group else 0

    @property
    def coords(self) -> np.ndarray:
        """int (N, 2): level-0 (x, y) in pixels of each tile's top-left corner; row i is
        tile i of ``tiles/pixels`` and of every features and attention array."""
        group = self._group()
        if st.TILES_COORDS not in group:
            return np.zeros((0, 2), dtype=np.int32)
        return np.asarray(group[st.TILES_COORDS][:])

    @property
    def tissue_mask(self) -> np.ndarray | None:
        """bool (h, w): the tissue mask covering the whole slide, one pixel per
        ``tissue/mask`` ``downsample`` level-0 pixels; None if the store has none."""
        group = self._group()
        if st.TISSUE_MASK not in group:
            return None
        return np.asarray(group[st.TISSUE_MASK][:]) > 0

    def features(self, encoder: str | None = None) -> np.ndarray:
        """The complete features (N, D) of ``encoder`` (default: the default encoder,
        ``wsi.encoders.DEFAULT_ENCODER``); row i belongs to tile ``coords[i]``.

        Raises ``StoreError`` (naming the encoders present and the command that embeds)
        when they are missing or incomplete.

        Example::

            x = store.features("efficientnet_lite0")   # float (N, 1280)
        """
        from wsi.embed import features_of

        if encoder is None:
            from wsi.encoders.registry import DEFAULT_ENCODER

            encoder = DEFAULT_ENCODER
        return features_of(self._path, encoder)

    @property
    def predictions(self) -> dict[str, dict[str, Any]]:
        """Complete predictions, model name -> the attributes ``wsi.predict_store`` wrote:
        ``decision``, ``probability`` (calibrated, 0..1), ``probability_std`` (across
        fold models), ``fold_probabilities``, ``log_odds``, ``threshold``, ``model_id``..."""
        group = self._group()
        return {
            model: dict(group[st.prediction_keys(model).stage].attrs)
            for model in st.models_with(group, st.PREDICTIONS)
        }

    def thumbnail(self, max_px: int = 512) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the whole slide, longer side at most ``max_px`` pixels.

        Read from the slide file's main image when the file is still at the path the
        store recorded and has the same level-0 size; otherwise a mosaic of the stored
        tiles (white where no tile lies). Never the label or macro image.

        Example::

            from PIL import Image
            Image.fromarray(store.thumbnail(256))
        """
        return self._thumbnail(max_px)[0]

    def _thumbnail(self, max_px: int) -> tuple[np.ndarray, str]:
        from wsi.reports.facts import thumbnail_of  # one rule for reports and notebooks
        from wsi.slide.base import resize_rgb

        if max_px <= 0:
            raise ValueError(f"max_px must be positive, got {max_px}")
        group = self._group()
        meta = st.read_meta(group)
        size = self._size_l0(group, meta)
        if min(size) <= 0:
            raise StoreError(f"{self._path}: no slide size and no tiles: nothing to show.")
        try:
            thumb, source = thumbnail_of(group, meta, size, max_px)
        except KeyError as err:  # the slide file is gone and there are no tile pixels
            raise StoreError(
                f"{self._path}: no thumbnail: the slide file is not at the path the store "
                "recorded (or has changed) and the store holds no tile pixels. Put the "
                "slide back, or tile it again."
            ) from err
        h, w = thumb.shape[:2]
        if max(h, w) > max_px:
            scale = max_px / max(h, w)
            thumb = resize_rgb(thumb, (max(1, round(w * scale)), max(1, round(h * scale))))
        return np.asarray(thumb), str(source)

    def heatmap(
        self,
        model: str | TrainedModel | None = None,
        options: HeatmapOptions | None = None,
        **option_fields: Any,
    ) -> Heatmap:
        """The heatmap of ``model``'s prediction in this store: ``Heatmap(self, ...)``.

        Example::

            heat = store.heatmap("abmil", normalise="raw", alpha=0.4)
        """
        return Heatmap(self, model, options, **option_fields)

    def __fspath__(self) -> str:
        return str(self._path)

    def __repr__(self) -> str:
        return (
            f"SlideStore({str(self._path)!r}, slide_id={self.slide_id!r}, tiles={self.tiles}, "
            f"stages={sorted(self.stages)})"
        )

    # -- display -----------------------------------------------------------------------
    def _facts_rows(self, group: Any, meta: dict[str, Any]) -> list[tuple[object, ...]]:
        from wsi.reports.facts import tissue_mm2

        slide = meta.get("slide") or {}
        w, h = self._size_l0(group, meta)
        area = tissue_mm2(group)
        rows: list[tuple[object, ...]] = [
            ("Slide", meta.get("slide_id") or self._path.name.removesuffix(".zarr")),
            ("Store", self._path.name),
            ("Vendor", slide.get("vendor") or "unknown"),
            ("Level-0 size", f"{w:,} × {h:,} px"),
            ("Resolution", _mpp_text(slide.get("mpp"))),
            ("Objective", _power_text(slide.get("objective_power"))),
            ("Tissue", "unknown" if area is None else f"{area:.2f} mm²"),
        ]
        n = int(group[st.TILES_COORDS].shape[0]) if st.TILES_COORDS in group else 0
        pixels = dict(group[st.TILES_PIXELS].attrs) if st.TILES_PIXELS in group else {}
        tile = ""
        if pixels.get("tile_size"):
            tile = f" of {pixels['tile_size']} px"
            if pixels.get("tile_mpp"):
                tile += f" at {float(pixels['tile_mpp']):.3g} µm/px"
        rows.append(("Tiles", f"{n:,}{tile}"))
        return rows

    def _repr_html_(self) -> str:
        """HTML for Jupyter: thumbnail, slide facts, stages, tile count, predictions."""
        group = self._group()
        meta = st.read_meta(group)
        sid = meta.get("slide_id") or self._path.name.removesuffix(".zarr")
        try:
            thumb, source = self._thumbnail(VIEW_PX)
            words = "the slide file" if source == "slide" else "a mosaic of the stored tiles"
            picture = _img(thumb, f"thumbnail of {sid}") + (
                f'<div style="font-size:11px;color:#666">main image, from {_e(words)}</div>'
            )
        except WsiError as err:  # shown, not raised: the rest of the view still helps
            picture = f"<p>No thumbnail ({_e(type(err).__name__)}).</p>"
        facts = self._facts_rows(group, meta)
        done = [(name, e) for name, e in (meta.get("stages") or {}).items() if e]
        stages = [  # in the order they finished
            (name, e.get("finished") or "", e.get("seconds") or "")
            for name, e in sorted(done, key=lambda item: str(item[1].get("finished")))
        ]
        preds = [
            (
                model,
                a.get("decision", "?"),
                f"{float(a['probability']):.3f} ± {float(a.get('probability_std') or 0):.3f}",
                f"{float(a['threshold']):.3f}" if a.get("threshold") is not None else "",
            )
            for model, a in self.predictions.items()
            if a.get("probability") is not None
        ]
        parts = [
            f"<strong>Slide store {_e(sid)}</strong>",
            _table(facts),
            _table(stages, ("Stage", "Finished (UTC)", "Seconds"))
            if stages
            else "<p>No stage complete.</p>",
        ]
        if preds:
            parts.append(_table(preds, ("Model", "Decision", "Probability ± std", "Threshold")))
        return (
            '<div class="wsi-store" style="display:flex;gap:16px;align-items:flex-start;'
            f'font-family:sans-serif"><div style="max-width:{VIEW_PX}px">{picture}</div>'
            f"<div>{''.join(parts)}</div></div>"
        )


def open_store(path: str | os.PathLike[str]) -> SlideStore:
    """Open a slide store read-only for a notebook: ``SlideStore(path)``.

    Parameters
    ----------
    path:
        The ``<slide_id>.zarr`` folder that ``wsi.tile_slide`` returned.

    The view's coordinates are level-0 pixels and its resolutions micrometres per pixel.
    (For the Zarr group itself, as stages use it, see ``wsi.store.open_store``.)
    Raises ``StoreError`` naming the path and the fix when it is not a slide store.

    Example::

        store = wsi.open_store("stores/slide_001.zarr")
        store            # in Jupyter: thumbnail, facts, stages and predictions
    """
    return SlideStore(path)


def _options(options: HeatmapOptions | None, changes: dict[str, Any]) -> HeatmapOptions:
    from wsi.heatmap import HeatmapOptions

    known = {f.name for f in fields(HeatmapOptions)}
    bad = sorted(set(changes) - known)
    if bad:
        raise ConfigError(f"heatmap option(s) {bad}: choose from {sorted(known)}")
    if "exports" in changes:
        changes = {**changes, "exports": tuple(changes["exports"])}
    return replace(options or HeatmapOptions(), **changes)


def _model_name(store: SlideStore, model: str | TrainedModel | None) -> str:
    if model is not None:
        return str(getattr(model, "name", model))
    found = sorted(store.predictions)
    if len(found) == 1:
        return found[0]
    if not found:
        raise StoreError(
            f"{store.path}: no prediction to make a heatmap of. Run "
            "wsi.predict_store(store, wsi.load_model(model_folder)) first."
        )
    raise StoreError(f"{store.path}: predictions of {found}; name the model to show.")


class Heatmap:
    """The heatmap of one prediction in a slide store, at tile-grid resolution.

    The grid is the one the heatmap stage stored (``heatmaps/<model>``) when it is made
    from the current prediction with the same ``source`` and ``normalise``; otherwise it is
    computed from ``predictions/<model>`` (``wsi.heatmap.stored_grid``). Either way the view
    writes nothing; ``save`` runs the heatmap stage (``wsi.make_heatmap``), which stores
    the grid and its options and writes the exports.

    Parameters
    ----------
    store:
        A ``SlideStore`` or the path of a store with a complete ``predictions/<model>``.
    model:
        The model's name (its ``predictions/<model>`` group) or the loaded model
        (``wsi.load_model``); None picks the store's only prediction.
    options:
        ``wsi.HeatmapOptions``; None: the options the heatmap stage stored with its grid,
        or ``HeatmapOptions()`` when there is no current stored heatmap. Keyword
        arguments override its fields (``source``, ``normalise``, ``smooth``, ``cmap``,
        ``alpha``, ``exports``, ``thumbnail_px``, ``tiff_downsample``, ``top_fraction``).

    Attributes
    ----------
    grid: ``HeatGrid``, one cell per tiling step; cell (i, j) covers level-0 x from
        ``origin_l0[0] + j * cell_l0`` (pixels), y likewise with i; NaN where no tile lies.
    regions: the connected regions of the hottest ``top_fraction`` cells, hottest first
        (``Region``: rank, mean score, ``bbox_l0`` (x0, y0, x1, y1) and ``centroid_l0``
        in level-0 pixels).
    scores: ``TileScores``, one score per tile (``coords_l0`` level-0 pixels), read from
        ``predictions/<model>`` when first asked for.

    Example::

        heat = wsi.Heatmap(store, "abmil", normalise="raw")
        heat.regions[0].bbox_l0        # level-0 box of the hottest region
        heat.overlay(1024).save("overlay.png")
        heat.save("heatmaps", exports=("png", "geojson"))
    """

    def __init__(
        self,
        store: SlideStore | str | os.PathLike[str],
        model: str | TrainedModel | None = None,
        options: HeatmapOptions | None = None,
        **option_fields: Any,
    ) -> None:
        from wsi.heatmap import stored_grid, stored_options

        self.store = store if isinstance(store, SlideStore) else SlideStore(store)
        self.model = _model_name(self.store, model)
        path = self.store.path
        if options is None and not option_fields:
            found = stored_grid(path, self.model)
        else:
            base = options or stored_options(path, self.model)
            found = stored_grid(path, self.model, _options(base, option_fields))
        self.grid: HeatGrid = found[0]
        self.options: HeatmapOptions = found[1]
        self.regions: list[Region] = found[2]
        self._overlays: dict[int, Image] = {}

    @cached_property
    def scores(self) -> TileScores:
        """One score per tile of ``predictions/<model>`` as ``options`` ask (``source``,
        ``normalise``); ``coords_l0`` in level-0 pixels."""
        from wsi.heatmap import tile_scores

        opts = self.options
        return tile_scores(
            self.store.path, self.model, source=opts.source, normalise=opts.normalise
        )

    def overlay(self, max_px: int = 1024) -> Image:
        """A PIL image: the slide's thumbnail (longer side at most ``max_px`` pixels)
        under the heat layer, with the tissue outline, a colour bar and a
        title. See ``SlideStore.thumbnail`` for where the thumbnail comes from.

        Example::

            heat.overlay(512).save("overlay.png")
        """
        if max_px not in self._overlays:
            from wsi.heatmap import compose_overlay

            thumb = self.store.thumbnail(max_px)
            title = f"{self.store.slide_id}: {self.model}"
            self._overlays[max_px] = compose_overlay(
                thumb, self.grid, self.options, title, self.store.tissue_mask
            )
        return self._overlays[max_px].copy()

    def save(
        self, out_dir: str | os.PathLike[str], exports: tuple[str, ...] | list[str] | None = None
    ) -> dict[str, Any]:
        """Run the heatmap stage: store the grid in ``heatmaps/<model>`` and write the
        ``exports`` (default ``options.exports``: "png", "geojson", "tiff"; also "viewer")
        to ``out_dir``. The PNG needs the slide file at its recorded path.

        Returns ``wsi.make_heatmap``'s result: {"grid": shape, "regions": [...],
        "files": {export: path}}.

        Example::

            heat.save("heatmaps", exports=("png", "geojson"))["files"]["geojson"]
        """
        from wsi.heatmap import make_heatmap

        opts = self.options if exports is None else _options(self.options, {"exports": exports})
        return make_heatmap(self.store.path, self.model, out_dir, opts)

    def __repr__(self) -> str:
        rows, cols = self.grid.values.shape
        return (
            f"Heatmap(store={self.store.slide_id!r}, model={self.model!r}, grid={rows}x{cols} "
            f"cells of {self.grid.cell_l0:g} level-0 px, regions={len(self.regions)})"
        )

    def _region_rows(self) -> list[tuple[object, ...]]:
        mpp = (self.store.slide_info.get("mpp") or {}).get("x")
        rows: list[tuple[object, ...]] = []
        for r in self.regions:
            x0, y0, x1, y1 = r.bbox_l0
            size = f"{x1 - x0:,.0f} × {y1 - y0:,.0f} px"
            if mpp:
                size += f" ({(x1 - x0) * float(mpp):,.0f} × {(y1 - y0) * float(mpp):,.0f} µm)"
            cx, cy = r.centroid_l0
            rows.append((r.rank, f"{r.mean_score:.3f}", f"({cx:,.0f}, {cy:,.0f})", size))
        return rows

    def _repr_html_(self) -> str:
        """HTML for Jupyter: the overlay (embedded JPEG) and the top regions."""
        picture = _img(self.overlay(OVERLAY_VIEW_PX), f"heatmap of {self.store.slide_id}")
        rows = self._region_rows()
        header = ("Rank", "Mean score", "Centre (x, y), level-0 px", "Box (w × h)")
        regions = _table(rows, header) if rows else "<p>No top regions.</p>"
        return (
            '<div class="wsi-heatmap" style="font-family:sans-serif">'
            f"<strong>Heatmap of {_e(self.store.slide_id)}: {_e(self.model)}</strong>"
            f"<div>{picture}</div><div>Top {self.options.top_fraction:.0%} of the tissue, "
            f"by {_e(self.grid.label)}</div>{regions}</div>"
        )

    def _repr_png_(self) -> bytes:
        """PNG bytes of the overlay, for front ends that show images but not HTML."""
        buf = io.BytesIO()
        self.overlay(OVERLAY_VIEW_PX).save(buf, format="PNG")
        return buf.getvalue()
