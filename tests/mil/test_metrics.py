"""Slide-level metrics and calibration against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from wsi.mil import metrics as m
from wsi.mil.calibration import fit_temperature, nll, softmax


def test_auroc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200) + 0.3 * y, 1)  # many ties
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert m.auroc(y, p) == pytest.approx(pairs / (len(pos) * len(neg)))
    assert np.isnan(m.auroc([1, 1], [0.2, 0.3]))


def test_auroc_ci_brackets_the_estimate():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 40)
    p = rng.random(80) + 0.5 * y
    auc, lo, hi = m.auroc_ci(y, p, n_boot=500)
    assert lo < auc < hi and 0.5 < lo and hi <= 1.0


def test_threshold_for_target_sensitivity():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.05, 0.01])
    t = m.threshold_for_sensitivity(y, p, 0.75)
    assert t == pytest.approx(0.5)  # midway between the 3rd positive (0.6) and 0.4 below it
    op = m.at_threshold(y, p, t)
    assert (op.tp, op.fn, op.fp, op.tn) == (3, 1, 1, 5)
    assert op.sensitivity == 0.75 and op.specificity == pytest.approx(5 / 6)
    assert op.ppv == 0.75 and op.npv == pytest.approx(5 / 6)
    assert m.threshold_for_sensitivity(y, p, 1.0) == pytest.approx(0.25)
    assert m.at_threshold(y, p, m.threshold_for_sensitivity(y, p, 0.95)).sensitivity == 1.0


def test_youden_and_balanced_accuracy():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.5, 0.8, 0.9])
    t = m.youden_threshold(y, p)
    op = m.at_threshold(y, p, t)
    assert op.sensitivity + op.specificity - 1 == pytest.approx(2 / 3)
    assert m.balanced_accuracy(y, p, 0.5) == pytest.approx((1 + 2 / 3) / 2)


def test_ece_of_perfect_and_overconfident_predictions():
    rng = np.random.default_rng(2)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)  # calibrated by construction
    assert m.ece(y, p) < 0.02
    over = np.where(p > 0.5, 0.99, 0.01)
    assert m.ece(y, over) > 0.2


def test_temperature_scaling_fixes_overconfidence():
    rng = np.random.default_rng(3)
    n = 4000
    true_logit = rng.normal(0, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)
    logits = np.stack([np.zeros(n), 4 * true_logit], axis=1)  # 4x overconfident
    t = fit_temperature(logits, y)
    assert t == pytest.approx(4, rel=0.15)
    assert nll(logits, y, t) < nll(logits, y, 1.0)
    before = m.ece(y, softmax(logits)[:, 1])
    after = m.ece(y, softmax(logits, t)[:, 1])
    assert after < 0.03 < before
    assert fit_temperature(logits[:1], y[:1]) == 1.0


def test_separated_classes_call_every_positive():
    y = np.array([1] * 24 + [0] * 24)
    p = np.concatenate([np.linspace(5, 40, 24), np.linspace(-30, -2, 24)])
    t = m.threshold_for_sensitivity(y, p, 0.95)
    assert t == pytest.approx((5 + -2) / 2)
    op = m.at_threshold(y, p, t)
    assert op.sensitivity == 1.0 and op.specificity == 1.0
