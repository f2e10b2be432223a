"""Temperature scaling (Guo et al. 2017): one scalar T fitted on validation logits."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "softmax",
    "log_odds",
    "expit",
    "fit_temperature",
    "fit_calibration",
    "nll",
    "T_BOUNDS",
    "MIN_ERRORS_TO_SHARPEN",
]

#: Temperatures searched. Below 0.25 a fit only chases perfectly separated validation data.
T_BOUNDS = (0.25, 20.0)
#: A temperature below 1 makes the model surer than its own logits. It needs evidence: at
#: least this many pooled validation slides on the wrong side of the model's call (without
#: them, validation is (nearly) separable, and its NLL keeps falling as T shrinks whatever
#: the model's real error rate is). Below it, T is bounded at 1: calibration only softens.
MIN_ERRORS_TO_SHARPEN = 10
#: The lowest temperature even with that evidence.
SHARPEN_FLOOR = 0.5


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (n, C) logits divided by ``temperature``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def log_odds(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Positive-class log-odds of binary (n, 2) logits divided by ``temperature``.

    Decisions and thresholds use log-odds: unlike probabilities they do not saturate at
    1.0 for confident slides, so no ties are made where the model made none.
    """
    z = np.asarray(logits, dtype=np.float64)
    return np.asarray((z[:, 1] - z[:, 0]) / temperature)


def expit(x: Any) -> np.ndarray:
    """The logistic function: log-odds to probability."""
    from scipy.special import expit as _expit

    return np.asarray(_expit(np.asarray(x, dtype=np.float64)))


def nll(logits: Any, y: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of class indices ``y`` under softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y_arr = np.asarray(y, dtype=np.int64)
    return float(-log_p[np.arange(len(y_arr)), y_arr].mean())


def fit_temperature(logits: Any, y: Any, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The T in ``bounds`` minimising validation NLL; 1.0 when there is nothing to fit.

    Dividing logits by T > 1 softens over-confident predictions; the ranking of slides,
    and so AUROC and any threshold's sensitivity, is unchanged. When the validation
    slides are perfectly separated, NLL keeps falling as T shrinks: the fit stops at the
    lower bound rather than making every probability exactly 0 or 1.
    """
    from scipy.optimize import minimize_scalar

    y_arr = np.asarray(y, dtype=np.int64)
    if len(y_arr) < 2 or len(np.unique(y_arr)) < 2:
        return 1.0
    res = minimize_scalar(
        lambda log_t: nll(logits, y_arr, float(np.exp(log_t))),
        bounds=(np.log(bounds[0]), np.log(bounds[1])),
        method="bounded",
    )
    return float(np.exp(res.x))


def fit_calibration(logits: Any, y: Any) -> dict[str, Any]:
    """One temperature for pooled out-of-fold ``logits`` (n, C) of true classes ``y``,
    that never sharpens without evidence; a JSON-serialisable record for the model card.

    The unconstrained fit (within ``T_BOUNDS``) is kept beside the one used; where the
    data stopped the fit (``limited_by_data``), the record says why.
    """
    y_arr = np.asarray(y, dtype=np.int64)
    z = np.asarray(logits, dtype=np.float64)
    errors = int((np.argmax(z, axis=1) != y_arr).sum()) if len(y_arr) else 0
    free = fit_temperature(z, y_arr)
    low = 1.0 if errors < MIN_ERRORS_TO_SHARPEN else SHARPEN_FLOOR
    used = fit_temperature(z, y_arr, (low, T_BOUNDS[1]))
    limited = free < low * (1 - 1e-3)
    note = ""
    if limited:
        note = (
            f"validation alone would sharpen the probabilities (T {free:.2f}); with "
            f"{errors} of {len(y_arr)} validation slides on the wrong side of the call "
            f"(fewer than {MIN_ERRORS_TO_SHARPEN}) there is no evidence for that, so T is "
            f"bounded at {low:g}: calibration was limited by the data"
            if low == 1.0
            else f"T bounded at {low:g} (the fit asked for {free:.2f})"
        )
    return {
        "method": "one temperature fitted on the pooled out-of-fold validation logits "
        f"(never below 1 with fewer than {MIN_ERRORS_TO_SHARPEN} misclassified slides)",
        "temperature": used,
        "temperature_unconstrained": free,
        "lower_bound": low,
        "n": int(len(y_arr)),
        "validation_errors": errors,
        "limited_by_data": bool(limited),
        "note": note,
    }
