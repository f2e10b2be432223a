"""Conformal prediction sets: which answers the model cannot rule out at a stated error rate.

Split conformal prediction (Vovk et al. 2005; Angelopoulos and Bates 2021) on the pooled
out-of-fold predictions of a training: every training slide was scored by a fold that did
not see it, so those scores are the calibration set.

- Classes (binary included) are *class-conditional* (Mondrian by true class): the
  non-conformity of answer ``c`` is ``1 - p_c`` (calibrated probability), and its p-value is
  the share of calibration slides *of class c* at least as non-conforming, counted with
  the new slide: ``(#{i: y_i = c, a_i >= a} + 1) / (n_c + 1)``. The set holds every class
  whose p-value exceeds the error rate ``alpha``. Each class's slides are then covered at
  least ``1 - alpha`` of the time (a missed tumour is as rare as the rate promises for
  tumours, not only on average). A set of two or more classes is *uncertain* (refer); the
  empty set is *atypical*: unlike any class the model has seen.
- Regression gives an interval: the prediction plus or minus the ``ceil((n + 1)(1 - alpha))``-th
  smallest absolute out-of-fold residual.
- Survival has no set: a risk is not checked against an observed class; its uncertainty
  is the fold spread and the risk group's Kaplan-Meier curve.

The same p-values as ``crepes`` (``ConformalClassifier`` / ``ConformalRegressor`` without
smoothing), which the tests check. With too few slides of a class for the rate (fewer than
``1 / alpha - 1``), that class can never be ruled out: the fit says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_ALPHA",
    "fit_classes",
    "class_p_values",
    "class_sets",
    "set_status",
    "fit_interval",
    "coverage",
]

#: Default error rate: a slide's true answer is outside its set at most 5% of the time.
DEFAULT_ALPHA = 0.05


def fit_classes(
    probs: Any, y: Any, classes: Sequence[str], alpha: float = DEFAULT_ALPHA
) -> dict[str, Any]:
    """The class-conditional conformal fit of calibrated probabilities ``probs`` (n, C) of
    slides of true class ``y`` (n,): a JSON-serialisable dict for the model card."""
    p = np.asarray(probs, dtype=np.float64)
    y_arr = np.asarray(y, dtype=np.int64)
    scores = 1.0 - p[np.arange(len(y_arr)), y_arr]
    per_class, limited = [], []
    for c, name in enumerate(classes):
        own = np.sort(scores[y_arr == c])
        per_class.append([float(v) for v in own])
        if len(own) < math.ceil(1.0 / alpha) - 1:
            limited.append(f"{name} ({len(own)} slides)")
    return {
        "method": "split conformal, class-conditional (Mondrian by true class), on the "
        "pooled out-of-fold calibrated probabilities; non-conformity 1 - p(class)",
        "alpha": float(alpha),
        "classes": list(classes),
        "scores": per_class,
        "n_per_class": [len(s) for s in per_class],
        "limited": limited,
        "note": (
            "too few calibration slides to ever rule out: " + ", ".join(limited) if limited else ""
        ),
    }


def class_p_values(fit: dict[str, Any], probs: Any) -> np.ndarray:
    """(n, C) conformal p-values of every class for slides of calibrated ``probs``."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    out = np.empty_like(p)
    for c, cal in enumerate(fit["scores"]):
        cal_arr = np.asarray(cal, dtype=np.float64)
        a = 1.0 - p[:, c]
        # calibration scores >= a (sorted ascending): n_c - (index of the first >= a)
        at_least = len(cal_arr) - np.searchsorted(cal_arr, a - 1e-12, side="left")
        out[:, c] = (at_least + 1.0) / (len(cal_arr) + 1.0)
    return out


def class_sets(fit: dict[str, Any], probs: Any, alpha: float | None = None) -> list[list[str]]:
    """The prediction set (class names, in class order) of each slide at error rate
    ``alpha`` (default: the fit's)."""
    a = fit["alpha"] if alpha is None else alpha
    pv = class_p_values(fit, probs)
    return [[fit["classes"][c] for c in np.flatnonzero(row > a)] for row in pv]


def set_status(labels: Sequence[str]) -> str:
    """``certain`` (one class), ``uncertain`` (two or more: refer) or ``atypical`` (none)."""
    return "certain" if len(labels) == 1 else ("uncertain" if labels else "atypical")


def fit_interval(pred: Any, y: Any, alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
    """Split-conformal half-width of regression intervals from out-of-fold predictions."""
    residuals = np.sort(np.abs(np.asarray(y, np.float64) - np.asarray(pred, np.float64)))
    n = len(residuals)
    k = math.ceil((n + 1) * (1.0 - alpha))
    half = float(residuals[k - 1]) if 1 <= k <= n else None
    return {
        "method": "split conformal on the pooled out-of-fold absolute residuals",
        "alpha": float(alpha),
        "half_width": half,  # None: unbounded (too few slides for the rate)
        "n": n,
        "note": "" if half is not None else f"too few calibration slides ({n}) for {alpha}",
    }


def coverage(sets: Sequence[Sequence[str]], truth: Sequence[str]) -> float:
    """Share of slides whose true class is in their set."""
    if not len(truth):
        return float("nan")
    return float(np.mean([t in s for s, t in zip(sets, truth, strict=True)]))
