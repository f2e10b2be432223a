"""What a heatmap shows and which exports are written: :class:`HeatmapOptions`."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

from wsi.errors import ConfigError
from wsi.heatmap.exports import DEFAULT_EXPORTS, EXPORTS

__all__ = ["HeatmapOptions", "GRID_FIELDS"]

log = logging.getLogger(__name__)

#: the options the heat grid itself depends on (with the prediction it is made from, whose
#: attrs hold the model's evidence scale); the others only change how it is drawn, which
#: regions are called "top", and which files are written
GRID_FIELDS = ("source", "normalise")


@dataclass(frozen=True)
class HeatmapOptions:
    """What a heatmap shows and which exports are written (section ``heatmap`` of a config).

    Fields:

    - ``source``: the tile scores: ``"evidence"`` (default: each tile's contribution to
      the calibrated slide score of the shown class, in calibrated log-odds per tile,
      fold mean; predictions of heads that give no evidence, such as TransMIL, show
      ``"attention"`` instead, with a log line and a label that says so),
      ``"attention"`` (each fold's attention normalised over the tiles, averaged) or
      ``"attention_raw"`` (the fold heads' raw attention, averaged).
    - ``normalise``: ``"fixed"`` (default: evidence on the model's fixed scale, the same
      on every slide: colour 0 = no evidence for the class, full colour = the model's
      evidence scale, the 99th percentile of |tile evidence| over its training slides;
      evidence against the class is drawn as 0 on the sequential colour map; a model
      trained without a scale uses the slide's own max |evidence|, labelled "scale of this
      slide only"; attention, which has no such scale, is ranked), ``"rank"``
      (percentiles within the slide, 0..1: a normal slide lights up as much as a tumour)
      or ``"raw"`` (the scores as they are; the colour scale spans their minimum to
      maximum).
    - ``smooth``: interpolate linearly between cell centres in the PNG overlay (display
      only, labelled "smoothed for display"); off, each tile cell keeps its own value.
    - ``cmap``: a matplotlib colormap name (default ``"magma"``, perceptually uniform and
      sequential, so equal steps of evidence look equally far apart; ``"jet"`` is not).
    - ``alpha``: opacity of the heat layer over the slide in the PNG, 0..1.
    - ``exports``: files ``make_heatmap`` writes, from ``wsi.heatmap.EXPORTS``: ``"png"``
      (overlay on the slide thumbnail), ``"geojson"`` (QuPath: a detection per tile, an
      annotation per top region, level-0 pixels), ``"tiff"`` (pyramidal RGBA TIFF aligned
      to level 0), ``"viewer"`` (offline deep-zoom viewer, minutes on big slides); default
      ``wsi.heatmap.DEFAULT_EXPORTS``: png, geojson, tiff.
    - ``thumbnail_px``: longer side, in pixels, of the slide thumbnail under the PNG
      overlay (the PNG adds a 110 px colour bar and a 36 px title band).
    - ``tiff_downsample``: level-0 pixels per pixel of the heatmap TIFF (default 16;
      its resolution tags are set from the slide's mpp times this).
    - ``top_fraction``: share of the grid cells holding tiles, hottest first (most
      evidence for the shown class, with evidence), that make up the "top regions",
      strictly between 0 and 1 (default 0.05: the top 5 %). On the fixed scale only cells
      with evidence for the class (above 0) count: a slide without any has no top regions.

    Raises ``ConfigError`` for an unknown export, ``alpha`` outside 0..1 or
    ``top_fraction`` outside (0, 1). ``source`` and ``normalise`` are checked when the
    scores are read (``ConfigError`` then), ``cmap`` when a colour layer is drawn.

    The heatmap stage stores the options it ran with beside its grid
    (:meth:`to_attrs`); reports, the viewer and notebooks draw with them.

    Example::

        options = wsi.HeatmapOptions(normalise="raw", alpha=0.4, exports=("png", "geojson"))
        wsi.make_heatmap("stores/s1.zarr", "abmil", "heatmaps", options)
    """

    source: str = "evidence"  #: "evidence", "attention" or "attention_raw" (wsi.heatmap.grid)
    normalise: str = "fixed"  #: "fixed" (the model's evidence scale), "rank" or "raw"
    smooth: bool = False  #: display smoothing between tile cells (labelled when on)
    cmap: str = "magma"
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

    def to_attrs(self) -> dict[str, Any]:
        """The options as JSON-able attrs (``exports`` a list), as the stage stores them."""
        return asdict(self) | {"exports": list(self.exports)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> HeatmapOptions:
        """The options stored by :meth:`to_attrs`. Keys this version does not know (from a
        newer wsi) are left out, with a log line; keys it misses (from an older wsi) take
        their defaults; ConfigError if a value is invalid. Options stored before evidence
        (``source="attention"``, ``normalise="rank"``, ``cmap="jet"``) load as they were."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(attrs) - known)
        if unknown:
            log.info("stored heatmap options %s unknown here: left out", unknown)
        values = {k: v for k, v in attrs.items() if k in known}
        if "exports" in values:
            values["exports"] = tuple(values["exports"])
        return cls(**values)

    def same_grid(self, other: HeatmapOptions) -> bool:
        """Whether ``other`` makes the same heat grid (same ``GRID_FIELDS``)."""
        return all(getattr(self, f) == getattr(other, f) for f in GRID_FIELDS)
