"""The plan of a synthetic cohort: its checked arguments, its texture sources, the
parameters its files depend on, and which slide belongs to which patient with which label.

Nothing here writes a file; :mod:`wsi.synthetic.cohort` builds what the plan says.
Sizes are in level-0 pixels, areas in level-0 square pixels, at ``COHORT_MPP``.
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi._files import sha256_file
from wsi.errors import ConfigError
from wsi.synthetic.masks import COHORT_LAYOUT
from wsi.synthetic.slide import MAX_MASK_PIXELS, MAX_SIDE
from wsi.synthetic.textures import load_rgb, procedural_he, procedural_lesion

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

__all__ = [
    "BACKGROUND_SOURCES",
    "COHORT_MPP",
    "CohortArgs",
    "CohortSources",
    "LABEL_NORMAL",
    "LABEL_TUMOR",
    "LESION_SOURCES",
    "check_args",
    "cohort_params",
    "load_cohort_sources",
    "plan_slides",
]

logger = logging.getLogger(__name__)

#: Micrometres per level-0 pixel of every cohort slide.
COHORT_MPP = 0.25
#: Version of the generator; part of the parameter hash (bump when output changes).
COHORT_VERSION = 1
#: Real H&E images (relative to the tile folder) used for background (normal) tissue:
#: stroma, collagen, loose connective tissue and low-cellularity tissue.
BACKGROUND_SOURCES = (
    "histolab/very-low-nuclei-score-level0.png",
    "histolab/medium-nuclei-score-level0.png",
    "histolab/tissue-level0-4302-10273-4814-10785.png",
    "histolab/tissue-level0-7352-11762-7864-12274.png",
    "histolab/tissue-level2-3000-7666-7096-11763.png",
    "histoqc_template1.png",
)
#: Real H&E images used for lesions: dense, nuclei-rich carcinoma.
LESION_SOURCES = (
    "histolab/high-nuclei-score-level0.png",
    "histoqc_template3.png",
    "tiatoolbox_target_image.png",
)
#: Range of the slide area covered by tissue, drawn per slide.
TISSUE_FRACTION_RANGE = COHORT_LAYOUT.tissue_fraction
#: Most lesions on one tumour slide.
MAX_LESIONS = 3
#: Smallest accepted slide side, level-0 pixels.
MIN_SIZE = 512
#: JPEG quality and TIFF tile side of the slides.
QUALITY = 85
TIFF_TILE = 256
#: The two labels: every slide of a patient carries the patient's label.
LABEL_TUMOR = "tumor"
LABEL_NORMAL = "normal"


@dataclass(frozen=True)
class CohortSources:
    """Texture sources of the background tissue and of the lesions (RGB uint8 arrays)."""

    background: list[np.ndarray]
    lesion: list[np.ndarray]


@dataclass(frozen=True)
class CohortArgs:
    """The checked arguments of :func:`wsi.synthetic.make_cohort` (units as there)."""

    slides: int
    size: int
    patients: int
    positive_fraction: float
    seed: int
    lesion_fraction: tuple[float, float]
    mask_downsample: int
    min_lesion_diameter_um: float

    @property
    def min_lesion_area_l0(self) -> float:
        """Smallest lesion area in level-0 square pixels: a disk of the minimum diameter."""
        d_px = self.min_lesion_diameter_um / COHORT_MPP
        return math.pi / 4.0 * d_px * d_px


def _int_arg(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(f"{name} must be {bound}, got {v}")
    return v


def _float_arg(name: str, value: Any) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return v


def check_args(
    slides: Any,
    size: Any,
    patients: Any,
    positive_fraction: Any,
    seed: Any,
    lesion_fraction: Any,
    mask_downsample: Any,
    min_lesion_diameter_um: Any,
) -> CohortArgs:
    """The arguments of :func:`make_cohort`, checked; :class:`ConfigError` names the first
    bad one."""
    n_slides = _int_arg("slides", slides, 1)
    side = _int_arg("size", size, MIN_SIZE, MAX_SIDE)
    n_patients = (
        max(1, n_slides // 2) if patients is None else _int_arg("patients", patients, 1, n_slides)
    )
    pos = _float_arg("positive_fraction", positive_fraction)
    if not 0.0 <= pos <= 1.0:
        raise ConfigError(f"positive_fraction must be between 0 and 1, got {pos}")
    s = _int_arg("seed", seed, 0)
    try:
        lo, hi = (_float_arg("lesion_fraction", v) for v in lesion_fraction)
    except (TypeError, ValueError):
        raise ConfigError(
            f"lesion_fraction must be a (low, high) pair of fractions, got {lesion_fraction!r}"
        ) from None
    if not 0.0 < lo <= hi <= 0.5:
        raise ConfigError(f"lesion_fraction must satisfy 0 < low <= high <= 0.5, got {(lo, hi)}")
    ds = _int_arg("mask_downsample", mask_downsample, 1, side)
    if math.ceil(side / ds) ** 2 > MAX_MASK_PIXELS:
        raise ConfigError(f"mask_downsample={ds} is too small for {side}-pixel slides")
    dmin = _float_arg("min_lesion_diameter_um", min_lesion_diameter_um)
    if dmin <= 0:
        raise ConfigError(f"min_lesion_diameter_um must be positive, got {dmin}")
    args = CohortArgs(n_slides, side, n_patients, pos, s, (lo, hi), ds, dmin)
    min_area = args.min_lesion_area_l0
    least_tissue = TISSUE_FRACTION_RANGE[0] * 0.97 * side * side
    if pos > 0 and hi * least_tissue < min_area:
        need = math.ceil(math.sqrt(min_area / (hi * TISSUE_FRACTION_RANGE[0] * 0.97)))
        raise ConfigError(
            f"size={side} px is too small: a lesion of at least {dmin:g} um across "
            f"({min_area / 1e6:.2f} Mpx at {COHORT_MPP} um/px) exceeds {hi:.0%} of the tissue "
            f"(about {least_tissue / 1e6:.2f} Mpx). Use size >= {need}, a larger "
            "lesion_fraction high bound, or a smaller min_lesion_diameter_um."
        )
    return args


def cohort_params(args: CohortArgs, textures: dict[str, Any]) -> dict[str, Any]:
    """What the cohort's files depend on: hashed into ``params_hash``."""
    return {
        "version": COHORT_VERSION,
        "slides": args.slides,
        "size": args.size,
        "mpp": COHORT_MPP,
        "patients": args.patients,
        "positive_fraction": args.positive_fraction,
        "seed": args.seed,
        "lesion_fraction": list(args.lesion_fraction),
        "min_lesion_diameter_um": args.min_lesion_diameter_um,
        "mask_downsample": args.mask_downsample,
        "tissue_fraction_range": list(TISSUE_FRACTION_RANGE),
        "jpeg_quality": QUALITY,
        "tiff_tile": TIFF_TILE,
        "textures": {
            k: [e["sha256"] or e["name"] for e in textures[k]] for k in ("background", "lesion")
        },
    }


def plan_slides(
    rng: np.random.Generator, slides: int, patients: int, positive_fraction: float
) -> list[tuple[str, str, str]]:
    """(slide_id, patient_id, label) per slide; labels are per patient."""
    import numpy as np

    counts = np.full(patients, slides // patients, dtype=np.int64)
    extra = rng.choice(patients, size=slides - int(counts.sum()), replace=False)
    counts[extra] += 1
    n_pos = int(round(positive_fraction * patients))
    if 0.0 < positive_fraction < 1.0 and patients >= 2:
        n_pos = min(max(n_pos, 1), patients - 1)  # both classes present
    positive = np.zeros(patients, dtype=bool)
    positive[rng.choice(patients, size=n_pos, replace=False)] = True
    owner = rng.permutation(np.repeat(np.arange(patients), counts))
    width = max(3, len(str(max(slides, patients) - 1)))
    return [
        (
            f"slide_{i:0{width}d}",
            f"patient_{int(p):0{width}d}",
            LABEL_TUMOR if positive[int(p)] else LABEL_NORMAL,
        )
        for i, p in enumerate(owner)
    ]


def _texture_set(tile_dir: Path | None, names: tuple[str, ...]) -> list[tuple[str, Path]]:
    """The named source images present in ``tile_dir``: (name, path) pairs."""
    if tile_dir is None or not tile_dir.is_dir():
        return []
    return [(n, tile_dir / n) for n in names if (tile_dir / n).is_file()]


def load_cohort_sources(tile_dir: Path | None) -> tuple[CohortSources, dict[str, Any]]:
    """Background and lesion source images plus their description for the manifest
    (``tile_dir`` and, per set, each image's name and sha256).

    Each set falls back to a procedural texture (seeded by a constant, so the
    cohort stays deterministic) when none of its images is found.
    """
    import numpy as np

    described: dict[str, Any] = {"tile_dir": str(tile_dir) if tile_dir is not None else None}
    loaded: dict[str, list[np.ndarray]] = {}
    for key, names in (("background", BACKGROUND_SOURCES), ("lesion", LESION_SOURCES)):
        arrays: list[np.ndarray] = []
        entries: list[dict[str, str]] = []
        for name, path in _texture_set(tile_dir, names):
            arr = load_rgb(path)
            if arr is None or min(arr.shape[:2]) < 64:
                continue
            arrays.append(arr)
            entries.append({"name": name, "sha256": sha256_file(path)})
        if not arrays:
            logger.warning("no %s H&E images in %s: using a procedural texture", key, tile_dir)
            rng = np.random.default_rng(1 if key == "background" else 2)
            arrays = [procedural_he(rng) if key == "background" else procedural_lesion(rng)]
            entries = [{"name": f"procedural-{key}", "sha256": ""}]
        loaded[key] = arrays
        described[key] = entries
    return CohortSources(loaded["background"], loaded["lesion"]), described
