"""What a label file asks: the task of a MIL model, asked by every stage after the head.

A :class:`Task` knows its kind (``KINDS``), its classes or its time unit, and from that:
which columns of ``labels.csv`` it reads and how it checks them (:func:`parse_rows`),
how many outputs the head has (:attr:`Task.n_outputs`), the loss of one bag
(:meth:`Task.loss`), how patients are stratified into folds (:meth:`Task.strata`), and
what a head's logits mean (:meth:`Task.scores`). Metrics, calibration and the decision of
each kind are in :mod:`wsi.mil.outcomes`.

Kinds and their columns (besides ``slide_id, patient_id`` and the optional ``group``,
``split``):

- ``binary``: ``label`` with two classes; the positive one (tumour) recognised by name
  or given as ``positive``.
- ``multiclass``: ``label`` with three or more classes (``classes:`` lists and orders
  them; else sorted). ``negative_class:`` names the benign class, for a screening decision
  "not that class" at the operating point; names like ``normal`` are recognised.
- ``ordinal``: as multiclass, the classes being ordered grades (``classes:`` in order, or
  sorted when every name ends in a number).
- ``survival``: ``time`` (> 0, in ``time_unit``) and ``event`` (1: the event happened,
  0: censored).
- ``regression``: ``target``, a finite number.

The kind is guessed from the columns; ``task:`` (``--task``) overrides the guess, and a
file that fits two kinds (a ``label`` and a ``target`` column) is refused until one is
named.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi.errors import ConfigError

if TYPE_CHECKING:  # numpy is imported where it is used: the CLI reads KINDS at start-up
    import numpy as np

__all__ = [
    "KINDS",
    "CLASS_KINDS",
    "POSITIVE_NAMES",
    "NEGATIVE_NAMES",
    "Task",
    "Target",
    "guess_kind",
    "parse_rows",
]

KINDS = ("binary", "multiclass", "ordinal", "survival", "regression")
CLASS_KINDS = ("binary", "multiclass", "ordinal")
#: labels recognised as the positive (tumour) class of a binary task
POSITIVE_NAMES = ("1", "tumor", "tumour", "positive", "malignant", "cancer", "true", "yes")
#: labels recognised as the benign class of a multiclass or ordinal task
NEGATIVE_NAMES = ("normal", "benign", "negative", "healthy", "non-tumor", "non-tumour", "0")
TIME_UNITS = ("days", "weeks", "months", "years")
_SHOWN = 5


@dataclass(frozen=True)
class Target:
    """What one row of labels.csv says about its slide (per kind; the rest are None)."""

    label: str  #: as written (survival: "time/event"; regression: the target as written)
    y: int  #: class index (binary: 1 = positive); survival: the event; regression: 0
    time: float | None = None
    event: int | None = None
    target: float | None = None


@dataclass(frozen=True)
class Task:
    """A MIL task: its kind and what defines it; fitted parts are set by :meth:`fitted`.

    Attributes:
        kind: one of ``KINDS``.
        classes: class names in index order (binary: ``(negative, positive)``).
        negative: the benign class (binary: the negative class; multiclass/ordinal: the
            one of ``negative_class``, or None: no screening decision).
        time_unit: survival: the unit of ``time``.
        horizons: survival: times at which time-dependent metrics are reported.
        bins: survival, fitted: the inner cut points of the event-time bins of the
            discrete-time hazard (training patients' event-time quantiles).
        target_mean, target_std: regression, fitted: the training targets' mean and
            standard deviation (the head learns the standardised target).
    """

    kind: str
    classes: tuple[str, ...] = ()
    negative: str | None = None
    time_unit: str | None = None
    horizons: tuple[float, ...] = ()
    bins: tuple[float, ...] = ()
    target_mean: float = 0.0
    target_std: float = 1.0

    # ------------------------------------------------------------------ what it is
    @property
    def has_classes(self) -> bool:
        return self.kind in CLASS_KINDS

    @property
    def positive(self) -> str | None:
        """Binary: the positive class; others: None."""
        return self.classes[1] if self.kind == "binary" else None

    @property
    def negative_index(self) -> int | None:
        return self.classes.index(self.negative) if self.negative is not None else None

    @property
    def screens(self) -> bool:
        """Whether the task has a screening decision (a positive vs a benign side)."""
        return self.has_classes and self.negative is not None

    @property
    def n_outputs(self) -> int:
        """Outputs of the head: class logits, hazard logits per time bin, or one value."""
        if self.has_classes:
            return len(self.classes)
        if self.kind == "survival":
            return len(self.bins) + 1
        return 1

    def describe(self) -> str:
        if self.has_classes:
            neg = f", negative class {self.negative!r}" if self.negative else ""
            return f"{self.kind} ({', '.join(self.classes)}{neg})"
        if self.kind == "survival":
            return f"survival (time in {self.time_unit})"
        return "regression"

    def as_card(self) -> dict[str, Any]:
        card = asdict(self)
        card["horizons"] = list(self.horizons)
        card["bins"] = list(self.bins)
        card["classes"] = list(self.classes)
        if self.kind == "binary":  # what models before tasks wrote, still read by reports
            card["positive"], card["negative"] = self.classes[1], self.classes[0]
        return card

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> Task:
        """The task of a model card (``model.json``'s ``task``); a card written before
        tasks existed (only ``positive`` / ``negative``) is a binary task."""
        if "kind" not in card:
            return cls(
                "binary", (str(card["negative"]), str(card["positive"])), str(card["negative"])
            )
        return cls(
            kind=str(card["kind"]),
            classes=tuple(card.get("classes") or ()),
            negative=card.get("negative"),
            time_unit=card.get("time_unit"),
            horizons=tuple(float(h) for h in card.get("horizons") or ()),
            bins=tuple(float(b) for b in card.get("bins") or ()),
            target_mean=float(card.get("target_mean", 0.0)),
            target_std=float(card.get("target_std", 1.0)),
        )

    # ------------------------------------------------------------------ splits
    def strata(self, rows: Sequence[Any]) -> dict[str, str]:
        """The stratum of every patient for the folds: its class; for survival its event
        and whether its time is above the median of its event group; for regression the
        quartile of its (mean) target."""
        import numpy as np

        per_patient: dict[str, list[Any]] = {}
        for r in rows:
            per_patient.setdefault(r.patient_id, []).append(r)
        if self.has_classes:
            return {p: self.classes[rs[0].y] for p, rs in per_patient.items()}
        if self.kind == "survival":
            out = {}
            for event in (0, 1):
                pats = {p: rs[0].time for p, rs in per_patient.items() if rs[0].event == event}
                if not pats:
                    continue
                median = float(np.median(list(pats.values())))
                for p, t in pats.items():
                    out[p] = (
                        f"{'event' if event else 'censored'}, {'late' if t > median else 'early'}"
                    )
            return out
        means = {p: float(np.mean([r.target for r in rs])) for p, rs in per_patient.items()}
        cuts = np.quantile(list(means.values()), [0.25, 0.5, 0.75])
        return {
            p: f"quartile {int(np.searchsorted(cuts, v, side='right')) + 1}"
            for p, v in means.items()
        }

    # ------------------------------------------------------------------ fitting
    def fitted(self, rows: Sequence[Any], n_bins: int = 4) -> Task:
        """The task with its data-dependent parts fitted on the training ``rows``
        (survival: time bins and default horizons; regression: target mean and sd)."""
        import numpy as np

        if self.kind == "survival":
            times = np.array([r.time for r in rows if r.event], dtype=np.float64)
            if len(times) == 0:
                times = np.array([r.time for r in rows], dtype=np.float64)
            inner = np.unique(np.quantile(times, np.linspace(0, 1, n_bins + 1)[1:-1]))
            horizons = self.horizons or tuple(
                float(round(h, 2)) for h in np.quantile(times, [0.25, 0.5, 0.75])
            )
            return replace(self, bins=tuple(float(b) for b in inner), horizons=horizons)
        if self.kind == "regression":
            t = np.array([r.target for r in rows], dtype=np.float64)
            sd = float(t.std()) if len(t) > 1 and t.std() > 0 else 1.0
            return replace(self, target_mean=float(t.mean()), target_std=sd)
        return self

    def class_weights(self, rows: Sequence[Any]) -> np.ndarray:
        """Inverse class frequencies of ``rows`` (mean 1 over the rows); survival and
        regression: ones."""
        import numpy as np

        if not self.has_classes:
            return np.ones(1)
        counts = np.bincount([r.y for r in rows], minlength=len(self.classes))
        return np.asarray(len(rows) / (len(self.classes) * np.maximum(counts, 1)), np.float64)

    # ------------------------------------------------------------------ loss
    def loss(self, logits: Any, row: Any, weights: np.ndarray) -> Any:
        """The loss of one bag: ``logits`` (C,) of the head for the slide of ``row``.

        Classes: cross-entropy times the class weight. Survival: the negative
        log-likelihood of the discrete-time hazard model (Zadeh & Schmid 2020): the head's
        outputs are the logits of the hazard in each time bin. Regression: Huber loss
        (delta 1) on the standardised target.
        """
        import numpy as np
        import torch
        from torch.nn import functional as F

        if self.has_classes:
            target = torch.tensor([row.y])
            return F.cross_entropy(logits[None], target) * float(weights[row.y])
        if self.kind == "survival":
            k = int(np.searchsorted(self.bins, row.time, side="left"))
            log_h = F.logsigmoid(logits)  # log hazard per bin
            log_1mh = F.logsigmoid(-logits)  # log (1 - hazard)
            survived = log_1mh[:k].sum()
            if row.event:
                return -(survived + log_h[k])
            return -(survived + log_1mh[k])
        z = (row.target - self.target_mean) / self.target_std
        return F.huber_loss(logits[0], torch.tensor(z, dtype=logits.dtype), delta=1.0)

    # ------------------------------------------------------------------ what logits mean
    def survival_curve(self, logits: np.ndarray) -> np.ndarray:
        """Survival: (n, C) hazard logits -> (n, C) probability of surviving each bin."""
        import numpy as np
        from scipy.special import expit

        h = expit(np.asarray(logits, dtype=np.float64))
        return np.cumprod(1.0 - h, axis=1)

    def scores(self, logits: np.ndarray, temperature: float = 1.0) -> dict[str, np.ndarray]:
        """What (n, C) logits mean for this task, per slide.

        Classes: ``probs`` (n, K) softmax of logits / temperature, and with a benign
        class ``screen`` (n,), the log-odds of "not the benign class". Survival:
        ``survival`` (n, C) per bin, ``risk`` (n,) = minus the expected number of bins
        survived (higher: worse). Regression: ``value`` (n,) in the target's units.
        """
        import numpy as np

        z = np.asarray(logits, dtype=np.float64)
        if self.has_classes:
            from wsi.mil.calibration import softmax

            probs = softmax(z, temperature)
            out = {"probs": probs}
            if self.negative_index is not None:
                from wsi.mil.task_metrics import screening_score

                out["screen"] = screening_score(probs, self.negative_index)
            return out
        if self.kind == "survival":
            surv = self.survival_curve(z)
            return {"survival": surv, "risk": -surv.sum(axis=1)}
        return {"value": z[:, 0] * self.target_std + self.target_mean}

    def risk(self, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """One number per slide, higher = worse: what the cohort triage sorts by and
        what a validation run reports progress on (screening log-odds, risk, value;
        without a benign class, the top class's probability)."""
        s = self.scores(logits, temperature)
        if "screen" in s:
            return s["screen"]
        if "probs" in s:
            return np.asarray(s["probs"].max(axis=1))
        return s["risk"] if "risk" in s else s["value"]


# ---------------------------------------------------------------------- reading labels


def guess_kind(
    path: Path, columns: Sequence[str], labels: Sequence[str], kind: str | None, ordinal: bool
) -> str:
    """The task kind of a labels file with ``columns``: ``kind`` when given (checked),
    else guessed; a file that fits two kinds is refused."""
    has = set(columns)
    if kind is not None:
        if kind not in KINDS:
            raise ConfigError(f"task {kind!r}: unknown; tasks: {', '.join(KINDS)}.")
        need = {"survival": ("time", "event"), "regression": ("target",)}.get(kind, ("label",))
        missing = [c for c in need if c not in has]
        if missing:
            raise ConfigError(
                f"{path}: a {kind} task needs the column(s) {missing}; found {list(columns)}."
            )
        if kind in ("binary", "multiclass") and ordinal:
            return "ordinal" if kind == "multiclass" else kind
        return kind
    fits = []
    if "label" in has:
        n = len(set(labels))
        fits.append("ordinal" if ordinal and n > 2 else "binary" if n <= 2 else "multiclass")
    if {"time", "event"} <= has:
        fits.append("survival")
    if "target" in has:
        fits.append("regression")
    if not fits:
        raise ConfigError(
            f"{path}: no task column; found {list(columns)}. labels.csv needs slide_id, "
            "patient_id and either label (classes), time + event (survival) or target "
            "(regression)."
        )
    if len(fits) > 1:
        raise ConfigError(
            f"{path}: the columns fit {' and '.join(fits)} tasks; say which with --task "
            f"(or `task:` in the train section): one of {', '.join(KINDS)}."
        )
    return fits[0]


def _problems(path: Path, what: str, items: list[str], fix: str) -> ConfigError:
    more = f" (and {len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ConfigError(f"{path}: {what}: {', '.join(items[:_SHOWN])}{more}. {fix}")


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _graded(names: Sequence[str]) -> list[str] | None:
    """Names ending in a number sorted by it (grade_10 after grade_9), else None."""
    nums = [re.search(r"(\d+(?:\.\d+)?)\s*$", n) for n in names]
    if not all(nums):
        return None
    return [n for _, n in sorted(zip([float(m.group(1)) for m in nums if m], names, strict=True))]


def _class_task(
    path: Path,
    kind: str,
    labels: list[str],
    declared: Sequence[str] | None,
    positive: str | None,
    negative_class: str | None,
    allow_absent: bool = False,
) -> Task:
    present = sorted(set(labels))
    if declared:
        classes = [str(c) for c in declared]
        dupes = sorted({c for c in classes if classes.count(c) > 1})
        if dupes:
            raise ConfigError(f"classes: {dupes} listed twice; list each class once.")
        absent = [c for c in classes if c not in present]
        if absent and not allow_absent:
            raise ConfigError(
                f"{path}: class(es) {absent} of `classes:` label no slide; every class needs "
                "patients to train and validate on. Drop them from classes or add slides."
            )
    elif kind == "ordinal":
        graded = _graded(present)
        if graded is None:
            raise ConfigError(
                f"{path}: ordinal labels {present} have no order a name shows (no trailing "
                "number); list them in order with `classes:` in the train section."
            )
        classes = graded
    else:
        classes = present
    if len(set(classes) & set(present)) < 2:
        raise ConfigError(
            f"{path}: every slide has the label {present[0]!r}; training and evaluating "
            "need at least two classes."
        )
    if kind == "binary":
        if len(classes) > 2:
            raise ConfigError(
                f"{path}: {len(classes)} labels {classes} for a binary task; "
                "use --task multiclass, or map them to two classes."
            )
        pos = _positive_class(path, classes, positive)
        neg = next(c for c in classes if c != pos)
        return Task("binary", (neg, pos), neg)
    if negative_class is not None and negative_class not in classes:
        raise ConfigError(
            f"{path}: negative_class {negative_class!r} is not a label; labels: {classes}."
        )
    if negative_class is None:
        known = [c for c in classes if c.lower() in NEGATIVE_NAMES]
        negative_class = known[0] if len(known) == 1 else None
    return Task(kind, tuple(classes), negative_class)


def _positive_class(path: Path, classes: list[str], positive: str | None) -> str:
    if positive is not None:
        if positive not in classes:
            raise ConfigError(f"{path}: --positive {positive!r} is not a label; labels: {classes}")
        return positive
    known = [c for c in classes if c.lower() in POSITIVE_NAMES]
    if len(known) != 1:
        raise ConfigError(
            f"{path}: cannot tell which of {classes} is the positive (tumour) class. "
            "Pass --positive LABEL."
        )
    return known[0]


def parse_rows(
    path: Path,
    columns: Sequence[str],
    raw: list[dict[str, str]],
    *,
    kind: str | None = None,
    classes: Sequence[str] | None = None,
    ordinal: bool = False,
    known: bool = False,
    positive: str | None = None,
    negative_class: str | None = None,
    time_unit: str | None = None,
    horizons: Sequence[float] | None = None,
) -> tuple[Task, list[Target]]:
    """The task of a labels file and what each of its ``raw`` rows says, checked: a bad
    value is a ``ConfigError`` naming the file, its line(s) and the fix.

    ``known``: ``classes`` are a trained model's (evaluating it on new slides): a class
    may label no slide, and a label not among them is named with its line and the
    model's classes."""
    labels = [r.get("label", "") for r in raw]
    kind = guess_kind(path, columns, [x for x in labels if x], kind, ordinal)
    line = {id(r): str(i + 2) for i, r in enumerate(raw)}  # line 1 is the header
    if kind in CLASS_KINDS:
        empty = [line[id(r)] for r in raw if not r.get("label")]
        if empty:
            raise _problems(path, "empty label on line(s)", empty, "Fill them in.")
        if classes:
            unknown = [f"{r['label']!r} (line {line[id(r)]})" for r in raw
                       if r["label"] not in classes]  # fmt: skip
            if unknown:
                fix = (
                    f"The model's classes are {', '.join(classes)}: map the labels to them, "
                    "or drop those slides."
                    if known
                    else f"Add them to classes ({list(classes)}) or fix the labels."
                )
                raise _problems(path, "label(s) not in `classes:`", unknown, fix)
        task = _class_task(path, kind, labels, classes, positive, negative_class, known)
        index = {c: i for i, c in enumerate(task.classes)}
        return task, [Target(r["label"], index[r["label"]]) for r in raw]
    if kind == "survival":
        return _survival(path, raw, line, time_unit, horizons)
    bad = [line[id(r)] for r in raw if _number(r.get("target", "")) is None]
    if bad:
        raise _problems(
            path,
            "target missing or not a finite number on line(s)",
            bad,
            "Give every slide a number (drop slides without one).",
        )
    return Task("regression"), [Target(r["target"], 0, target=float(r["target"])) for r in raw]


def _survival(
    path: Path,
    raw: list[dict[str, str]],
    line: dict[int, str],
    time_unit: str | None,
    horizons: Sequence[float] | None,
) -> tuple[Task, list[Target]]:
    if time_unit is None:
        raise ConfigError(
            f"{path}: a survival task needs the unit of `time`: give time_unit (days, weeks, "
            "months or years) in the train section, or --time-unit."
        )
    if time_unit not in TIME_UNITS:
        raise ConfigError(f"time_unit {time_unit!r}: use one of {', '.join(TIME_UNITS)}.")
    bad_time = [line[id(r)] for r in raw if (_number(r.get("time", "")) or 0) <= 0]
    if bad_time:
        raise _problems(
            path,
            "time missing, not a number or not above 0 on line(s)",
            bad_time,
            "Give each patient's follow-up time, > 0, in one unit.",
        )
    bad_event = [line[id(r)] for r in raw if r.get("event") not in ("0", "1")]
    if bad_event:
        raise _problems(
            path,
            "event not 0 or 1 on line(s)",
            bad_event,
            "Write 1 where the event happened, 0 where the patient was censored.",
        )
    rows = [
        Target(
            f"{r['time']}/{r['event']}",
            int(r["event"]),
            time=float(r["time"]),
            event=int(r["event"]),
        )
        for r in raw
    ]
    if not any(t.event for t in rows):
        raise ConfigError(
            f"{path}: no event (every patient is censored): a survival model has nothing to "
            "learn from. Check the event column (1 = event happened)."
        )
    if horizons is not None and any(not (_number(str(h)) or 0) > 0 for h in horizons):
        raise ConfigError(f"horizons {list(horizons)}: each must be a time above 0.")
    task = Task("survival", time_unit=time_unit, horizons=tuple(float(h) for h in horizons or ()))
    return task, rows
