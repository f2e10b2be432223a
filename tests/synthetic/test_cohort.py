"""Tests of the labelled benchmark cohort generator (wsi.synthetic.cohort), on real files."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from wsi.errors import ConfigError
from wsi.synthetic import (
    COHORT_MPP,
    Cohort,
    lesion_fraction_of_tiles,
    load_cohort,
    make_cohort,
)

REPO = Path(__file__).resolve().parents[2]
SIZE = 3000
MIN_LESION_UM = 192.0  # 3000-px slides are too small for the default 256 um lesions
ARGS = {"slides": 6, "size": SIZE, "seed": 3, "min_lesion_diameter_um": MIN_LESION_UM}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    return make_cohort(tmp_path_factory.mktemp("cohort") / "c", **ARGS)  # type: ignore[arg-type]


def _labels(cohort: Cohort) -> list[dict[str, str]]:
    with open(cohort.labels_csv, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["slide_id", "patient_id", "label"]
        return list(reader)


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_labels_per_patient(cohort: Cohort) -> None:
    rows = _labels(cohort)
    assert [r["slide_id"] for r in rows] == [p.stem for p in cohort.slides]
    assert {r["label"] for r in rows} == {"tumor", "normal"}
    by_patient: dict[str, set[str]] = defaultdict(set)
    count: dict[str, int] = defaultdict(int)
    for r in rows:
        by_patient[r["patient_id"]].add(r["label"])
        count[r["patient_id"]] += 1
    assert len(by_patient) == 3  # default: slides // 2 patients
    assert all(len(labels) == 1 for labels in by_patient.values())
    assert set(count.values()) == {2}
    assert all(p.is_file() for p in cohort.slides)
    assert load_cohort(cohort.out_dir) == cohort


def test_masks_match_labels(cohort: Cohort) -> None:
    manifest = json.loads(cohort.manifest.read_text())
    assert manifest["complete"] and manifest["mpp"] == COHORT_MPP
    ds = manifest["mask_downsample"]
    assert ds == cohort.mask_downsample == 16
    min_area = math.pi / 4 * (MIN_LESION_UM / COHORT_MPP) ** 2
    records = {r["slide_id"]: r for r in manifest["slides"]}
    for row in _labels(cohort):
        sid = row["slide_id"]
        lesion = _mask(cohort.lesion_mask(sid))
        tissue = _mask(cohort.tissue_mask(sid))
        assert lesion.dtype == np.uint8 and lesion.shape == (math.ceil(SIZE / ds),) * 2
        assert tissue.shape == lesion.shape
        assert set(np.unique(lesion).tolist()) <= {0, 255}
        rec = records[sid]
        assert rec["label"] == row["label"] and rec["patient_id"] == row["patient_id"]
        if row["label"] == "normal":
            assert not lesion.any() and rec["n_lesions"] == 0
            continue
        assert not (lesion.astype(bool) & ~tissue.astype(bool)).any()  # inside the tissue
        fraction = (lesion > 0).sum() / (tissue > 0).sum()
        assert 0.01 <= fraction <= 0.10
        assert rec["lesion_fraction"] == pytest.approx(fraction, abs=1e-5)
        assert 1 <= rec["n_lesions"] <= 3
        for les in rec["lesions"]:
            assert les["area_l0"] >= min_area * 0.99


def test_slide_file_and_lesion_texture(cohort: Cohort) -> None:
    rows = _labels(cohort)
    sid = next(r["slide_id"] for r in rows if r["label"] == "tumor")
    with openslide.OpenSlide(str(cohort.out_dir / "slides" / f"{sid}.tiff")) as slide:
        assert slide.dimensions == (SIZE, SIZE)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(COHORT_MPP, abs=1e-3)
        level = 2
        lw, lh = slide.level_dimensions[level]
        rgb = np.asarray(slide.read_region((0, 0), level, (lw, lh)).convert("RGB"))
    lesion = _mask(cohort.lesion_mask(sid))
    tissue = _mask(cohort.tissue_mask(sid))

    def on_level(m: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(m).resize((lw, lh), Image.Resampling.NEAREST)) > 0

    les, tis = on_level(lesion), on_level(tissue)
    grey = rgb.astype(np.float32).mean(axis=-1)
    # dense nuclei-rich lesion texture is clearly darker than the background tissue
    assert grey[les].mean() < grey[tis & ~les].mean() - 15


def test_deterministic(cohort: Cohort, tmp_path: Path) -> None:
    again = make_cohort(tmp_path / "again", **ARGS)  # type: ignore[arg-type]
    assert again.labels_csv.read_bytes() == cohort.labels_csv.read_bytes()
    for path in sorted(cohort.masks_dir.glob("*.png")):
        assert (again.masks_dir / path.name).read_bytes() == path.read_bytes(), path.name
    a = json.loads(cohort.manifest.read_text())["slides"]
    b = json.loads(again.manifest.read_text())["slides"]
    assert a == b


def test_idempotent_and_resumes(tmp_path: Path) -> None:
    args = {**ARGS, "slides": 2, "positive_fraction": 1.0}
    first = make_cohort(tmp_path / "c", **args)  # type: ignore[arg-type]
    stamps = {p: p.stat().st_mtime_ns for p in first.slides}
    lesion_bytes = first.lesion_mask("slide_001").read_bytes()
    # a killed run: the slide and its record are gone, partial files are left over
    # (wsi._files's temporary names, and those of the generator's earlier versions)
    first.slides[1].unlink()
    (first.masks_dir / "slide_001.json").unlink()
    partial = first.slides[1].with_name(".slide_001.tiff.999.partial.tiff")
    partial.write_bytes(b"half")
    tmp = first.masks_dir / ".slide_001_lesion.999.tmp.png"
    tmp.write_bytes(b"half")
    second = make_cohort(tmp_path / "c", **args)  # type: ignore[arg-type]
    assert second == first
    assert first.slides[0].stat().st_mtime_ns == stamps[first.slides[0]]  # skipped
    assert first.slides[1].is_file() and not partial.exists() and not tmp.exists()
    assert first.lesion_mask("slide_001").read_bytes() == lesion_bytes
    with pytest.raises(ConfigError, match="other parameters"):
        make_cohort(tmp_path / "c", **{**args, "seed": 4})  # type: ignore[arg-type]


def test_lesion_fraction_of_tiles(tmp_path: Path) -> None:
    ds = 16
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:6, 2:6] = 255  # level-0 x, y in [32, 96)
    path = tmp_path / "lesion.png"
    Image.fromarray(mask).save(path)
    coords = np.array([[32, 32], [0, 0], [64, 64], [8, 32], [200, 200], [150, 150]])
    frac = lesion_fraction_of_tiles(path, coords, 64, ds)
    assert frac.shape == (6,)
    np.testing.assert_allclose(frac, [1.0, 0.25, 0.25, 40 / 64, 0.0, 0.0])
    # rectangular footprints, and an array instead of a file
    rect = lesion_fraction_of_tiles(mask, [[40, 40], [88, 32]], (16, 8), ds)
    np.testing.assert_allclose(rect, [1.0, 0.5])
    with pytest.raises(ConfigError):
        lesion_fraction_of_tiles(mask, coords, 0, ds)


def test_tiler_on_cohort_slide(cohort: Cohort, tmp_path: Path) -> None:
    from wsi import store as st
    from wsi.tiling import tile_slide

    rows = _labels(cohort)
    sid = next(r["slide_id"] for r in rows if r["label"] == "tumor")
    store = tile_slide(cohort.out_dir / "slides" / f"{sid}.tiff", tmp_path, progress=False)
    group = st.open_store(store)
    coords = np.asarray(group[st.TILES_COORDS][:])
    assert len(coords) > 10
    footprint = 256 * 0.5 / COHORT_MPP
    frac = lesion_fraction_of_tiles(
        cohort.lesion_mask(sid), coords, footprint, cohort.mask_downsample
    )
    assert frac.min() >= 0.0 and frac.max() > 0.0
    lesion_area = (_mask(cohort.lesion_mask(sid)) > 0).sum() * cohort.mask_downsample**2
    assert (frac * footprint**2).sum() <= lesion_area + 1e-6  # tiles do not overlap


def test_bad_arguments(tmp_path: Path) -> None:
    for kwargs in (
        {"slides": 0},
        {"patients": 7, "slides": 6},
        {"positive_fraction": 1.5},
        {"lesion_fraction": (0.2, 0.1)},
        {"size": 100},
        {"seed": -1},
    ):
        with pytest.raises(ConfigError):
            make_cohort(tmp_path / "bad", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="too small"):
        make_cohort(tmp_path / "bad", slides=2, size=SIZE)  # default 256 um lesions
    assert not (tmp_path / "bad").exists()


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    cmd = [sys.executable, str(REPO / "tools" / "make_cohort.py"), "--out", str(out), "-q"]
    bad = subprocess.run(cmd + ["--slides", "2", "--size", "1024"], capture_output=True, text=True)
    assert bad.returncode == 2 and "too small" in bad.stderr
    ok = subprocess.run(
        cmd + ["--slides", "2", "--size", "1024", "--positive-fraction", "0"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert (out / "labels.csv").read_text().count("normal") == 2


def test_without_shared_data_textures_are_procedural(tmp_path: Path) -> None:
    """Where ../shared/data is absent (an empty texture folder here) the cohort still
    builds, from procedural H&E textures, with the same labels and masks."""
    from PIL import Image

    empty = tmp_path / "no_textures"
    empty.mkdir()
    c = make_cohort(tmp_path / "c", slides=4, size=3000, seed=2, tile_source_dir=empty,
                    min_lesion_diameter_um=192)  # fmt: skip
    assert len(c.slides) == 4 and all(p.exists() for p in c.slides)
    with open(c.labels_csv) as f:
        labels = {r["slide_id"]: r["label"] for r in csv.DictReader(f)}
    assert set(labels.values()) == {"tumor", "normal"}
    for sid, label in labels.items():
        lesion = np.asarray(Image.open(c.masks_dir / f"{sid}_lesion.png")) > 0
        assert lesion.any() == (label == "tumor")
