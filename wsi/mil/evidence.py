"""Tile evidence: each tile's contribution to the calibrated slide score, on a scale that
means the same on every slide.

Heads whose slide logits are linear in attention-pooled tile terms give per-tile
``contributions`` ``c`` (N, C) (``wsi.mil.heads``; they sum to the logits less the
classifier bias). A tile's *evidence* for the shown output is its share of the score the
prediction is read from:

- binary: ``(c[:, pos] - c[:, neg]) / T``: its share of the calibrated slide log-odds of
  the positive class (``T`` the model's calibration temperature);
- classes (multiclass, ordinal): ``(c[:, k] - mean_{j != k} c[:, j]) / T`` for the shown
  class ``k`` (the decided one): the log-odds of ``k`` against the log-sum-exp of the
  others is not additive over tiles, the difference to the mean of the other logits is;
- survival: the tile's share of the mean hazard logit over the time bins (higher: more
  risk; the risk is a monotone but not additive function of them); regression: its share
  of the single (standardised) output. Neither is calibrated by a temperature.

Units: "calibrated log-odds per tile" for classes (binary included). Summed over the
tiles and added to the bias term, the evidence gives the (fold's) calibrated score.

The model's *evidence scale* (:func:`evidence_scale`, in the model card as
``card["evidence"]``) is the 99th percentile of ``|evidence|`` over the tiles of the
training slides' out-of-fold predictions (each slide scored by the fold that did not
train on it, every class's evidence pooled), so a heatmap coloured from 0 to that scale
means the same on every slide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "tile_evidence",
    "class_evidence",
    "evidence_scale",
    "evidence_values",
    "EVIDENCE_PERCENTILE",
    "UNIT_CLASSES",
    "UNIT_VALUE",
]

#: the percentile of |tile evidence| over the out-of-fold tiles that makes the model's scale
EVIDENCE_PERCENTILE = 99.0
#: unit of the evidence of class tasks (binary included)
UNIT_CLASSES = "calibrated log-odds per tile"
#: unit of survival (mean hazard logit) and regression (standardised value) evidence
UNIT_VALUE = "output units per tile"


def class_evidence(contributions: Any, temperature: float = 1.0) -> np.ndarray:
    """Every class's evidence: (N, C) contributions -> (N, C), column ``k`` being
    ``(c[:, k] - mean_{j != k} c[:, j]) / T`` (for two classes ``k = 1`` gives
    ``(c1 - c0) / T``, the share of the binary log-odds). One output: ``c / T``."""
    c = np.asarray(contributions, dtype=np.float64)
    if c.shape[1] == 1:
        return np.asarray(c / temperature)
    others = (c.sum(axis=1, keepdims=True) - c) / (c.shape[1] - 1)
    return np.asarray((c - others) / temperature)


def tile_evidence(
    kind: str, contributions: Any, temperature: float = 1.0, shown: int = 1
) -> np.ndarray:
    """One fold's evidence per tile (N,) for the shown output (see the module docstring).

    Args:
        kind: the task kind (``binary``, ``multiclass``, ``ordinal``, ``survival``,
            ``regression``).
        contributions: (N, C) per-tile contributions of one fold head.
        temperature: the model's calibration temperature (classes; 1 otherwise).
        shown: the class shown (binary: the positive class, 1; classes: the decided one);
            unused for survival and regression.
    """
    c = np.asarray(contributions, dtype=np.float64)
    if kind == "survival":
        return np.asarray(c.mean(axis=1))
    if kind == "regression" or c.shape[1] == 1:
        return np.asarray(c[:, 0] / temperature)
    return np.asarray(class_evidence(c, temperature)[:, shown])


#: at most this many |evidence| values are kept per training slide for the scale
MAX_VALUES_PER_SLIDE = 20_000


def evidence_values(kind: str, contributions: Any, seed: int = 0) -> np.ndarray:
    """float32 |evidence| at temperature 1 of one slide's (N, C) contributions, every
    class's for class tasks (at most ``MAX_VALUES_PER_SLIDE``, drawn with ``seed``): what
    :func:`evidence_scale` pools. Evidence scales as 1 / T, so T is applied there."""
    c = np.asarray(contributions, dtype=np.float64)
    if kind in ("survival", "regression") or c.shape[1] == 1:
        values = np.abs(tile_evidence(kind, c))
    else:
        values = np.abs(class_evidence(c)).ravel()
    if len(values) > MAX_VALUES_PER_SLIDE:
        rng = np.random.default_rng(seed)
        values = values[rng.choice(len(values), MAX_VALUES_PER_SLIDE, replace=False)]
    return values.astype(np.float32)


def evidence_scale(
    kind: str, per_slide: Sequence[np.ndarray], temperature: float = 1.0
) -> dict[str, Any] | None:
    """The model card's ``evidence`` record from the training slides' out-of-fold
    :func:`evidence_values` (one array per slide): ``kind`` ("contribution"), ``scale``
    (the 99th percentile of |evidence| / T over every tile, every class pooled for class
    tasks), ``unit``, ``percentile``, ``tiles``, ``slides`` and ``from``; None without any
    tile."""
    if not per_slide or not sum(len(v) for v in per_slide):
        return None
    pooled = np.concatenate([np.asarray(v, dtype=np.float64) for v in per_slide]) / temperature
    scale = float(np.percentile(pooled, EVIDENCE_PERCENTILE))
    if not np.isfinite(scale) or scale <= 0:
        scale = float(pooled.max()) if pooled.max() > 0 else 1.0
    classes = kind not in ("survival", "regression")
    return {
        "kind": "contribution",
        "scale": scale,
        "unit": UNIT_CLASSES if classes else UNIT_VALUE,
        "percentile": EVIDENCE_PERCENTILE,
        "tiles": int(len(pooled)),
        "slides": int(len(per_slide)),
        "from": "out-of-fold predictions of the training slides (each scored by the fold "
        "that did not train on it), |evidence| of every tile"
        + (" and every class" if classes else ""),
    }
