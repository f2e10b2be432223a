"""What a second-opinion report shows and when it raises a flag (section ``report`` of a
config file)."""

from __future__ import annotations

from dataclasses import dataclass

from wsi.errors import ConfigError

__all__ = ["ReportOptions"]


@dataclass(frozen=True)
class ReportOptions:
    """Contents of the per-slide report and the thresholds of its plain-language flags."""

    top_k: int = 8  #: most attended tiles shown as evidence
    least_k: int = 4  #: least attended tiles shown for contrast (0: none)
    pdf: bool = True  #: also write the PDF (needs WeasyPrint and Pango)
    uncertain_std: float = 0.15  #: flag when the fold models' probabilities spread more (std)
    uncertain_margin: float = 0.5  #: flag when |log-odds - threshold| is below this (log-odds)
    min_tissue_mm2: float = 0.5  #: flag "little tissue" below this tissue area
    min_tiles: int = 16  #: flag "little tissue" below this many tiles analysed
    ood_fraction: float = 0.25  #: flag out of distribution when more tiles are far than this
    blur_variance: float = 300.0  #: a tile is blurred below this variance of the Laplacian
    blur_fraction: float = 0.2  #: flag blur when more tiles than this are blurred
    pen_fraction: float = 0.05  #: flag pen marks when more tiles than this carry ink

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.least_k < 0:
            raise ConfigError(f"report top_k {self.top_k} must be >= 1, least_k >= 0")
        for name in ("ood_fraction", "blur_fraction", "pen_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"report {name} {getattr(self, name)}: must be within 0..1")
