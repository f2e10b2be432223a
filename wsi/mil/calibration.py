"""Temperature scaling (Guo et al. 2017): one scalar T fitted on validation logits."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["softmax", "log_odds", "expit", "fit_temperature", "nll", "T_BOUNDS"]

#: Temperatures searched. Below 0.25 a fit only chases perfectly separated validation data.
T_BOUNDS = (0.25, 20.0)


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
