"""An offline deep-zoom viewer of a slide with its heatmap: static files, no network.

``write_viewer(store, model, out_dir)`` writes ``<out_dir>/<slide_id>_<model>_viewer/``:

    slide.dzi, slide_files/      Deep Zoom pyramid of the slide's main image (JPEG tiles)
    heatmap.dzi, heatmap_files/  the coloured heat grid at the slide's level-0 size (PNG
                                 tiles with alpha), pixel-for-pixel aligned with the slide
    regions.json                 the most attended regions (level-0 px)
    index.html, viewer.js        a small canvas viewer in plain JavaScript

The DZI metadata and the regions are embedded in ``index.html`` as JSON, and tiles load
as ``<img>`` elements, so the viewer works from ``file://`` as well as over
:func:`serve` (``http.server`` on 127.0.0.1). Nothing is fetched from the network.

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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st
from wsi.errors import ConfigError
from wsi.heatmap import HeatGrid, colorize, heat_grid, tile_scores
from wsi.heatmap_exports import HeatmapOptions, top_regions

__all__ = ["write_viewer", "serve", "TILE_SIZE", "OVERLAP"]

log = logging.getLogger(__name__)

TILE_SIZE = 254
OVERLAP = 1
_JPEG_Q = 85


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


def _heat_image(grid: HeatGrid, options: HeatmapOptions, size: tuple[int, int]) -> Any:
    """The coloured heat grid as a lazy RGBA image of ``size`` (level-0 px), nearest."""
    import pyvips

    w0, h0 = size
    vmin, vmax = (0.0, 1.0) if options.normalise == "rank" else (None, None)
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


def write_viewer(
    store: str | os.PathLike[str],
    model: str,
    out_dir: str | os.PathLike[str],
    options: HeatmapOptions | None = None,
    max_regions: int = 10,
) -> Path:
    """Write ``<out_dir>/<slide_id>_<model>_viewer/`` (see the module doc); returns that
    folder (named by model too, like the other exports, so models never overwrite each
    other's viewers).

    The folder is built beside its final place and swapped in, so a viewer is either
    complete or absent. Memory: libvips streams both pyramids; the heat grid is small.
    """
    options = options or HeatmapOptions()
    path = Path(store)
    scores = tile_scores(path, model, source=options.source, normalise=options.normalise)
    grid = heat_grid(scores)
    regions = top_regions(grid, options.top_fraction, max_regions)
    group = st.open_store(path)
    meta = st.read_meta(group)
    slide_id = str(meta.get("slide_id") or path.stem)
    slide_path = Path(meta.get("source", {}).get("path") or "(no slide file recorded)")
    if slide_path.exists() and not st.same_source(meta, slide_path):
        raise ConfigError(
            f"{slide_path}: not the file the store {path} was tiled from (its fingerprint "
            "differs). Put the original slide back."
        )
    slide = _slide_image(slide_path)
    w0, h0 = grid.slide_size_l0
    if (slide.width, slide.height) != (w0, h0):
        raise ConfigError(
            f"{slide_path}: main image is {slide.width} x {slide.height} px but the store "
            f"{path} was tiled from {w0} x {h0} px: not the same slide."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{slide_id}_{model}_viewer"
    final = out / name
    tmp = out / f".{name}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _dzsave(slide, tmp / "slide", f".jpeg[Q={_JPEG_Q}]")
        heat = _heat_image(grid, options, (w0, h0))
        _dzsave(heat, tmp / "heatmap", ".png", skip_blanks=0, background=[0, 0, 0, 0])
        region_rows = [
            {
                "rank": r.rank,
                "mean_score": r.mean_score,
                "bbox_l0": [float(v) for v in r.bbox_l0],
                "centroid_l0": [float(v) for v in r.centroid_l0],
            }
            for r in regions
        ]
        (tmp / "regions.json").write_text(json.dumps(region_rows, indent=1) + "\n")
        rank = options.normalise == "rank"
        finite = np.isfinite(grid.values)
        lo = 0.0 if rank or not finite.any() else float(np.nanmin(grid.values))
        hi = 1.0 if rank or not finite.any() else float(np.nanmax(grid.values))
        config = {
            "slideId": slide_id,
            "model": model,
            "label": grid.label + (" (smoothed for display)" if options.smooth else ""),
            "slide": _dzi_meta(w0, h0, "jpeg") | {"url": "slide_files/"},
            "heat": _dzi_meta(w0, h0, "png") | {"url": "heatmap_files/"},
            "opacity": options.alpha,
            "legend": _legend(options.cmap, lo, hi),
            "regions": region_rows,
        }
        (tmp / "index.html").write_text(_index_html(config))
        (tmp / "viewer.js").write_text(VIEWER_JS)
        if final.exists():
            old = out / f".{name}.{os.getpid()}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("viewer of %s written to %s", slide_id, final)
    return final


def _index_html(config: dict[str, Any]) -> str:
    data = json.dumps(config).replace("</", "<\\/")
    title = html.escape(f"{config['slideId']}: {config['model']}")
    label = html.escape(config["label"])
    return _INDEX_HTML.format(title=title, label=label, config=data, opacity=config["opacity"])


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


_INDEX_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
html, body {{ margin: 0; height: 100%; font: 13px sans-serif; overflow: hidden; }}
#app {{ display: flex; height: 100%; }}
#stage {{ flex: 1; position: relative; background: #fff; }}
#view {{ position: absolute; inset: 0; width: 100%; height: 100%; cursor: grab; }}
#view.dragging {{ cursor: grabbing; }}
#panel {{ width: 240px; padding: 8px; border-left: 1px solid #ccc; overflow-y: auto;
         box-sizing: border-box; background: #f7f7f7; }}
#panel h1 {{ font-size: 14px; margin: 0 0 4px; word-break: break-all; }}
#panel .label {{ color: #555; margin-bottom: 8px; }}
#controls {{ position: absolute; top: 8px; left: 8px; display: flex; gap: 4px; }}
#controls button {{ width: 32px; height: 32px; font-size: 18px; }}
#legend {{ height: 12px; margin: 4px 0 2px; border: 1px solid #999; }}
#legend-scale {{ display: flex; justify-content: space-between; color: #555; }}
#regions {{ padding-left: 22px; }}
#regions button {{ width: 100%; text-align: left; margin: 2px 0; }}
label {{ display: block; margin: 6px 0; }}
</style>
</head>
<body>
<div id="app">
  <div id="stage">
    <canvas id="view"></canvas>
    <div id="controls">
      <button id="zoom-in" title="zoom in">+</button>
      <button id="zoom-out" title="zoom out">&minus;</button>
      <button id="home" title="whole slide">&#8962;</button>
    </div>
  </div>
  <div id="panel">
    <h1>{title}</h1>
    <div class="label">{label}</div>
    <label><input type="checkbox" id="heat-toggle" checked> heatmap</label>
    <label>opacity
      <input type="range" id="opacity" min="0" max="1" step="0.05" value="{opacity}">
    </label>
    <div id="legend"></div>
    <div id="legend-scale"><span id="legend-min"></span><span id="legend-max"></span></div>
    <h2 style="font-size: 13px">Most attended regions</h2>
    <ol id="regions"></ol>
  </div>
</div>
<script type="application/json" id="viewer-config">{config}</script>
<script src="viewer.js"></script>
</body>
</html>
"""

VIEWER_JS = r"""// Deep-zoom viewer of a slide and its heatmap: plain JavaScript, no network.
// View state: (x, y) the level-0 point at the canvas centre; zoom = screen px per level-0 px.
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("viewer-config").textContent);
  var canvas = document.getElementById("view");
  var ctx = canvas.getContext("2d");
  // the heat layer is drawn opaque here, then laid over the slide at the chosen opacity,
  // so the one-pixel tile overlaps do not show as darker seams
  var heatCanvas = document.createElement("canvas");
  var heatCtx = heatCanvas.getContext("2d");
  var opacityInput = document.getElementById("opacity");
  var heatToggle = document.getElementById("heat-toggle");
  var W = cfg.slide.width, H = cfg.slide.height;
  var MAX_ZOOM = 4;
  var state = { x: W / 2, y: H / 2, zoom: 1, opacity: Number(opacityInput.value),
                heatVisible: heatToggle.checked };
  var tiles = {};      // url -> {img, done, ok}
  var pending = 0;
  var framePending = false;
  var cssW = 1, cssH = 1;

  function publish() {
    window.viewerState = { x: state.x, y: state.y, zoom: state.zoom,
                           opacity: state.opacity, heatVisible: state.heatVisible };
    window.viewerPending = pending;
  }

  function maxLevel(layer) {
    return Math.ceil(Math.log2(Math.max(layer.width, layer.height)));
  }

  function levelInfo(layer, level) {
    var scale = Math.pow(2, level - maxLevel(layer));
    var w = Math.max(1, Math.ceil(layer.width * scale));
    var h = Math.max(1, Math.ceil(layer.height * scale));
    return { level: level, scale: scale, w: w, h: h,
             cols: Math.ceil(w / layer.tileSize), rows: Math.ceil(h / layer.tileSize) };
  }

  function tile(url) {
    var t = tiles[url];
    if (t) return t;
    var img = new Image();
    t = tiles[url] = { img: img, done: false, ok: false };
    pending += 1;
    img.onload = function () { t.done = true; t.ok = true; pending -= 1; schedule(); };
    img.onerror = function () { t.done = true; pending -= 1; schedule(); };  // blank tile
    img.src = url;
    return t;
  }

  // Draw one level of a layer; returns false while any of its visible tiles is loading.
  function drawLevel(g, layer, li, smooth) {
    var ts = layer.tileSize, ov = layer.overlap;
    var left = state.x - cssW / 2 / state.zoom, top = state.y - cssH / 2 / state.zoom;
    var right = state.x + cssW / 2 / state.zoom, bottom = state.y + cssH / 2 / state.zoom;
    var c0 = Math.max(0, Math.floor(left * li.scale / ts));
    var c1 = Math.min(li.cols - 1, Math.floor(right * li.scale / ts));
    var r0 = Math.max(0, Math.floor(top * li.scale / ts));
    var r1 = Math.min(li.rows - 1, Math.floor(bottom * li.scale / ts));
    var complete = true;
    g.imageSmoothingEnabled = smooth;
    for (var r = r0; r <= r1; r++) {
      for (var c = c0; c <= c1; c++) {
        var t = tile(layer.url + li.level + "/" + c + "_" + r + "." + layer.format);
        if (!t.done) { complete = false; continue; }
        if (!t.ok) continue;
        var lx = c * ts - (c > 0 ? ov : 0), ly = r * ts - (r > 0 ? ov : 0);
        var k = state.zoom / li.scale;  // screen px per level px
        var sx = (lx / li.scale - state.x) * state.zoom + cssW / 2;
        var sy = (ly / li.scale - state.y) * state.zoom + cssH / 2;
        g.drawImage(t.img, sx, sy, t.img.naturalWidth * k, t.img.naturalHeight * k);
      }
    }
    return complete;
  }

  function drawLayer(g, layer, smooth, under) {
    var top = maxLevel(layer);
    var want = Math.min(top, Math.max(0, top + Math.ceil(Math.log2(state.zoom) - 1e-9)));
    var coarse = Math.min(want, Math.max(0, Math.ceil(Math.log2(layer.tileSize)) - 1));
    var ok = true;  // a coarse level under the wanted one fills gaps while tiles load
    if (under && coarse < want) drawLevel(g, layer, levelInfo(layer, coarse), smooth);
    ok = drawLevel(g, layer, levelInfo(layer, want), smooth) && ok;
    return ok;
  }

  function draw() {
    framePending = false;
    var dpr = window.devicePixelRatio || 1;
    cssW = canvas.clientWidth || 1; cssH = canvas.clientHeight || 1;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr); canvas.height = Math.round(cssH * dpr);
      heatCanvas.width = canvas.width; heatCanvas.height = canvas.height;
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.globalAlpha = 1;
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, cssW, cssH);
    var complete = drawLayer(ctx, cfg.slide, true, true);
    if (state.heatVisible && state.opacity > 0) {
      heatCtx.setTransform(1, 0, 0, 1, 0, 0);
      heatCtx.clearRect(0, 0, heatCanvas.width, heatCanvas.height);
      heatCtx.setTransform(dpr, 0, 0, dpr, 0, 0);
      complete = drawLayer(heatCtx, cfg.heat, false, false) && complete;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.globalAlpha = state.opacity;
      ctx.drawImage(heatCanvas, 0, 0);
      ctx.globalAlpha = 1;
    }
    publish();
    if (complete && pending === 0 && !window.viewerReady) window.viewerReady = true;
  }

  function schedule() {
    if (framePending) return;
    framePending = true;
    window.requestAnimationFrame(draw);
  }

  function clampZoom(z) {
    var fit = Math.min(cssW / W, cssH / H);
    return Math.max(fit / 4, Math.min(MAX_ZOOM, z));
  }

  function zoomAt(factor, sx, sy) {  // keep the level-0 point under (sx, sy) fixed
    var px = state.x + (sx - cssW / 2) / state.zoom, py = state.y + (sy - cssH / 2) / state.zoom;
    state.zoom = clampZoom(state.zoom * factor);
    state.x = px - (sx - cssW / 2) / state.zoom;
    state.y = py - (sy - cssH / 2) / state.zoom;
    publish(); schedule();
  }

  function home() {
    cssW = canvas.clientWidth || 1; cssH = canvas.clientHeight || 1;
    state.zoom = Math.min(cssW / W, cssH / H) * 0.95;
    state.x = W / 2; state.y = H / 2;
    publish(); schedule();
  }

  function goTo(region) {
    var b = region.bbox_l0;
    var bw = Math.max(1, b[2] - b[0]), bh = Math.max(1, b[3] - b[1]);
    state.x = (b[0] + b[2]) / 2; state.y = (b[1] + b[3]) / 2;
    state.zoom = clampZoom(Math.min(cssW / bw, cssH / bh) * 0.6);
    publish(); schedule();
  }

  // pan
  var drag = null;
  canvas.addEventListener("pointerdown", function (e) {
    drag = { x: e.clientX, y: e.clientY };
    canvas.setPointerCapture(e.pointerId);
    canvas.classList.add("dragging");
  });
  canvas.addEventListener("pointermove", function (e) {
    if (!drag) return;
    state.x -= (e.clientX - drag.x) / state.zoom;
    state.y -= (e.clientY - drag.y) / state.zoom;
    drag = { x: e.clientX, y: e.clientY };
    publish(); schedule();
  });
  function endDrag() { drag = null; canvas.classList.remove("dragging"); }
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);
  // zoom
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var rect = canvas.getBoundingClientRect();
    zoomAt(Math.pow(1.2, -Math.sign(e.deltaY)), e.clientX - rect.left, e.clientY - rect.top);
  }, { passive: false });
  document.getElementById("zoom-in").addEventListener("click", function () {
    zoomAt(2, cssW / 2, cssH / 2);
  });
  document.getElementById("zoom-out").addEventListener("click", function () {
    zoomAt(0.5, cssW / 2, cssH / 2);
  });
  document.getElementById("home").addEventListener("click", home);
  window.addEventListener("keydown", function (e) {
    if (e.key === "+" || e.key === "=") zoomAt(2, cssW / 2, cssH / 2);
    else if (e.key === "-") zoomAt(0.5, cssW / 2, cssH / 2);
  });
  // heat layer
  opacityInput.addEventListener("input", function () {
    state.opacity = Number(opacityInput.value); publish(); schedule();
  });
  heatToggle.addEventListener("change", function () {
    state.heatVisible = heatToggle.checked; publish(); schedule();
  });
  window.addEventListener("resize", schedule);
  // legend and regions
  document.getElementById("legend").style.background =
    "linear-gradient(to right, " + cfg.legend.stops.join(", ") + ")";
  document.getElementById("legend-min").textContent = cfg.legend.min.toPrecision(2);
  document.getElementById("legend-max").textContent = cfg.legend.max.toPrecision(2);
  var list = document.getElementById("regions");
  cfg.regions.forEach(function (region) {
    var li = document.createElement("li");
    var button = document.createElement("button");
    button.dataset.rank = String(region.rank);
    button.textContent = "score " + region.mean_score.toFixed(3) + " at (" +
      Math.round(region.centroid_l0[0]) + ", " + Math.round(region.centroid_l0[1]) + ")";
    button.addEventListener("click", function () { goTo(region); });
    li.appendChild(button);
    list.appendChild(li);
  });
  // a link such as index.html#box=x0,y0,x1,y1 (level-0 px) opens on that box
  function fromHash() {
    var m = /box=(-?[0-9.]+),(-?[0-9.]+),(-?[0-9.]+),(-?[0-9.]+)/.exec(window.location.hash);
    if (m) goTo({ bbox_l0: [+m[1], +m[2], +m[3], +m[4]] });
  }
  window.addEventListener("hashchange", fromHash);
  window.viewerReady = false;
  home();
  fromHash();
})();
"""
