"""Slide-level evaluation: the numbers of ``metrics.json`` and the ROC / reliability plots."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from wsi.mil import metrics as m

__all__ = ["evaluate", "plot_roc", "plot_reliability"]


def _clean(value: Any) -> Any:
    """JSON-safe: NaN becomes None, numpy scalars plain floats."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def evaluate(
    y: ArrayLike,
    score: ArrayLike,
    threshold: float,
    *,
    p_raw: ArrayLike | None = None,
    youden: float | None = None,
    groups: Sequence[str | None] | None = None,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Metrics of calibrated positive-class log-odds ``score`` against truth ``y``.

    ``threshold`` (log-odds) is the operating point chosen beforehand on validation
    data; ``youden`` a second one reported beside it. Probabilities (for ECE) are the
    logistic of the scores. ``p_raw`` (probabilities before calibration) adds the ECE
    before calibration. ``groups`` adds the same metrics per group.
    """
    from wsi.mil.calibration import expit

    y_arr = np.asarray(y, dtype=np.int64)
    s = np.asarray(score, dtype=np.float64)
    auc, lo, hi = m.auroc_ci(y_arr, s, n_boot=n_boot)
    at = m.at_threshold(y_arr, s, threshold).as_dict()
    at["threshold_probability"] = float(expit(threshold))
    out: dict[str, Any] = {
        "n": int(len(y_arr)),
        "n_positive": int(y_arr.sum()),
        "auroc": auc,
        "auroc_ci95": [lo, hi],
        "balanced_accuracy": m.balanced_accuracy(y_arr, s, threshold),
        "at_threshold": at,
    }
    ece, ece_lo, ece_hi = m.ece_ci(y_arr, expit(s), n_boot=min(n_boot, 1000))
    out.update(ece_calibrated=ece, ece_calibrated_ci95=[ece_lo, ece_hi], ece_n=int(len(y_arr)))
    if youden is not None:
        out["at_youden"] = m.at_threshold(y_arr, s, youden).as_dict()
    if p_raw is not None:
        out["ece_uncalibrated"] = m.ece(y_arr, np.asarray(p_raw, dtype=np.float64))
    if groups is not None and any(g is not None for g in groups):
        g_arr = np.array([g if g is not None else "" for g in groups])
        out["groups"] = {
            str(g): evaluate(
                y_arr[g_arr == g], s[g_arr == g], threshold, youden=youden, n_boot=n_boot
            )
            for g in sorted(set(g_arr))
        }
    return _clean(out)


def plot_roc(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path,
    threshold: float | None = None,
) -> Path:
    """ROC curves (one per named (y, score) set) as a PNG; the operating point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name, (y, p) in curves.items():
        fpr, tpr, _ = m.roc_curve(y, p)
        auc = m.auroc(y, p)
        ax.step(fpr, tpr, where="post", label=f"{name} (AUROC {auc:.3f})")
        if threshold is not None:
            op = m.at_threshold(y, p, threshold)
            ax.plot(1 - op.specificity, op.sensitivity, "o", color=ax.lines[-1].get_color())
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("ROC (dot: operating point)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_reliability(
    y: ArrayLike, p_raw: ArrayLike | None, p_cal: ArrayLike, path: str | Path
) -> Path:
    """Reliability diagram before (``p_raw``; None: not known) and after temperature
    scaling, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    shown = (
        (("uncalibrated", p_raw), ("calibrated", p_cal))
        if p_raw is not None
        else (("calibrated", p_cal),)
    )
    for name, p in shown:
        mean_p, rate, count = m.reliability(y, p)
        used = count > 0
        ax.plot(mean_p[used], rate[used], "o-", label=f"{name} (ECE {m.ece(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(
        xlabel="predicted probability of the positive class",
        ylabel="observed fraction",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.set_title("Reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
