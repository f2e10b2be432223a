"""What a model says about one slide, per task: the parts of a report's finding.

A prediction (the attrs of ``predictions/<model>``, written by ``wsi.mil.predict``) is
read into the parts its task has, each knowing when it is unsure, what it adds to the
cohort table and how the cohort is sorted by it:

- ``Screening``: a calibrated probability against the operating point (binary models, and
  multiclass or ordinal ones with a benign class: "not that class").
- ``ClassCall``: calibrated class probabilities and the most probable class (multiclass,
  ordinal).
- ``RiskCall``: a survival risk score, its risk group (tertiles of the training cohort)
  and the slide's predicted survival curve (survival).
- ``ValueCall``: a predicted value with the fold models' spread (regression).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wsi.reports.options import ReportOptions
from wsi.reports.render import pct, prob

__all__ = [
    "Screening",
    "ClassCall",
    "RiskCall",
    "ValueCall",
    "Parts",
    "read_parts",
    "cohort_columns",
    "cohort_cells",
    "cohort_display",
    "cohort_order",
    "VALUE_SPREAD",
]

#: regression: flag "Uncertain case" when the fold models' values spread (std) more than
#: this share of the training targets' standard deviation
VALUE_SPREAD = 0.25


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@dataclass(frozen=True)
class Screening:
    """The call at the operating point: positive when the calibrated log-odds of
    ``positive_class`` reach the threshold's."""

    positive_class: str
    negative_class: str
    positive: bool
    probability: float
    probability_std: float
    fold_probabilities: list[float]
    log_odds: float
    threshold: float
    threshold_log_odds: float
    target_sensitivity: float

    def uncertain(self, options: ReportOptions) -> list[str]:
        why = []
        if len({p >= self.threshold for p in self.fold_probabilities}) > 1:
            why.append("the fold models disagree about the call")
        if self.probability_std > options.uncertain_std:
            why.append(f"their probabilities spread widely (std {self.probability_std:.2f})")
        if abs(self.log_odds - self.threshold_log_odds) < options.uncertain_margin:
            why.append("the score lies close to the operating threshold")
        return why

    def row(self) -> dict[str, Any]:
        return {
            "positive": self.positive,
            "probability": self.probability,
            "probability_std": self.probability_std,
            "log_odds": self.log_odds,
        }


@dataclass(frozen=True)
class ClassCall:
    """Calibrated class probabilities (fold mean) and their spread across fold models."""

    classes: list[str]  #: in the model's order (ordinal: lowest grade first)
    probabilities: dict[str, float]
    std: dict[str, float]
    predicted: str  #: the most probable class
    ordinal: bool

    @property
    def probability(self) -> float:
        return self.probabilities[self.predicted]

    @property
    def runner_up(self) -> str:
        rest = [c for c in self.classes if c != self.predicted]
        return max(rest, key=lambda c: self.probabilities[c])

    def uncertain(self, options: ReportOptions) -> list[str]:
        why = []
        sd = self.std[self.predicted]
        if sd > options.uncertain_std:
            why.append(f"the fold models' probability of {self.predicted} spreads widely "
                       f"(std {sd:.2f})")  # fmt: skip
        second = self.runner_up
        p1, p2 = self.probability, self.probabilities[second]
        if p2 > 0 and math.log(max(p1, 1e-12) / p2) < options.uncertain_margin:
            why.append(f"the two most probable classes are close ({self.predicted} "
                       f"{100 * p1:.0f}%, {second} {100 * p2:.0f}%)")  # fmt: skip
        return why

    def row(self) -> dict[str, Any]:
        return {
            "predicted_class": self.predicted,
            "class_probabilities": dict(self.probabilities),
            "class_probability_std": dict(self.std),
        }


@dataclass(frozen=True)
class RiskCall:
    """A survival risk score (higher: worse), relative to the training cohort."""

    risk: float
    risk_std: float
    fold_risks: list[float]
    group: str
    names: list[str]  #: risk groups, lowest risk first
    cuts: list[float]  #: risk scores between the groups (training cohort tertiles)
    times: list[float]  #: the time bins' edges, in ``time_unit``
    survival: list[float]  #: the predicted survival at each of ``times``
    time_unit: str
    kaplan_meier: dict[str, dict[str, list[float]]]  #: training cohort, per risk group

    def group_of(self, risk: float) -> str:
        return self.names[sum(risk >= c for c in self.cuts)]

    def uncertain(self, options: ReportOptions) -> list[str]:
        why = []
        groups = sorted({self.group_of(r) for r in self.fold_risks}, key=self.names.index)
        if len(groups) > 1:
            why.append(f"the fold models put the slide in different risk groups "
                       f"({', '.join(groups)})")  # fmt: skip
        elif any(abs(self.risk - c) < self.risk_std for c in self.cuts):
            why.append("the risk lies within the fold models' spread of a risk group boundary")
        return why

    def row(self) -> dict[str, Any]:
        return {"risk": self.risk, "risk_std": self.risk_std, "risk_group": self.group}


@dataclass(frozen=True)
class ValueCall:
    """A predicted value (fold mean) with each fold model's value."""

    value: float
    value_std: float
    fold_values: list[float]
    target: str  #: what the value is (the labels' target)
    target_std: float | None  #: the training targets' standard deviation

    def uncertain(self, options: ReportOptions) -> list[str]:
        if self.target_std and self.value_std > VALUE_SPREAD * self.target_std:
            return [f"the fold models' values spread widely (std {_fmt(self.value_std)}, "
                    f"more than {VALUE_SPREAD:.0%} of the training targets' std "
                    f"{_fmt(self.target_std)})"]  # fmt: skip
        return []

    def row(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "value_std": self.value_std,
            "value_min": min(self.fold_values),
            "value_max": max(self.fold_values),
        }


@dataclass(frozen=True)
class Parts:
    """The parts of one prediction (those its task has; the others None)."""

    kind: str
    screening: Screening | None = None
    classes: ClassCall | None = None
    risk: RiskCall | None = None
    value: ValueCall | None = None

    def all(self) -> list[Any]:
        return [p for p in (self.screening, self.classes, self.risk, self.value) if p]

    def uncertain(self, options: ReportOptions) -> list[str]:
        return [why for part in self.all() for why in part.uncertain(options)]

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in self.all():
            out.update(part.row())
        return out


def _screening(pred: Mapping[str, Any], task: Mapping[str, Any]) -> Screening | None:
    if "log_odds" not in pred:  # classes without a benign class, survival, regression
        return None
    neg = str(task.get("negative"))
    pos = task.get("positive") or f"non-{neg}"  # classes: any class but the benign one
    return Screening(
        positive_class=str(pos),
        negative_class=neg,
        positive=bool(pred["positive"]),
        probability=float(pred["probability"]),
        probability_std=float(pred["probability_std"]),
        fold_probabilities=[float(p) for p in pred["fold_probabilities"]],
        log_odds=float(pred["log_odds"]),
        threshold=float(pred["threshold"]),
        threshold_log_odds=float(pred["threshold_log_odds"]),
        target_sensitivity=float(pred["target_sensitivity"]),
    )


def _classes(pred: Mapping[str, Any], card: Mapping[str, Any]) -> ClassCall:
    task = card["task"]
    classes = [str(c) for c in task["classes"]]
    probs = {str(c): float(p) for c, p in dict(pred["class_probabilities"]).items()}
    std = {str(c): float(p) for c, p in dict(pred["class_probability_std"]).items()}
    return ClassCall(classes, probs, std, str(pred["predicted_class"]), task["kind"] == "ordinal")


def _risk(pred: Mapping[str, Any], card: Mapping[str, Any]) -> RiskCall:
    groups = card.get("risk_groups") or {}
    km = {
        str(g): {
            "time": [float(t) for t in c["time"]],
            "survival": [float(s) for s in c["survival"]],
        }
        for g, c in (groups.get("kaplan_meier") or {}).items()
    }
    return RiskCall(
        risk=float(pred["risk"]),
        risk_std=float(pred["risk_std"]),
        fold_risks=[float(r) for r in pred["fold_risks"]],
        group=str(pred["risk_group"]),
        names=[str(n) for n in groups.get("names") or ("low", "intermediate", "high")],
        cuts=[float(c) for c in groups.get("cuts") or ()],
        times=[float(t) for t in pred.get("survival_times") or ()],
        survival=[float(s) for s in pred.get("survival") or ()],
        time_unit=str(pred.get("time_unit") or card["task"].get("time_unit") or "time units"),
        kaplan_meier=km,
    )


def _value(pred: Mapping[str, Any], card: Mapping[str, Any]) -> ValueCall:
    task = card["task"]
    std = task.get("target_std")
    return ValueCall(
        value=float(pred["value"]),
        value_std=float(pred["value_std"]),
        fold_values=[float(v) for v in pred["fold_values"]],
        target=str(task.get("target_name") or "target"),
        target_std=float(std) if std else None,
    )


def read_parts(pred: Mapping[str, Any], card: Mapping[str, Any]) -> Parts:
    """The parts of a prediction's attrs ``pred`` of the model with card ``card``."""
    task = card["task"]
    kind = str(task.get("kind") or "binary")  # cards before tasks: binary
    screening = _screening(pred, task)
    if kind in ("multiclass", "ordinal"):
        return Parts(kind, screening=screening, classes=_classes(pred, card))
    if kind == "survival":
        return Parts(kind, risk=_risk(pred, card))
    if kind == "regression":
        return Parts(kind, value=_value(pred, card))
    return Parts(kind, screening=screening)


# ------------------------------------------------------------------ the cohort table


def _kind(task: Mapping[str, Any] | None) -> str:
    return str((task or {}).get("kind") or "binary")


def _screens(task: Mapping[str, Any] | None) -> bool:
    return _kind(task) == "binary" or bool((task or {}).get("negative"))


def cohort_columns(task: Mapping[str, Any] | None) -> list[str]:
    """The value columns of ``cohort.csv`` for a model's task (``model.json``'s ``task``;
    None: binary), between ``decision`` and ``flags``."""
    kind = _kind(task)
    cols = ["probability", "probability_std", "positive"] if _screens(task) else []
    if kind in ("multiclass", "ordinal"):
        cols += ["predicted_class", *(f"probability_{c}" for c in (task or {})["classes"])]
    elif kind == "survival":
        cols += ["risk", "risk_std", "risk_group"]
    elif kind == "regression":
        cols += ["value", "value_std", "value_min", "value_max"]
    return cols


def cohort_cells(row: Mapping[str, Any], columns: list[str]) -> dict[str, Any]:
    """A report row's values of ``columns`` as ``cohort.csv`` writes them."""
    out: dict[str, Any] = {}
    probs = row.get("class_probabilities") or {}
    for col in columns:
        if col.startswith("probability_") and col != "probability_std":
            out[col] = f"{probs[col.removeprefix('probability_')]:.6f}"
        elif col in ("probability", "probability_std"):
            out[col] = f"{row[col]:.6f}"
        elif col in ("risk", "risk_std", "value", "value_std", "value_min", "value_max"):
            out[col] = float(f"{row[col]:.6g}")  # a number: never quoted as a formula
        else:
            out[col] = row.get(col)
    return out


def cohort_display(task: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """The value columns of ``cohort.html``: (header, row -> text), numbers right-aligned."""
    kind = _kind(task)
    cols: list[tuple[str, Any]] = []
    if _screens(task):
        cols += [
            ("Probability", lambda r: prob(r["probability"])),
            ("\u00b1 std", lambda r: pct(r["probability_std"], 1)),
        ]
    if kind in ("multiclass", "ordinal"):
        cols += [
            ("Most probable class", lambda r: r["predicted_class"]),
            ("Its probability", lambda r: (
                f"{prob(r['class_probabilities'][r['predicted_class']])} \u00b1 "
                f"{pct(r['class_probability_std'][r['predicted_class']], 1)}")),
        ]  # fmt: skip
    elif kind == "survival":
        cols += [
            ("Risk score", lambda r: f"{r['risk']:.3g}"),
            ("\u00b1 std", lambda r: f"{r['risk_std']:.2g}"),
        ]
    elif kind == "regression":
        cols += [
            ("Value", lambda r: _fmt(r["value"])),
            ("\u00b1 std", lambda r: _fmt(r["value_std"])),
            ("Fold range", lambda r: f"{_fmt(r['value_min'])} to {_fmt(r['value_max'])}"),
        ]
    return cols


def cohort_order(task: Mapping[str, Any] | None) -> tuple[Any, str]:
    """How the cohort table is sorted (a sort key of report rows) and that in words."""
    kind = _kind(task)
    if _screens(task):
        pos = (task or {}).get("positive") or f"non-{(task or {}).get('negative')}"

        def review(r: Mapping[str, Any]) -> int:
            if r.get("positive"):
                return 0
            return 1 if r.get("call") == "uncertain" or r.get("flags") else 2

        return (
            lambda r: (review(r), -float(r["log_odds"]), str(r["slide_id"])),
            f"Sorted by risk: the highest calibrated probability of {pos} first; among the "
            "negative calls, flagged ones (uncertain, shifted or of poor quality) first.",
        )
    if kind in ("multiclass", "ordinal"):
        classes = [str(c) for c in (task or {})["classes"]]
        if kind == "ordinal":
            classes = classes[::-1]  # the highest grade first

        def by_class(r: Mapping[str, Any]) -> tuple[int, float, str]:
            c = str(r["predicted_class"])
            rank = classes.index(c) if c in classes else len(classes)
            return rank, -float(r["class_probabilities"][c]), str(r["slide_id"])

        return by_class, (
            f"Sorted by predicted class ({', '.join(classes)}), then by its probability, "
            "highest first."
        )
    if kind == "survival":
        return (
            lambda r: (-float(r["risk"]), str(r["slide_id"])),
            "Sorted by risk score, highest first (risk relative to the training cohort).",
        )
    return (
        lambda r: (-float(r["value"]), str(r["slide_id"])),
        "Sorted by the predicted value, highest first.",
    )
