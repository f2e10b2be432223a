"""Which slides a job is about: paths, folders, glob patterns or a manifest CSV, and the
one rule for two slides that would get the same id (and so the same store).

A slide's id names its store (``<slide_id>.zarr``) and its report: the file name
without its extension (``wsi.store.slide_id_for``; a DICOM slide's folder name), or a
manifest's ``slide_id`` column (use pseudonyms there). ``claim_ids`` is the rule
``wsi tile`` and ``wsi run`` share: the first slide of an id keeps it; a later one of
another file fails alone, with a message naming both files, and the others go on.
"""

from __future__ import annotations

import csv
import errno
import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import RunConfig
from wsi import store as st
from wsi.errors import ConfigError
from wsi.outputs import is_output
from wsi.slide.dicom import DICOM_SUFFIX, dicom_folder

__all__ = [
    "SLIDE_SUFFIXES",
    "MANIFEST_COLUMNS",
    "SlideJob",
    "read_manifest",
    "find_slides",
    "input_problem",
    "slide_jobs",
    "resolve_slides",
    "claim_ids",
]

#: File extensions taken from a folder of slides (OpenSlide's formats and generic TIFF).
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
)  # fmt: skip

#: Columns a manifest CSV must have (``mpp`` may be empty); ``patient_id`` and ``label``
#: are optional.
MANIFEST_COLUMNS = ("slide_id", "path", "mpp")


@dataclass(frozen=True)
class SlideJob:
    """One slide of a job: its id (store and report name), file, level-0 mpp override
    (micrometres per pixel; None: the slide's own), and the optional patient and label of
    a manifest (carried into the summary, never a report)."""

    slide_id: str
    path: Path
    mpp: float | None = None
    patient_id: str | None = None
    label: str | None = None


def read_manifest(path: str | Path) -> list[SlideJob]:
    """The slides of a manifest CSV (slide_id, path, mpp; optionally patient_id, label),
    in file order; a relative ``path`` is relative to the manifest's folder.

    Raises:
        ConfigError: naming the file and line of a missing column, an empty id or path,
            an id that cannot name a store, or an mpp that is not a plausible number.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found. Give a CSV of slide_id, path, mpp.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(
                f"{path}: manifest lacks column(s) {missing}; it needs slide_id, path, mpp "
                f"(mpp may be empty) and optionally patient_id, label. Found "
                f"{reader.fieldnames}."
            )
        jobs = []
        for line, row in enumerate(reader, start=2):
            if None in row:
                raise ConfigError(f"{path}:{line}: more fields than columns")
            sid = (row["slide_id"] or "").strip()
            file = (row["path"] or "").strip()
            if not sid or not file:
                raise ConfigError(f"{path}:{line}: slide_id and path must not be empty")
            try:
                st.check_slide_id(sid)
            except ConfigError as err:
                raise ConfigError(f"{path}:{line}: {err}") from None
            mpp_text = (row["mpp"] or "").strip()
            try:
                mpp = float(mpp_text) if mpp_text else None
            except ValueError:
                raise ConfigError(
                    f"{path}:{line}: mpp {mpp_text!r} is not a number (micrometres per pixel; "
                    "leave it empty to use the slide's own)"
                ) from None
            if mpp is not None and not 0.05 <= mpp <= 50:
                raise ConfigError(f"{path}:{line}: mpp {mpp} is not a plausible resolution")
            slide = Path(file) if Path(file).is_absolute() else path.parent / file
            jobs.append(
                SlideJob(
                    sid,
                    slide,
                    mpp,
                    (row.get("patient_id") or "").strip() or None,
                    (row.get("label") or "").strip() or None,
                )
            )
    return jobs


def input_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as a slide file (missing, a symlink loop, a folder, not
    readable), or None: the one check ``wsi run`` and ``wsi tile`` make before a slide,
    so a bad input fails that slide alone."""
    try:
        if os.path.isdir(path) and dicom_folder(path) is None:  # follows symlinks
            return (
                f"{path}: is a folder with no DICOM (.dcm) files, not a slide file. Give the "
                "slide files inside it."
            )
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"{path}: a symbolic link loop (it never reaches a file). Fix the link."
        return f"{path}: {err.strerror or err}"
    if not os.access(path, os.R_OK):
        return f"{path}: not readable (permission denied). Check its permissions."
    return None


def _is_slide_name(path: Path) -> bool:
    return path.suffix.lower() in SLIDE_SUFFIXES and not path.is_dir()


def _as_slides(paths: Iterable[Path]) -> list[Path]:
    """``paths`` with each ``.dcm`` file taken as its DICOM slide (the folder), and every
    path once: the files of one DICOM slide are one slide."""
    out: list[Path] = []
    for p in paths:
        if p.suffix.lower() == DICOM_SUFFIX and p.is_file():
            p = p.parent
        if p not in out:
            out.append(p)
    return out


def _own_output(path: Path, exclude: Path | None) -> bool:
    """A file wsi wrote (listed in its folder's manifest), or one under ``exclude`` (the
    run's output folder): never taken for an input slide."""
    if exclude is not None:
        try:
            if path.resolve().is_relative_to(exclude):
                return True
        except (OSError, RuntimeError):  # a symlink loop: it fails later as that slide
            pass
    return is_output(path)


def find_slides(entries: Iterable[str], *, exclude: str | Path | None = None) -> list[SlideJob]:
    """The slides of files, folders (every slide file directly inside, ``SLIDE_SUFFIXES``)
    and glob patterns, in order (a folder's and a pattern's sorted by name).

    A DICOM slide is the folder of its ``.dcm`` files: a folder that holds ``.dcm`` files
    is one slide (its id the folder's name), a folder's subfolders that hold them are one
    slide each, and a ``.dcm`` file (given, or matched by a pattern) stands for its folder,
    which is taken once.

    A path that is neither a folder nor a pattern is taken as it is: a missing file fails
    later as that slide, not the job; so does a folder named like a slide file (``x.svs/``)
    that holds none, and a symbolic link loop with a slide's name. What wsi wrote (files
    in a ``wsi.outputs`` manifest, anything under ``exclude``, the run's output folder)
    is never taken from a folder or a pattern. ConfigError naming a folder or pattern
    that holds no slide file.
    """
    out = Path(exclude).resolve() if exclude is not None else None
    jobs = []
    for entry in entries:
        p = Path(entry).expanduser()
        if p.is_file() or not (p.is_dir() or glob.has_magic(entry)):
            found = [p]
        elif dicom_folder(p) is not None:
            found = [p]  # a DICOM slide: the folder of its .dcm files
        elif p.is_dir():
            found = sorted(
                f for f in p.iterdir() if _is_slide_name(f) or dicom_folder(f) is not None
            )
            found = [f for f in found if not _own_output(f, out)]
            if not found and p.suffix.lower() in SLIDE_SUFFIXES:
                found = [p]  # a folder named like a slide: it fails as that slide
        else:
            found = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            found = [
                f for f in found
                if (f.is_file() or _is_slide_name(f) or dicom_folder(f) is not None)
                and not _own_output(f, out)
            ]  # fmt: skip
        if not found:
            raise ConfigError(
                f"{entry}: no slide file there (not a file, a folder with slides, or a "
                "glob pattern that matches files)"
            )
        jobs += [SlideJob(st.slide_id_for(f), f) for f in _as_slides(found)]
    return jobs


def slide_jobs(paths: Iterable[str | Path], mpp: float | None = None) -> list[SlideJob]:
    """Slide files taken as they are (``wsi tile``): ids from the file names, one mpp; a
    ``.dcm`` file stands for its DICOM slide (the folder)."""
    return [SlideJob(st.slide_id_for(p), p, mpp) for p in _as_slides(map(Path, paths))]


def resolve_slides(run: RunConfig) -> list[SlideJob]:
    """The slides of a run, in order: from ``run.manifest``, or from ``run.slides``
    (``find_slides``). Two entries of one id are both kept: ``claim_ids`` decides.

    Raises:
        ConfigError: a bad manifest, an entry that matches nothing, or no slides at all.
    """
    if run.manifest:
        jobs = read_manifest(run.manifest)
    else:
        jobs = find_slides(run.slides, exclude=run.out if run.out else None)
    if not jobs:
        raise ConfigError("the run has no slides")
    return jobs


def claim_ids(jobs: Sequence[SlideJob]) -> list[tuple[SlideJob, str | None]]:
    """The one slide-id rule: each job with None, or with why it cannot be done.

    The first slide of an id keeps it. A later slide of the same id and the same file is
    the same slide, listed once. A later slide of the same id and another file would
    write the same store: it gets a message naming both files, and the others go on.

    Example:
        >>> a, b = SlideJob("s1", Path("a/s1.svs")), SlideJob("s1", Path("b/s1.tiff"))
        >>> [msg is None for _, msg in claim_ids([a, b, a])]
        [True, False]
    """
    first: dict[str, SlideJob] = {}
    out: list[tuple[SlideJob, str | None]] = []
    for job in jobs:
        taken = first.get(job.slide_id)
        if taken is None:
            first[job.slide_id] = job
            out.append((job, None))
        elif taken.path != job.path:
            msg = (
                f"{job.path}: slide id {job.slide_id!r} is also that of {taken.path} in this "
                f"batch: their stores would collide (both {job.slide_id}.zarr). Rename one, "
                "give each its own --out folder, or list them in a manifest with distinct "
                "slide_ids (`wsi run --manifest`)."
            )
            out.append((job, msg))
    return out
