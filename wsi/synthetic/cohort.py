"""A labelled benchmark cohort of synthetic slides with known lesion ground truth.

:func:`make_cohort` writes, under ``out_dir``::

    slides/<slide_id>.tiff          pyramidal JPEG TIFF, mpp 0.25 (TIFF resolution tags)
    masks/<slide_id>_tissue.png     uint8 0/255 tissue mask
    masks/<slide_id>_lesion.png     uint8 0/255 lesion mask (all zero on normal slides)
    masks/<slide_id>.json           per-slide record (written last: marks the slide done)
    labels.csv                      slide_id,patient_id,label   (label "tumor" / "normal")
    cohort.json                     manifest: parameters, texture sources, per-slide truth
    truth.csv                       survival task only: patient_id,hazard,burden

``task`` (default ``binary``) decides what ``labels.csv`` holds: ``binary`` as above;
``multiclass`` (label ``normal`` / ``type_a`` / ``type_b`` / ``type_c``, lesion class k
painted with lesion texture set k-1 only), ``ordinal`` (``grade_0`` .. ``grade_3``, grade
k with texture set k-1 and the k-th third of ``lesion_fraction``), ``survival``
(``slide_id,patient_id,time,event`` per patient) and ``regression``
(``slide_id,patient_id,target``: each slide's lesion fraction plus noise); see
:mod:`wsi.synthetic.tasks`.  Binary cohorts are exactly what they were before tasks
existed (same parameter hash and files; their manifest has no ``task`` key).

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

Sites and difficulty.  ``textures`` picks another named texture set
(:mod:`wsi.synthetic.texture_sets`: ``site_b``, other images of the tile folder, for a
second hospital; ``subtle``, lesions close to the background, for a harder
benchmark), and ``stain_shift`` scales the haematoxylin, eosin and DAB of every texture
in HED colour space (:mod:`wsi.synthetic.stains`; recorded in the manifest's
``stain_shift``).  At their defaults neither enters the parameter hash or the
manifest: such cohorts are exactly what they were before these arguments existed.

Lesion size.  The lesions of a slide cover together a fraction of its *tissue* area
drawn uniformly in ``lesion_fraction`` (default 1 % .. 10 %), and each lesion covers at
least a disk of ``min_lesion_diameter_um`` (default 256 um: two 256-pixel tiles at
0.5 um/px across, about three such tiles in area) so that it holds several whole tiles.
Both constraints hold at once only when the tissue is large enough: the number of
lesions is capped by what fits, and the lower end of the fraction range is raised to
``n_lesions * minimum area / tissue area`` where needed (on 4000-pixel slides, about
7-10 % of the tissue, always a single lesion).  Small lesions: with ``lesion_fraction``
``(0.01, 0.03)`` one 256 um lesion is 1.6-2.0 % of the tissue of an 8000-pixel slide
(one lesion a slide, 1.7-2.9 % of the tissue), 0.7-0.9 % of a 12000-pixel slide's (one
to three lesions, 1.2-3 %); lesions of 1 % of an 8000-pixel slide's tissue need
``min_lesion_diameter_um`` of about 180 or less.  A slide size that cannot hold even one
lesion within the upper bound is refused with :class:`~wsi.errors.ConfigError`.
Cohort slides have more tissue than :func:`wsi.synthetic.make_synthetic_slide`'s
(65-80 % of the slide) so that small slides can hold a lesion.

Runs are deterministic given ``seed`` and idempotent: a slide whose record in
``masks/<slide_id>.json`` carries the same parameter hash is skipped.  Every file is
written under a temporary name and renamed (:mod:`wsi._files`), so a killed run never
leaves a half-written slide under its final name, and a re-run resumes (removing the
temporary files the killed run left).

What the cohort holds is decided in :mod:`wsi.synthetic.plan` (arguments, texture
sources, patients and labels); the tissue layout is in :mod:`wsi.synthetic.masks`,
the lesions in :mod:`wsi.synthetic.lesions`, the textures in
:mod:`wsi.synthetic.textures`, the slide image and its TIFF in
:mod:`wsi.synthetic.slide`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi._files import atomic_path, atomic_write, read_json
from wsi.errors import ConfigError
from wsi.synthetic.lesions import blend_lesion, lesion_mask
from wsi.synthetic.masks import COHORT_LAYOUT, tissue_fraction, tissue_mask
from wsi.synthetic.plan import (
    BACKGROUND_SOURCES,
    COHORT_MPP,
    LESION_SOURCES,
    MAX_LESIONS,
    QUALITY,
    TIFF_TILE,
    CohortArgs,
    CohortSources,
    PlannedSlide,
    check_args,
    cohort_params,
    lesion_range,
    load_cohort_sources,
    plan_slides,
)
from wsi.synthetic.slide import save_mask_png, save_slide_tiff, slide_image
from wsi.synthetic.stains import NO_STAIN_SHIFT
from wsi.synthetic.tasks import (
    CLASS_TASKS,
    REGRESSION_NOISE_SD,
    label_rows,
    label_rule,
    survival_patients,
)
from wsi.synthetic.texture_sets import DEFAULT_TEXTURE_SET
from wsi.synthetic.textures import default_tile_source_dir, texture_layer

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pyvips

__all__ = [
    "BACKGROUND_SOURCES",
    "COHORT_MPP",
    "Cohort",
    "LESION_SOURCES",
    "load_cohort",
    "make_cohort",
]

logger = logging.getLogger(__name__)

#: Temporary files a killed run may leave: ``wsi._files``'s, and older versions'.
_PARTIAL_PATTERNS = (".*.tmp.*", ".*.partial.*")


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
        task: What ``labels.csv`` holds (see :mod:`wsi.synthetic.tasks`).
    """

    out_dir: Path
    slides: tuple[Path, ...]
    labels_csv: Path
    masks_dir: Path
    manifest: Path
    mask_downsample: int
    task: str = "binary"

    def lesion_mask(self, slide_id: str) -> Path:
        """The lesion mask PNG of ``slide_id``."""
        return self.masks_dir / f"{slide_id}_lesion.png"

    def tissue_mask(self, slide_id: str) -> Path:
        """The tissue mask PNG of ``slide_id``."""
        return self.masks_dir / f"{slide_id}_tissue.png"


# --------------------------------------------------------------------------- #
# image and files
# --------------------------------------------------------------------------- #


def _slide_image(
    tissue: np.ndarray,
    lesion: np.ndarray | None,
    args: CohortArgs,
    sources: CohortSources,
    lesion_set: int | None,
    rngs: tuple[np.random.Generator, np.random.Generator],
) -> pyvips.Image:
    """The lazy level-0 RGB image of one slide: background tissue, glass, and lesions
    painted with lesion texture set ``lesion_set`` (None: all lesion sources).  The
    first of ``rngs`` draws the background, the second the lesion texture and border."""
    size, ds = args.size, args.mask_downsample
    rng_bg, rng_lesion = rngs
    base = slide_image(tissue, size, size, ds, sources.background, rng_bg)
    if lesion is None:
        return base
    lesion_sources = sources.lesion if lesion_set is None else sources.lesion_sets[lesion_set]
    texture = texture_layer(rng_lesion, lesion_sources, size, size)
    return blend_lesion(base, tissue, lesion, size, ds, texture, rng_lesion)


@dataclass(frozen=True)
class _SlideFiles:
    """The four files of one cohort slide; ``record`` is written last."""

    tiff: Path
    tissue_png: Path
    lesion_png: Path
    record: Path

    @classmethod
    def of(cls, out: Path, slide_id: str) -> _SlideFiles:
        masks = out / "masks"
        return cls(
            tiff=out / "slides" / f"{slide_id}.tiff",
            tissue_png=masks / f"{slide_id}_tissue.png",
            lesion_png=masks / f"{slide_id}_lesion.png",
            record=masks / f"{slide_id}.json",
        )


def _write_json(path: Path, obj: Any) -> None:
    """``obj`` as JSON (keys sorted, indent 1) at ``path``, atomically."""
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _read_dict(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when missing, unreadable or not an object."""
    try:
        obj = read_json(path)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _remove_stale_partials(*folders: Path) -> None:
    """Remove temporary files left by a killed run (concurrent runs are not supported)."""
    for folder in folders:
        for pattern in _PARTIAL_PATTERNS:
            for p in folder.glob(pattern):
                logger.info("removing a partial file left by an interrupted run: %s", p)
                p.unlink(missing_ok=True)


def _prepare_folder(out: Path, phash: str, plan: list[PlannedSlide], overwrite: bool) -> None:
    """Make the cohort folders; refuse (or, with ``overwrite``, clear the extra slides of)
    a cohort made with other parameters; remove a killed run's temporary files."""
    old = _read_dict(out / "cohort.json")
    if old is not None and old.get("params_hash") != phash:
        if not overwrite:
            raise ConfigError(
                f"{out} holds a cohort made with other parameters ({old.get('params_hash')}); "
                "pass overwrite=True (--overwrite) to replace it, or choose another folder"
            )
        keep = {p.slide_id for p in plan}
        for rec in old.get("slides", []):
            sid = str(rec.get("slide_id", ""))
            if sid and sid not in keep:
                files = _SlideFiles.of(out, sid)
                for p in (files.tiff, files.lesion_png, files.tissue_png, files.record):
                    p.unlink(missing_ok=True)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out, out / "slides", out / "masks")


def _task_fields(
    args: CohortArgs, index: int, planned: PlannedSlide, lesion_fraction: float
) -> dict[str, Any]:
    """The task's own fields of slide ``index``'s record (none for binary and survival,
    whose truth is per patient): class tasks the lesion class and texture set,
    regression the noisy ``target`` and its noiseless ``target_truth``."""
    import numpy as np

    if args.task in CLASS_TASKS:
        k = planned.lesion_class
        return {"lesion_class": k, "lesion_set": k - 1 if k else None}
    if args.task == "regression":
        noise = np.random.default_rng([args.seed, index, 0x7E]).normal(0.0, REGRESSION_NOISE_SD)
        return {"target": round(lesion_fraction + float(noise), 6), "target_truth": lesion_fraction}
    return {}


def _write_slide(
    args: CohortArgs,
    index: int,
    planned: PlannedSlide,
    files: _SlideFiles,
    sources: CohortSources,
) -> dict[str, Any]:
    """Write the masks and TIFF of slide number ``index`` of the plan; its record (the
    caller adds ``params_hash`` and writes it)."""
    import numpy as np

    sid, pid, label = planned.slide_id, planned.patient_id, planned.label
    side, ds = args.size, args.mask_downsample
    ss_tissue, ss_bg, ss_lesion, ss_tex = np.random.SeedSequence([args.seed, index, 0x51]).spawn(4)
    mask_side = -(-side // ds)
    tissue = tissue_mask(np.random.default_rng(ss_tissue), mask_side, mask_side, COHORT_LAYOUT)
    fraction = tissue_fraction(tissue, side, side, ds)
    tissue_px = int((tissue > 0).sum())
    lesions: list[dict[str, Any]] = []
    lesion: np.ndarray | None = None
    if planned.has_lesion:
        min_area_mask = args.min_lesion_area_l0 / (ds * ds)
        rng_lesion = np.random.default_rng(ss_lesion)
        fractions = lesion_range(args, planned.lesion_class)
        lesion, lesions = lesion_mask(rng_lesion, tissue, fractions, min_area_mask, MAX_LESIONS)
    lesion_px = int((lesion > 0).sum()) if lesion is not None else 0
    for les in lesions:
        les["area_l0"] = les["area_mask_px"] * ds * ds
        les["bbox_l0"] = [min(v * ds, side) for v in les["bbox_mask"]]
    lesion_set = planned.lesion_class - 1 if planned.lesion_class else None
    rngs = (np.random.default_rng(ss_bg), np.random.default_rng(ss_tex))
    image = _slide_image(tissue, lesion, args, sources, lesion_set, rngs)
    with atomic_path(files.tissue_png) as tmp:
        save_mask_png(tissue, tmp)
    with atomic_path(files.lesion_png) as tmp:
        save_mask_png(lesion if lesion is not None else np.zeros_like(tissue), tmp)
    with atomic_path(files.tiff) as tmp:
        save_slide_tiff(image, tmp, mpp=COHORT_MPP, quality=QUALITY, tile=TIFF_TILE)
    lesion_fraction = round(lesion_px / tissue_px, 6) if tissue_px else 0.0
    return {
        "slide_id": sid,
        "patient_id": pid,
        "label": label,
        "slide": f"slides/{files.tiff.name}",
        "tissue_mask": f"masks/{files.tissue_png.name}",
        "lesion_mask": f"masks/{files.lesion_png.name}",
        "width": side,
        "height": side,
        "mpp": COHORT_MPP,
        "mask_downsample": ds,
        "tissue_fraction": round(fraction, 6),
        "tissue_mask_px": tissue_px,
        "lesion_mask_px": lesion_px,
        "lesion_fraction": lesion_fraction,
        "n_lesions": len(lesions),
        "lesions": lesions,
        **_task_fields(args, index, planned, lesion_fraction),
    }


def _csv_bytes(rows: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def _write_labels(
    out: Path, args: CohortArgs, records: list[dict[str, Any]], manifest: dict[str, Any]
) -> None:
    """Write ``labels.csv`` (and, for survival, ``truth.csv`` and the manifest's
    ``patients`` table: the per-patient truth drawn from the slide ``records``)."""
    import numpy as np

    patients = None
    if args.task == "survival":
        rng = np.random.default_rng([args.seed, 0x5A])
        patients = survival_patients(rng, records, args.lesion_fraction[1])
        manifest["patients"] = patients
        truth = [["patient_id", "hazard", "burden"]]
        truth += [[p["patient_id"], p["hazard"], p["burden"]] for p in patients]
        atomic_write(out / "truth.csv", _csv_bytes(truth))
    else:
        (out / "truth.csv").unlink(missing_ok=True)  # a survival cohort's, overwritten
    atomic_write(out / "labels.csv", _csv_bytes(label_rows(args.task, records, patients)))


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
    task: str = "binary",
    stain_shift: tuple[float, float, float] = NO_STAIN_SHIFT,
    textures: str = DEFAULT_TEXTURE_SET,
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
        task: What ``labels.csv`` holds: ``binary``, ``multiclass``, ``ordinal``,
            ``survival`` or ``regression`` (module doc, :mod:`wsi.synthetic.tasks`).
            For class tasks ``positive_fraction`` is the fraction of lesion patients,
            split evenly over the three lesion classes.
        stain_shift: ``(haematoxylin, eosin, DAB)`` factors, each > 0, by which the
            stain amounts of the tissue and lesions are multiplied in HED colour
            space (e.g. ``(1.5, 0.5, 1.0)``: a site that stains haematoxylin more and
            eosin less); the glass stays as it is.  Applied to the small texture
            sources before they are tiled over the slides
            (:mod:`wsi.synthetic.stains`).  Default: no shift.
        textures: Texture set of the background tissue and the lesions, one of
            :data:`~wsi.synthetic.texture_sets.TEXTURE_SETS`: ``default``,
            ``site_b`` (other images of the tile folder: a second site) or
            ``subtle`` (lesions closer to the background: a harder benchmark).

    Returns:
        The :class:`Cohort`.

    Raises:
        ConfigError: On an invalid argument (an unknown ``task`` or ``textures``, a
            ``stain_shift`` factor that is not positive, among them), a slide
            too small for one lesion of the minimum size within ``lesion_fraction``,
            or a folder holding a cohort made with other parameters (without
            ``overwrite``).

    Example::

        cohort = wsi.make_cohort("cohort", slides=20, size=8000, seed=1)
        cohort.slides[0]                  # cohort/slides/slide_000.tiff, 8000 x 8000 px
        cohort.labels_csv                 # cohort/labels.csv: slide_id,patient_id,label
        for slide in cohort.slides:       # then the usual pipeline
            wsi.tile_slide(slide, "cohort/stores")
        cohort.lesion_mask("slide_000")   # cohort/masks/slide_000_lesion.png, 1 px: 16 x 16 px
    """
    import numpy as np

    args = check_args(
        slides,
        size,
        patients,
        positive_fraction,
        seed,
        lesion_fraction,
        mask_downsample,
        min_lesion_diameter_um,
        task,
        stain_shift,
        textures,
    )
    out = Path(out_dir)
    manifest_path, labels_path = out / "cohort.json", out / "labels.csv"
    tile_dir = Path(tile_source_dir) if tile_source_dir is not None else default_tile_source_dir()
    sources, described = load_cohort_sources(
        tile_dir, args.task in CLASS_TASKS, args.texture_set, args.stain_shift
    )

    params = cohort_params(args, described)
    phash = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    rng_plan = np.random.default_rng([args.seed, 0xC0])
    plan = plan_slides(rng_plan, args.slides, args.patients, args.positive_fraction, args.task)
    _prepare_folder(out, phash, plan, overwrite)

    manifest: dict[str, Any] = {
        "format": "wsi-cohort",
        "params": params,
        "params_hash": phash,
        "mpp": COHORT_MPP,
        "size": args.size,
        "mask_downsample": args.mask_downsample,
        "mask_pixel": "mask pixel (i, j) covers level-0 [j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)",
        "label_rule": label_rule(args.task),
        "textures": described,
        "complete": False,
        "slides": [],
    }
    if args.task != "binary":  # binary manifests are as before tasks existed
        manifest["task"] = args.task
    if args.stain_shift != NO_STAIN_SHIFT:  # and unshifted ones as before stain shifts
        manifest["stain_shift"] = {
            "haematoxylin": args.stain_shift[0],
            "eosin": args.stain_shift[1],
            "dab": args.stain_shift[2],
            "applied_to": "tissue and lesion textures, in HED optical density; glass unchanged",
        }
    _write_json(manifest_path, manifest)

    t_all = time.monotonic()
    records: list[dict[str, Any]] = []
    written = 0
    for index, planned in enumerate(plan):
        files = _SlideFiles.of(out, planned.slide_id)
        rec = _read_dict(files.record)
        if (
            rec is not None
            and rec.get("params_hash") == phash
            and all(p.is_file() for p in (files.tiff, files.lesion_png, files.tissue_png))
        ):
            logger.debug("%s: already written, skipped", planned.slide_id)
            records.append(rec)
            continue
        t0 = time.monotonic()
        rec = {**_write_slide(args, index, planned, files, sources), "params_hash": phash}
        _write_json(files.record, rec)
        records.append(rec)
        written += 1
        logger.info(
            "%s (%s, %s): %d lesion(s), %.1f%% of tissue, in %.1fs",
            *planned[:3],
            rec["n_lesions"],
            100 * rec["lesion_fraction"],
            time.monotonic() - t0,
        )

    _write_labels(out, args, records, manifest)
    manifest["slides"] = records
    manifest["complete"] = True
    _write_json(manifest_path, manifest)
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
        slides=tuple(_SlideFiles.of(out, r["slide_id"]).tiff for r in records),
        labels_csv=labels_path,
        masks_dir=out / "masks",
        manifest=manifest_path,
        mask_downsample=args.mask_downsample,
        task=args.task,
    )


def load_cohort(out_dir: str | os.PathLike[str]) -> Cohort:
    """Open a complete cohort written by :func:`make_cohort`.

    Raises:
        ConfigError: When ``out_dir`` holds no complete cohort manifest.
    """
    out = Path(out_dir)
    manifest = _read_dict(out / "cohort.json")
    if manifest is None or not manifest.get("complete"):
        raise ConfigError(f"{out}: no complete cohort (cohort.json); run make_cohort first")
    return Cohort(
        out_dir=out,
        slides=tuple(out / str(r["slide"]) for r in manifest["slides"]),
        labels_csv=out / "labels.csv",
        masks_dir=out / "masks",
        manifest=out / "cohort.json",
        mask_downsample=int(manifest["mask_downsample"]),
        task=str(manifest.get("task", "binary")),
    )
