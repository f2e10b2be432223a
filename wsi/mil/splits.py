"""Patient-level splits: stratified k folds and an optional held-out test part.

A patient's slides always fall in one part. Splits are written to ``splits.csv``
(``slide_id, patient_id, label, part``; ``part`` is the fold index 0..k-1 or ``test``)
so a run can be repeated exactly, and read back from it.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi._files import atomic_path
from wsi.errors import ConfigError
from wsi.mil.data import LabelTable, read_csv_rows

__all__ = ["Splits", "make_splits", "write_splits", "read_splits"]

TEST = "test"


@dataclass(frozen=True)
class Splits:
    """``part[slide_id]``: fold index as a string ("0".."k-1") or "test"."""

    part: dict[str, str]
    folds: int

    def fold(self, k: int) -> tuple[list[str], list[str]]:
        """(train slide ids, validation slide ids) of fold ``k``; test slides in neither."""
        val = [s for s, p in self.part.items() if p == str(k)]
        train = [s for s, p in self.part.items() if p not in (str(k), TEST)]
        return train, val

    @property
    def test(self) -> list[str]:
        return [s for s, p in self.part.items() if p == TEST]


def make_splits(
    table: LabelTable, folds: int = 5, test_fraction: float = 0.0, seed: int = 0
) -> Splits:
    """Patient-level folds stratified by the task's strata (class; survival: event and
    early/late time; regression: target quartile); deterministic for a seed.

    With a ``split`` column in labels.csv, that split is used as one fold (``val`` rows
    validate, ``test`` rows are held out) and ``folds`` is ignored.
    """
    if table.has_split:
        part = {
            r.slide_id: {"train": "train", "val": "0", "test": TEST}[r.split or "train"]
            for r in table.rows
        }
        splits = Splits(part, 1)
        _check(table, splits)
        return splits
    if folds < 2:
        raise ConfigError(f"folds = {folds}: need at least 2 (or a split column in labels.csv)")
    if not 0.0 <= test_fraction < 0.9:
        raise ConfigError(f"test_fraction = {test_fraction}: must be in [0, 0.9)")
    rng = np.random.default_rng(seed)
    strata = table.task.strata(table.rows)
    classes = table.task.has_classes
    assigned: dict[str, str] = {}
    offset = 0  # small strata continue the round-robin where the last one stopped
    order = list(table.task.classes) if classes else sorted(set(strata.values()))
    for stratum in [s for s in order if s in set(strata.values())]:
        ids = sorted(pid for pid, s in strata.items() if s == stratum)
        ids = [ids[i] for i in rng.permutation(len(ids))]
        n_test = int(round(test_fraction * len(ids)))
        if test_fraction > 0 and classes:
            n_test = max(n_test, 1)
        rest = ids[n_test:]
        if classes and len(rest) < folds:
            raise ConfigError(
                f"{table.path}: {len(rest)} patient(s) labelled {stratum!r} outside the test "
                f"part, fewer than {folds} folds: every fold must validate every class. "
                "Use fewer --folds, a smaller --test-fraction, or more patients."
            )
        for pid in ids[:n_test]:
            assigned[pid] = TEST
        for i, pid in enumerate(rest):
            assigned[pid] = str((offset + i) % folds)
        offset = 0 if classes else (offset + len(rest)) % folds
    part = {r.slide_id: assigned[r.patient_id] for r in table.rows}
    splits = Splits(part, folds)
    _check(table, splits)
    return splits


def _check(table: LabelTable, splits: Splits) -> None:
    """No patient in two parts; every validation part holds both classes."""
    parts_of: dict[str, set[str]] = {}
    for r in table.rows:
        parts_of.setdefault(r.patient_id, set()).add(splits.part[r.slide_id])
    split_patients = sorted(pid for pid, parts in parts_of.items() if len(parts) > 1)
    if split_patients:
        raise ConfigError(
            f"{table.path}: patient(s) {split_patients[:5]} have slides in two parts; a "
            "patient must be in one part only. Fix the split column."
        )
    task = table.task
    by_id = {r.slide_id: r for r in table.rows}
    for k in range(splits.folds):
        train, val = splits.fold(k)
        for name, ids in (("training", train), ("validation", val)):
            rows = [by_id[s] for s in ids]
            if task.has_classes and len({r.y for r in rows}) < 2:
                raise ConfigError(
                    f"{table.path}: the {name} part of fold {k} does not hold two classes; "
                    "choose other splits."
                )
            if task.kind == "survival" and not any(r.event for r in rows):
                raise ConfigError(
                    f"{table.path}: the {name} part of fold {k} holds no event; a C-index "
                    "needs events. Use fewer --folds or choose other splits."
                )
            if len(rows) < 2:
                raise ConfigError(
                    f"{table.path}: the {name} part of fold {k} holds {len(rows)} slide(s); "
                    "use fewer --folds or more patients."
                )


def write_splits(splits: Splits, table: LabelTable, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    with atomic_path(p) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "patient_id", "label", "part"])  # label: as labels.csv says
        for r in table.rows:
            w.writerow([r.slide_id, r.patient_id, r.label, splits.part[r.slide_id]])
    return p


def read_splits(path: str | os.PathLike[str], table: LabelTable) -> Splits:
    """Splits from an earlier ``splits.csv``; its slides must be those of labels.csv."""
    p = Path(path)
    rows = read_csv_rows(p, "splits", ("slide_id", "part"), " (as `wsi train` writes)")
    bad = sorted({r["part"] for r in rows if not (r["part"] or "").isdigit()} - {TEST, "train"})
    if bad:
        raise ConfigError(f"{p}: unknown part value(s) {bad}; use fold numbers, train or test.")
    part = {r["slide_id"]: r["part"] for r in rows}
    labelled = {r.slide_id for r in table.rows}
    if set(part) != labelled:
        diff = sorted(set(part) ^ labelled)
        raise ConfigError(
            f"{p}: its slides differ from {table.path} ({diff[:5]}). Use the labels it was "
            "made from, or drop --splits to make new ones."
        )
    folds = len({v for v in part.values() if v.isdigit()})
    splits = Splits(part, folds)
    _check(table, splits)
    return splits
