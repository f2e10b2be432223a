"""What a second-opinion report shows and when it raises a flag (section ``report`` of a
config file)."""

from __future__ import annotations

from dataclasses import dataclass

from wsi.errors import ConfigError

__all__ = ["ReportOptions"]


@dataclass(frozen=True)
class ReportOptions:
    """Contents of the per-slide report and the thresholds of its plain-language flags.

    Section ``report`` of a config file maps onto it one to one. Fields:

    - ``top_k`` (>= 1), ``least_k`` (>= 0; 0: none): how many of the tiles with the most
      and least evidence for the shown class (the most and least attended where the head
      gives no tile evidence) the report shows, at the tiling resolution, with their
      level-0 boxes.
    - ``pdf``: also write each report as PDF (needs WeasyPrint and Pango; ``wsi.report``
      checks for them before the first slide).
    - ``uncertain_std``, ``uncertain_margin``: flag "Uncertain case" when the standard
      deviation of the fold models' probabilities (0..1) is above ``uncertain_std``, or
      the slide's calibrated log-odds lie within ``uncertain_margin`` (natural-log odds)
      of the operating threshold's; the flag is also raised whenever the fold models
      disagree about the call.
    - ``min_tissue_mm2``, ``min_tiles``: flag "Little tissue" when the tissue area is
      below ``min_tissue_mm2`` square millimetres or fewer than ``min_tiles`` tiles
      were analysed.
    - ``ood_fraction``: flag "Out of distribution" when more than this share (0..1] of
      the tiles lie farther from every training tile than the model's reference distance
      (only for models with a ``reference.safetensors`` of at least ``ood_min_tiles``
      tiles from ``ood_min_slides`` slides; smaller ones are reported as not checked).
    - ``blur_variance``: a tile is blurred when the variance of the Laplacian of its green
      channel (8-bit levels, at half the tile resolution; ``tiles/qc`` column ``blur``)
      is below this.
    - ``blur_fraction``: flag "Blur" when more than this share (0..1] of tiles is blurred.
    - ``pen_fraction``: flag "Pen marks" when more than this share (0..1] of tiles carries
      pen ink (a tile carries ink when more than 5 % of its sampled pixels are ink; that
      5 % is fixed).

    Raises ``ConfigError`` when ``top_k`` < 1, ``least_k`` < 0, or ``ood_fraction``,
    ``blur_fraction`` or ``pen_fraction`` is outside (0, 1].

    Example::

        options = wsi.ReportOptions(top_k=12, least_k=0, pdf=False, min_tissue_mm2=1.0)
        wsi.report(["stores/s1.zarr"], "models/abmil", "reports", options)
    """

    top_k: int = 8  #: most attended tiles shown as evidence
    least_k: int = 4  #: least attended tiles shown for contrast (0: none)
    pdf: bool = True  #: also write the PDF (needs WeasyPrint and Pango)
    uncertain_std: float = 0.15  #: flag when the fold models' probabilities spread more (std)
    uncertain_margin: float = 0.5  #: flag when |log-odds - threshold| is below this (log-odds)
    min_tissue_mm2: float = 0.5  #: flag "little tissue" below this tissue area
    min_tiles: int = 16  #: flag "little tissue" below this many tiles analysed
    ood_fraction: float = 0.25  #: flag out of distribution when more tiles are far than this
    #: the out-of-distribution check needs a reference this large (smaller ones call
    #: ordinary slides unusual: 2 slides x 3 tiles flagged 45% of a like slide's tiles)
    ood_min_tiles: int = 500
    ood_min_slides: int = 8
    blur_variance: float = 300.0  #: a tile is blurred below this variance of the Laplacian
    blur_fraction: float = 0.2  #: flag blur when more tiles than this are blurred
    pen_fraction: float = 0.05  #: flag pen marks when more tiles than this carry ink

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.least_k < 0:
            raise ConfigError(f"report top_k {self.top_k} must be >= 1, least_k >= 0")
        for name in ("ood_fraction", "blur_fraction", "pen_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"report {name} {getattr(self, name)}: must be within 0..1")
