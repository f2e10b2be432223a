"""DICOM whole-slide images: the ``.dcm`` files of one slide, in one folder, are one slide.

A DICOM slide is a series of instances (files): one per pyramid level, plus label,
overview and thumbnail images. OpenSlide opens any file of the series and finds the
others in the same folder, but it silently takes only the series of the file it was
given, and a series without its full-resolution file opens with its next level as
level 0 (half the size, twice the mpp). ``read_series`` reads the DICOM headers of every
``.dcm`` file of a folder first and refuses both, naming the folder and the fix.

Header reading uses pydicom (``stop_before_pixels``: no pixel data is read here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi.errors import BackendUnavailableError, SlideOpenError

__all__ = ["DICOM_SUFFIX", "DicomSeries", "dicom_folder", "dicom_files", "read_series"]

DICOM_SUFFIX = ".dcm"

#: SOP Class UID of VL Whole Slide Microscopy Image Storage: the instances that hold a
#: slide's images (pyramid levels, label, overview, thumbnail). Other DICOM objects in the
#: folder (annotations, structured reports) are not images of the slide and are left out.
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"

_TAGS = [
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "ImageType",
    "TotalPixelMatrixColumns",
    "TotalPixelMatrixRows",
]

_FIX = "Copy the slide's complete series (every .dcm file of it) into the folder."


@dataclass(frozen=True)
class DicomSeries:
    """The DICOM slide of a folder: every ``.dcm`` file, and the full-resolution one.

    ``base`` is the file of the largest pyramid level (what OpenSlide is given);
    ``level_sizes`` the ``(w, h)`` in pixels of each pyramid-level file, largest first.
    """

    folder: Path
    files: tuple[Path, ...]
    base: Path
    level_sizes: tuple[tuple[int, int], ...]


def dicom_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The ``.dcm`` files directly in ``folder`` (any case of the suffix), sorted by name;
    empty if ``folder`` is not a readable folder."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if p.suffix.lower() == DICOM_SUFFIX and p.is_file())


def dicom_folder(path: str | os.PathLike[str]) -> Path | None:
    """The folder of the DICOM slide ``path`` names, or None: ``path`` itself if it is a
    folder holding ``.dcm`` files, the folder of ``path`` if it is a ``.dcm`` file."""
    p = Path(path)
    if p.suffix.lower() == DICOM_SUFFIX and p.is_file():
        return p.parent
    if p.is_dir() and dicom_files(p):
        return p
    return None


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as err:
        raise BackendUnavailableError(
            f"pydicom is not available ({err}); it reads the headers of DICOM slides. "
            "Try `pip install pydicom`."
        ) from err
    return pydicom


def _header(path: Path) -> Any:
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError) as err:
        raise SlideOpenError(
            f"{path}: not a readable DICOM file ({err}). Re-copy it from the archive, or "
            "move it out of the slide's folder."
        ) from err


def _image_type(ds: Any) -> tuple[str, ...]:
    value = ds.get("ImageType")
    if value is None:
        return ()
    return tuple(str(v).upper() for v in ([value] if isinstance(value, str) else value))


def _mixed(folder: Path, groups: list[list[Path]], differ: str) -> SlideOpenError:
    groups = sorted(groups, key=lambda g: (-len(g), g[0].name))
    listed = "; ".join(f"{len(g)} file(s) such as {g[0].name}" for g in groups)
    return SlideOpenError(
        f"{folder}: holds the .dcm files of {len(groups)} different DICOM slides (their "
        f"{differ} differ): {listed}. A folder must hold one slide: move each slide's "
        "files into a folder of its own."
    )


def read_series(path: str | os.PathLike[str]) -> DicomSeries:
    """Check the DICOM slide at ``path`` (a folder of ``.dcm`` files, or one of them) and
    return its series.

    Raises:
        SlideOpenError: naming the folder (or file) and the fix, when the folder holds no
            ``.dcm`` file; a ``.dcm`` file is not readable DICOM; no file is a pyramid
            level of a whole-slide image; the files are of two slides (images of more than
            one study, or pyramid levels of more than one series; a label or overview of
            another series of the same study is let pass, as OpenSlide ignores it); or the
            full-resolution level is missing (the largest level is marked ``RESAMPLED``
            in its DICOM ImageType).
        BackendUnavailableError: pydicom is not installed.
    """
    p = Path(path)
    folder = p.parent if p.suffix.lower() == DICOM_SUFFIX and p.is_file() else p
    files = dicom_files(folder)
    if not files:
        raise SlideOpenError(
            f"{folder}: a folder with no DICOM (.dcm) files, not a slide. Give a slide "
            "file, or a folder that holds the .dcm files of one DICOM slide."
        )
    studies: dict[str, list[Path]] = {}  # every image of the slide: one study
    series: dict[str, list[Path]] = {}  # the pyramid levels: one series
    levels: list[tuple[int, int, tuple[str, ...], Path]] = []
    for f in files:
        ds = _header(f)
        if str(ds.get("SOPClassUID", "")) != WSI_SOP_CLASS:
            continue  # not an image of a slide (an annotation, a report ...)
        studies.setdefault(str(ds.get("StudyInstanceUID", "")), []).append(f)
        kind = _image_type(ds)
        if len(kind) >= 3 and kind[2] == "VOLUME":
            series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(f)
            w, h = int(ds.get("TotalPixelMatrixColumns", 0)), int(ds.get("TotalPixelMatrixRows", 0))
            levels.append((w, h, kind, f))
    for groups, differ in ((studies, "Study Instance UIDs"), (series, "Series Instance UIDs")):
        if len(groups) > 1:
            raise _mixed(folder, list(groups.values()), differ)
    if not levels:
        raise SlideOpenError(
            f"{folder}: none of its {len(files)} .dcm file(s) is a pyramid level of a "
            "whole-slide image (only label, overview or thumbnail images, or other DICOM "
            f"objects). {_FIX}"
        )
    levels.sort(key=lambda lv: (-lv[0] * lv[1], lv[3].name))
    w, h, kind, base = levels[0]
    if len(kind) >= 4 and kind[3] == "RESAMPLED":
        kind_text = "\\".join(kind)
        raise SlideOpenError(
            f"{folder}: the full-resolution level of this DICOM slide is missing: its "
            f"largest level ({w} x {h} px, {base.name}) is marked as resampled from a "
            f"larger one (ImageType {kind_text}). {_FIX}"
        )
    return DicomSeries(folder, tuple(files), base, tuple((lv[0], lv[1]) for lv in levels))
