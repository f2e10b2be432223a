"""Drawing a heat grid over a slide thumbnail: the picture of the PNG export, the report
and the notebook.

Everything here works on arrays already in memory (a thumbnail of any size, a tissue mask
at any resolution); nothing reads a slide or a store.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from wsi.heatmap.grid import HeatGrid, colorize, colour_range

__all__ = ["HeatStyle", "compose_overlay", "outline", "COLOUR_BAR_PX", "TITLE_PX"]

#: width in pixels of the colour bar right of the picture
COLOUR_BAR_PX = 110
#: height in pixels of the title band above the picture
TITLE_PX = 36


class HeatStyle(Protocol):
    """How a heat layer is drawn: the fields of ``HeatmapOptions`` that drawing reads
    (``HeatmapOptions`` is one; the drawing code needs no more, and does not import the
    options, which validate against the exports that draw)."""

    @property
    def normalise(self) -> str:
        """A grid on a fixed scale (evidence, "fixed") is coloured on it; with "rank" the
        colour scale is 0..1; otherwise it spans the values shown."""
        ...

    @property
    def smooth(self) -> bool:
        """Interpolate between cell centres (labelled "smoothed for display")."""
        ...

    @property
    def cmap(self) -> str:
        """A matplotlib colormap name."""
        ...

    @property
    def alpha(self) -> float:
        """Opacity of the heat layer, 0..1."""
        ...


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
    """The colour bar panel: the map from ``hi`` (top) to ``lo``, three ticks, and
    ``label`` (what the scale is) wrapped above it."""
    import textwrap

    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    lines = textwrap.wrap(label, 17)[:8]
    bar_h = max(64, min(int(height * 0.6), height - 14 * len(lines) - 8))
    ramp = colormaps[cmap](np.linspace(1, 0, bar_h))[:, :3]
    strip = (np.repeat(ramp[:, None, :], 24, axis=1) * 255).astype(np.uint8)
    panel = Image.new("RGB", (COLOUR_BAR_PX, height), "white")
    top = (height - bar_h) // 2
    panel.paste(Image.fromarray(strip), (8, top))
    draw = ImageDraw.Draw(panel)
    for frac in (0.0, 0.5, 1.0):
        y = top + int((1 - frac) * (bar_h - 1))
        draw.line([(32, y), (38, y)], fill="black")
        draw.text((42, y - 6), f"{lo + frac * (hi - lo):.2g}", fill="black")
    for i, line in enumerate(lines):
        draw.text((4, max(0, top - 14 * (len(lines) - i) - 2)), line, fill="black")
    return panel


def compose_overlay(
    thumb: np.ndarray,
    grid: HeatGrid,
    options: HeatStyle,
    title: str,
    tissue: np.ndarray | None = None,
) -> Any:
    """A PIL image: ``thumb`` (RGB of the whole slide at any size) with the heatmap over
    it, the tissue outline, a colour bar and ``title``. Memory: a few arrays of its size.

    The image is ``COLOUR_BAR_PX`` wider and ``TITLE_PX`` taller than ``thumb``. The colour
    scale is ``wsi.heatmap.grid.colour_range``: the grid's fixed scale (evidence: 0 .. the
    model's scale, the same on every slide; evidence against the class gets the colour of
    0), 0..1 for ``options.normalise == "rank"``, else the shown values' range; the colour
    bar says which (``grid.scale_label``). ``options`` gives ``smooth``, ``cmap`` and
    ``alpha`` too.
    """
    from PIL import Image, ImageDraw

    h, w = thumb.shape[:2]
    ds = grid.slide_size_l0[0] / w
    heat = grid.render(ds, smooth=options.smooth)[:h, :w]
    if grid.vmin is not None or options.normalise == "rank":
        lo, hi = colour_range(grid, options.normalise)
    else:  # the range of what is drawn (smoothing stays within the grid's)
        finite = np.isfinite(heat)
        lo = float(np.nanmin(heat)) if finite.any() else 0.0
        hi = float(np.nanmax(heat)) if finite.any() else 1.0
    rgba = colorize(heat, options.cmap, lo, hi)
    a = (rgba[..., 3:4].astype(np.float32) / 255.0) * options.alpha
    out = thumb.astype(np.float32) * (1 - a) + rgba[..., :3].astype(np.float32) * a + 0.5
    image = out.astype(np.uint8)
    if tissue is not None and tissue.any() and not tissue.all():
        image[outline(tissue, (h, w))] = 0
    label = grid.label + (" (smoothed for display)" if options.smooth else "")
    canvas = Image.new("RGB", (w + COLOUR_BAR_PX, h + TITLE_PX), "white")
    canvas.paste(Image.fromarray(image), (0, TITLE_PX))
    bar = grid.scale_label or "score"
    canvas.paste(_colour_bar(h, options.cmap, lo, hi, bar), (w, TITLE_PX))
    ImageDraw.Draw(canvas).text((4, 4), f"{title}\n{label}", fill="black")
    return canvas
