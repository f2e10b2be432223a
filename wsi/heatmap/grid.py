"""Heat grids from per-tile scores, kept at tile-grid resolution and rendered at any size.

A heatmap is a small grid (one cell per tiling step), never an array at full slide
resolution: a 100k x 100k px slide tiled at 512 level-0 px has a grid of about 200 x 200
cells. Where tiles overlap (stride smaller than the tile), a cell's value is the mean of
the tiles covering it. Rendering maps each output pixel to its cell (nearest: the tile
edges stay true) or, as a separate and labelled option, interpolates between cells.

Coordinates are level-0 pixels; ``downsample`` is level-0 pixels per output pixel.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st
from wsi.errors import ConfigError, StoreError

__all__ = [
    "TileScores",
    "HeatGrid",
    "tile_scores",
    "heat_grid",
    "colorize",
    "hottest_cells",
    "rank_scores",
    "colour_range",
    "SOURCES",
    "NORMALISE",
]

log = logging.getLogger(__name__)

#: tile scores a heatmap can show: tile evidence (each tile's contribution to the
#: calibrated slide score of the shown class), fold-normalised attention (averaged) or raw
#: head scores
SOURCES = ("evidence", "attention", "attention_raw")
#: how scores are scaled: on the model's fixed evidence scale, percentiles within the
#: slide, or as they are
NORMALISE = ("fixed", "rank", "raw")


@dataclass(frozen=True)
class TileScores:
    """One score per tile: level-0 top-left ``coords_l0`` (N, 2), side ``footprint_l0``.

    ``vmin``/``vmax``: the colour scale when it is fixed (evidence on the model's scale:
    0 .. scale, in calibrated log-odds per tile), the same on every slide; None: the
    scale follows ``normalise`` (0..1 for ranks, the values' range for raw scores).
    ``scale_label``: what the colour bar measures."""

    coords_l0: np.ndarray
    footprint_l0: float
    scores: np.ndarray
    slide_size_l0: tuple[int, int]  #: (width, height) of level 0
    label: str  #: what the scores are, for legends
    vmin: float | None = None
    vmax: float | None = None
    scale_label: str = ""


def rank_scores(x: np.ndarray) -> np.ndarray:
    """Percentile ranks in [0, 1] (ties share their mean rank)."""
    from scipy.stats import rankdata

    if len(x) < 2:
        return np.ones_like(x, dtype=np.float64)
    return np.asarray((rankdata(x) - 1) / (len(x) - 1))


def _slide_size(group: Any, coords: np.ndarray, footprint: float) -> tuple[int, int]:
    dims = st.read_meta(group).get("slide", {}).get("level_dimensions")
    if dims:
        return (int(dims[0][0]), int(dims[0][1]))
    # a features-only store: the extent of its tiles
    return (int(coords[:, 0].max() + footprint), int(coords[:, 1].max() + footprint))


def shown_source(group: Any, model: str, source: str, normalise: str) -> tuple[str, str]:
    """The (source, normalise) a heatmap of ``predictions/<model>`` really shows: tile
    evidence only exists for heads that give contributions (TransMIL, max pooling and
    predictions made before evidence give none), so ``"evidence"`` falls back to
    ``"attention"`` there (a log line; the label says so); ``"fixed"`` has a meaning for
    evidence only, and becomes ``"rank"`` for attention."""
    if source not in SOURCES:
        raise ConfigError(f"heatmap source {source!r}: choose one of {SOURCES}")
    if normalise not in NORMALISE:
        raise ConfigError(f"heatmap normalise {normalise!r}: choose one of {NORMALISE}")
    if source == "evidence" and st.prediction_keys(model).evidence not in group:
        log.info("%s: no tile evidence (the head gives none): attention shown", model)
        source = "attention"
    if source != "evidence" and normalise == "fixed":
        normalise = "rank"
    return source, normalise


def evidence_scale_of(attrs: dict[str, Any], evidence: np.ndarray) -> tuple[float, bool]:
    """The colour scale of evidence: the model's (``attrs["evidence"]["scale"]``, from its
    card) and True; for a model trained without one, this slide's own max |evidence| and
    False."""
    scale = (attrs.get("evidence") or {}).get("scale")
    if scale is not None and float(scale) > 0:
        return float(scale), True
    top = float(np.nanmax(np.abs(evidence))) if len(evidence) else 0.0
    return (top if top > 0 else 1.0), False


def evidence_labels(
    model: str, shown: str, attrs: dict[str, Any], normalise: str, scale: tuple[float, bool]
) -> tuple[str, str]:
    """(label, colour-bar label) of an evidence layer for class (or output) ``shown``."""
    unit = str((attrs.get("evidence") or {}).get("unit") or "calibrated log-odds per tile")
    if normalise == "fixed":
        value, of_model = scale
        where = "model scale" if of_model else "scale of this slide only"
        bar = f"evidence for {shown}, {unit}, {where} 0..{value:.3g}"
    elif normalise == "rank":
        bar = f"evidence for {shown}, percentile within this slide"
    else:
        bar = f"evidence for {shown}, {unit}"
    return f"{model} {bar}", bar


def tile_scores(
    store: str | os.PathLike[str],
    model: str,
    *,
    source: str = "evidence",
    normalise: str = "fixed",
) -> TileScores:
    """The tile scores of ``predictions/<model>`` in a store.

    ``source``: "evidence" (the default: each tile's contribution to the calibrated slide
    score of the shown class, in calibrated log-odds per tile, fold mean; see
    ``wsi.mil.evidence``), "attention" (each fold's attention normalised over tiles,
    averaged) or "attention_raw" (the fold heads' raw scores, averaged). A prediction
    without evidence (a head that gives none, such as TransMIL) shows "attention" instead,
    and its label says so. For heads with per-class scores the decided class's (binary:
    the positive class's) were stored at prediction time; ``wsi.heatmap.classes`` reads
    the layer of every class.

    ``normalise``: "fixed" (the default: evidence as it is, on the model's scale: colour
    0 = no evidence for the class, full colour = the model's evidence scale, the 99th
    percentile of |tile evidence| over its training slides; evidence against the class is
    shown as 0; a model trained without a scale uses this slide's max |evidence| and the
    label says "scale of this slide only"; with attention it is "rank"), "rank"
    (percentiles 0..1 within the slide) or "raw" (as they are, coloured over their range).
    """
    path = Path(store)
    group = st.open_store(path)
    source, normalise = shown_source(group, model, source, normalise)
    keys = st.prediction_keys(model)
    stage = keys.stage
    if st.stage_entry(group, stage) is None:
        raise StoreError(
            f"{path}: no complete {stage}. Run `wsi predict {path} --model <folder of {model}>`."
        )
    st.current_entry(group, stage, str(path))  # made from features redone since: refuse
    coords = np.asarray(group[st.TILES_COORDS][:])
    footprint = float(group[st.TILES_COORDS].attrs["footprint_l0"])
    size = _slide_size(group, coords, footprint)
    if source == "evidence":
        attrs = dict(group[stage].attrs)
        raw = np.asarray(group[keys.evidence][:], dtype=np.float64)
        scale = evidence_scale_of(attrs, raw)
        shown = str((attrs.get("evidence") or {}).get("shown") or "the shown class")
        label, bar = evidence_labels(model, shown, attrs, normalise, scale)
        if normalise == "fixed":
            return TileScores(coords, footprint, raw.astype(np.float32), size, label,
                              0.0, scale[0], bar)  # fmt: skip
        values = rank_scores(raw) if normalise == "rank" else raw
        return TileScores(coords, footprint, values.astype(np.float32), size, label,
                          scale_label=bar)  # fmt: skip
    if source == "attention":
        raw = np.asarray(group[keys.attention_mean][:], dtype=np.float64)
    else:
        raw = np.asarray(group[keys.attention][:], dtype=np.float64).mean(axis=1)
    scores = rank_scores(raw) if normalise == "rank" else raw
    what = "percentile within this slide" if normalise == "rank" else "raw"
    label = f"{model} {source} ({what})"
    if keys.evidence not in group and model_gave_no_evidence(group, model):
        label += " (no tile evidence from this head)"
    return TileScores(coords, footprint, scores.astype(np.float32), size, label,
                      scale_label=f"{source}, {what}")  # fmt: skip


def model_gave_no_evidence(group: Any, model: str) -> bool:
    """Whether ``predictions/<model>`` was made by a head that gives no tile evidence (its
    attrs say ``evidence: None``), rather than by a wsi from before evidence."""
    stage = st.prediction_keys(model).stage
    return stage in group and "evidence" in group[stage].attrs


@dataclass(frozen=True)
class HeatGrid:
    """Mean tile score per grid cell; NaN where no tile lies.

    Cell (i, j) covers level-0 x in ``origin_l0[0] + j*cell_l0`` .. ``+ cell_l0``, and y
    likewise with i.
    """

    values: np.ndarray  #: float32 (rows, cols)
    origin_l0: tuple[float, float]
    cell_l0: float
    slide_size_l0: tuple[int, int]
    label: str = ""
    #: fixed colour scale (evidence on the model's scale), as in ``TileScores``; None: none
    vmin: float | None = None
    vmax: float | None = None
    scale_label: str = ""  #: what the colour bar measures

    def render(self, downsample: float, smooth: bool = False) -> np.ndarray:
        """Float32 (ceil(H/ds), ceil(W/ds)) heat values at ``downsample``; NaN off-tile.

        ``smooth`` interpolates linearly between cell centres (display only); otherwise
        each pixel takes its cell's value, so tile edges stay where they are.
        """
        if downsample <= 0:
            raise ValueError(f"downsample must be positive, got {downsample}")
        w0, h0 = self.slide_size_l0
        out_w, out_h = max(1, int(np.ceil(w0 / downsample))), max(1, int(np.ceil(h0 / downsample)))
        # level-0 centre of each output pixel, in cell units
        cx = ((np.arange(out_w) + 0.5) * downsample - self.origin_l0[0]) / self.cell_l0
        cy = ((np.arange(out_h) + 0.5) * downsample - self.origin_l0[1]) / self.cell_l0
        rows, cols = self.values.shape
        if not smooth:
            ix, iy = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
            okx, oky = (ix >= 0) & (ix < cols), (iy >= 0) & (iy < rows)
            out = np.full((out_h, out_w), np.nan, dtype=np.float32)
            sub = self.values[np.ix_(iy[oky], ix[okx])]
            out[np.ix_(np.flatnonzero(oky), np.flatnonzero(okx))] = sub
            return out
        return self._render_smooth(cx - 0.5, cy - 0.5)

    def _render_smooth(self, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
        from scipy.ndimage import map_coordinates

        have = np.isfinite(self.values)
        filled = np.where(have, self.values, 0.0)
        # interpolate values and coverage separately, by rows of output at a time
        out = np.full((len(fy), len(fx)), np.nan, dtype=np.float32)
        step = max(1, 4_000_000 // max(len(fx), 1))
        nearest_x = np.clip(np.round(fx).astype(np.int64), 0, self.values.shape[1] - 1)
        for r0 in range(0, len(fy), step):
            ys = fy[r0 : r0 + step]
            gy, gx = np.meshgrid(ys, fx, indexing="ij")
            v = map_coordinates(filled, [gy, gx], order=1, mode="nearest")
            w = map_coordinates(have.astype(np.float64), [gy, gx], order=1, mode="nearest")
            nearest_y = np.clip(np.round(ys).astype(np.int64), 0, self.values.shape[0] - 1)
            inside = have[np.ix_(nearest_y, nearest_x)]
            block = np.where(inside & (w > 1e-6), v / np.maximum(w, 1e-6), np.nan)
            out[r0 : r0 + step] = block
        return out


def heat_grid(scores: TileScores) -> HeatGrid:
    """The grid of mean tile scores: cell side = the tiling step (level-0 px).

    With tiles overlapping, each tile covers k x k cells (k = footprint / step) and a
    cell's value is the mean over the tiles covering it.
    """
    coords = np.asarray(scores.coords_l0, dtype=np.float64)
    if len(coords) == 0:
        raise StoreError("no tiles to make a heatmap of")
    footprint = scores.footprint_l0

    def step_of(v: np.ndarray) -> float:
        d = np.diff(np.unique(v))
        d = d[d > 1e-6]
        return float(d.min()) if len(d) else footprint

    step = min(step_of(coords[:, 0]), step_of(coords[:, 1]), footprint)
    k = max(1, int(round(footprint / step)))
    step = footprint / k  # cells tile each footprint exactly
    x0, y0 = coords[:, 0].min(), coords[:, 1].min()
    ix = np.round((coords[:, 0] - x0) / step).astype(np.int64)
    iy = np.round((coords[:, 1] - y0) / step).astype(np.int64)
    rows, cols = int(iy.max()) + k, int(ix.max()) + k
    total = np.zeros((rows, cols), dtype=np.float64)
    count = np.zeros((rows, cols), dtype=np.int32)
    for dy in range(k):
        for dx in range(k):
            np.add.at(total, (iy + dy, ix + dx), scores.scores)
            np.add.at(count, (iy + dy, ix + dx), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(count > 0, total / count, np.nan).astype(np.float32)
    return HeatGrid(
        values,
        (float(x0), float(y0)),
        float(step),
        scores.slide_size_l0,
        scores.label,
        scores.vmin,
        scores.vmax,
        scores.scale_label,
    )


def colour_range(grid: HeatGrid, normalise: str) -> tuple[float, float]:
    """The values at the two ends of the colour map: the grid's fixed scale when it has
    one (evidence: 0 .. the model's scale; values below 0, evidence against the class, get
    the colour of 0), 0..1 for "rank", else the grid's range."""
    if grid.vmin is not None and grid.vmax is not None:
        return float(grid.vmin), float(grid.vmax)
    finite = np.isfinite(grid.values)
    if normalise == "rank" or not finite.any():
        return 0.0, 1.0
    return float(np.nanmin(grid.values)), float(np.nanmax(grid.values))


def colorize(
    heat: np.ndarray, cmap: str = "magma", vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """uint8 RGBA of float heat values; NaN is fully transparent."""
    from matplotlib import colormaps

    finite = np.isfinite(heat)
    lo = float(np.nanmin(heat)) if vmin is None and finite.any() else (vmin or 0.0)
    hi = float(np.nanmax(heat)) if vmax is None and finite.any() else (vmax or 1.0)
    norm = np.clip((np.nan_to_num(heat, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1)
    rgba = (colormaps[cmap](norm) * 255 + 0.5).astype(np.uint8)
    rgba[..., 3] = np.where(finite, 255, 0)
    return rgba


def hottest_cells(grid: HeatGrid, top_fraction: float = 0.05) -> np.ndarray:
    """Boolean (rows, cols): the cells at or above the (1 - top_fraction) quantile. On a
    fixed scale (evidence) only cells above its zero can be hot: a slide without evidence
    for the class has no top cells."""
    finite = np.isfinite(grid.values)
    if not finite.any():
        return np.zeros_like(finite)
    cut = np.quantile(grid.values[finite], 1 - top_fraction)
    hot = finite & (grid.values >= cut)
    if grid.vmin is not None:
        hot &= np.nan_to_num(grid.values, nan=grid.vmin) > grid.vmin
    return hot
