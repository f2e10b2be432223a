"""Conformal sets and intervals (wsi.mil.conformal) against crepes, and their coverage."""

from __future__ import annotations

import numpy as np
import pytest

from wsi.mil import conformal as cf

CLASSES = ["normal", "tumor", "other"]


def _probs(rng: np.random.Generator, n: int, c: int = 3) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True), y


def test_class_p_values_match_crepes_mondrian() -> None:
    crepes = pytest.importorskip("crepes")
    rng = np.random.default_rng(0)
    p_cal, y_cal = _probs(rng, 300)
    p_new, _ = _probs(rng, 200)
    fit = cf.fit_classes(p_cal, y_cal, CLASSES, alpha=0.1)
    ours = cf.class_p_values(fit, p_new)
    cc = crepes.ConformalClassifier()
    cc.fit(1.0 - p_cal[np.arange(len(y_cal)), y_cal], bins=y_cal)
    for c in range(3):
        theirs = cc.predict_p(1.0 - p_new, bins=np.full(len(p_new), c), smoothing=False)[:, c]
        np.testing.assert_allclose(ours[:, c], theirs, atol=1e-12)


def test_interval_matches_crepes() -> None:
    crepes = pytest.importorskip("crepes")
    rng = np.random.default_rng(1)
    y = rng.normal(size=150)
    pred = y + rng.normal(scale=0.3, size=150)
    fit = cf.fit_interval(pred, y, alpha=0.1)
    cr = crepes.ConformalRegressor()
    cr.fit(np.abs(y - pred))
    lo_hi = cr.predict_int(np.zeros(1), confidence=0.9)[0]
    assert fit["half_width"] == pytest.approx(lo_hi[1], abs=1e-12)
    assert cf.fit_interval(pred[:5], y[:5], alpha=0.1)["half_width"] is None


def test_class_conditional_coverage_near_nominal() -> None:
    """Fresh slides of every class are covered at about 1 - alpha (within 3 points on
    6000 slides), and the sets say uncertain / atypical where they should."""
    rng = np.random.default_rng(2)
    p_cal, y_cal = _probs(rng, 3000)
    p_new, y_new = _probs(rng, 6000)
    fit = cf.fit_classes(p_cal, y_cal, CLASSES, alpha=0.05)
    sets = cf.class_sets(fit, p_new)
    for c, name in enumerate(CLASSES):
        own = [s for s, t in zip(sets, y_new, strict=True) if t == c]
        cov = cf.coverage(own, [name] * len(own))
        assert 0.93 <= cov <= 0.98, (name, cov)
    assert {cf.set_status(s) for s in sets} >= {"certain", "uncertain"}


def test_a_slide_unlike_every_class_gets_the_empty_set() -> None:
    """Calibration slides that the model always gets confidently right: a slide whose
    probabilities are spread evenly conforms to no class (atypical)."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 300)
    p = np.full((300, 3), 0.02)
    p[np.arange(300), y] = 0.96
    fit = cf.fit_classes(p, y, CLASSES, alpha=0.05)
    sets = cf.class_sets(fit, np.array([[1 / 3, 1 / 3, 1 / 3], [0.96, 0.02, 0.02]]))
    assert sets == [[], ["normal"]]
    assert [cf.set_status(s) for s in sets] == ["atypical", "certain"]


def test_too_few_slides_of_a_class_never_rules_it_out() -> None:
    rng = np.random.default_rng(3)
    p_cal, y_cal = _probs(rng, 200, c=2)
    y_cal[:] = 0
    y_cal[:5] = 1  # five slides of class 1: at alpha 0.05 it can never be excluded
    fit = cf.fit_classes(p_cal, y_cal, ["normal", "tumor"], alpha=0.05)
    assert fit["limited"] == ["tumor (5 slides)"] and "tumor" in fit["note"]
    sets = cf.class_sets(fit, np.array([[0.999, 0.001]]))
    assert "tumor" in sets[0]
