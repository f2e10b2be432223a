"""A labelled benchmark cohort of synthetic slides with known lesion ground truth.

:func:`make_cohort` writes, under ``out_dir``::

    slides/<slide_id>.tiff          pyramidal JPEG TIFF, mpp 0.25 (TIFF resolution tags)
    masks/<slide_id>_tissue.png     uint8 0/255 tissue mask
    masks/<slide_id>_lesion.png     uint8 0/255 lesion mask (all zero on normal slides)
    masks/<slide_id>.json           per-slide record (written last: marks the slide done)
    labels.csv                      slide_id,patient_id,label   (label "tumor" / "normal")
    cohort.json                     manifest: parameters, texture sources, per-slide truth

Both masks have one mask pixel per ``mask_downsample`` x ``mask_downsample`` level-0
pixels (default 16): mask pixel ``(row i, column j)`` covers level-0 pixels
``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)`` in (x, y).  All sizes and coordinates are in
level-0 pixels unless a name says otherwise; areas in level-0 square pixels.

Labels are per patient: a patient is either ``tumor`` or ``normal`` and every slide of
that patient carries the patient's label.  Each ``tumor`` slide holds one to three
lesions; each ``normal`` slide holds none.  A lesion is a blobby region inside the
tissue, filled with a texture drawn from a different set of real H&E images than the
background tissue (dense, nuclei-rich tumour tiles versus stroma / low-cellularity
tiles, see :data:`LESION_SOURCES` and :data:`BACKGROUND_SOURCES`), blended into it over
a ragged border a few pixels wide; the ground-truth border is the 0.5 level of that
blend.

Lesion size.  The lesions of a slide cover together a fraction of its *tissue* area
drawn uniformly in ``lesion_fraction`` (default 1 % .. 10 %), and each lesion covers at
least a disk of ``min_lesion_diameter_um`` (default 256 um: two 256-pixel tiles at
0.5 um/px across, about three such tiles in area) so that it holds several whole tiles.
Both constraints hold at once only when the tissue is large enough: the number of
lesions is capped by what fits, and the lower end of the fraction range is raised to
``n_lesions * minimum area / tissue area`` where needed (on 4000-pixel slides, about
7-10 % of the tissue, always a single lesion).  A slide size that cannot hold even one
lesion within the upper bound is refused with :class:`~wsi.errors.ConfigError`.
Cohort slides have more tissue than :func:`wsi.synthetic.make_synthetic_slide`'s
(65-80 % of the slide) so that small slides can hold a lesion.

Runs are deterministic given ``seed`` and idempotent: a slide whose record in
``masks/<slide_id>.json`` carries the same parameter hash is skipped.  Every file is
written under a temporary name and renamed, so a killed run never leaves a
half-written slide under its final name, and a re-run resumes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import operator
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pyvips

__all__ = [
    "BACKGROUND_SOURCES",
    "COHORT_MPP",
    "Cohort",
    "LESION_SOURCES",
    "lesion_fraction_of_tiles",
    "load_cohort",
    "make_cohort",
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
TISSUE_FRACTION_RANGE = (0.65, 0.80)
#: Most lesions on one tumour slide.
MAX_LESIONS = 3
#: Smallest accepted slide side, level-0 pixels.
MIN_SIZE = 512
#: JPEG quality and TIFF tile side of the slides.
_QUALITY = 85
_TIFF_TILE = 256
#: Side of the coarse grid on which the tissue layout is designed.
_LAYOUT_GRID = 512
#: Ragged lesion border: amplitude (8-bit alpha levels) and scale (level-0 px) of noise.
_BORDER_NOISE = 60.0
_BORDER_NOISE_SIGMA = 3.0
_BORDER_NOISE_TILE = 512

LABEL_TUMOR = "tumor"
LABEL_NORMAL = "normal"


@dataclass(frozen=True)
class Cohort:
    """Where a cohort lives.

    Attributes:
        out_dir: The cohort folder.
        slides: The slide TIFFs, in slide-id order.
        labels_csv: ``labels.csv`` (``slide_id,patient_id,label``).
        masks_dir: Folder of ``<slide_id>_lesion.png`` / ``<slide_id>_tissue.png``.
        manifest: ``cohort.json``.
        mask_downsample: Level-0 pixels per mask pixel along each axis.
    """

    out_dir: Path
    slides: tuple[Path, ...]
    labels_csv: Path
    masks_dir: Path
    manifest: Path
    mask_downsample: int

    def lesion_mask(self, slide_id: str) -> Path:
        """The lesion mask PNG of ``slide_id``."""
        return self.masks_dir / f"{slide_id}_lesion.png"

    def tissue_mask(self, slide_id: str) -> Path:
        """The tissue mask PNG of ``slide_id``."""
        return self.masks_dir / f"{slide_id}_tissue.png"


# --------------------------------------------------------------------------- #
# argument checking
# --------------------------------------------------------------------------- #


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


def _min_lesion_area_l0(min_lesion_diameter_um: float) -> float:
    """Smallest lesion area in level-0 square pixels: a disk of the given diameter."""
    d_px = min_lesion_diameter_um / COHORT_MPP
    return math.pi / 4.0 * d_px * d_px


# --------------------------------------------------------------------------- #
# numpy layout: tissue, lesions, labels
# --------------------------------------------------------------------------- #


def _tissue_layout(rng: np.random.Generator, mask_h: int, mask_w: int) -> np.ndarray:
    """A large ragged tissue section covering 65-80 % of the slide, uint8 0/255.

    Designed on a coarse grid (longest side at most ``_LAYOUT_GRID``), upsampled
    bilinearly in row chunks, then thresholded at the quantile giving the drawn
    tissue fraction.  A margin of about 3 % of the slide is kept free of tissue.
    """
    import numpy as np

    from wsi.synthetic import _smooth_noise, threshold_field

    scale = min(1.0, _LAYOUT_GRID / max(mask_h, mask_w))
    gh, gw = max(1, round(mask_h * scale)), max(1, round(mask_w * scale))
    side = float(max(gh, gw))
    yy = ((np.arange(gh, dtype=np.float32) + 0.5) / side)[:, None]
    xx = ((np.arange(gw, dtype=np.float32) + 0.5) / side)[None, :]
    hy, wx = gh / side, gw / side
    field = np.zeros((gh, gw), dtype=np.float32)
    for _ in range(int(rng.integers(1, 3))):
        cy, cx = rng.uniform(0.4, 0.6) * hy, rng.uniform(0.4, 0.6) * wx
        a = rng.uniform(0.45, 0.6) * max(hy, wx)
        b = a * rng.uniform(0.7, 1.0)
        theta = rng.uniform(0, math.pi)
        c, s = math.cos(theta), math.sin(theta)
        dy, dx = yy - cy, xx - cx
        u = (dx * c + dy * s) / a
        v = (-dx * s + dy * c) / b
        field = np.maximum(field, np.exp(-0.5 * (u * u + v * v) ** 1.5))
    for _ in range(int(rng.integers(0, 3))):  # a few small holes
        cy, cx = rng.uniform(0.2, 0.8) * hy, rng.uniform(0.2, 0.8) * wx
        r = rng.uniform(0.015, 0.035) * max(hy, wx)
        field -= 0.8 * np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / (r * r))
    field += 0.15 * _smooth_noise(rng, (gh, gw), sigma=max(0.6, 0.04 * side))
    field += 0.06 * _smooth_noise(rng, (gh, gw), sigma=max(0.5, 0.012 * side))
    margin = 0.03
    ey = np.clip(np.minimum(yy, hy - yy) / (margin * hy + 1e-6), 0, 1)
    ex = np.clip(np.minimum(xx, wx - xx) / (margin * wx + 1e-6), 0, 1)
    field = field * (ey * ex) - 2.0 * (1.0 - ey * ex)
    target = float(rng.uniform(*TISSUE_FRACTION_RANGE))
    threshold = float(np.quantile(field, 1.0 - target))

    return threshold_field(field, threshold, mask_h, mask_w)


def _box_sums(a: np.ndarray, half: int) -> np.ndarray:
    """Sum of ``a`` over the ``(2*half+1)``-square box centred on each pixel (zero-padded)."""
    import numpy as np

    h, w = a.shape
    s = np.zeros((h + 1, w + 1), dtype=np.float64)
    s[1:, 1:] = a.astype(np.float64).cumsum(0).cumsum(1)
    y0 = np.clip(np.arange(h) - half, 0, h)
    y1 = np.clip(np.arange(h) + half + 1, 0, h)
    x0 = np.clip(np.arange(w) - half, 0, w)
    x1 = np.clip(np.arange(w) + half + 1, 0, w)
    out: np.ndarray = s[y1][:, x1] - s[y0][:, x1] - s[y1][:, x0] + s[y0][:, x0]
    return out


def _split_areas(rng: np.random.Generator, total: float, n: int, minimum: float) -> list[float]:
    """Split ``total`` into ``n`` random parts, each at least ``minimum`` (same units)."""
    import numpy as np

    spare = max(0.0, total - n * minimum)
    weights = rng.dirichlet(np.full(n, 2.0)) if n > 1 else np.ones(1)
    return [minimum + spare * float(w) for w in weights]


def _lesion_layout(
    rng: np.random.Generator,
    tissue: np.ndarray,
    tissue_px: int,
    fraction_range: tuple[float, float],
    min_area_mask_px: float,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Lesion mask (uint8 0/255, same grid as ``tissue``) and one record per lesion.

    The lesions lie inside the tissue and do not overlap; together they cover a
    fraction of ``tissue_px`` (tissue pixels of the mask) drawn in ``fraction_range``
    after raising its lower end so that each lesion has at least
    ``min_area_mask_px`` mask pixels.  Areas in the records are in mask pixels.
    """
    import numpy as np

    from wsi.synthetic import _smooth_noise

    lo, hi = fraction_range
    n_fit = int(math.floor(hi * tissue_px / min_area_mask_px))
    if n_fit < 1:
        logger.warning(
            "tissue too small for a lesion of the minimum size within %.1f%% of the tissue; "
            "using one lesion of %.1f%%",
            100 * hi,
            100 * hi,
        )
        n, min_area = 1, hi * tissue_px
    else:
        n, min_area = int(rng.integers(1, min(MAX_LESIONS, n_fit) + 1)), min_area_mask_px
    f_lo = min(hi, max(lo, n * min_area / tissue_px))
    total = float(rng.uniform(f_lo, hi)) * tissue_px
    areas = _split_areas(rng, total, n, min_area)

    is_tissue = tissue > 0
    lesion = np.zeros(tissue.shape, dtype=bool)
    reserved = np.zeros(tissue.shape, dtype=bool)  # lesions and a margin around them
    h, w = tissue.shape
    records: list[dict[str, Any]] = []
    for area in sorted(areas, reverse=True):
        k = max(1, int(round(area)))
        r = math.sqrt(k / math.pi)
        half = max(1, int(math.ceil(1.3 * r)))
        box = (2 * half + 1) ** 2
        score = _box_sums(is_tissue & ~reserved, half) / box
        best = float(score.max())
        cand = np.argwhere(score >= min(0.999, best - 1e-9))
        cy, cx = (int(v) for v in cand[int(rng.integers(len(cand)))])
        # Blob: anisotropic distance to the centre perturbed by smooth noise; the k
        # allowed pixels with the highest score form the lesion (area exact).
        win = int(math.ceil(3.5 * r)) + 2
        y0, y1 = max(0, cy - win), min(h, cy + win + 1)
        x0, x1 = max(0, cx - win), min(w, cx + win + 1)
        gy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        gx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        theta = rng.uniform(0, math.pi)
        aspect = rng.uniform(0.55, 1.0)
        c, s = math.cos(theta), math.sin(theta)
        u = (gx * c + gy * s) / (r / math.sqrt(aspect))
        v = (-gx * s + gy * c) / (r * math.sqrt(aspect))
        shape = (y1 - y0, x1 - x0)
        noise = 0.22 * _smooth_noise(rng, shape, sigma=max(1.0, 0.4 * r))
        noise += 0.08 * _smooth_noise(rng, shape, sigma=max(0.7, 0.1 * r))
        field = -np.sqrt(u * u + v * v) + noise
        allowed = is_tissue[y0:y1, x0:x1] & ~lesion[y0:y1, x0:x1]
        field = np.where(allowed, field, -np.inf)
        k = min(k, int(allowed.sum()))
        flat = np.argpartition(field.ravel(), field.size - k)[field.size - k :]
        sel = np.zeros(field.size, dtype=bool)
        sel[flat] = True
        sel = sel.reshape(shape)
        lesion[y0:y1, x0:x1] |= sel
        ys, xs = np.nonzero(sel)
        records.append(
            {
                "area_mask_px": int(k),
                "bbox_mask": [
                    int(xs.min() + x0),
                    int(ys.min() + y0),
                    int(xs.max() + x0 + 1),
                    int(ys.max() + y0 + 1),
                ],
            }
        )
        # keep later lesions apart from this one (by about a third of its radius)
        pad = max(1, int(round(r / 3)))
        grown = _box_sums(lesion, pad) > 0
        reserved |= grown
    return np.where(lesion, 255, 0).astype(np.uint8), records


def _plan(
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


# --------------------------------------------------------------------------- #
# textures and pipeline
# --------------------------------------------------------------------------- #


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _texture_set(tile_dir: Path, names: tuple[str, ...]) -> list[tuple[str, Path]]:
    """The named source images present in ``tile_dir``: (name, path) pairs."""
    return [(n, tile_dir / n) for n in names if (tile_dir / n).is_file()]


def _procedural_lesion(rng: np.random.Generator) -> np.ndarray:
    """Fallback lesion texture: a procedural H&E texture pushed towards haematoxylin.

    Used only when no lesion source image is available; darker and bluer than the
    procedural background, with the nuclei texture kept.
    """
    import numpy as np

    from wsi.synthetic import _procedural_he, _smooth_noise

    base = _procedural_he(rng).astype(np.float32)
    mod = _smooth_noise(rng, base.shape[:2], sigma=6.0)[..., None]
    purple = np.array([80.0, 45.0, 130.0], dtype=np.float32)
    out = 0.5 * base + 0.5 * purple + 12.0 * mod
    return np.clip(out, 0, 255).astype(np.uint8)


def _load_textures(
    tile_dir: Path | None,
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """Background and lesion source images plus their description for the manifest.

    Each set falls back to a procedural texture (seeded by a constant, so the
    cohort stays deterministic) when none of its images is found.
    """
    import numpy as np

    from wsi.synthetic import _load_rgb, _procedural_he

    described: dict[str, Any] = {"tile_dir": str(tile_dir) if tile_dir is not None else None}
    loaded: dict[str, list[np.ndarray]] = {}
    for key, names in (("background", BACKGROUND_SOURCES), ("lesion", LESION_SOURCES)):
        found = _texture_set(tile_dir, names) if tile_dir is not None and tile_dir.is_dir() else []
        arrays: list[np.ndarray] = []
        entries: list[dict[str, str]] = []
        for name, path in found:
            arr = _load_rgb(path)
            if arr is None or min(arr.shape[:2]) < 64:
                continue
            arrays.append(arr)
            entries.append({"name": name, "sha256": _sha256(path)})
        if not arrays:
            logger.warning("no %s H&E images in %s: using a procedural texture", key, tile_dir)
            rng = np.random.default_rng(1 if key == "background" else 2)
            arrays = [_procedural_he(rng) if key == "background" else _procedural_lesion(rng)]
            entries = [{"name": f"procedural-{key}", "sha256": ""}]
        loaded[key] = arrays
        described[key] = entries
    return loaded["background"], loaded["lesion"], described


def _texture_layer(
    rng: np.random.Generator, sources: list[np.ndarray], width: int, height: int
) -> pyvips.Image:
    """Lazy ``width`` x ``height`` RGB texture: two mosaics picked per cell (see synthetic)."""
    import numpy as np

    from wsi.synthetic import _CELL, _mosaic, _repeat_to, _vips_from_numpy

    tex_a = _repeat_to(_vips_from_numpy(_mosaic(rng, sources)), width, height)
    tex_b = _repeat_to(_vips_from_numpy(_mosaic(rng, sources)), width, height)
    sel = rng.random((-(-height // _CELL), -(-width // _CELL))) < 0.5
    selector = (
        _vips_from_numpy(np.where(sel, 255, 0).astype(np.uint8))
        .zoom(_CELL, _CELL)
        .crop(0, 0, width, height)
    )
    return selector.ifthenelse(tex_a, tex_b)


def _slide_pipeline(
    tissue: np.ndarray,
    lesion: np.ndarray | None,
    size: int,
    ds: int,
    background: list[np.ndarray],
    lesion_sources: list[np.ndarray],
    rng_bg: np.random.Generator,
    rng_lesion: np.random.Generator,
) -> pyvips.Image:
    """The lazy level-0 RGB image: background tissue, glass, and lesions blended in.

    The lesion alpha is the lesion mask upsampled bilinearly (pixel centres aligned,
    so its 0.5 level is the ground-truth border), roughened by smooth noise and
    confined to the tissue.
    """
    import numpy as np

    from wsi.synthetic import (
        _build_pipeline,
        _repeat_to,
        _smooth_noise,
        _upscale_mask,
        _vips_from_numpy,
    )

    base = _build_pipeline(tissue, size, size, ds, background, rng_bg)
    if lesion is None:
        return base
    tex = _texture_layer(rng_lesion, lesion_sources, size, size)
    side = _BORDER_NOISE_TILE
    noise_np = _BORDER_NOISE * _smooth_noise(rng_lesion, (side, side), _BORDER_NOISE_SIGMA)
    noise = _repeat_to(_vips_from_numpy(noise_np.astype(np.float32)), size, size)
    up = _vips_from_numpy(lesion).resize(ds, kernel="linear")
    if up.width < size or up.height < size:
        up = up.embed(0, 0, max(size, up.width), max(size, up.height), extend="copy")
    up = up.crop(0, 0, size, size)
    alpha = ((up.cast("float") - 127.5) * 2.0 + 127.5 + noise).cast("uchar")  # cast clamps
    alpha = alpha & _upscale_mask(_vips_from_numpy(tissue), ds, size, size)
    blended = (tex.cast("float") * alpha + base.cast("float") * (255 - alpha)) / 255.0
    return (blended + 0.5).cast("uchar").copy(interpretation="srgb")


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = _tmp_name(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json_atomic(path: Path, obj: Any) -> None:
    _write_bytes_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _write_png_atomic(path: Path, mask: np.ndarray) -> None:
    from wsi.synthetic import _vips_from_numpy

    tmp = _tmp_name(path)
    try:
        _vips_from_numpy(mask).pngsave(str(tmp), compression=6)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_tiff_atomic(path: Path, image: pyvips.Image) -> None:
    from wsi.synthetic import save_slide_tiff

    tmp = _tmp_name(path)
    try:
        save_slide_tiff(image, tmp, mpp=COHORT_MPP, quality=_QUALITY, tile=_TIFF_TILE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _remove_stale_partials(*folders: Path) -> None:
    """Remove temporary files left by a killed run (concurrent runs are not supported)."""
    for folder in folders:
        for p in folder.glob(".*.partial.*"):
            logger.info("removing a partial file left by an interrupted run: %s", p)
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


def make_cohort(
    out_dir: str | os.PathLike[str],
    *,
    slides: int = 60,
    size: int = 4000,
    patients: int | None = None,
    positive_fraction: float = 0.5,
    seed: int = 0,
    lesion_fraction: tuple[float, float] = (0.01, 0.10),
    tile_source_dir: str | os.PathLike[str] | None = None,
    mask_downsample: int = 16,
    min_lesion_diameter_um: float = 256.0,
    overwrite: bool = False,
) -> Cohort:
    """Write a labelled cohort of synthetic slides with lesion ground truth (see module doc).

    Args:
        out_dir: Cohort folder (created).
        slides: Number of slides, >= 1.
        size: Side of every (square) slide in level-0 pixels at ``COHORT_MPP``
            (0.25 um/px), 512 to 200,000 (4000 px is 1 mm).
        patients: Number of patients, 1..``slides`` (default ``max(1, slides // 2)``:
            two slides per patient).  Slides are spread as evenly as possible.
        positive_fraction: Fraction of *patients* labelled ``tumor`` (rounded; when
            strictly between 0 and 1 and there are two patients or more, both labels
            occur).  Every slide of a patient carries the patient's label.
        seed: Non-negative seed; the same arguments give the same files.
        lesion_fraction: ``(low, high)`` fraction of the tissue area covered by the
            lesions of a tumour slide, ``0 < low <= high <= 0.5``; ``low`` is raised
            per slide where the minimum lesion size demands it.
        tile_source_dir: Folder of the real H&E images (default
            ``<repo>/../shared/data/tiles``); a procedural texture replaces a
            texture set none of whose images is there.
        mask_downsample: Level-0 pixels per mask pixel of the tissue and lesion masks,
            1 to ``size``, large enough that a mask holds at most 64 million pixels.
        min_lesion_diameter_um: Each lesion covers at least the area of a disk of
            this diameter, micrometres.
        overwrite: Regenerate a cohort folder that holds a cohort made with other
            parameters (otherwise refused).

    Returns:
        The :class:`Cohort`.

    Raises:
        ConfigError: On an invalid argument, a slide too small for one lesion of the
            minimum size within ``lesion_fraction``, or a folder holding a cohort
            made with other parameters (without ``overwrite``).

    Example::

        cohort = wsi.make_cohort("cohort", slides=20, size=8000, seed=1)
        cohort.slides[0]                  # cohort/slides/slide_000.tiff, 8000 x 8000 px
        cohort.labels_csv                 # cohort/labels.csv: slide_id,patient_id,label
        for slide in cohort.slides:       # then the usual pipeline
            wsi.tile_slide(slide, "cohort/stores")
        cohort.lesion_mask("slide_000")   # cohort/masks/slide_000_lesion.png, 1 px: 16 x 16 px
    """
    import numpy as np

    from wsi.synthetic import MAX_MASK_PIXELS, MAX_SIDE, _tissue_fraction, default_tile_source_dir

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
    min_area = _min_lesion_area_l0(dmin)
    least_tissue = TISSUE_FRACTION_RANGE[0] * 0.97 * side * side
    if pos > 0 and hi * least_tissue < min_area:
        need = math.ceil(math.sqrt(min_area / (hi * TISSUE_FRACTION_RANGE[0] * 0.97)))
        raise ConfigError(
            f"size={side} px is too small: a lesion of at least {dmin:g} um across "
            f"({min_area / 1e6:.2f} Mpx at {COHORT_MPP} um/px) exceeds {hi:.0%} of the tissue "
            f"(about {least_tissue / 1e6:.2f} Mpx). Use size >= {need}, a larger "
            "lesion_fraction high bound, or a smaller min_lesion_diameter_um."
        )

    out = Path(out_dir)
    slides_dir, masks_dir = out / "slides", out / "masks"
    manifest_path, labels_path = out / "cohort.json", out / "labels.csv"
    tile_dir = Path(tile_source_dir) if tile_source_dir is not None else default_tile_source_dir()
    background, lesion_sources, textures = _load_textures(tile_dir)

    params: dict[str, Any] = {
        "version": COHORT_VERSION,
        "slides": n_slides,
        "size": side,
        "mpp": COHORT_MPP,
        "patients": n_patients,
        "positive_fraction": pos,
        "seed": s,
        "lesion_fraction": [lo, hi],
        "min_lesion_diameter_um": dmin,
        "mask_downsample": ds,
        "tissue_fraction_range": list(TISSUE_FRACTION_RANGE),
        "jpeg_quality": _QUALITY,
        "tiff_tile": _TIFF_TILE,
        "textures": {
            k: [e["sha256"] or e["name"] for e in textures[k]] for k in ("background", "lesion")
        },
    }
    phash = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    plan = _plan(np.random.default_rng([s, 0xC0]), n_slides, n_patients, pos)

    old = _read_json(manifest_path)
    if old is not None and old.get("params_hash") != phash:
        if not overwrite:
            raise ConfigError(
                f"{out} holds a cohort made with other parameters ({old.get('params_hash')}); "
                "pass overwrite=True (--overwrite) to replace it, or choose another folder"
            )
        keep = {sid for sid, _, _ in plan}
        for rec in old.get("slides", []):
            sid = str(rec.get("slide_id", ""))
            if sid and sid not in keep:
                for p in (
                    slides_dir / f"{sid}.tiff",
                    masks_dir / f"{sid}_lesion.png",
                    masks_dir / f"{sid}_tissue.png",
                    masks_dir / f"{sid}.json",
                ):
                    p.unlink(missing_ok=True)
    slides_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out, slides_dir, masks_dir)

    manifest: dict[str, Any] = {
        "format": "wsi-cohort",
        "params": params,
        "params_hash": phash,
        "mpp": COHORT_MPP,
        "size": side,
        "mask_downsample": ds,
        "mask_pixel": "mask pixel (i, j) covers level-0 [j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)",
        "label_rule": "per patient: every slide of a patient carries the patient's label; "
        "tumor slides hold 1-3 lesions, normal slides none",
        "textures": textures,
        "complete": False,
        "slides": [],
    }
    _write_json_atomic(manifest_path, manifest)

    t_all = time.monotonic()
    mask_side = -(-side // ds)
    min_area_mask = min_area / (ds * ds)
    records: list[dict[str, Any]] = []
    written = 0
    for index, (sid, pid, label) in enumerate(plan):
        tiff = slides_dir / f"{sid}.tiff"
        lesion_png = masks_dir / f"{sid}_lesion.png"
        tissue_png = masks_dir / f"{sid}_tissue.png"
        sidecar = masks_dir / f"{sid}.json"
        rec = _read_json(sidecar)
        if (
            rec is not None
            and rec.get("params_hash") == phash
            and all(p.is_file() for p in (tiff, lesion_png, tissue_png))
        ):
            logger.debug("%s: already written, skipped", sid)
            records.append(rec)
            continue
        t0 = time.monotonic()
        ss_tissue, ss_bg, ss_lesion, ss_tex = np.random.SeedSequence([s, index, 0x51]).spawn(4)
        tissue = _tissue_layout(np.random.default_rng(ss_tissue), mask_side, mask_side)
        tissue_fraction = _tissue_fraction(tissue, side, side, ds)
        tissue_px = int((tissue > 0).sum())
        lesions: list[dict[str, Any]] = []
        lesion: np.ndarray | None = None
        if label == LABEL_TUMOR:
            lesion, lesions = _lesion_layout(
                np.random.default_rng(ss_lesion), tissue, tissue_px, (lo, hi), min_area_mask
            )
        lesion_px = int((lesion > 0).sum()) if lesion is not None else 0
        for les in lesions:
            les["area_l0"] = les["area_mask_px"] * ds * ds
            les["bbox_l0"] = [min(v * ds, side) for v in les["bbox_mask"]]
        image = _slide_pipeline(
            tissue,
            lesion,
            side,
            ds,
            background,
            lesion_sources,
            np.random.default_rng(ss_bg),
            np.random.default_rng(ss_tex),
        )
        empty = np.zeros_like(tissue)
        _write_png_atomic(tissue_png, tissue)
        _write_png_atomic(lesion_png, lesion if lesion is not None else empty)
        _write_tiff_atomic(tiff, image)
        rec = {
            "slide_id": sid,
            "patient_id": pid,
            "label": label,
            "slide": f"slides/{tiff.name}",
            "tissue_mask": f"masks/{tissue_png.name}",
            "lesion_mask": f"masks/{lesion_png.name}",
            "width": side,
            "height": side,
            "mpp": COHORT_MPP,
            "mask_downsample": ds,
            "tissue_fraction": round(tissue_fraction, 6),
            "tissue_mask_px": tissue_px,
            "lesion_mask_px": lesion_px,
            "lesion_fraction": round(lesion_px / tissue_px, 6) if tissue_px else 0.0,
            "n_lesions": len(lesions),
            "lesions": lesions,
            "params_hash": phash,
        }
        _write_json_atomic(sidecar, rec)
        records.append(rec)
        written += 1
        logger.info(
            "%s (%s, %s): %d lesion(s), %.1f%% of tissue, in %.1fs",
            sid,
            pid,
            label,
            len(lesions),
            100 * rec["lesion_fraction"],
            time.monotonic() - t0,
        )

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["slide_id", "patient_id", "label"])
    for rec in records:
        writer.writerow([rec["slide_id"], rec["patient_id"], rec["label"]])
    _write_bytes_atomic(labels_path, buf.getvalue().encode())
    manifest["slides"] = records
    manifest["complete"] = True
    _write_json_atomic(manifest_path, manifest)
    logger.info(
        "cohort %s: %d slides (%d written, %d already there) in %.1fs",
        out,
        len(records),
        written,
        len(records) - written,
        time.monotonic() - t_all,
    )
    return Cohort(
        out_dir=out,
        slides=tuple(slides_dir / f"{r['slide_id']}.tiff" for r in records),
        labels_csv=labels_path,
        masks_dir=masks_dir,
        manifest=manifest_path,
        mask_downsample=ds,
    )


def load_cohort(out_dir: str | os.PathLike[str]) -> Cohort:
    """Open a complete cohort written by :func:`make_cohort`.

    Raises:
        ConfigError: When ``out_dir`` holds no complete cohort manifest.
    """
    out = Path(out_dir)
    manifest = _read_json(out / "cohort.json")
    if manifest is None or not manifest.get("complete"):
        raise ConfigError(f"{out}: no complete cohort (cohort.json); run make_cohort first")
    return Cohort(
        out_dir=out,
        slides=tuple(out / str(r["slide"]) for r in manifest["slides"]),
        labels_csv=out / "labels.csv",
        masks_dir=out / "masks",
        manifest=out / "cohort.json",
        mask_downsample=int(manifest["mask_downsample"]),
    )


def lesion_fraction_of_tiles(
    mask_path: str | os.PathLike[str] | np.ndarray,
    coords_l0: Any,
    footprint_l0: float | tuple[float, float],
    downsample: float,
) -> np.ndarray:
    """Fraction of each tile's area that lies inside the lesion mask.

    Args:
        mask_path: Lesion mask PNG (or a 2-D array); pixels > 127 are lesion.  Mask
            pixel ``(i, j)`` covers level-0 ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)``.
        coords_l0: ``(N, 2)`` level-0 top-left ``(x, y)`` of the tiles (as in a
            store's ``tiles/coords``).
        footprint_l0: Tile side in level-0 pixels, or ``(width, height)``.
        downsample: Level-0 pixels per mask pixel (``ds``).

    Returns:
        float64 ``(N,)`` in [0, 1]: exact area fractions (the mask is treated as
        piecewise constant; area outside the mask counts as non-lesion).

    Raises:
        ConfigError: On a bad shape, footprint or downsample.
    """
    import numpy as np

    if isinstance(mask_path, np.ndarray):
        mask = mask_path
    else:
        from PIL import Image

        with Image.open(mask_path) as im:
            mask = np.asarray(im.convert("L"))
    if mask.ndim != 2 or mask.size == 0:
        raise ConfigError(f"lesion mask must be a non-empty 2-D image, got shape {mask.shape}")
    xy = np.asarray(coords_l0, dtype=np.float64).reshape(-1, 2)
    if isinstance(footprint_l0, (tuple, list)):
        fw, fh = (float(v) for v in footprint_l0)
    else:
        fw = fh = float(footprint_l0)
    ds = float(downsample)
    if not (fw > 0 and fh > 0 and ds > 0):
        raise ConfigError(
            f"footprint_l0 and downsample must be positive, got {footprint_l0!r}, {downsample!r}"
        )
    h, w = mask.shape
    s = np.zeros((h + 1, w + 1), dtype=np.float64)
    s[1:, 1:] = (mask > 127).astype(np.float64).cumsum(0).cumsum(1)

    def integral(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # the cumulative integral of a piecewise-constant image is exactly the
        # bilinear interpolation of its integral image
        x = np.clip(x, 0.0, w)
        y = np.clip(y, 0.0, h)
        x0 = np.minimum(np.floor(x).astype(np.int64), w - 1)
        y0 = np.minimum(np.floor(y).astype(np.int64), h - 1)
        u, v = x - x0, y - y0
        out: np.ndarray = (
            s[y0, x0] * (1 - u) * (1 - v)
            + s[y0, x0 + 1] * u * (1 - v)
            + s[y0 + 1, x0] * (1 - u) * v
            + s[y0 + 1, x0 + 1] * u * v
        )
        return out

    x0, y0 = xy[:, 0] / ds, xy[:, 1] / ds
    x1, y1 = x0 + fw / ds, y0 + fh / ds
    area = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
    frac: np.ndarray = np.clip(area / ((fw / ds) * (fh / ds)), 0.0, 1.0)
    return frac
