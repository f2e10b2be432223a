"""labels.csv checks and patient-level splits."""

from __future__ import annotations

import numpy as np
import pytest

from wsi.errors import ConfigError
from wsi.mil.data import read_labels
from wsi.mil.splits import make_splits, read_splits, write_splits


def _labels(tmp_path, rows, header="slide_id,patient_id,label"):
    path = tmp_path / "labels.csv"
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return path


def _cohort(n_patients=30, slides_per_patient=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "tumor" if rng.random() < 0.4 else "normal"
        for s in range(rng.integers(1, slides_per_patient + 1)):
            rows.append((f"P{p:02d}_S{s}", f"P{p:02d}", label))
    return rows


def test_no_patient_in_two_parts_and_folds_are_stratified(tmp_path):
    table = read_labels(_labels(tmp_path, _cohort()))
    assert table.positive == "tumor"
    splits = make_splits(table, folds=5, test_fraction=0.2, seed=1)
    part_of_patient: dict[str, set[str]] = {}
    for r in table.rows:
        part_of_patient.setdefault(r.patient_id, set()).add(splits.part[r.slide_id])
    assert all(len(parts) == 1 for parts in part_of_patient.values())
    y = {r.slide_id: r.y for r in table.rows}
    test = splits.test
    assert test and {y[s] for s in test} == {0, 1}
    seen_val: set[str] = set()
    for k in range(5):
        train, val = splits.fold(k)
        assert {y[s] for s in val} == {0, 1}
        assert not set(train) & set(val) and not set(test) & (set(train) | set(val))
        train_patients = {r.patient_id for r in table.rows if r.slide_id in set(train)}
        val_patients = {r.patient_id for r in table.rows if r.slide_id in set(val)}
        assert not train_patients & val_patients
        seen_val |= set(val)
    assert seen_val | set(test) == {r.slide_id for r in table.rows}


def test_splits_are_reproducible_and_round_trip(tmp_path):
    table = read_labels(_labels(tmp_path, _cohort()))
    a = make_splits(table, folds=3, seed=7)
    assert a == make_splits(table, folds=3, seed=7)
    assert a != make_splits(table, folds=3, seed=8)
    path = write_splits(a, table, tmp_path / "splits.csv")
    assert read_splits(path, table) == a


def test_split_column_is_used_and_checked(tmp_path):
    rows = [
        ("a", "p1", "tumor", "train"),
        ("b", "p2", "normal", "train"),
        ("c", "p3", "tumor", "val"),
        ("d", "p4", "normal", "val"),
        ("e", "p5", "tumor", "test"),
        ("f", "p6", "normal", "test"),
    ]
    table = read_labels(_labels(tmp_path, rows, "slide_id,patient_id,label,split"))
    splits = make_splits(table)
    assert splits.fold(0) == (["a", "b"], ["c", "d"]) and splits.test == ["e", "f"]
    rows[1] = ("b", "p3", "tumor", "train")  # p3 also in val
    with pytest.raises(ConfigError, match="two parts"):
        make_splits(read_labels(_labels(tmp_path, rows, "slide_id,patient_id,label,split")))


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([("a", "p1", "tumor"), ("b", "p2", "tumor")], "at least two classes"),
        ([("a", "p1", "tumor"), ("b", "p1", "normal")], r"disagree on the labels: p1"),
        ([("a", "p1", "tumor"), ("a", "p2", "normal")], r"listed twice: a"),
        ([("a", "p1", "tumor"), ("b", "", "normal")], "empty slide_id or patient_id"),
        ([("a", "p1", "tumor"), ("b", "p2", "")], "empty label on line"),
        ([("a", "p1", "x"), ("b", "p2", "y")], "--positive"),
    ],
)
def test_bad_labels(tmp_path, rows, match):
    with pytest.raises(ConfigError, match=match):
        read_labels(_labels(tmp_path, rows))


def test_missing_columns_and_too_few_patients(tmp_path):
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['patient_id'\]"):
        read_labels(_labels(tmp_path, [("a", "tumor")], "slide_id,label"))
    table = read_labels(_labels(tmp_path, _cohort(n_patients=6)))
    with pytest.raises(ConfigError, match="fewer than 5 folds"):
        make_splits(table, folds=5, test_fraction=0.3)


def test_excel_byte_order_mark_is_read_and_stray_fields_are_named(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("\ufeffslide_id,patient_id,label\na,p1,tumor\nb,p2,normal\n".encode())
    assert [r.slide_id for r in read_labels(path).rows] == ["a", "b"]
    path.write_text("slide_id,patient_id,label\na,p1,tumor,extra\nb,p2,normal\n")
    with pytest.raises(ConfigError, match=r"more fields than columns on line\(s\): 2"):
        read_labels(path)
