"""Temperature scaling (Guo et al. 2017): one scalar T fitted on validation logits."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["softmax", "fit_temperature", "nll"]


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (n, C) logits divided by ``temperature``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def nll(logits: Any, y: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of class indices ``y`` under softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y_arr = np.asarray(y, dtype=np.int64)
    return float(-log_p[np.arange(len(y_arr)), y_arr].mean())


def fit_temperature(logits: Any, y: Any, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The T in ``bounds`` minimising validation NLL; 1.0 when there is nothing to fit.

    Dividing logits by T > 1 softens over-confident predictions; the ranking of slides,
    and so AUROC and any threshold's sensitivity, is unchanged.
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
