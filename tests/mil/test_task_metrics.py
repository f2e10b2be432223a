"""Metrics of the non-binary tasks against direct scikit-learn / SciPy / scikit-survival
computations on the same numbers, hand-checkable tiny cases, and simulated survival data."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from scipy.special import logit
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from wsi.errors import ConfigError
from wsi.mil import metrics as m
from wsi.mil import task_metrics as tm

sksurv_metrics = pytest.importorskip("sksurv.metrics")
from sksurv.compare import compare_survival  # noqa: E402
from sksurv.nonparametric import kaplan_meier_estimator  # noqa: E402
from sksurv.util import Surv  # noqa: E402

CLASSES = ["normal", "type_a", "type_b", "type_c"]
N_BOOT = 200


def _classes(n: int, k: int = 4, signal: float = 1.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += signal
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return y, p


def _survival(n: int, seed: int, follow_up: float = 40.0):
    """Exponential event times with hazard exp(x) / 12 (months), uniform censoring."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t_event = rng.exponential(12 * np.exp(-x))
    t_cens = rng.uniform(5, follow_up, n)
    return np.minimum(t_event, t_cens), (t_event <= t_cens).astype(int), x


def _json_safe(d: dict) -> None:
    json.dumps(d, allow_nan=False)


# --------------------------------------------------------------------------- classification


def test_class_metrics_match_sklearn():
    y, p = _classes(120)
    out = tm.class_metrics(
        y, p, CLASSES, ordinal=True, negative=0, screen_threshold=0.0, n_boot=N_BOOT
    )
    _json_safe(out)
    pred = p.argmax(axis=1)
    macro = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert out["macro_auroc"] == pytest.approx(macro, abs=1e-6)
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-6)
    assert out["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-6)
    kappa = cohen_kappa_score(y, pred, weights="quadratic")
    assert out["kappa_quadratic"] == pytest.approx(kappa, abs=1e-6)
    cm = confusion_matrix(y, pred, labels=range(4))
    assert out["confusion"] == cm.tolist()
    eces = []
    for c, name in enumerate(CLASSES):
        pc = out["per_class"][name]
        assert pc["n"] == int((y == c).sum())
        assert pc["auroc"] == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=1e-6)
        assert pc["sensitivity"] == pytest.approx(cm[c, c] / cm[c].sum(), abs=1e-6)
        fp = cm[:, c].sum() - cm[c, c]
        tn = cm.sum() - cm[c].sum() - fp
        assert pc["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-6)
        eces.append(m.ece((y == c).astype(int), p[:, c]))
        assert pc["ece"] == pytest.approx(eces[-1], abs=1e-6)
        lo, hi = pc["auroc_ci95"]
        assert lo <= pc["auroc"] <= hi
    assert out["ece_classwise"] == pytest.approx(np.mean(eces), abs=1e-6)
    # screening: not-normal against log((1 - p_normal) / p_normal)
    score = logit(1 - p[:, 0])
    sc = out["screening"]
    assert sc["auroc"] == pytest.approx(roc_auc_score(y != 0, score), abs=1e-6)
    at = sc["at_threshold"]
    call, sick = score >= 0.0, y != 0
    assert (at["tp"], at["fn"]) == ((call & sick).sum(), (~call & sick).sum())
    assert (at["tn"], at["fp"]) == ((~call & ~sick).sum(), (call & ~sick).sum())
    assert at["sensitivity"] == pytest.approx(at["tp"] / (at["tp"] + at["fn"]), abs=1e-6)
    for key in ("macro_auroc", "balanced_accuracy", "kappa_quadratic"):
        lo, hi = out[f"{key}_ci95"]
        assert lo <= out[key] <= hi
    assert out["bootstrap"]["used"]["macro_auroc"] == N_BOOT


def test_class_metrics_perfect_tiny_example():
    y = np.array([0, 1, 2, 0, 1, 2])
    p = np.full((6, 3), 0.1)
    p[np.arange(6), y] = 0.8
    out = tm.class_metrics(y, p, ["a", "b", "c"], ordinal=True, n_boot=50)
    assert out["macro_auroc"] == 1.0 and out["accuracy"] == 1.0
    assert out["kappa_quadratic"] == 1.0 and out["balanced_accuracy"] == 1.0
    assert out["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert "screening" not in out


def test_class_ci_narrows_with_more_data():
    small = tm.class_metrics(*_classes(60, k=3, seed=1), CLASSES[:3], n_boot=N_BOOT)
    large = tm.class_metrics(*_classes(480, k=3, seed=1), CLASSES[:3], n_boot=N_BOOT)
    width = [d["macro_auroc_ci95"][1] - d["macro_auroc_ci95"][0] for d in (small, large)]
    assert width[1] < width[0] / 1.5


def test_missing_class_resamples_are_skipped():
    # one case of type_c: most resamples lack it, and are skipped without error
    y = np.array([0] * 10 + [1] * 10 + [2] * 10 + [3])
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(4), len(y))
    out = tm.class_metrics(y, p, CLASSES, n_boot=N_BOOT)
    used = out["bootstrap"]["used"]
    assert 0 < used["per_class.type_c.auroc"] < N_BOOT
    assert used["macro_auroc"] == used["per_class.type_c.auroc"]
    assert used["per_class.normal.auroc"] == N_BOOT
    assert out["macro_auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"), abs=1e-6)
    _json_safe(out)


def test_class_absent_from_the_data():
    y, p = _classes(90, k=4, seed=2)
    keep = y != 3
    y, p = y[keep], p[keep]
    out = tm.class_metrics(y, p, CLASSES, n_boot=50)
    assert out["absent_classes"] == ["type_c"]
    assert out["per_class"]["type_c"]["auroc"] is None
    assert out["per_class"]["type_c"]["auroc_ci95"] == [None, None]
    mean3 = np.mean([roc_auc_score(y == c, p[:, c]) for c in range(3)])
    assert out["macro_auroc"] == pytest.approx(mean3, abs=1e-6)
    assert out["macro_auroc_ci95"][0] is not None
    _json_safe(out)


@pytest.mark.parametrize(
    "y, probs, message",
    [
        ([0, 1], [[0.5, 0.5]], "shape"),
        ([0, 1], [[0.5, 0.6], [0.5, 0.5]], "sum to 1"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], r"\[0, 1\]"),
        ([0.5, 1], [[0.5, 0.5], [0.5, 0.5]], "integer"),
        ([0, 1], [[1.5, -0.5], [0.5, 0.5]], r"\[0, 1\]"),
    ],
)
def test_class_metrics_bad_input(y, probs, message):
    with pytest.raises(ValueError, match=message):
        tm.class_metrics(y, probs, ["a", "b"], n_boot=0)


def test_class_metrics_bad_options():
    y, p = _classes(20, k=2)
    with pytest.raises(ValueError, match="distinct class names"):
        tm.class_metrics(y, p, ["a", "a"], n_boot=0)
    with pytest.raises(ValueError, match="negative"):
        tm.class_metrics(y, p, ["a", "b"], negative=2, n_boot=0)
    with pytest.raises(ValueError, match="needs negative"):
        tm.class_metrics(y, p, ["a", "b"], screen_threshold=0.0, n_boot=0)


# --------------------------------------------------------------------------- survival


def test_survival_matches_sksurv():
    t, e, x = _survival(300, seed=1)
    tr_t, tr_e, _ = _survival(300, seed=2)
    times = np.linspace(1, 40, 40)
    surv = np.exp(-np.outer(np.exp(x) / 12, times))
    out = tm.survival_metrics(
        t,
        e,
        x,
        train_time=tr_t,
        train_event=tr_e,
        horizons=[6, 12, 24, 1000],
        surv=surv,
        surv_times=times,
        n_boot=N_BOOT,
    )
    _json_safe(out)
    assert out["n"] == 300 and out["events"] == int(e.sum())
    harrell = sksurv_metrics.concordance_index_censored(e.astype(bool), t, x)[0]
    assert out["c_index_harrell"] == pytest.approx(harrell, abs=1e-6)
    # truncate the test follow-up at the training one, as the module documents
    cut = tr_t.max()
    y_tr = Surv.from_arrays(tr_e.astype(bool), tr_t)
    y_te = Surv.from_arrays(e.astype(bool) & (t < cut), np.minimum(t, cut))
    tau = out["c_index_uno_tau"]
    assert tau <= min(t.max(), cut)
    uno = sksurv_metrics.concordance_index_ipcw(y_tr, y_te, x, tau=tau)[0]
    assert out["c_index_uno"] == pytest.approx(uno, abs=1e-6)
    auc, _ = sksurv_metrics.cumulative_dynamic_auc(y_tr, y_te, x, [6, 12, 24])
    assert list(out["time_auc"]) == ["6", "12", "24"]
    assert list(out["time_auc"].values()) == pytest.approx(auc, abs=1e-6)
    assert "1000" in out["time_auc_skipped"] and "1000" in out["brier_skipped"]
    inside = (times >= t.min()) & (times < min(t.max(), cut))
    ibs = sksurv_metrics.integrated_brier_score(y_tr, y_te, surv[:, inside], times[inside])
    assert out["ibs"] == pytest.approx(ibs, abs=1e-6)
    _, brier12 = sksurv_metrics.brier_score(y_tr, y_te, np.exp(-np.exp(x)), [12])
    assert out["brier"]["12"] == pytest.approx(brier12[0], abs=1e-6)
    for key in ("c_index_harrell", "c_index_uno"):
        lo, hi = out[f"{key}_ci95"]
        assert lo <= out[key] <= hi
    # the true hazard ranks well; a random risk does not
    assert out["c_index_harrell"] > 0.6 and out["c_index_uno"] > 0.6
    noise = np.random.default_rng(9).normal(size=300)
    rand = tm.survival_metrics(
        t, e, noise, train_time=tr_t, train_event=tr_e, horizons=[12], n_boot=50
    )
    assert 0.42 < rand["c_index_harrell"] < 0.58 and rand["ibs"] is None
    assert rand["c_index_harrell_ci95"][0] < 0.5 < rand["c_index_harrell_ci95"][1]


def test_c_index_of_perfect_and_reversed_risk():
    t = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    e = np.ones(5, dtype=int)
    kw = dict(train_time=t, train_event=e, horizons=[2.5], n_boot=20)
    assert tm.survival_metrics(t, e, -t, **kw)["c_index_harrell"] == 1.0
    assert tm.survival_metrics(t, e, t, **kw)["c_index_harrell"] == 0.0


def test_test_follow_up_beyond_training_is_truncated():
    t, e, x = _survival(200, seed=3, follow_up=60)
    tr_t, tr_e, _ = _survival(200, seed=4, follow_up=20)
    out = tm.survival_metrics(
        t, e, x, train_time=tr_t, train_event=tr_e, horizons=[6, 12, 30], n_boot=50
    )
    assert out["n_truncated"] > 0
    # tau: where the training censoring survival drops below 0.1, before its follow-up ends
    _, g = kaplan_meier_estimator(tr_e.astype(bool), tr_t, reverse=True)
    assert 0 < out["c_index_uno_tau"] < tr_t.max() and g[-1] < 0.1
    assert set(out["time_auc"]) == {"6", "12"} and set(out["time_auc_skipped"]) == {"30"}
    assert out["c_index_uno"] > 0.6


def test_survival_resamples_without_events_are_skipped():
    t = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    e = np.array([0, 0, 1, 0, 0, 0])
    out = tm.survival_metrics(
        t, e, np.arange(6.0), train_time=t, train_event=e, horizons=[3], n_boot=N_BOOT
    )
    used = out["bootstrap"]["used"]
    assert 0 < used["c_index_harrell"] < N_BOOT and 0 < used["c_index_uno"] < N_BOOT
    _json_safe(out)


@pytest.mark.parametrize(
    "time, event, risk, message",
    [
        ([1.0, 0.0], [1, 0], [0.1, 0.2], "> 0"),
        ([1.0, 2.0], [1, 2], [0.1, 0.2], "0 .censored. or 1"),
        ([1.0, 2.0], [1, 0], [0.1], "risks for 2 times"),
        ([1.0, 2.0], [1], [0.1, 0.2], "event indicators"),
    ],
)
def test_survival_bad_input(time, event, risk, message):
    with pytest.raises(ValueError, match=message):
        tm.survival_metrics(
            time, event, risk, train_time=[1.0, 2.0], train_event=[1, 0], horizons=[1.5]
        )


def test_survival_needs_sksurv(monkeypatch):
    monkeypatch.setitem(sys.modules, "sksurv", None)
    with pytest.raises(ConfigError, match=r"pip install 'wsi\[survival\]'"):
        tm.km_curve([1.0, 2.0], [1, 0])


def test_km_curve_and_logrank():
    times, survival = tm.km_curve([1.0, 2.0, 3.0], [1, 1, 1])
    assert times.tolist() == [1.0, 2.0, 3.0]
    assert survival == pytest.approx([2 / 3, 1 / 3, 0.0])
    t, e, x = _survival(150, seed=5)
    ref_t, ref_s = kaplan_meier_estimator(e.astype(bool), t)
    got_t, got_s = tm.km_curve(t, e)
    assert np.array_equal(got_t, ref_t) and np.allclose(got_s, ref_s)
    groups = (x > 0).astype(int)
    p_ref = compare_survival(Surv.from_arrays(e.astype(bool), t), groups)[1]
    assert tm.logrank(t, e, groups) == pytest.approx(p_ref)
    assert tm.logrank(t, e, groups) < 0.01
    with pytest.raises(ValueError, match="two groups"):
        tm.logrank(t, e, np.zeros(150))


def test_risk_groups_are_training_tertiles():
    train = np.arange(9.0)  # cut points 8/3 and 16/3
    groups = tm.risk_groups(train, [-5.0, 2.0, 2.7, 5.0, 5.4, 100.0])
    assert groups.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.bincount(tm.risk_groups(train, train)).tolist() == [3, 3, 3]


# --------------------------------------------------------------------------- regression


def test_regression_matches_scipy_and_sklearn():
    rng = np.random.default_rng(6)
    y = rng.random(80)
    pred = y + rng.normal(0, 0.2, 80)
    out = tm.regression_metrics(y, pred, n_boot=N_BOOT)
    _json_safe(out)
    assert out["mae"] == pytest.approx(mean_absolute_error(y, pred), abs=1e-6)
    assert out["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, pred)), abs=1e-6)
    assert out["r2"] == pytest.approx(r2_score(y, pred), abs=1e-6)
    assert out["pearson_r"] == pytest.approx(pearsonr(y, pred)[0], abs=1e-6)
    assert out["spearman_rho"] == pytest.approx(spearmanr(y, pred)[0], abs=1e-6)
    for key in ("mae", "pearson_r", "spearman_rho"):
        lo, hi = out[f"{key}_ci95"]
        assert lo <= out[key] <= hi
    big_y = rng.random(1280)
    big = tm.regression_metrics(big_y, big_y + rng.normal(0, 0.2, 1280), n_boot=N_BOOT)
    for key in ("mae", "pearson_r"):
        w_small = out[f"{key}_ci95"][1] - out[f"{key}_ci95"][0]
        w_big = big[f"{key}_ci95"][1] - big[f"{key}_ci95"][0]
        assert w_big < w_small / 2


def test_regression_constant_resamples_are_skipped():
    y = np.array([0.0, 0.0, 0.0, 1.0])
    out = tm.regression_metrics(y, [0.1, 0.2, 0.0, 0.9], n_boot=N_BOOT)
    assert 0 < out["bootstrap"]["used"]["pearson_r"] < N_BOOT
    assert out["bootstrap"]["used"]["mae"] == N_BOOT
    _json_safe(out)


@pytest.mark.parametrize(
    "y, pred, message",
    [
        ([1.0, 2.0], [1.0], "same length"),
        ([1.0, np.nan], [1.0, 2.0], "finite"),
        ([1.0], [1.0], "two"),
    ],
)
def test_regression_bad_input(y, pred, message):
    with pytest.raises(ValueError, match=message):
        tm.regression_metrics(y, pred)


# --------------------------------------------------------------------------- plots


def _png(path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(tmp_path):
    y, p = _classes(60)
    cm = confusion_matrix(y, p.argmax(axis=1), labels=range(4))
    assert _png(tm.plot_confusion(cm, CLASSES, tmp_path / "cm.png"))
    assert _png(tm.plot_reliability_classwise(y, p, CLASSES, tmp_path / "rel.png"))
    rng = np.random.default_rng(7)
    target = rng.random(50)
    assert _png(tm.plot_scatter(target, target + rng.normal(0, 0.1, 50), tmp_path / "sc.png"))
    t, e, x = _survival(120, seed=8)
    groups = tm.risk_groups(x, x)
    p_km = tm.plot_km(
        t, e, groups, tmp_path / "km.png", group_names=["low", "middle", "high"], title="test"
    )
    assert _png(tmp_path / "km.png")
    assert p_km == pytest.approx(tm.logrank(t, e, groups))
    one = tm.plot_km(t, e, np.zeros(120, dtype=int), tmp_path / "km1.png")
    assert np.isnan(one) and _png(tmp_path / "km1.png")
