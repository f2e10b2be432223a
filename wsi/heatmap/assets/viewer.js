// Deep-zoom viewer of a slide and its heatmap: plain JavaScript, no network.
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
  // heat layers: 0 the main one, then one per class when the model has them
  var layers = [{ heat: cfg.heat, legend: cfg.legend, label: cfg.label,
                  caption: cfg.caption || "" }].concat(cfg.classes || []);
  var W = cfg.slide.width, H = cfg.slide.height;
  var MAX_ZOOM = 4;
  var state = { x: W / 2, y: H / 2, zoom: 1, opacity: Number(opacityInput.value),
                heatVisible: heatToggle.checked, layer: 0 };
  var tiles = {};      // url -> {img, done, ok}
  var pending = 0;
  var framePending = false;
  var cssW = 1, cssH = 1;

  function publish() {
    window.viewerState = { x: state.x, y: state.y, zoom: state.zoom,
                           opacity: state.opacity, heatVisible: state.heatVisible,
                           layer: state.layer, layerName: layerName(state.layer) };
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
      complete = drawLayer(heatCtx, layers[state.layer].heat, false, false) && complete;
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
  // legend, label and caption of the heat layer shown
  function showLegend(layer) {
    document.getElementById("legend").style.background =
      "linear-gradient(to right, " + layer.legend.stops.join(", ") + ")";
    document.getElementById("legend-min").textContent = layer.legend.min.toPrecision(2);
    document.getElementById("legend-max").textContent = layer.legend.max.toPrecision(2);
    document.getElementById("legend").title = layer.legend.title || "";
  }
  showLegend(layers[0]);
  // the class picker: only when there are per-class layers (names set as text, never HTML)
  function layerName(i) { return i === 0 ? (cfg.shown || "") : layers[i].name; }
  var picker = document.getElementById("class-picker");
  if (layers.length > 1) {
    layers.forEach(function (layer, i) {
      var option = document.createElement("option");
      option.value = String(i);
      option.textContent = i === 0 ? "predicted class (" + (cfg.shown || "?") + ")"
                                   : "class " + layer.name;
      picker.appendChild(option);
    });
    document.getElementById("class-row").hidden = false;
    picker.addEventListener("change", function () {
      var i = Number(picker.value);
      if (!(i >= 0 && i < layers.length)) return;
      state.layer = i;
      document.getElementById("heat-label").textContent = layers[i].label;
      document.getElementById("heat-caption").textContent = layers[i].caption || "";
      showLegend(layers[i]);
      publish(); schedule();
    });
  }
  // regions
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
