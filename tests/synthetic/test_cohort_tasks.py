"""Tests of the cohort generator's tasks (wsi.synthetic.tasks): labels.csv per task, the
truth behind it, and binary cohorts unchanged.  Small procedural cohorts (1024 px slides,
no shared data needed), so the file runs in seconds."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
from PIL import Image
from scipy.stats import spearmanr

from wsi.errors import ConfigError
from wsi.synthetic import TASKS, Cohort, load_cohort, make_cohort
from wsi.synthetic.plan import (
    BACKGROUND_SOURCES,
    LESION_SOURCES,
    check_args,
    cohort_params,
    load_cohort_sources,
    plan_slides,
)
from wsi.synthetic.tasks import SURVIVAL_H0, draw_survival, grade_range
from wsi.synthetic.textures import default_tile_source_dir

REPO = Path(__file__).resolve().parents[2]
#: Small, fast cohorts: 1024-px slides, 8 patients (2 per class), lesions >= 32 um across.
SMALL = {
    "slides": 10,
    "patients": 8,
    "size": 1024,
    "seed": 11,
    "positive_fraction": 0.75,
    "min_lesion_diameter_um": 32.0,
    "mask_downsample": 8,
    "lesion_fraction": (0.03, 0.30),
}


@pytest.fixture(scope="module")
def no_textures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty texture folder: every texture set is procedural (and machine-independent)."""
    return tmp_path_factory.mktemp("no_textures")


def _cohort(root: Path, tiles: Path, task: str, **kwargs: Any) -> Cohort:
    args = {**SMALL, **kwargs}
    return make_cohort(root / task, task=task, tile_source_dir=tiles, **args)  # type: ignore[arg-type]


def _rows(cohort: Cohort, columns: list[str]) -> list[dict[str, str]]:
    with open(cohort.labels_csv, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == columns
        return list(reader)


def _records(cohort: Cohort) -> dict[str, dict[str, Any]]:
    manifest = json.loads(cohort.manifest.read_text())
    return {r["slide_id"]: r for r in manifest["slides"]}


def _per_patient(rows: list[dict[str, str]], key: str) -> dict[str, str]:
    """The one value of column ``key`` of each patient (asserting all slides agree)."""
    values: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        values[r["patient_id"]].add(r[key])
    assert all(len(v) == 1 for v in values.values())
    return {p: v.pop() for p, v in values.items()}


def _lesion_rgb_mean(cohort: Cohort, rec: dict[str, Any]) -> np.ndarray:
    side = rec["width"]
    with openslide.OpenSlide(str(cohort.out_dir / rec["slide"])) as slide:
        rgb = np.asarray(slide.read_region((0, 0), 0, (side, side)).convert("RGB"))
    with Image.open(cohort.lesion_mask(rec["slide_id"])) as im:
        lesion = np.asarray(im.resize((side, side), Image.Resampling.NEAREST)) > 0
    mean: np.ndarray = rgb[lesion].astype(np.float64).mean(axis=0)
    return mean


def test_multiclass_labels_and_texture_sets(tmp_path: Path, no_textures: Path) -> None:
    cohort = _cohort(tmp_path, no_textures, "multiclass", slides=8)
    assert cohort.task == "multiclass" and load_cohort(cohort.out_dir) == cohort
    rows = _rows(cohort, ["slide_id", "patient_id", "label"])
    by_patient = _per_patient(rows, "label")
    counts = {c: list(by_patient.values()).count(c) for c in ("type_a", "type_b", "type_c")}
    assert set(by_patient.values()) == {"normal", "type_a", "type_b", "type_c"}
    assert min(counts.values()) >= 2 and list(by_patient.values()).count("normal") >= 2
    manifest = json.loads(cohort.manifest.read_text())
    assert manifest["task"] == manifest["params"]["task"] == "multiclass"
    assert "type_a" in manifest["label_rule"]
    sets = manifest["textures"]["lesion_sets"]
    assert [s[0]["name"] for s in sets] == [f"procedural-lesion-{k}" for k in range(3)]
    # class k is painted with texture set k-1 only: the record says so, and the lesion
    # pixels' mean colour is nearest that set's (the procedural sets differ in tint)
    sources, _ = load_cohort_sources(no_textures, per_class=True)
    centroids = np.array([s[0].reshape(-1, 3).mean(axis=0) for s in sources.lesion_sets])
    records = _records(cohort)
    for row in rows:
        rec = records[row["slide_id"]]
        k = ("normal", "type_a", "type_b", "type_c").index(row["label"])
        assert rec["label"] == row["label"] and rec["lesion_class"] == k
        if k == 0:
            assert rec["lesion_set"] is None and rec["n_lesions"] == 0
            continue
        assert rec["lesion_set"] == k - 1 and rec["n_lesions"] >= 1
        distance = np.linalg.norm(centroids - _lesion_rgb_mean(cohort, rec), axis=1)
        assert int(distance.argmin()) == k - 1, (row["slide_id"], distance)


def test_ordinal_grades_and_burden(tmp_path: Path, no_textures: Path) -> None:
    cohort = _cohort(tmp_path, no_textures, "ordinal", slides=12, patients=12, seed=4)
    rows = _rows(cohort, ["slide_id", "patient_id", "label"])
    by_patient = _per_patient(rows, "label")
    assert set(by_patient.values()) == {f"grade_{k}" for k in range(4)}
    records = _records(cohort)
    burden: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        rec = records[row["slide_id"]]
        grade = int(row["label"].removeprefix("grade_"))
        assert rec["lesion_class"] == grade
        burden[grade].append(rec["lesion_fraction"])
        if grade == 0:
            assert rec["n_lesions"] == 0 and rec["lesion_set"] is None
            continue
        assert rec["lesion_set"] == grade - 1
        lo, hi = grade_range(SMALL["lesion_fraction"], grade)  # type: ignore[arg-type]
        assert lo - 2e-3 <= rec["lesion_fraction"] <= hi + 2e-3
    means = [float(np.mean(burden[k])) for k in range(4)]
    assert means[0] == 0.0 and means == sorted(means) and len(set(means)) == 4


def test_ordinal_refuses_slides_too_small_for_grade_1(tmp_path: Path) -> None:
    # binary accepts these slides (10 % of the tissue holds a lesion), ordinal's
    # grade_1 gets only the first third of lesion_fraction (1-4 %)
    args = {"slides": 2, "size": 1024, "min_lesion_diameter_um": 48.0}
    check_args(**{**_check_defaults(), **args})
    with pytest.raises(ConfigError, match="grade_1"):
        make_cohort(tmp_path / "o", task="ordinal", **args)  # type: ignore[arg-type]


def test_survival_cohort_and_truth(tmp_path: Path, no_textures: Path) -> None:
    cohort = _cohort(tmp_path, no_textures, "survival", positive_fraction=0.5)
    rows = _rows(cohort, ["slide_id", "patient_id", "time", "event"])
    times = {p: float(t) for p, t in _per_patient(rows, "time").items()}
    events = {p: int(e) for p, e in _per_patient(rows, "event").items()}
    assert all(t > 0 for t in times.values()) and set(events.values()) <= {0, 1}
    manifest = json.loads(cohort.manifest.read_text())
    patients = {p["patient_id"]: p for p in manifest["patients"]}
    assert set(patients) == set(times)
    with open(cohort.out_dir / "truth.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["patient_id", "hazard", "burden"]
        truth = list(reader)
    assert [t["patient_id"] for t in truth] == sorted(patients)
    fractions: dict[str, list[float]] = defaultdict(list)
    for rec in manifest["slides"]:
        fractions[rec["patient_id"]].append(rec["lesion_fraction"])
    for t in truth:
        p = patients[t["patient_id"]]
        assert float(t["hazard"]) == p["hazard"] and float(t["burden"]) == p["burden"]
        assert p["time"] == times[t["patient_id"]] and p["event"] == events[t["patient_id"]]
        assert p["burden"] == pytest.approx(np.mean(fractions[t["patient_id"]]), abs=1e-6)
        if not p["is_lesion"]:
            assert p["burden"] == 0.0 and p["hazard"] == pytest.approx(SURVIVAL_H0, rel=1e-6)
    lesion = sorted((p["burden"], p["hazard"]) for p in patients.values() if p["is_lesion"])
    assert [h for _, h in lesion] == sorted(h for _, h in lesion)  # hazard grows with burden
    assert min(h for _, h in lesion) > SURVIVAL_H0
    # a re-run skips the slides and draws the same times from the same truth
    before = [(cohort.out_dir / n).read_bytes() for n in ("labels.csv", "truth.csv", "cohort.json")]
    _cohort(tmp_path, no_textures, "survival", positive_fraction=0.5)
    after = [(cohort.out_dir / n).read_bytes() for n in ("labels.csv", "truth.csv", "cohort.json")]
    assert after == before


def test_draw_survival_on_many_patients() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    for positive in (0.5, 0.0, 1.0):
        is_lesion = rng.random(n) < positive
        burden = np.where(is_lesion, rng.uniform(0.01, 0.10, n), 0.0)
        hazard, time, event = draw_survival(rng, burden, is_lesion, fraction_high=0.10)
        assert 0.23 <= 1.0 - event.mean() <= 0.37, positive  # about 30 % censored
        assert time.min() >= 0.01 and np.all(time == np.round(time, 2))
        if positive == 0.5:
            assert 4.0 <= hazard.max() / hazard.min() <= 8.0
            assert float(spearmanr(hazard, time)[0]) < -0.2  # higher hazard, shorter times
            assert 24.0 <= float(np.median(np.log(2) / hazard)) <= 60.0  # median event time
    again = draw_survival(np.random.default_rng(1), [0.05, 0.0], [True, False], fraction_high=0.1)
    once = draw_survival(np.random.default_rng(1), [0.05, 0.0], [True, False], fraction_high=0.1)
    assert all(np.array_equal(a, b) for a, b in zip(again, once, strict=True))
    with pytest.raises(ConfigError):
        draw_survival(rng, [0.1], [True, False], fraction_high=0.1)


def test_regression_targets(tmp_path: Path, no_textures: Path) -> None:
    cohort = _cohort(tmp_path, no_textures, "regression", positive_fraction=0.5)
    rows = _rows(cohort, ["slide_id", "patient_id", "target"])
    records = _records(cohort)
    assert len({r["target"] for r in rows}) == len(rows)  # per slide
    for row in rows:
        rec = records[row["slide_id"]]
        target = float(row["target"])
        assert target == rec["target"] and rec["target_truth"] == rec["lesion_fraction"]
        assert abs(target - rec["lesion_fraction"]) < 0.025  # 5 sd of the noise
        if rec["label"] == "normal":
            assert rec["lesion_fraction"] == 0.0 and rec["n_lesions"] == 0
    assert {rec["label"] for rec in records.values()} == {"tumor", "normal"}


def _check_defaults() -> dict[str, Any]:
    return {
        "slides": 60,
        "size": 4000,
        "patients": None,
        "positive_fraction": 0.5,
        "seed": 0,
        "lesion_fraction": (0.01, 0.10),
        "mask_downsample": 16,
        "min_lesion_diameter_um": 256.0,
    }


def _params_hash(textures: dict[str, Any], **kwargs: Any) -> str:
    args = check_args(**{**_check_defaults(), **kwargs})
    params = cohort_params(args, textures)
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def test_binary_unchanged(tmp_path: Path, no_textures: Path) -> None:
    """Binary cohorts are what the generator wrote before tasks existed: the expected
    values were recorded with the code of that time."""
    procedural = load_cohort_sources(no_textures)[1]
    assert _params_hash(procedural) == "b8b3e39efbaa0b6f"  # make_cohort's defaults
    assert _params_hash(procedural, task="binary") == "b8b3e39efbaa0b6f"
    assert _params_hash(procedural, task="regression") != "b8b3e39efbaa0b6f"
    tiles = default_tile_source_dir()
    if all((tiles / n).is_file() for n in BACKGROUND_SOURCES + LESION_SOURCES):
        assert _params_hash(load_cohort_sources(tiles)[1]) == "23bed1f3c58ee473"
    cohort = make_cohort(
        tmp_path / "b", slides=4, size=1024, seed=5, min_lesion_diameter_um=64.0,
        tile_source_dir=no_textures, mask_downsample=8, task="binary",
    )  # fmt: skip
    manifest = json.loads(cohort.manifest.read_text())
    assert manifest["params_hash"] == "7b25348dcf2a99f4" and "task" not in manifest
    assert cohort.task == "binary" == load_cohort(cohort.out_dir).task
    assert cohort.labels_csv.read_text() == (
        "slide_id,patient_id,label\nslide_000,patient_001,tumor\nslide_001,patient_000,normal\n"
        "slide_002,patient_001,tumor\nslide_003,patient_000,normal\n"
    )
    lesion_sha = {}
    for rec in manifest["slides"]:
        assert "lesion_set" not in rec and "target" not in rec
        with Image.open(cohort.lesion_mask(rec["slide_id"])) as im:
            lesion_sha[rec["slide_id"]] = hashlib.sha256(np.asarray(im).tobytes()).hexdigest()
    assert {k: v[:16] for k, v in lesion_sha.items()} == {
        "slide_000": "2b6b16ae45fd5da2",
        "slide_001": "4fe7b59af6de3b66",
        "slide_002": "8b9e55103badc4eb",
        "slide_003": "4fe7b59af6de3b66",
    }
    assert not (cohort.out_dir / "truth.csv").exists()


def test_plans_of_class_tasks() -> None:
    for patients in range(2, 31):
        for positive in (0.25, 0.5, 0.75):
            rng = np.random.default_rng([patients, int(positive * 100)])
            plan = plan_slides(rng, 2 * patients, patients, positive, "multiclass")
            classes = {p.patient_id: p.lesion_class for p in plan}
            counts = np.bincount([c or 0 for c in classes.values()], minlength=4)
            if patients >= 8:
                assert counts.min() >= 2, (patients, positive, counts)
            elif patients >= 4:
                assert counts.min() >= 1, (patients, positive, counts)
            assert counts[1:].max() - counts[1:].min() <= 1  # lesion classes balanced
    # tasks without classes plan exactly as binary does
    binary = plan_slides(np.random.default_rng(3), 20, 9, 0.4)
    survival = plan_slides(np.random.default_rng(3), 20, 9, 0.4, "survival")
    assert binary == survival and all(p.lesion_class is None for p in binary)


def test_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="binary, multiclass, ordinal, survival, regression"):
        make_cohort(tmp_path / "bad", task="cox")
    assert not (tmp_path / "bad").exists()
    assert TASKS == ("binary", "multiclass", "ordinal", "survival", "regression")


def test_cli_task(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    cmd = [sys.executable, str(REPO / "tools" / "make_cohort.py"), "--out", str(out), "-q"]
    cmd += ["--slides", "2", "--size", "1024", "--min-lesion-um", "32", "--task", "survival"]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (out / "labels.csv").read_text().startswith("slide_id,patient_id,time,event\n")
    assert (out / "truth.csv").is_file()
    bad = subprocess.run(cmd[:-1] + ["cox"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
