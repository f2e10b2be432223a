"""Slide-level metrics for a binary decision: AUROC with a bootstrap CI, operating points,
sensitivity / specificity / PPV / NPV, calibration error.

All functions take ``y`` (0/1 truth, 1 = positive, e.g. tumour) and ``p`` (the score or
probability of the positive class), as 1-d arrays of the same length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "auroc",
    "auroc_ci",
    "roc_curve",
    "OperatingPoint",
    "threshold_for_sensitivity",
    "youden_threshold",
    "at_threshold",
    "balanced_accuracy",
    "ece",
    "reliability",
]


def _check(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=np.int64).ravel()
    p_arr = np.asarray(p, dtype=np.float64).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"{y_arr.shape[0]} labels for {p_arr.shape[0]} scores")
    if not np.isin(y_arr, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y_arr, p_arr


def auroc(y: Any, p: Any) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with one class."""
    y_arr, p_arr = _check(y, p)
    n_pos = int(y_arr.sum())
    n_neg = len(y_arr) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(p_arr)  # average ranks for ties
    u = ranks[y_arr == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def auroc_ci(
    y: Any, p: Any, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC and its percentile bootstrap (1 - alpha) interval, resampling slides stratified
    by class (so every resample has both classes)."""
    y_arr, p_arr = _check(y, p)
    point = auroc(y_arr, p_arr)
    if np.isnan(point):
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y_arr == 1), np.flatnonzero(y_arr == 0)
    stats = np.empty(n_boot)
    for i in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        stats[i] = auroc(y_arr[idx], p_arr[idx])
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)


def roc_curve(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds decreasing.

    A slide is called positive when its score is >= the threshold; the first point is
    (0, 0) at threshold +inf.
    """
    y_arr, p_arr = _check(y, p)
    thresholds = np.concatenate([[np.inf], np.unique(p_arr)[::-1]])
    n_pos, n_neg = max(int(y_arr.sum()), 1), max(int((1 - y_arr).sum()), 1)
    tpr = np.array([((p_arr >= t) & (y_arr == 1)).sum() / n_pos for t in thresholds])
    fpr = np.array([((p_arr >= t) & (y_arr == 0)).sum() / n_neg for t in thresholds])
    return fpr, tpr, thresholds


@dataclass(frozen=True)
class OperatingPoint:
    """Counts and rates of the decision ``score >= threshold`` (positive = tumour)."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    @property
    def ppv(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def npv(self) -> float:
        return self.tn / (self.tn + self.fn) if self.tn + self.fn else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "ppv": self.ppv,
            "npv": self.npv,
        }


def at_threshold(y: Any, p: Any, threshold: float) -> OperatingPoint:
    y_arr, p_arr = _check(y, p)
    call = p_arr >= threshold
    return OperatingPoint(
        threshold=float(threshold),
        tp=int((call & (y_arr == 1)).sum()),
        fp=int((call & (y_arr == 0)).sum()),
        tn=int((~call & (y_arr == 0)).sum()),
        fn=int((~call & (y_arr == 1)).sum()),
    )


def _cuts(p_arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct scores, highest first, and for each the threshold that calls every slide
    scoring at least that much: the midpoint of the gap to the next lower score."""
    u = np.unique(p_arr)[::-1]
    cut = np.append((u[:-1] + u[1:]) / 2, u[-1])
    return u, cut


def threshold_for_sensitivity(y: Any, p: Any, target: float = 0.95) -> float:
    """The operating point for a target sensitivity: sensitivity on (y, p) at least
    ``target``, then the highest specificity, then the highest sensitivity.

    So a threshold is never raised past a positive when that buys no specificity (with
    well separated classes every positive is called), and it sits midway in the gap
    between scores, so a new slide scoring slightly below the lowest called positive is
    still called.
    """
    y_arr, p_arr = _check(y, p)
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity {target} must be in (0, 1]")
    if not (y_arr == 1).any():
        raise ValueError("no positive slide to choose a threshold on")
    _, cuts = _cuts(p_arr)
    best: tuple[float, float] | None = None
    chosen = float(cuts[-1])
    for cut in cuts:
        op = at_threshold(y_arr, p_arr, float(cut))
        if op.sensitivity < target - 1e-12:
            continue
        spec = op.specificity if not np.isnan(op.specificity) else 0.0
        key = (spec, op.sensitivity)
        if best is None or key > best:
            best, chosen = key, float(cut)
    return chosen


def youden_threshold(y: Any, p: Any) -> float:
    """The threshold maximising sensitivity + specificity - 1 (ties: the highest), placed
    midway in the gap below the last slide it calls."""
    y_arr, p_arr = _check(y, p)
    _, cuts = _cuts(p_arr)
    j = [at_threshold(y_arr, p_arr, float(c)) for c in cuts]
    scores = [op.sensitivity + op.specificity - 1 for op in j]
    return float(cuts[int(np.nanargmax(scores))])


def balanced_accuracy(y: Any, p: Any, threshold: float) -> float:
    op = at_threshold(y, p, threshold)
    return float((op.sensitivity + op.specificity) / 2)


def reliability(y: Any, p: Any, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width probability bin: (mean predicted, observed positive rate, count)."""
    y_arr, p_arr = _check(y, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p_arr, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    sum_p = np.bincount(which, weights=p_arr, minlength=n_bins)
    sum_y = np.bincount(which, weights=y_arr, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sum_p / count, sum_y / count, count


def ece_ci(
    y: Any, p: Any, n_boot: int = 1000, seed: int = 0, n_bins: int = 10
) -> tuple[float, float | None, float | None]:
    """ECE and its 95% percentile-bootstrap interval (slides resampled); no interval
    with fewer than 10 slides."""
    y_arr, p_arr = np.asarray(y, dtype=np.int64), np.asarray(p, dtype=np.float64)
    value = ece(y_arr, p_arr, n_bins)
    if len(y_arr) < 10 or n_boot <= 0:
        return value, None, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_arr), (n_boot, len(y_arr)))
    boots = [ece(y_arr[i], p_arr[i], n_bins) for i in idx]
    return value, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def ece(y: Any, p: Any, n_bins: int = 10) -> float:
    """Expected calibration error of the positive-class probability (equal-width bins)."""
    mean_p, rate, count = reliability(y, p, n_bins)
    used = count > 0
    return float(np.sum(count[used] * np.abs(mean_p[used] - rate[used])) / max(count.sum(), 1))
