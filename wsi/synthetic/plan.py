"""The plan of a synthetic cohort: its checked arguments, its texture sources, the
parameters its files depend on, and which slide belongs to which patient with which label.

Nothing here writes a file; :mod:`wsi.synthetic.cohort` builds what the plan says.
Sizes are in level-0 pixels, areas in level-0 square pixels, at ``COHORT_MPP``.
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from wsi._files import sha256_file
from wsi.errors import ConfigError
from wsi.synthetic.masks import COHORT_LAYOUT
from wsi.synthetic.slide import MAX_MASK_PIXELS, MAX_SIDE
from wsi.synthetic.stains import NO_STAIN_SHIFT, check_stain_shift, shift_stains
from wsi.synthetic.tasks import (
    CLASS_TASKS,
    LESION_CLASSES,
    check_task,
    class_labels,
    grade_range,
    task_params,
)
from wsi.synthetic.texture_sets import (
    BACKGROUND_SOURCES,
    DEFAULT_TEXTURE_SET,
    LESION_SOURCES,
    TextureSet,
    procedural_background,
    procedural_lesion_texture,
    texture_set,
)
from wsi.synthetic.textures import load_rgb

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
    "PlannedSlide",
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
    """Texture sources of the background tissue and of the lesions (RGB uint8 arrays).

    ``lesion_sets`` (class tasks only) holds one texture set per lesion class: set ``k``
    is the texture set's ``k``-th lesion image alone (``LESION_SOURCES[k]`` for the
    default set), or a procedural texture of its own.
    """

    background: list[np.ndarray]
    lesion: list[np.ndarray]
    lesion_sets: list[list[np.ndarray]] = field(default_factory=list)


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
    task: str = "binary"
    stain_shift: tuple[float, float, float] = NO_STAIN_SHIFT
    texture_set: str = DEFAULT_TEXTURE_SET

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
    task: Any = "binary",
    stain_shift: Any = NO_STAIN_SHIFT,
    textures: Any = DEFAULT_TEXTURE_SET,
) -> CohortArgs:
    """The arguments of :func:`make_cohort`, checked; :class:`ConfigError` names the first
    bad one."""
    task = check_task(task)
    tset = texture_set(textures).name
    shift = check_stain_shift(stain_shift)
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
    args = CohortArgs(n_slides, side, n_patients, pos, s, (lo, hi), ds, dmin, task, shift, tset)
    _check_lesion_fits(args)
    return args


def _check_lesion_fits(args: CohortArgs) -> None:
    """:class:`ConfigError` when one lesion of the minimum size exceeds the smallest
    upper lesion fraction a slide may get (grade 1's for ordinal) of the least tissue."""
    side, dmin = args.size, args.min_lesion_diameter_um
    hi = lesion_range(args, 1)[1]
    grade = " (grade_1's third of lesion_fraction)" if args.task == "ordinal" else ""
    min_area = args.min_lesion_area_l0
    least_tissue = TISSUE_FRACTION_RANGE[0] * 0.97 * side * side
    if args.positive_fraction > 0 and hi * least_tissue < min_area:
        need = math.ceil(math.sqrt(min_area / (hi * TISSUE_FRACTION_RANGE[0] * 0.97)))
        raise ConfigError(
            f"size={side} px is too small: a lesion of at least {dmin:g} um across "
            f"({min_area / 1e6:.2f} Mpx at {COHORT_MPP} um/px) exceeds {hi:.0%}{grade} of the "
            f"tissue (about {least_tissue / 1e6:.2f} Mpx). Use size >= {need}, a larger "
            "lesion_fraction high bound, or a smaller min_lesion_diameter_um."
        )


def lesion_range(args: CohortArgs, lesion_class: int | None) -> tuple[float, float]:
    """The lesion fraction range of a lesion slide of ``lesion_class`` (1-based; ordinal
    grades get increasing thirds of ``lesion_fraction``, every other slide all of it)."""
    if args.task == "ordinal" and lesion_class is not None:
        return grade_range(args.lesion_fraction, lesion_class)
    return args.lesion_fraction


def cohort_params(args: CohortArgs, textures: dict[str, Any]) -> dict[str, Any]:
    """What the cohort's files depend on: hashed into ``params_hash``.

    The texture set and the stain shift enter only when not at their defaults, so
    that a cohort made before they existed keeps its hash.
    """
    params: dict[str, Any] = {
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
        "textures": _texture_ids(textures),
        **task_params(args.task, args.lesion_fraction),
    }
    if args.texture_set != DEFAULT_TEXTURE_SET:
        params["texture_set"] = args.texture_set
    if args.stain_shift != NO_STAIN_SHIFT:
        params["stain_shift"] = list(args.stain_shift)
    return params


def _texture_ids(textures: dict[str, Any]) -> dict[str, Any]:
    """Each texture set's images by sha256 (by name when procedural)."""
    ids: dict[str, Any] = {
        k: [e["sha256"] or e["name"] for e in textures[k]] for k in ("background", "lesion")
    }
    if "lesion_sets" in textures:
        sets = textures["lesion_sets"]
        ids["lesion_sets"] = [[e["sha256"] or e["name"] for e in t] for t in sets]
    return ids


class PlannedSlide(NamedTuple):
    """One slide of the plan.

    ``label`` is ``tumor`` / ``normal``, or the class label of a class task
    (multiclass, ordinal); ``lesion_class`` is None outside the class tasks, else 0 for
    normal patients and ``k`` (1-based) for lesion class ``k``, painted with lesion
    texture set ``k - 1``.
    """

    slide_id: str
    patient_id: str
    label: str
    has_lesion: bool
    lesion_class: int | None = None


def _n_positive(positive_fraction: float, patients: int, task: str) -> int:
    """Number of lesion patients: ``positive_fraction`` of them, rounded; with a
    fraction strictly between 0 and 1, every class occurs where there are patients
    enough (class tasks: at least 2 patients a class from 8 patients on)."""
    n_pos = int(round(positive_fraction * patients))
    if not (0.0 < positive_fraction < 1.0 and patients >= 2):
        return n_pos
    least = 1
    if task in CLASS_TASKS and patients > LESION_CLASSES:  # each class at least once
        least = 2 if patients >= 2 * (LESION_CLASSES + 1) else 1  # twice from 8 patients
        return min(max(n_pos, LESION_CLASSES * least), patients - least)
    return min(max(n_pos, least), patients - least)  # both classes present


def _lesion_classes(rng: np.random.Generator, positive: np.ndarray) -> np.ndarray:
    """Class per patient: 0 for normal, lesion classes 1..LESION_CLASSES spread as evenly
    as possible over the ``positive`` patients, in random order."""
    import numpy as np

    n_pos = int(positive.sum())
    sizes = np.full(LESION_CLASSES, n_pos // LESION_CLASSES, dtype=np.int64)
    sizes[rng.choice(LESION_CLASSES, size=n_pos % LESION_CLASSES, replace=False)] += 1
    classes = np.zeros(len(positive), dtype=np.int64)
    classes[positive] = rng.permutation(np.repeat(np.arange(1, LESION_CLASSES + 1), sizes))
    return classes


def plan_slides(
    rng: np.random.Generator,
    slides: int,
    patients: int,
    positive_fraction: float,
    task: str = "binary",
) -> list[PlannedSlide]:
    """The slides, their patients and labels; labels are per patient.

    Lesion patients are ``tumor`` (or, for class tasks, one of the lesion classes,
    drawn after everything else so the binary plan keeps its draws).
    """
    import numpy as np

    counts = np.full(patients, slides // patients, dtype=np.int64)
    extra = rng.choice(patients, size=slides - int(counts.sum()), replace=False)
    counts[extra] += 1
    n_pos = _n_positive(positive_fraction, patients, task)
    positive = np.zeros(patients, dtype=bool)
    positive[rng.choice(patients, size=n_pos, replace=False)] = True
    owner = rng.permutation(np.repeat(np.arange(patients), counts))
    classes = _lesion_classes(rng, positive) if task in CLASS_TASKS else None
    width = max(3, len(str(max(slides, patients) - 1)))
    plan = []
    for i, p in enumerate(owner.tolist()):
        pos = bool(positive[p])
        label = LABEL_TUMOR if pos else LABEL_NORMAL
        k = None if classes is None else int(classes[p])
        if k is not None:
            label = class_labels(task)[k]
        plan.append(PlannedSlide(f"slide_{i:0{width}d}", f"patient_{p:0{width}d}", label, pos, k))
    return plan


def _texture_set(tile_dir: Path | None, names: tuple[str, ...]) -> list[tuple[str, Path]]:
    """The named source images present in ``tile_dir``: (name, path) pairs."""
    if tile_dir is None or not tile_dir.is_dir():
        return []
    return [(n, tile_dir / n) for n in names if (tile_dir / n).is_file()]


def _load_set(
    tile_dir: Path | None, names: tuple[str, ...]
) -> tuple[list[np.ndarray], list[dict[str, str]]]:
    """The usable named images of ``tile_dir`` and their entries (name, sha256)."""
    arrays: list[np.ndarray] = []
    entries: list[dict[str, str]] = []
    for name, path in _texture_set(tile_dir, names):
        arr = load_rgb(path)
        if arr is None or min(arr.shape[:2]) < 64:
            continue
        arrays.append(arr)
        entries.append({"name": name, "sha256": sha256_file(path)})
    return arrays, entries


def _lesion_sets(
    tset: TextureSet, lesion: list[np.ndarray], entries: list[dict[str, str]]
) -> tuple[list[list[np.ndarray]], list[list[dict[str, str]]]]:
    """One texture set per lesion class: the set's ``k``-th lesion image alone where it
    was loaded, else a procedural lesion texture of its own (seed and tint ``k``)."""
    by_name = {e["name"]: (arr, e) for arr, e in zip(lesion, entries, strict=True)}
    sets: list[list[np.ndarray]] = []
    described: list[list[dict[str, str]]] = []
    for k, name in enumerate(tset.lesion[:LESION_CLASSES]):
        if name in by_name:
            arr, entry = by_name[name]
        else:
            logger.warning("lesion texture set %d: no %s, using a procedural texture", k, name)
            arr = procedural_lesion_texture(tset, k)
            entry = {"name": tset.procedural_name(f"lesion-{k}"), "sha256": ""}
        sets.append([arr])
        described.append([entry])
    return sets, described


def load_cohort_sources(
    tile_dir: Path | None,
    per_class: bool = False,
    textures: str = DEFAULT_TEXTURE_SET,
    stain_shift: tuple[float, float, float] = NO_STAIN_SHIFT,
) -> tuple[CohortSources, dict[str, Any]]:
    """Background and lesion source images of the texture set ``textures`` plus their
    description for the manifest (``tile_dir`` and, per set, each image's name and
    sha256; the set's name and description where it is not the default).

    Each set falls back to a procedural texture (seeded by a constant, so the
    cohort stays deterministic) when none of its images is found.  With
    ``per_class`` (class tasks), also one lesion texture set per lesion class
    (``lesion_sets``; see :func:`_lesion_sets`).  Every source is then stain-shifted
    by ``stain_shift`` (:func:`wsi.synthetic.stains.shift_stains`; skipped at
    ``(1, 1, 1)``): the sources are small, the slides are made of them.
    """
    tset = texture_set(textures)
    described: dict[str, Any] = {"tile_dir": str(tile_dir) if tile_dir is not None else None}
    if tset.name != DEFAULT_TEXTURE_SET:  # default manifests are as before sets existed
        described["set"] = tset.manifest_entry()
    loaded: dict[str, list[np.ndarray]] = {}
    for key, names in (("background", tset.background), ("lesion", tset.lesion)):
        arrays, entries = _load_set(tile_dir, names)
        if not arrays:
            logger.warning("no %s H&E images in %s: using a procedural texture", key, tile_dir)
            is_bg = key == "background"
            arrays = [procedural_background(tset) if is_bg else procedural_lesion_texture(tset)]
            entries = [{"name": tset.procedural_name(key), "sha256": ""}]
        loaded[key] = arrays
        described[key] = entries
    sets: list[list[np.ndarray]] = []
    if per_class:
        sets, described["lesion_sets"] = _lesion_sets(tset, loaded["lesion"], described["lesion"])
    if stain_shift != NO_STAIN_SHIFT:
        loaded = {k: [shift_stains(a, stain_shift) for a in v] for k, v in loaded.items()}
        sets = [[shift_stains(a, stain_shift) for a in t] for t in sets]
    return CohortSources(loaded["background"], loaded["lesion"], sets), described
