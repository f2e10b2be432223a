"""Labels and bags: ``labels.csv`` checked against the stores before any training starts.

``labels.csv`` has the columns ``slide_id, patient_id``, the task's columns (``label``;
``time, event``; or ``target``: see :mod:`wsi.mil.tasks`) and optionally ``group`` (for
per-group metrics) and ``split`` (``train``/``val``/``test``: a fixed split instead of k
folds).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st
from wsi.errors import ConfigError, StoreError
from wsi.mil.tasks import POSITIVE_NAMES, Task, parse_rows

__all__ = [
    "SlideLabel",
    "LabelTable",
    "read_labels",
    "check_stores",
    "BagSource",
    "POSITIVE_NAMES",
    "read_patients",
    "read_csv_rows",
]

log = logging.getLogger(__name__)

_SHOWN = 5


@dataclass(frozen=True)
class SlideLabel:
    slide_id: str
    patient_id: str
    label: str  #: as written in labels.csv (survival: "time/event"; regression: target)
    y: int  #: class index (binary: 1 = positive); survival: the event; regression: 0
    group: str | None = None
    split: str | None = None
    time: float | None = None  #: survival: follow-up time
    event: int | None = None  #: survival: 1 = event, 0 = censored
    target: float | None = None  #: regression: the value to predict


@dataclass(frozen=True)
class LabelTable:
    """The checked rows of labels.csv and the task they define."""

    path: Path
    rows: tuple[SlideLabel, ...]
    task: Task
    has_group: bool = False
    has_split: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def positive(self) -> str:
        """Binary: the positive class; other tasks: ''."""
        return self.task.positive or ""

    @property
    def negative(self) -> str:
        """The benign class ('' where the task has none)."""
        return self.task.negative or ""

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def y(self) -> np.ndarray:
        return np.array([r.y for r in self.rows], dtype=np.int64)


def _problems(path: Path, what: str, items: list[str], fix: str) -> ConfigError:
    more = f" (and {len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ConfigError(f"{path}: {what}: {', '.join(items[:_SHOWN])}{more}. {fix}")


def read_labels(
    path: str | os.PathLike[str], positive: str | None = None, **task: Any
) -> LabelTable:
    """Read and check labels.csv: columns, duplicates, the task's values, one label per
    patient (one time and event per patient for survival).

    ``task`` holds what the train section declares (:func:`wsi.mil.tasks.parse_rows`:
    ``kind``, ``classes``, ``ordinal``, ``negative_class``, ``time_unit``, ``horizons``);
    without ``kind`` the task is guessed from the columns.
    """
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows_read = list(reader)
        extra = [str(i + 2) for i, row in enumerate(rows_read) if None in row]
        if extra:
            raise _problems(
                p,
                "more fields than columns on line(s)",
                extra,
                "Remove the stray commas (or quote values holding commas).",
            )
        raw = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows_read]
    except FileNotFoundError as err:
        raise ConfigError(f"{p}: labels file not found.") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{p}: not a readable CSV file ({err}).") from err
    missing = [c for c in ("slide_id", "patient_id") if c not in columns]
    if missing:
        raise ConfigError(
            f"{p}: missing column(s) {missing}; found {columns}. labels.csv needs "
            "slide_id, patient_id and the task's columns: label (classes), time + event "
            "(survival) or target (regression); optionally group, split."
        )
    if not raw:
        raise ConfigError(f"{p}: no rows.")
    needed = ("slide_id", "patient_id")
    empty = [str(i + 2) for i, r in enumerate(raw) if not all(r.get(c) for c in needed)]
    if empty:
        raise _problems(p, "empty slide_id or patient_id on line(s)", empty, "Fill them in.")
    counts = Counter(r["slide_id"] for r in raw)
    dupes = sorted(sid for sid, n in counts.items() if n > 1)
    if dupes:
        raise _problems(p, "slide(s) listed twice", dupes, "List each slide once.")
    the_task, targets = parse_rows(p, columns, raw, positive=positive, **task)
    _one_outcome_per_patient(p, the_task, raw, targets)
    has_split = "split" in columns and any(r.get("split") for r in raw)
    if has_split:
        bad = sorted({r["split"] for r in raw} - {"train", "val", "test"})
        if bad:
            raise _problems(p, "unknown split value(s)", bad, "Use train, val or test.")
    has_group = "group" in columns and any(r.get("group") for r in raw)
    rows = tuple(
        SlideLabel(
            slide_id=r["slide_id"],
            patient_id=r["patient_id"],
            label=t.label,
            y=t.y,
            group=r.get("group") or None,
            split=r.get("split") or None,
            time=t.time,
            event=t.event,
            target=t.target,
        )
        for r, t in zip(raw, targets, strict=True)
    )
    return LabelTable(p, rows, the_task, has_group=has_group, has_split=has_split)


def read_csv_rows(path: str | os.PathLike[str], what: str, needed: Sequence[str],
                  fix: str = "") -> list[dict[str, str]]:  # fmt: skip
    """The rows of a small CSV file (``what`` it is, e.g. "splits") that must have the
    columns ``needed``; a missing or unreadable file or a missing column is a ConfigError
    naming the file."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as err:
        raise ConfigError(f"{p}: {what} file not found.") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{p}: not a readable CSV file ({err}).") from err
    if not rows or not set(needed) <= set(rows[0]):
        raise ConfigError(f"{p}: needs the columns {' and '.join(needed)}{fix}.")
    return rows


def read_patients(path: str | os.PathLike[str]) -> dict[str, str]:
    """Slide id -> patient id from a CSV with the columns ``slide_id`` and ``patient_id``
    (a labels.csv will do; other columns are ignored)."""
    rows = read_csv_rows(path, "patients", ("slide_id", "patient_id"))
    empty = [str(i + 2) for i, r in enumerate(rows) if not r["slide_id"] or not r["patient_id"]]
    if empty:
        raise _problems(Path(path), "empty slide_id or patient_id on line(s)", empty,
                        "Fill them in.")  # fmt: skip
    return {r["slide_id"].strip(): r["patient_id"].strip() for r in rows}


def _one_outcome_per_patient(path: Path, task: Task, raw: list[dict[str, str]],
                             targets: list[Any]) -> None:  # fmt: skip
    """Classes and survival outcomes are a patient's: its slides must agree (splits are by
    patient). Regression targets may differ per slide."""
    if task.kind == "regression":
        return
    by_patient: dict[str, set[str]] = {}
    for r, t in zip(raw, targets, strict=True):
        by_patient.setdefault(r["patient_id"], set()).add(t.label)
    mixed = [f"{pid} ({' vs '.join(sorted(ls))})" for pid, ls in by_patient.items() if len(ls) > 1]
    if mixed:
        what = "time/event" if task.kind == "survival" else "labels"
        raise _problems(
            path,
            f"patient(s) whose slides disagree on the {what}",
            mixed,
            f"A patient's slides must share its {what} (splits are by patient); fix the file.",
        )


def check_stores(
    table: LabelTable, stores_dir: str | os.PathLike[str], encoder: str
) -> tuple[str, dict[str, str]]:
    """Every labelled slide has a store with complete, non-empty ``encoder`` features, all of
    one set of weights.

    Returns that weights checksum and, per slide, the params hash of its features stage
    (what the features are: a fold trained on other features is never reused).
    """
    root = Path(stores_dir)
    stage, emb_key, _ = st.features_keys(encoder)
    no_store: list[str] = []
    no_feats: list[str] = []
    empty: list[str] = []
    shas: dict[str, list[str]] = {}
    identity: dict[str, str] = {}
    for row in table.rows:
        path = st.store_path(root, row.slide_id)
        if not st.is_store(path):
            no_store.append(row.slide_id)
            continue
        group = st.open_store(path)
        entry = st.stage_entry(group, stage)
        if entry is None:
            no_feats.append(row.slide_id)
            continue
        st.current_entry(group, stage, str(path))  # stale or half-removed features: refuse
        if group[emb_key].shape[0] == 0:
            empty.append(row.slide_id)
            continue
        identity[row.slide_id] = str(entry.get("params_hash"))
        sha = group[emb_key].attrs.get("weights_sha256") or "unknown"
        shas.setdefault(str(sha), []).append(row.slide_id)
    if no_store:
        raise StoreError(
            f"{table.path}: {len(no_store)} labelled slide(s) have no store in {root}: "
            f"{', '.join(no_store[:_SHOWN])}{' ...' if len(no_store) > _SHOWN else ''}. "
            "Tile and embed them (`wsi tile`, `wsi embed`), or drop them from labels.csv."
        )
    if no_feats:
        raise StoreError(
            f"{root}: {len(no_feats)} store(s) have no complete {encoder!r} features: "
            f"{', '.join(no_feats[:_SHOWN])}{' ...' if len(no_feats) > _SHOWN else ''}. "
            f"Run `wsi embed` with --encoder {encoder} on them."
        )
    if empty:
        raise StoreError(
            f"{root}: {len(empty)} store(s) hold no tiles: {', '.join(empty[:_SHOWN])}. "
            "Drop them from labels.csv (a slide without tissue cannot be classified here)."
        )
    if len(shas) > 1:
        parts = [f"{sha[:12]} ({len(ids)} slides, e.g. {ids[0]})" for sha, ids in shas.items()]
        raise StoreError(
            f"{root}: {encoder!r} features were made with different weights: "
            f"{'; '.join(parts)}. Re-embed so every slide uses the same weights."
        )
    return next(iter(shas)), identity


def stain_preprocessing(
    table: LabelTable, stores_dir: str | os.PathLike[str], encoder: str
) -> dict[str, Any] | None:
    """The stain normalisation every labelled slide's ``encoder`` features were made with
    (``method``, ``target_sha256`` and the ``target`` itself), or None (tiles embedded as
    stored). Features of other preprocessing under one encoder name are never mixed:
    StoreError naming a slide of each."""
    root = Path(stores_dir)
    _, emb_key, _ = st.features_keys(encoder)
    seen: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for row in table.rows:
        attrs = st.open_store(st.store_path(root, row.slide_id))[emb_key].attrs
        ident = attrs.get("stain_normalisation")
        key = json.dumps(ident, sort_keys=True)
        if key not in seen:
            target = attrs.get("stain_target")
            seen[key] = (row.slide_id, {**ident, "target": target} if ident else None)
    if len(seen) > 1:
        parts = [
            f"{sid}: {json.loads(k)['method'] if json.loads(k) else 'none'}"
            + (f" (target {json.loads(k)['target_sha256'][:12]})" if json.loads(k) else "")
            for k, (sid, _) in seen.items()
        ]
        raise StoreError(
            f"{root}: the {encoder!r} features were embedded with different stain "
            f"normalisations ({'; '.join(parts)}). Features of other preprocessing are never "
            "mixed: re-embed every slide with the same --stain-target (or none)."
        )
    return next(iter(seen.values()))[1] if seen else None


class BagSource:
    """Bags (N, D) float32 of the labelled slides, read from the stores on demand.

    Bags are kept in memory up to ``cache_mb`` (least recently used first out), so a
    cohort that fits is read once, and one that does not is streamed from disk.
    """

    def __init__(self, stores_dir: str | os.PathLike[str], encoder: str, cache_mb: int = 4096):
        self.root = Path(stores_dir)
        self.encoder = encoder
        self.budget = cache_mb * 2**20
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0

    def store(self, slide_id: str) -> Path:
        return st.store_path(self.root, slide_id)

    def views(self, slide_id: str) -> np.ndarray:
        """The slide's stain-jittered views (N, V, D) float32 (``wsi embed
        --stain-views``); ConfigError naming the store where it has none."""
        key = f"{slide_id}\0views"
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        from wsi.embed import views_of

        found = views_of(self.store(slide_id), self.encoder)
        if found is None:
            raise ConfigError(
                f"{self.store(slide_id)}: no stain-jittered views of its {self.encoder!r} "
                "features, which stain augmentation trains on. Embed the training stores with "
                "`wsi embed --stain-views 4 --overwrite` (embed.stain_views), or train "
                "without stain_augment."
            )
        arr = np.ascontiguousarray(found, np.float32)
        self._keep(key, arr)
        return arr

    def _keep(self, key: str, arr: np.ndarray) -> None:
        if arr.nbytes <= self.budget:
            self._cache[key] = arr
            self._bytes += arr.nbytes
            while self._bytes > self.budget:
                _, old = self._cache.popitem(last=False)
                self._bytes -= old.nbytes

    def __getitem__(self, slide_id: str) -> np.ndarray:
        bag = self._cache.get(slide_id)
        if bag is not None:
            self._cache.move_to_end(slide_id)
            return bag
        from wsi.embed import features_of

        bag = np.ascontiguousarray(features_of(self.store(slide_id), self.encoder), np.float32)
        self._keep(slide_id, bag)
        return bag
