"""DICOM whole-slide images: a folder of one slide's .dcm files is one slide (``open_slide``,
slide id, fingerprint, `wsi info`, `wsi tile` on a real Dask cluster), and the broken
folders end in clear errors: the full-resolution level missing, two slides in one folder,
no .dcm files, a .dcm file that is not DICOM. What OpenSlide does alone with the broken
folders is tested too: it is why wsi checks them first.

The DICOM slides are real conversions with wsidicomizer (``tests/conftest.py``): of a
synthetic slide (no ../shared needed) and of the Aperio slide (label and overview)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.slides import input_problem, slide_jobs
from tests.conftest import dicomize
from wsi import store as st
from wsi.errors import SlideOpenError
from wsi.slide import open_slide


def _by_size(folder: Path) -> list[Path]:
    """The .dcm files of ``folder``, largest first (for a synthetic slide: by level)."""
    return sorted(folder.glob("*.dcm"), key=lambda p: -p.stat().st_size)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _wsi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_a_folder_of_dcm_files_is_one_slide(dicom_synthetic):
    files = _by_size(dicom_synthetic)
    assert len(files) == 5
    with open_slide(dicom_synthetic) as s, open_slide(files[-1]) as t:
        assert s.path == t.path == dicom_synthetic  # any file of it: the folder's slide
        assert (s.backend, s.vendor) == ("openslide", "dicom")
        assert s.dimensions == t.dimensions == (4000, 3000) and s.level_count == 5
        assert s.mpp.x == s.mpp.y == pytest.approx(0.5) and s.mpp.source == "metadata"
        assert s.associated_images == ()
        assert s.info().as_dict()["path"] == str(dicom_synthetic)
        a = s.read_region((1000, 800), (256, 256), mpp=0.5)
        assert np.array_equal(a, t.read_region((1000, 800), (256, 256), mpp=0.5))
    # the pixels of the TIFF it was made from, re-encoded as JPEG: close, not equal
    with open_slide(dicom_synthetic.parent / "synth.tiff") as src, open_slide(files[0]) as s:
        for level in (0, 2):
            x = src.read_region((1500, 1100), (300, 200), level=level).astype(np.int16)
            y = s.read_region((1500, 1100), (300, 200), level=level).astype(np.int16)
            assert x.std() > 5 and np.abs(x - y).mean() < 5  # misplaced: ~40
    assert st.slide_id_for(dicom_synthetic) == st.slide_id_for(files[2]) == "synth_dicom"
    record = st.source_record(dicom_synthetic)
    assert record == st.source_record(files[2])
    assert record["path"] == str(dicom_synthetic.resolve())
    assert record["size"] == sum(f.stat().st_size for f in files)
    assert [(j.slide_id, j.path) for j in slide_jobs([files[0], dicom_synthetic])] == [
        ("synth_dicom", dicom_synthetic)
    ]  # `wsi tile` of a file and its folder: one slide


def test_a_changed_file_changes_the_fingerprint(dicom_synthetic, tmp_path):
    folder = _copy(dicom_synthetic, tmp_path)
    before = st.source_record(folder)["fingerprint"]
    smallest = _by_size(folder)[-1]
    data = bytearray(smallest.read_bytes())
    data[-100] ^= 0xFF
    smallest.write_bytes(bytes(data))
    assert st.source_record(folder)["fingerprint"] != before


def test_pyvips_refuses_dicom(dicom_synthetic):
    with pytest.raises(SlideOpenError, match=r"synth_dicom: a DICOM slide.*backend='openslide'"):
        open_slide(dicom_synthetic, backend="pyvips")


def test_a_missing_level_below_full_resolution_is_read_from_the_finer_one(
    dicom_synthetic, tmp_path
):
    """Not broken: the slide opens without that level, and a read at its resolution comes
    from the next finer level, shrunk."""
    folder = _copy(dicom_synthetic, tmp_path)
    _by_size(folder)[1].unlink()  # level 1, 2000 x 1500 px
    with open_slide(folder) as s, open_slide(dicom_synthetic) as full:
        assert s.level_count == 4 and s.dimensions == (4000, 3000)
        assert s.mpp == full.mpp
        assert s.choose_level(s.downsample_for_mpp(1.0)).level == 0
        a = s.read_region((1200, 900), (200, 200), mpp=1.0).astype(np.int16)
        b = full.read_region((1200, 900), (200, 200), mpp=1.0).astype(np.int16)
        assert np.abs(a - b).mean() < 8  # another resampling filter; misplaced: ~30


def test_a_missing_full_resolution_level_fails(dicom_synthetic, tmp_path, capsys):
    import openslide

    folder = _copy(dicom_synthetic, tmp_path)
    _by_size(folder)[0].unlink()
    # OpenSlide alone opens the next level as level 0: half the size, twice the mpp
    with openslide.OpenSlide(str(_by_size(folder)[0])) as osr:
        assert osr.dimensions == (2000, 1500) and float(osr.properties["openslide.mpp-x"]) == 1.0
    for path in (folder, _by_size(folder)[-1]):
        with pytest.raises(SlideOpenError, match=r"synth_dicom: the full-resolution level .*"
                           r"missing.*2000 x 1500 px.*RESAMPLED.*complete series"):  # fmt: skip
            open_slide(path)
    assert main(["info", str(folder)]) == 1
    assert "full-resolution level of this DICOM slide is missing" in capsys.readouterr().out


def test_two_slides_in_one_folder_fail(dicom_synthetic, tmp_path):
    import openslide

    from wsi.synthetic import make_synthetic_slide

    folder = _copy(dicom_synthetic, tmp_path)
    make_synthetic_slide(tmp_path / "other.tiff", width=1024, height=768, mpp=0.5, seed=4)
    other = dicomize(tmp_path / "other.tiff", tmp_path / "other")
    for f in other.iterdir():
        shutil.copy(f, folder / f.name)
    # OpenSlide alone opens the series of the file it is given and ignores the other
    with openslide.OpenSlide(str(_by_size(other)[0])) as osr:
        assert osr.dimensions == (1024, 768)
    with openslide.OpenSlide(str(_by_size(dicom_synthetic)[0])) as osr:
        assert osr.dimensions == (4000, 3000)
    with pytest.raises(SlideOpenError, match=r"synth_dicom: holds the .dcm files of 2 different "
                       r"DICOM slides \(their Study Instance UIDs differ\): 5 file\(s\).*"
                       r"3 file\(s\).*folder of its own"):  # fmt: skip
        open_slide(folder)
    # one study, two series of pyramid levels: two slides of one case
    import pydicom

    study = pydicom.dcmread(_by_size(dicom_synthetic)[0], stop_before_pixels=True)
    same_study = _copy(dicom_synthetic, tmp_path / "same_study")
    for f in other.iterdir():
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = study.StudyInstanceUID
        ds.save_as(same_study / f.name)
    with pytest.raises(SlideOpenError, match=r"2 different DICOM slides \(their Series Instance"):
        open_slide(same_study)


def test_folders_without_dicom_and_files_that_are_not(dicom_synthetic, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("not a slide")
    for folder in (empty, notes):
        with pytest.raises(SlideOpenError, match=f"{folder}: is a folder with no DICOM"):
            open_slide(folder)
        assert "is a folder with no DICOM (.dcm) files" in str(input_problem(folder))
    assert input_problem(dicom_synthetic) is None
    folder = _copy(dicom_synthetic, tmp_path)
    (folder / "readme.dcm").write_text("exported by the PACS on Monday\n" * 10)
    with pytest.raises(SlideOpenError, match=r"readme.dcm: not a readable DICOM file"):
        open_slide(folder)
    (folder / "readme.dcm").write_bytes(b"")
    with pytest.raises(SlideOpenError, match=r"readme.dcm: not a readable DICOM file"):
        open_slide(folder)


def test_wsi_info_and_wsi_tile_on_a_dicom_folder(dicom_synthetic, tmp_path, capsys):
    assert main(["info", str(dicom_synthetic), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["path"] == str(dicom_synthetic) and row["vendor"] == "dicom"
    assert row["mpp"]["x"] == pytest.approx(0.5) and row["level_dimensions"][0] == [4000, 3000]

    out = tmp_path / "stores"
    proc = _wsi("tile", str(dicom_synthetic), "--out", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    store = st.store_path(out, "synth_dicom")
    group = st.open_store(store)
    meta = st.read_meta(group)
    assert meta["source"]["path"] == str(dicom_synthetic.resolve()) and st.TILES in meta["stages"]
    coords = np.asarray(group[st.TILES_COORDS][:])
    assert len(coords) > 50
    x, y = (int(v) for v in coords[len(coords) // 2])
    tile = np.asarray(group[st.TILES_PIXELS][len(coords) // 2]).astype(np.int16)
    with open_slide(dicom_synthetic) as s:
        want = s.read_region((x, y), (256, 256), mpp=0.5).astype(np.int16)
    assert np.abs(tile - want).mean() < 3  # the stored tile is that place (JPEG q90)
    # a file of the slide is the same slide: its store, already complete
    again = _wsi("-v", "tile", str(_by_size(dicom_synthetic)[-1]), "--out", str(out))
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert [p for p in os.listdir(out) if not p.startswith(".")] == ["synth_dicom.zarr"]
