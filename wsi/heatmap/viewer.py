"""An offline deep-zoom viewer of a slide with its heatmap: static files, no network.

:func:`viewer_folder` writes ``<out_dir>/<slide_id>_<model>_viewer/`` from a heat grid
(``wsi.heatmap.write_viewer`` does it from a store; ``"viewer"`` in
``wsi.heatmap.EXPORTS`` from the heatmap stage)::

    slide.dzi, slide_files/      Deep Zoom pyramid of the slide's main image (JPEG tiles)
    heatmap.dzi, heatmap_files/  the coloured heat grid at the slide's level-0 size (PNG
                                 tiles with alpha), pixel-for-pixel aligned with the slide
    heatmap_<k>.dzi, heatmap_<k>_files/  the same for class k (only with per-class
                                 layers: the page then has a class picker)
    regions.json                 the most attended regions (level-0 px)
    index.html, viewer.js        a small canvas viewer in plain JavaScript

The page, its style and its script are package data (``wsi/heatmap/assets/viewer.html``,
``viewer.css``, ``viewer.js``). The DZI metadata and the regions are embedded in
``index.html`` as JSON, and tiles load as ``<img>`` elements, so the viewer works from
``file://`` as well as over :func:`serve` (``http.server`` on 127.0.0.1). Nothing is
fetched from the network.

Only the slide's main image is read; label and macro images never appear. The heat
layer is built from the small tile grid, upsampled lazily by libvips (nearest), so no
full-size array is ever held: libvips streams it into the pyramid. Fully transparent
heat tiles (no tissue) are skipped; the viewer treats a missing tile as transparent.
"""

from __future__ import annotations

import html
import http.server
import json
import logging
import os
import shutil
import threading
from collections.abc import Sequence
from functools import cache, partial
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from wsi import store as st
from wsi.errors import ConfigError
from wsi.heatmap.classes import NO_CLASSES, ClassLayers, class_caption
from wsi.heatmap.draw import HeatStyle
from wsi.heatmap.grid import HeatGrid, colorize, colour_range
from wsi.heatmap.regions import Region, region_rows
from wsi.outputs import check_output, record_output

__all__ = ["viewer_folder", "serve", "asset", "TILE_SIZE", "OVERLAP"]

log = logging.getLogger(__name__)

TILE_SIZE = 254
OVERLAP = 1
_JPEG_Q = 85


@cache
def asset(name: str) -> str:
    """The text of ``wsi/heatmap/assets/<name>`` (package data: ``viewer.html``,
    ``viewer.css``, ``viewer.js``)."""
    return files("wsi.heatmap").joinpath("assets", name).read_text(encoding="utf-8")


def _slide_image(path: Path) -> Any:
    """The slide's main image (level 0) as a lazy pyvips image, RGB uint8."""
    import pyvips

    if not path.exists():
        raise ConfigError(
            f"{path}: the slide file is not at the path its store recorded; the viewer "
            "needs it. Put the slide back."
        )
    if pyvips.type_find("VipsForeignLoad", "openslideload") != 0:
        try:  # the main image only, level 0: never associated images
            img = pyvips.Image.openslideload(str(path), level=0)
        except pyvips.Error:
            img = None
        if img is not None:
            return _rgb(img)
    try:
        img = pyvips.Image.new_from_file(str(path), page=0)
    except pyvips.Error as err:
        raise ConfigError(
            f"{path}: libvips cannot read this slide format here (no openslide support in "
            f"libvips): {str(err).strip().splitlines()[0] if str(err).strip() else err}"
        ) from err
    return _rgb(img)


def _rgb(img: Any) -> Any:
    if img.bands == 4:
        img = img.flatten(background=[255, 255, 255])
    elif img.bands == 2:
        img = img.flatten(background=[255])
    if img.bands == 1:
        img = img.bandjoin([img, img])
    if img.format != "uchar":
        img = img.cast("uchar")
    return img.copy(interpretation="srgb")


def _heat_image(grid: HeatGrid, options: HeatStyle, size: tuple[int, int]) -> Any:
    """The coloured heat grid as a lazy RGBA image of ``size`` (level-0 px), nearest."""
    import pyvips

    w0, h0 = size
    vmin, vmax = colour_range(grid, options.normalise)
    rgba = colorize(grid.values, options.cmap, vmin, vmax)
    rgba[rgba[..., 3] == 0] = 0  # transparent is (0, 0, 0, 0): the background of blank tiles
    rows, cols = rgba.shape[:2]
    img = pyvips.Image.new_from_memory(np.ascontiguousarray(rgba).tobytes(), cols, rows, 4, "uchar")
    scale = grid.cell_l0
    img = img.affine(
        [scale, 0, 0, scale],
        interpolate=pyvips.Interpolate.new("nearest"),
        odx=grid.origin_l0[0],
        ody=grid.origin_l0[1],
        oarea=[0, 0, w0, h0],
        extend="background",
        background=[0, 0, 0, 0],
    )
    return img.copy(interpretation="srgb")


def _dzsave(img: Any, base: Path, suffix: str, **kwargs: Any) -> None:
    img.dzsave(
        str(base),
        layout="dz",
        tile_size=TILE_SIZE,
        overlap=OVERLAP,
        suffix=suffix,
        depth="onepixel",
        keep="none",
        **kwargs,
    )
    props = base.with_name(base.name + "_files") / "vips-properties.xml"
    props.unlink(missing_ok=True)  # image metadata: not needed, and may name the source


def _dzi_meta(width: int, height: int, fmt: str) -> dict[str, Any]:
    return {
        "width": width,
        "height": height,
        "tileSize": TILE_SIZE,
        "overlap": OVERLAP,
        "format": fmt,
    }


def _legend(cmap: str, lo: float, hi: float) -> dict[str, Any]:
    from matplotlib import colormaps

    stops = [
        "rgb({},{},{})".format(*(int(c * 255 + 0.5) for c in colormaps[cmap](t)[:3]))
        for t in np.linspace(0, 1, 11)
    ]
    return {"stops": stops, "min": lo, "max": hi}


def _grid_legend(grid: HeatGrid, options: HeatStyle) -> dict[str, Any]:
    """The legend of a heat layer (``wsi.heatmap.grid.colour_range``): the grid's fixed
    scale (evidence on the model's scale), 0..1 for "rank", else the grid's range; with
    what the scale is (``title``)."""
    lo, hi = colour_range(grid, options.normalise)
    return _legend(options.cmap, lo, hi) | {"title": grid.scale_label}


def viewer_folder(
    grid: HeatGrid,
    regions: Sequence[Region],
    options: HeatStyle,
    *,
    store: Path,
    meta: dict[str, Any],
    model: str,
    out_dir: str | os.PathLike[str],
    layers: ClassLayers = NO_CLASSES,
    caption: str = "",
) -> Path:
    """Write ``<out_dir>/<slide_id>_<model>_viewer/`` (see the module doc) of ``grid`` and
    ``regions`` over the slide a store was tiled from; returns that folder (named by model
    too, like the other exports, so models never overwrite each other's viewers).

    ``meta`` is the store's ``wsi`` attrs (slide id, source file and its fingerprint);
    ``store`` names the store in messages. ``options`` (``HeatmapOptions``, or any
    ``HeatStyle``) gives ``normalise`` (the colour
    scale: 0..1 for "rank", else the grid's range), ``cmap``, ``alpha`` (the initial
    opacity) and ``smooth`` (only labelled: the viewer shows cells, never smoothed).
    ``caption`` (what the main layer shows for the task) is shown under the label. With
    per-class ``layers`` each class gets its own heat pyramid and the page a class
    picker (a ``<select>``: the main layer, then each class) that switches the heat layer,
    its label, caption and legend; the regions listed stay those of the main layer.

    The folder is built beside its final place and swapped in, so a viewer is either
    complete or absent. Memory: libvips streams both pyramids; the heat grid is small.
    Raises ConfigError when the slide file is missing, is another file, or has another
    level-0 size than the grid.
    """
    slide_id = str(meta.get("slide_id") or store.stem)
    slide_path = Path(meta.get("source", {}).get("path") or "(no slide file recorded)")
    if slide_path.exists() and not st.same_source(meta, slide_path):
        raise ConfigError(
            f"{slide_path}: not the file the store {store} was tiled from (its fingerprint "
            "differs). Put the original slide back."
        )
    slide = _slide_image(slide_path)
    w0, h0 = grid.slide_size_l0
    if (slide.width, slide.height) != (w0, h0):
        raise ConfigError(
            f"{slide_path}: main image is {slide.width} x {slide.height} px but the store "
            f"{store} was tiled from {w0} x {h0} px: not the same slide."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{slide_id}_{model}_viewer"
    final = out / name
    check_output(final)  # never replace a folder wsi did not write
    tmp = out / f".{name}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _dzsave(slide, tmp / "slide", f".jpeg[Q={_JPEG_Q}]")
        heat = _heat_image(grid, options, (w0, h0))
        _dzsave(heat, tmp / "heatmap", ".png", skip_blanks=0, background=[0, 0, 0, 0])
        rows = region_rows(regions)
        (tmp / "regions.json").write_text(json.dumps(rows, indent=1) + "\n")
        smoothed = " (smoothed for display)" if options.smooth else ""
        config: dict[str, Any] = {
            "slideId": slide_id,
            "model": model,
            "label": grid.label + smoothed,
            "slide": _dzi_meta(w0, h0, "jpeg") | {"url": "slide_files/"},
            "heat": _dzi_meta(w0, h0, "png") | {"url": "heatmap_files/"},
            "opacity": options.alpha,
            "legend": _grid_legend(grid, options),
            "regions": rows,
        }
        if caption:
            config["caption"] = caption
        if layers:
            config["shown"] = layers.shown
            config["classes"] = []
            for k, (name, layer) in enumerate(zip(layers.classes, layers.grids, strict=True)):
                base = f"heatmap_{k}"
                image = _heat_image(layer, options, (w0, h0))
                _dzsave(image, tmp / base, ".png", skip_blanks=0, background=[0, 0, 0, 0])
                config["classes"].append(
                    {
                        "name": name,
                        "label": layer.label + smoothed,
                        "caption": class_caption(name),
                        "heat": _dzi_meta(w0, h0, "png") | {"url": f"{base}_files/"},
                        "legend": _grid_legend(layer, options),
                    }
                )
        (tmp / "index.html").write_text(_index_html(config))
        (tmp / "viewer.js").write_text(asset("viewer.js"))
        if final.exists():
            old = out / f".{name}.{os.getpid()}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        record_output(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("viewer of %s written to %s", slide_id, final)
    return final


def json_for_html(value: Any) -> str:
    """JSON to embed in an HTML ``<script>`` element: ``<``, ``>`` and ``&`` are written
    as ``\\u003c``, ``\\u003e`` and ``\\u0026`` (the same data to a JSON parser), so no
    string in it (``</script>``, ``<!--<script>``) can end or change the element."""
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _index_html(config: dict[str, Any]) -> str:
    data = json_for_html(config)
    return Template(asset("viewer.html")).substitute(
        title=html.escape(f"{config['slideId']}: {config['model']}"),
        label=html.escape(config["label"]),
        caption=html.escape(config.get("caption", "")),
        config=data,
        opacity=config["opacity"],
        style=asset("viewer.css"),
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        log.debug("%s %s", self.address_string(), format % args)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()


def serve(
    directory: str | os.PathLike[str], port: int = 0
) -> tuple[str, http.server.ThreadingHTTPServer]:
    """Serve ``directory`` on 127.0.0.1 (only) in a background thread.

    Returns (url, server); ``port=0`` picks a free port. Stop with ``server.shutdown()``
    then ``server.server_close()``.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder to serve")
    handler = partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="wsi-viewer", daemon=True)
    thread.start()
    host, bound = server.server_address[:2]
    return f"http://{host!s}:{bound}/", server
