"""Metrics of the non-binary MIL tasks: multiclass / ordinal classification, survival and
regression, with percentile bootstrap 95% intervals, and their plots.

The statistics come from scikit-learn, SciPy and (for survival) scikit-survival; this module
only checks the inputs, resamples and packs the numbers. scikit-survival is an optional extra
(``pip install 'wsi[survival]'``), imported inside the survival functions.

Bootstrap: cases are resampled with replacement ``n_boot`` times from a generator seeded with
``seed``; the interval is the 2.5 and 97.5 percentiles of the resampled statistic. A resample
that lacks what a statistic needs (a class absent, no event, no comparable pair, a constant
variable) is skipped for that statistic; ``bootstrap.used`` says how many resamples each
interval rests on. With fewer than two usable resamples the interval is ``[None, None]``.

Every returned dict is JSON-safe: floats rounded to 6 digits, NaN as ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from wsi.errors import ConfigError
from wsi.mil import metrics as m
from wsi.mil.evaluate import _clean

__all__ = [
    "class_metrics",
    "survival_metrics",
    "regression_metrics",
    "km_curve",
    "logrank",
    "risk_groups",
    "screening_score",
    "plot_confusion",
    "plot_km",
    "plot_scatter",
    "plot_reliability_classwise",
]

_NAN = float("nan")
_SKSURV_MISSING = "survival metrics need scikit-survival: pip install 'wsi[survival]'"
# probabilities of the negative class are clipped to [eps, 1 - eps] before the log-odds
_EPS = 1e-12
# the default truncation time of Uno's C keeps the training censoring survival above this
_MIN_CENSORING_SURVIVAL = 0.1

Stats = dict[str, float | None]


# --------------------------------------------------------------------------- bootstrap


def _bootstrap(
    n: int, one: Callable[[np.ndarray], Stats], n_boot: int, seed: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Percentile 95% intervals of the statistics ``one(idx)`` returns on each resample.

    ``one`` returns ``{name: value}``; a value of None or NaN marks the resample as unusable
    for that statistic. Returns ``({name: [lo, hi]}, {name: resamples used})``.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(n_boot):
        for name, v in one(rng.integers(0, n, n)).items():
            kept = values.setdefault(name, [])
            if v is not None and np.isfinite(v):
                kept.append(float(v))
    cis = {
        name: (list(np.quantile(v, [0.025, 0.975])) if len(v) >= 2 else [_NAN, _NAN])
        for name, v in values.items()
    }
    return cis, {name: len(v) for name, v in values.items()}


def _boot_info(n_boot: int, seed: int, used: Mapping[str, int]) -> dict[str, Any]:
    return {"n_boot": n_boot, "seed": seed, "used": dict(used)}


# --------------------------------------------------------------------------- classification


def _check_classes(
    y: ArrayLike, probs: ArrayLike, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y)
    p_arr = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if y_arr.ndim != 1 or len(y_arr) == 0:
        raise ValueError(
            f"y must be a non-empty 1-d array of class indices, got shape {y_arr.shape}"
        )
    if p_arr.shape != (len(y_arr), k):
        raise ValueError(
            f"probs has shape {p_arr.shape}, expected ({len(y_arr)}, {k}): one row per case "
            f"and one column per class of {list(classes)}"
        )
    if k < 2 or len(set(classes)) != k:
        raise ValueError(f"need at least two distinct class names, got {list(classes)}")
    integral = y_arr.dtype.kind in "iu" or (
        y_arr.dtype.kind == "f" and bool(np.all(np.mod(y_arr, 1) == 0))
    )
    if not integral:
        raise ValueError(f"y must hold integer class indices, got dtype {y_arr.dtype}")
    y_arr = y_arr.astype(np.int64)
    if y_arr.min() < 0 or y_arr.max() >= k:
        raise ValueError(f"class indices of y must lie in [0, {k - 1}], got {sorted(set(y_arr))}")
    if not np.isfinite(p_arr).all() or p_arr.min() < 0 or p_arr.max() > 1:
        raise ValueError("probs must be finite probabilities in [0, 1]")
    worst = float(np.abs(p_arr.sum(axis=1) - 1).max())
    if worst > 1e-4:
        raise ValueError(
            f"each row of probs must sum to 1 (softmax output); off by up to {worst:g}"
        )
    return y_arr, p_arr


def _auroc(truth: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of a 0/1 truth (Mann-Whitney U, ties half: the value of sklearn's
    ``roc_auc_score``, without its input checks, which cost most of a bootstrap's time);
    None when one class is missing."""
    n_pos = int(truth.sum())
    if n_pos == 0 or n_pos == len(truth):
        return None
    return m.auroc(truth, score)


def _kappa_quadratic(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Quadratic-weighted Cohen kappa of K ordered classes: sklearn's
    ``cohen_kappa_score(weights="quadratic")``, in numpy (a bootstrap calls it a thousand
    times)."""
    observed = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(np.float64)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    i = np.arange(k)
    w = (i[:, None] - i[None, :]) ** 2
    return float(1.0 - (w * observed).sum() / (w * expected).sum())


def screening_score(probs: ArrayLike, negative: int) -> np.ndarray:
    """Screening score: log-odds of not being the negative class, log((1 - p_neg) / p_neg),
    with p_neg clipped to [1e-12, 1 - 1e-12] (so the score lies within about +-27.6)."""
    from scipy.special import logit

    p_neg = np.clip(np.asarray(probs, dtype=np.float64)[:, negative], _EPS, 1 - _EPS)
    return np.asarray(logit(1 - p_neg))


def class_metrics(
    y: ArrayLike,
    probs: ArrayLike,
    classes: Sequence[str],
    *,
    ordinal: bool = False,
    negative: int | None = None,
    screen_threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of K-class probabilities ``probs`` (n, K) against class indices ``y`` (n,).

    Decisions are the argmax of ``probs``. Per class: one-vs-rest AUROC (with CI),
    sensitivity and specificity of the argmax decision, ECE (10 equal-width bins).
    ``macro_auroc`` is sklearn's one-vs-rest macro AUROC; where a class is absent from ``y``
    it is the mean over the classes present (``absent_classes`` names the others).
    ``ordinal`` adds the quadratic-weighted Cohen kappa. ``negative`` (index of the benign
    class) adds ``screening``: the AUROC of "not negative" against the screening score
    log((1 - p_neg) / p_neg), and with ``screen_threshold`` (on that score) the counts and
    rates of the call ``score >= screen_threshold``.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        roc_auc_score,
    )

    y_arr, p_arr = _check_classes(y, probs, classes)
    k = len(classes)
    labels = list(range(k))
    if negative is not None and not 0 <= negative < k:
        raise ValueError(f"negative={negative} is not a class index in [0, {k - 1}]")
    if screen_threshold is not None and negative is None:
        raise ValueError("screen_threshold needs negative (the index of the benign class)")
    pred = p_arr.argmax(axis=1)
    counts = np.bincount(y_arr, minlength=k)
    present = [c for c in labels if counts[c] > 0]
    screen = screening_score(p_arr, negative) if negative is not None else None

    def one(idx: np.ndarray) -> Stats:
        yb, pb, db = y_arr[idx], p_arr[idx], pred[idx]
        out: Stats = {}
        aucs = {c: _auroc((yb == c).astype(np.int64), pb[:, c]) for c in labels}
        for c in labels:
            out[f"per_class.{classes[c]}.auroc"] = aucs[c]
        per = [a for a in (aucs[c] for c in present) if a is not None]
        # the macro average over the same classes as the point estimate, or skipped
        out["macro_auroc"] = float(np.mean(per)) if len(per) == len(present) else None
        complete = bool(np.isin(present, yb).all())
        # sklearn's balanced accuracy: the mean recall over the classes in the truth
        seen = np.unique(yb)
        ba = float(np.mean([(db[yb == c] == c).mean() for c in seen])) if complete else None
        out["balanced_accuracy"] = ba
        if ordinal:
            # with two distinct true classes the expected disagreement is > 0
            two = len(np.unique(yb)) >= 2
            out["kappa_quadratic"] = _kappa_quadratic(yb, db, k) if two else None
        if screen is not None:
            out["screening.auroc"] = _auroc((yb != negative).astype(np.int64), screen[idx])
        out["ece_classwise"] = float(
            np.mean([m.ece((yb == c).astype(np.int64), pb[:, c]) for c in labels])
        )
        return out

    point = one(np.arange(len(y_arr)))
    if len(present) == k > 2:
        point["macro_auroc"] = float(
            roc_auc_score(y_arr, p_arr, multi_class="ovr", average="macro", labels=labels)
        )
    cis, used = _bootstrap(len(y_arr), one, n_boot, seed)
    cm = confusion_matrix(y_arr, pred, labels=labels)

    per_class: dict[str, Any] = {}
    eces = []
    for c, name in enumerate(classes):
        tp = int(cm[c, c])
        fn = int(cm[c].sum()) - tp
        fp = int(cm[:, c].sum()) - tp
        tn = int(cm.sum()) - tp - fn - fp
        ece_c = m.ece((y_arr == c).astype(np.int64), p_arr[:, c])
        eces.append(ece_c)
        per_class[name] = {
            "n": int(counts[c]),
            "auroc": point[f"per_class.{name}.auroc"],
            "auroc_ci95": cis.get(f"per_class.{name}.auroc", [_NAN, _NAN]),
            "sensitivity": tp / (tp + fn) if tp + fn else _NAN,
            "specificity": tn / (tn + fp) if tn + fp else _NAN,
            "ece": ece_c,
        }

    def ci(name: str) -> list[float]:
        return cis.get(name, [_NAN, _NAN])

    out: dict[str, Any] = {
        "n": len(y_arr),
        "classes": list(classes),
        "absent_classes": [classes[c] for c in labels if counts[c] == 0],
        "per_class": per_class,
        "macro_auroc": point["macro_auroc"],
        "macro_auroc_ci95": ci("macro_auroc"),
        "balanced_accuracy": point["balanced_accuracy"],
        "balanced_accuracy_ci95": ci("balanced_accuracy"),
        "accuracy": float(accuracy_score(y_arr, pred)),
        "confusion": cm.astype(int).tolist(),
        "ece_classwise": float(np.mean(eces)),
        "ece_classwise_ci95": ci("ece_classwise"),
        "ece_n": len(y_arr),
    }
    if ordinal:
        out["kappa_quadratic"] = point["kappa_quadratic"]
        out["kappa_quadratic_ci95"] = ci("kappa_quadratic")
    if screen is not None:
        truth = (y_arr != negative).astype(np.int64)
        screening: dict[str, Any] = {
            "negative": classes[negative] if negative is not None else None,
            "auroc": point["screening.auroc"],
            "auroc_ci95": ci("screening.auroc"),
        }
        if screen_threshold is not None:
            screening["at_threshold"] = m.at_threshold(truth, screen, screen_threshold).as_dict()
        out["screening"] = screening
    out["bootstrap"] = _boot_info(n_boot, seed, used)
    return _clean(out)


# --------------------------------------------------------------------------- survival


def _require_sksurv() -> None:
    try:
        import sksurv  # noqa: F401
    except ImportError as err:
        raise ConfigError(_SKSURV_MISSING) from err


def _check_survival(time: ArrayLike, event: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event)
    if t.ndim != 1 or len(t) == 0:
        raise ValueError(f"{what} time must be a non-empty 1-d array, got shape {t.shape}")
    if e.shape != t.shape:
        raise ValueError(f"{what}: {len(e)} event indicators for {len(t)} times")
    if not np.isfinite(t).all() or (t <= 0).any():
        raise ValueError(f"{what} times must be finite and > 0")
    if not np.isin(e, (0, 1)).all():
        raise ValueError(f"{what} event must be 0 (censored) or 1 (event)")
    return t, e.astype(bool)


def _default_tau(train_time: np.ndarray, train_event: np.ndarray, end: float) -> float:
    """Truncation time of Uno's C: the end of the common follow-up ``end``, or earlier the
    first time at which the training censoring survival G falls below 0.1, so no squared
    inverse-probability weight exceeds 100 (near the end of follow-up G tends to 0 and one
    late event would otherwise outweigh all others; Uno et al. 2011 ask for G(tau) > 0)."""
    from sksurv.nonparametric import kaplan_meier_estimator

    if train_event.all():  # no censoring: G = 1 throughout
        return end
    times, g = kaplan_meier_estimator(train_event, train_time, reverse=True)
    low = np.asarray(times)[np.asarray(g) < _MIN_CENSORING_SURVIVAL]
    return float(min(end, low[0])) if len(low) else end


def _surv_array(event: np.ndarray, time: np.ndarray) -> Any:
    from sksurv.util import Surv

    return Surv.from_arrays(event=event, time=time)


def survival_metrics(
    time: ArrayLike,
    event: ArrayLike,
    risk: ArrayLike,
    *,
    train_time: ArrayLike,
    train_event: ArrayLike,
    horizons: Sequence[float],
    surv: ArrayLike | None = None,
    surv_times: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    tau: float | None = None,
) -> dict[str, Any]:
    """Discrimination and calibration of a risk score (higher = worse) on censored data.

    ``time`` in the cohort's unit (e.g. months, > 0), ``event`` 1 = event, 0 = censored.
    ``train_time`` / ``train_event`` (the training cohort) give the censoring distribution
    (Kaplan-Meier) of the inverse-probability-of-censoring weights of Uno's C, the
    time-dependent AUROC and the Brier score.

    That distribution is unknown past the training follow-up ``T = max(train_time)``, where
    scikit-survival raises. So for the weighted metrics the test follow-up is truncated at
    ``T``: test times above ``T`` become ``T``, and events at or after ``T`` become censored
    (``n_truncated`` counts the cases changed). This changes no metric at a time below ``T``,
    the only times they are evaluated at: horizons and ``surv_times`` are used only inside
    ``[min(time), min(max(time), T))`` (others are listed in ``time_auc_skipped`` /
    ``brier_skipped`` with the reason), and Uno's C counts the events before ``tau``.

    ``tau`` (reported as ``c_index_uno_tau``) defaults to the end of the common follow-up,
    ``min(max(time), T)``, or earlier the first time at which the training censoring
    survival falls below 0.1: near the end of follow-up it tends to 0, and one late event
    would otherwise outweigh all others by its squared inverse weight.

    ``surv`` (n, len(surv_times)) are predicted survival probabilities at ``surv_times``
    (increasing); with them ``ibs`` (sksurv integrated Brier score over the ``surv_times``
    in range) and ``brier`` at each usable horizon (survival linearly interpolated between
    ``surv_times``; horizons outside ``surv_times`` skipped).
    """
    _require_sksurv()
    from sksurv.metrics import (
        brier_score,
        concordance_index_censored,
        concordance_index_ipcw,
        cumulative_dynamic_auc,
        integrated_brier_score,
    )

    t, e = _check_survival(time, event, "test")
    tr_t, tr_e = _check_survival(train_time, train_event, "train")
    r = np.asarray(risk, dtype=np.float64)
    if r.shape != t.shape:
        raise ValueError(f"{r.shape[0] if r.ndim else 0} risks for {len(t)} times")
    if not np.isfinite(r).all():
        raise ValueError("risk must be finite")
    hs = [float(h) for h in horizons]
    if not all(np.isfinite(h) and h > 0 for h in hs):
        raise ValueError(f"horizons must be finite times > 0, got {list(horizons)}")
    surv_arr = surv_t = None
    if (surv is None) != (surv_times is None):
        raise ValueError("give surv and surv_times together")
    if surv is not None and surv_times is not None:
        surv_arr = np.asarray(surv, dtype=np.float64)
        surv_t = np.asarray(surv_times, dtype=np.float64).ravel()
        if surv_arr.shape != (len(t), len(surv_t)):
            raise ValueError(
                f"surv has shape {surv_arr.shape}, expected ({len(t)}, {len(surv_t)}): "
                "one row per case, one column per surv_times"
            )
        if len(surv_t) and (np.diff(surv_t) <= 0).any():
            raise ValueError("surv_times must be strictly increasing")
        if not np.isfinite(surv_arr).all() or surv_arr.min() < 0 or surv_arr.max() > 1:
            raise ValueError("surv must hold survival probabilities in [0, 1]")

    train_max = float(tr_t.max())
    end = min(float(t.max()), train_max)
    if tau is not None and not 0 < tau <= end:
        raise ValueError(
            f"tau={tau} must lie in (0, {end:g}], within the follow-up of both the test and "
            "the training data"
        )
    uno_tau = float(tau) if tau is not None else _default_tau(tr_t, tr_e, end)
    # truncate the test follow-up at the training follow-up (see the docstring)
    t_w = np.minimum(t, train_max)
    e_w = e & (t < train_max)
    y_train = _surv_array(tr_e, tr_t)
    y_test = _surv_array(e_w, t_w)
    lo_t, hi_t = float(t_w.min()), float(t_w.max())  # sksurv's range: [lo_t, hi_t)

    def one(idx: np.ndarray) -> Stats:
        tb, eb, rb = t[idx], e[idx], r[idx]
        out: Stats = {"c_index_harrell": None, "c_index_uno": None}
        # a comparable pair: an event before some other case's time
        if (eb & (tb < tb.max())).any():
            out["c_index_harrell"] = float(concordance_index_censored(eb, tb, rb)[0])
        twb, ewb = t_w[idx], e_w[idx]
        if (ewb & (twb < uno_tau) & (twb < twb.max())).any():
            est = concordance_index_ipcw(y_train, _surv_array(ewb, twb), rb, tau=uno_tau)
            out["c_index_uno"] = float(est[0])
        return out

    point = one(np.arange(len(t)))
    cis, used = _bootstrap(len(t), one, n_boot, seed)

    def usable(h: float, *, need_event: bool = True) -> str | None:
        """Why sksurv cannot evaluate at horizon h (the AUROC needs an event by h), or None."""
        if not lo_t <= h < hi_t:
            return f"outside the test follow-up [{lo_t:g}, {hi_t:g})"
        if need_event and not (e_w & (t_w <= h)).any():
            return "no event by this time"
        return None

    time_auc: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for h_in, h in zip(horizons, hs, strict=True):
        why = usable(h)
        if why is None:
            auc, _ = cumulative_dynamic_auc(y_train, y_test, r, [h])
            time_auc[str(h_in)] = float(auc[0])
        else:
            skipped[str(h_in)] = why

    out: dict[str, Any] = {
        "n": len(t),
        "events": int(e.sum()),
        "c_index_harrell": point["c_index_harrell"],
        "c_index_harrell_ci95": cis.get("c_index_harrell", [_NAN, _NAN]),
        "c_index_uno": point["c_index_uno"],
        "c_index_uno_ci95": cis.get("c_index_uno", [_NAN, _NAN]),
        "c_index_uno_tau": uno_tau,
        "time_auc": time_auc,
        "time_auc_skipped": skipped,
        "train_follow_up": train_max,
        "n_truncated": int(((t > train_max) | (e & (t >= train_max))).sum()),
        "ibs": None,
    }
    if surv_arr is not None and surv_t is not None:
        inside = (surv_t >= lo_t) & (surv_t < hi_t)
        if inside.sum() >= 2:
            out["ibs"] = float(
                integrated_brier_score(y_train, y_test, surv_arr[:, inside], surv_t[inside])
            )
            out["ibs_range"] = [float(surv_t[inside][0]), float(surv_t[inside][-1])]
        brier: dict[str, Any] = {}
        brier_skipped: dict[str, str] = {}
        for h_in, h in zip(horizons, hs, strict=True):
            why = usable(h, need_event=False)
            if why is None and not surv_t[0] <= h <= surv_t[-1]:
                why = f"outside surv_times [{surv_t[0]:g}, {surv_t[-1]:g}]"
            if why is not None:
                brier_skipped[str(h_in)] = why
                continue
            s_h = np.array([np.interp(h, surv_t, row) for row in surv_arr])
            brier[str(h_in)] = float(brier_score(y_train, y_test, s_h, [h])[1][0])
        out["brier"] = brier
        out["brier_skipped"] = brier_skipped
    out["bootstrap"] = _boot_info(n_boot, seed, used)
    return _clean(out)


def km_curve(time: ArrayLike, event: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier estimate (sksurv): the distinct times and the survival just after each."""
    _require_sksurv()
    from sksurv.nonparametric import kaplan_meier_estimator

    t, e = _check_survival(time, event, "km_curve")
    times, survival = kaplan_meier_estimator(e, t)
    return np.asarray(times), np.asarray(survival)


def logrank(time: ArrayLike, event: ArrayLike, groups: ArrayLike) -> float:
    """p-value of the log-rank test (sksurv ``compare_survival``) that the survival of the
    groups is the same; needs at least two groups."""
    _require_sksurv()
    from sksurv.compare import compare_survival

    t, e = _check_survival(time, event, "logrank")
    g = np.asarray(groups)
    if g.shape != t.shape:
        raise ValueError(f"{len(g)} group labels for {len(t)} times")
    if len(np.unique(g)) < 2:
        raise ValueError("the log-rank test needs at least two groups")
    _, p_value = compare_survival(_surv_array(e, t), g)
    return float(p_value)


def risk_groups(train_risk: ArrayLike, risk: ArrayLike) -> np.ndarray:
    """Risk group per case from the tertiles of the TRAINING risks: 0 (low) below the 1/3
    quantile, 1 from it up to the 2/3 quantile, 2 (high) from the 2/3 quantile up."""
    tr = np.asarray(train_risk, dtype=np.float64).ravel()
    r = np.asarray(risk, dtype=np.float64).ravel()
    if len(tr) == 0 or not np.isfinite(tr).all() or not np.isfinite(r).all():
        raise ValueError("risks must be finite and the training risks non-empty")
    cuts = np.quantile(tr, [1 / 3, 2 / 3])
    return np.digitize(r, cuts).astype(np.int64)


# --------------------------------------------------------------------------- regression


def regression_metrics(
    y: ArrayLike, pred: ArrayLike, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Errors and correlations of predictions ``pred`` against targets ``y`` (same unit):
    MAE (with CI), RMSE, R^2 (sklearn); Pearson r and Spearman rho (SciPy, with CIs)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_arr = np.asarray(y, dtype=np.float64)
    p_arr = np.asarray(pred, dtype=np.float64)
    if y_arr.ndim != 1 or y_arr.shape != p_arr.shape:
        raise ValueError(f"y {y_arr.shape} and pred {p_arr.shape} must be 1-d of the same length")
    if len(y_arr) < 2:
        raise ValueError(f"need at least two cases, got {len(y_arr)}")
    if not (np.isfinite(y_arr).all() and np.isfinite(p_arr).all()):
        raise ValueError("y and pred must be finite")

    def one(idx: np.ndarray) -> Stats:
        yb, pb = y_arr[idx], p_arr[idx]
        out: Stats = {"mae": float(mean_absolute_error(yb, pb))}
        varies = np.ptp(yb) > 0 and np.ptp(pb) > 0
        out["pearson_r"] = float(pearsonr(yb, pb)[0]) if varies else None
        out["spearman_rho"] = float(spearmanr(yb, pb)[0]) if varies else None
        return out

    point = one(np.arange(len(y_arr)))
    cis, used = _bootstrap(len(y_arr), one, n_boot, seed)
    out: dict[str, Any] = {
        "n": len(y_arr),
        "mae": point["mae"],
        "mae_ci95": cis.get("mae", [_NAN, _NAN]),
        "rmse": float(np.sqrt(mean_squared_error(y_arr, p_arr))),
        "r2": float(r2_score(y_arr, p_arr)) if np.ptp(y_arr) > 0 else _NAN,
        "pearson_r": point["pearson_r"],
        "pearson_r_ci95": cis.get("pearson_r", [_NAN, _NAN]),
        "spearman_rho": point["spearman_rho"],
        "spearman_rho_ci95": cis.get("spearman_rho", [_NAN, _NAN]),
        "bootstrap": _boot_info(n_boot, seed, used),
    }
    return _clean(out)


# --------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out)
    _pyplot().close(fig)
    return out


def plot_confusion(cm: ArrayLike, classes: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix (rows truth, columns prediction) as a PNG: counts written in the
    cells, shading by the row-normalised fraction (the recall of each true class)."""
    plt = _pyplot()
    c = np.asarray(cm, dtype=np.int64)
    k = len(classes)
    if c.shape != (k, k):
        raise ValueError(f"confusion matrix {c.shape} does not match {k} classes")
    rows = c.sum(axis=1, keepdims=True)
    frac = np.divide(c, rows, out=np.zeros(c.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1.5), dpi=120)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            color = "white" if frac[i, j] > 0.5 else "black"
            ax.text(j, i, str(c[i, j]), ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(k), list(classes), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), list(classes), fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title("Confusion (shading: fraction of the row)")
    return _save(fig, path)


def plot_km(
    time: ArrayLike,
    event: ArrayLike,
    groups: ArrayLike,
    path: str | Path,
    *,
    group_names: Mapping[Any, str] | Sequence[str] | None = None,
    title: str | None = None,
) -> float:
    """Kaplan-Meier step curves, one per group, as a PNG; returns the log-rank p-value
    (NaN with a single group). ``group_names`` maps a group value to its name (a sequence
    is indexed by integer group values, e.g. ``["low", "middle", "high"]``)."""
    plt = _pyplot()
    t, e = _check_survival(time, event, "plot_km")
    g = np.asarray(groups)
    if g.shape != t.shape:
        raise ValueError(f"{len(g)} group labels for {len(t)} times")
    levels = list(np.unique(g))
    p_value = logrank(t, e, g) if len(levels) >= 2 else _NAN
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for level in levels:
        sel = g == level
        times, survival = km_curve(t[sel], e[sel])
        if group_names is None:
            name = str(level)
        elif isinstance(group_names, Mapping):
            name = group_names.get(level, str(level))
        else:
            name = group_names[int(level)]
        label = f"{name} (n at risk {int(sel.sum())}, {int(e[sel].sum())} events)"
        ax.step(np.r_[0.0, times], np.r_[1.0, survival], where="post", label=label)
    ax.set(xlabel="time", ylabel="survival probability", ylim=(0, 1.02), xlim=(0, None))
    p_text = "log-rank p = n/a" if np.isnan(p_value) else f"log-rank p = {p_value:.3g}"
    ax.set_title(f"{title}\n{p_text}" if title else p_text, fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, path)
    return p_value


def plot_scatter(y: ArrayLike, pred: ArrayLike, path: str | Path, *, label: str = "target") -> Path:
    """Predicted against true values with the identity line, Pearson r in the title."""
    from scipy.stats import pearsonr

    plt = _pyplot()
    y_arr = np.asarray(y, dtype=np.float64)
    p_arr = np.asarray(pred, dtype=np.float64)
    if y_arr.shape != p_arr.shape or y_arr.ndim != 1:
        raise ValueError(f"y {y_arr.shape} and pred {p_arr.shape} must be 1-d of the same length")
    varies = len(y_arr) >= 2 and np.ptp(y_arr) > 0 and np.ptp(p_arr) > 0
    r = float(pearsonr(y_arr, p_arr)[0]) if varies else _NAN
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.scatter(y_arr, p_arr, s=12, alpha=0.7)
    lo = float(min(y_arr.min(), p_arr.min()))
    hi = float(max(y_arr.max(), p_arr.max()))
    ax.plot([lo, hi], [lo, hi], ":", color="grey")
    ax.set(xlabel=f"true {label}", ylabel=f"predicted {label}")
    ax.set_title(f"r = {r:.3f} (n = {len(y_arr)})")
    return _save(fig, path)


def plot_reliability_classwise(
    y: ArrayLike, probs: ArrayLike, classes: Sequence[str], path: str | Path
) -> Path:
    """One-vs-rest reliability curve of each class's probability (equal-width bins), with
    each class's ECE in the legend."""
    plt = _pyplot()
    y_arr, p_arr = _check_classes(y, probs, classes)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for c, name in enumerate(classes):
        truth = (y_arr == c).astype(np.int64)
        mean_p, rate, count = m.reliability(truth, p_arr[:, c])
        used = count > 0
        ece_c = m.ece(truth, p_arr[:, c])
        ax.plot(mean_p[used], rate[used], "o-", ms=3, label=f"{name} (ECE {ece_c:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="predicted probability of the class", ylabel="observed fraction")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.set_title("Reliability, one class vs rest")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)
