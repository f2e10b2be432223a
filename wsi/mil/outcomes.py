"""What a trained model's folds mean, per task: the metrics, calibration, decision rule and
plots of a training, and the fields a prediction writes.

Binary models keep their own path (log-odds, one pooled temperature, an operating point
for a target sensitivity: :mod:`wsi.mil.train`, :mod:`wsi.mil.predict`); this module serves
the other kinds of :mod:`wsi.mil.tasks`, and the conformal sets and the trust fields of
every kind (:func:`fit_conformal`, :func:`trust_fields`):

- multiclass and ordinal: one temperature fitted on the pooled out-of-fold logits; with a
  benign class, a screening operating point on the log-odds of "not benign" chosen for the
  target sensitivity on the same slides; the decision is the benign class below it, else
  the most probable other class.
- survival: the risk is minus the expected number of time bins survived; risk groups are
  the tertiles of the training cohort's out-of-fold risks, whose Kaplan-Meier curves the
  model card keeps.
- regression: the value is the fold mean, with the folds' spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi.mil import conformal as cf
from wsi.mil import metrics as m
from wsi.mil import task_metrics as tm
from wsi.mil.calibration import expit, fit_calibration, log_odds, softmax
from wsi.mil.evaluate import _clean
from wsi.mil.tasks import Task

__all__ = [
    "progress_metric",
    "summarise",
    "prediction_fields",
    "fit_conformal",
    "conformal_coverage",
    "trust_fields",
    "RISK_GROUPS",
]

RISK_GROUPS = ("low", "intermediate", "high")


def progress_metric(task: Task, rows: Sequence[Any], logits: np.ndarray) -> float:
    """One number to follow a fold's training by (higher is better): AUROC (binary),
    macro one-vs-rest AUROC (classes), Harrell's C-index (survival), Pearson r
    (regression). NaN where the rows cannot give it."""
    z = np.asarray(logits, dtype=np.float64)
    if task.kind == "binary":
        return m.auroc([r.y for r in rows], z[:, 1] - z[:, 0])
    if task.has_classes:
        y = np.array([r.y for r in rows])
        aucs = [m.auroc(y == c, z[:, c] - z.mean(axis=1)) for c in np.unique(y)]
        return float(np.nanmean(aucs)) if len(aucs) > 1 else float("nan")
    if task.kind == "survival":
        risk = task.scores(z)["risk"]
        events = np.array([bool(r.event) for r in rows])
        if not events.any():
            return float("nan")
        from sksurv.metrics import concordance_index_censored

        times = np.array([r.time for r in rows], dtype=np.float64)
        return float(concordance_index_censored(events, times, risk)[0])
    pred = task.scores(z)["value"]
    t = np.array([r.target for r in rows], dtype=np.float64)
    if len(t) < 3 or t.std() == 0 or pred.std() == 0:
        return float("nan")
    return float(np.corrcoef(t, pred)[0, 1])


def _headline(metrics: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The model card's headline figures: ``keys`` of each metrics part."""
    return {
        part: {k: metrics[part].get(k) for k in keys}
        for part in ("validation_pooled", "test")
        if part in metrics
    }


def _step_at(times: np.ndarray, surv: np.ndarray, h: float) -> np.ndarray:
    """Survival at time ``h`` of curves ``surv`` (n, T) known after each of ``times``."""
    k = int(np.searchsorted(times, h, side="right"))
    return np.ones(len(surv)) if k == 0 else surv[:, k - 1]


def summarise(
    task: Task,
    target_sensitivity: float,
    rows: dict[str, Any],
    oof_ids: list[str],
    oof_logits: np.ndarray,
    test_ids: list[str],
    test_logits: list[np.ndarray],
    out: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metrics (``metrics.json``) and the model-card fields of a training of a
    non-binary task; writes its plots into ``out``.

    ``oof_logits`` are the pooled out-of-fold validation logits (``oof_ids`` order),
    ``test_logits`` each fold's logits of the test slides (``test_ids`` order).
    """
    if task.has_classes:
        return _summarise_classes(
            task, target_sensitivity, rows, oof_ids, oof_logits, test_ids, test_logits, out
        )
    if task.kind == "survival":
        return _summarise_survival(task, rows, oof_ids, oof_logits, test_ids, test_logits, out)
    return _summarise_regression(task, rows, oof_ids, oof_logits, test_ids, test_logits, out)


def _summarise_classes(
    task: Task,
    target_sensitivity: float,
    rows: dict[str, Any],
    oof_ids: list[str],
    oof_logits: np.ndarray,
    test_ids: list[str],
    test_logits: list[np.ndarray],
    out: Path,
) -> tuple[dict, dict]:
    y = np.array([rows[s].y for s in oof_ids])
    calibration = fit_calibration(oof_logits, y)
    temperature = calibration["temperature"]
    probs_raw, probs = softmax(oof_logits), softmax(oof_logits, temperature)
    neg = task.negative_index
    op: dict[str, Any] | None = None
    if neg is not None:
        screen = task.scores(oof_logits, temperature)["screen"]
        threshold = m.threshold_for_sensitivity(y != neg, screen, target_sensitivity)
        op = {
            "threshold_log_odds": threshold,
            "threshold": float(expit(threshold)),
            "target_sensitivity": target_sensitivity,
            "screening": f"not {task.negative}",
            "chosen_on": "pooled out-of-fold validation slides (calibrated log-odds of "
            f"not {task.negative})",
        }
    ordinal = task.kind == "ordinal"
    screen_t = op["threshold_log_odds"] if op else None

    def scored(y_: np.ndarray, p_: np.ndarray) -> dict[str, Any]:
        return tm.class_metrics(
            y_, p_, list(task.classes), ordinal=ordinal, negative=neg, screen_threshold=screen_t
        )

    metrics: dict[str, Any] = {
        "operating_point": op,
        "validation_note": "in-sample for the temperature and the operating point (both "
        "fitted on these slides): optimistic; the test part is not",
        "validation_pooled": scored(y, probs),
    }
    metrics["validation_pooled"]["ece_classwise_uncalibrated"] = tm.class_metrics(
        y, probs_raw, list(task.classes), n_boot=0
    )["ece_classwise"]
    shown_y, shown_p, shown = y, probs, "validation (out of fold)"
    if test_ids:
        y_test = np.array([rows[s].y for s in test_ids])
        fold_probs = np.stack([softmax(z, temperature) for z in test_logits])
        p_test = fold_probs.mean(axis=0)
        metrics["test"] = scored(y_test, p_test)
        metrics["test"]["probability_std_mean"] = float(fold_probs.std(axis=0).mean())
        shown_y, shown_p, shown = y_test, p_test, "test (fold ensemble)"
    cm = np.asarray(tm.class_metrics(shown_y, shown_p, list(task.classes), n_boot=0)["confusion"])
    tm.plot_confusion(cm, list(task.classes), out / "confusion.png")
    tm.plot_reliability_classwise(shown_y, shown_p, list(task.classes), out / "reliability.png")
    metrics["plots_from"] = shown
    card = {
        "operating_point": op,
        "temperature": temperature,
        "calibration": {
            **calibration,
            "ece_classwise_validation_calibrated_ci95": metrics["validation_pooled"][
                "ece_classwise_ci95"
            ],
            "ece_n": metrics["validation_pooled"]["ece_n"],
            "ece_classwise_validation_uncalibrated": metrics["validation_pooled"][
                "ece_classwise_uncalibrated"
            ],
            "ece_classwise_validation_calibrated": metrics["validation_pooled"]["ece_classwise"],
        },
        "metrics": _headline(
            metrics,
            (
                "macro_auroc",
                "macro_auroc_ci95",
                "balanced_accuracy",
                "kappa_quadratic",
                "screening",
            ),
        ),
    }
    return _clean(metrics), _clean(card)


def _summarise_survival(
    task: Task,
    rows: dict[str, Any],
    oof_ids: list[str],
    oof_logits: np.ndarray,
    test_ids: list[str],
    test_logits: list[np.ndarray],
    out: Path,
) -> tuple[dict, dict]:
    times = np.asarray(task.bins, dtype=np.float64)
    t_oof = np.array([rows[s].time for s in oof_ids])
    e_oof = np.array([rows[s].event for s in oof_ids])
    s_oof = task.scores(oof_logits)
    risk_oof = s_oof["risk"]
    cuts = [float(c) for c in np.quantile(risk_oof, [1 / 3, 2 / 3])]
    groups_oof = tm.risk_groups(risk_oof, risk_oof)

    def scored(t: np.ndarray, e: np.ndarray, risk: np.ndarray, surv: np.ndarray) -> dict:
        res = tm.survival_metrics(
            t,
            e,
            risk,
            train_time=t_oof,
            train_event=e_oof,
            horizons=list(task.horizons),
            surv=surv[:, : len(times)] if len(times) else None,
            surv_times=times if len(times) else None,
        )
        groups = tm.risk_groups(risk_oof, risk)
        res["calibration_at_horizons"] = survival_calibration(task, t, e, groups, surv)
        return res

    metrics: dict[str, Any] = {
        "validation_note": "out-of-fold validation; risk groups are cut on these slides",
        "validation_pooled": scored(t_oof, e_oof, risk_oof, s_oof["survival"]),
    }
    shown = (t_oof, e_oof, groups_oof, "validation (out of fold)")
    if test_ids:
        t_test = np.array([rows[s].time for s in test_ids])
        e_test = np.array([rows[s].event for s in test_ids])
        per_fold = [task.scores(z) for z in test_logits]
        risk = np.mean([p["risk"] for p in per_fold], axis=0)
        surv = np.mean([p["survival"] for p in per_fold], axis=0)
        metrics["test"] = scored(t_test, e_test, risk, surv)
        metrics["test"]["risk_std_mean"] = float(np.std([p["risk"] for p in per_fold], 0).mean())
        shown = (t_test, e_test, tm.risk_groups(risk_oof, risk), "test (fold ensemble)")
    p_value = tm.plot_km(
        shown[0],
        shown[1],
        shown[2],
        out / "km.png",
        group_names=list(RISK_GROUPS),
        title=f"{shown[3]}: risk groups (training tertiles)",
    )
    metrics["logrank_p"] = p_value
    metrics["plots_from"] = shown[3]
    km = {}
    for g, name in enumerate(RISK_GROUPS):
        sel = groups_oof == g
        if sel.any() and e_oof[sel].any():
            kt, ks = tm.km_curve(t_oof[sel], e_oof[sel])
            km[name] = {"time": [float(v) for v in kt], "survival": [float(v) for v in ks]}
    card = {
        "operating_point": None,
        "temperature": 1.0,
        "risk_groups": {
            "names": list(RISK_GROUPS),
            "cuts": cuts,
            "from": "tertiles of the training cohort's out-of-fold risks",
            "kaplan_meier": km,
        },
        "calibration": {
            "method": "none: predicted against observed survival per risk group "
            "at the horizons is reported in metrics.json"
        },
        "metrics": _headline(
            metrics,
            (
                "c_index_harrell",
                "c_index_harrell_ci95",
                "c_index_uno",
                "c_index_uno_ci95",
                "time_auc",
                "ibs",
            ),
        ),
    }
    return _clean(metrics), _clean(card)


def survival_calibration(
    task: Task, t: np.ndarray, e: np.ndarray, groups: np.ndarray, surv: np.ndarray
) -> dict[str, Any]:
    """Per horizon and risk group (``groups``: 0 low .. 2 high): the mean predicted
    survival and the Kaplan-Meier estimate of the group's slides (what a survival
    calibration plot shows). ``surv`` (n, >= len(bins)): survival at the bin edges."""
    times = np.asarray(task.bins, dtype=np.float64)
    out: dict[str, Any] = {}
    for h in task.horizons:
        pred = _step_at(times, surv[:, : len(times)], h) if len(times) else np.ones(len(t))
        per_group = {}
        for g, name in enumerate(RISK_GROUPS):
            sel = groups == g
            if not sel.any():
                continue
            kt, ks = tm.km_curve(t[sel], e[sel]) if e[sel].any() else (np.zeros(0), np.zeros(0))
            observed = _step_at(kt, ks[None], h)[0] if len(kt) else 1.0
            per_group[name] = {"n": int(sel.sum()), "predicted": float(pred[sel].mean()),
                               "observed_km": float(observed)}  # fmt: skip
        out[str(h)] = per_group
    return out


def _summarise_regression(
    task: Task,
    rows: dict[str, Any],
    oof_ids: list[str],
    oof_logits: np.ndarray,
    test_ids: list[str],
    test_logits: list[np.ndarray],
    out: Path,
) -> tuple[dict, dict]:
    y = np.array([rows[s].target for s in oof_ids])
    pred = task.scores(oof_logits)["value"]
    metrics: dict[str, Any] = {
        "validation_note": "out-of-fold validation",
        "validation_pooled": tm.regression_metrics(y, pred),
    }
    shown_y, shown_p, shown = y, pred, "validation (out of fold)"
    if test_ids:
        y_test = np.array([rows[s].target for s in test_ids])
        per_fold = np.stack([task.scores(z)["value"] for z in test_logits])
        metrics["test"] = tm.regression_metrics(y_test, per_fold.mean(axis=0))
        metrics["test"]["value_std_mean"] = float(per_fold.std(axis=0).mean())
        shown_y, shown_p, shown = y_test, per_fold.mean(axis=0), "test (fold ensemble)"
    tm.plot_scatter(shown_y, shown_p, out / "scatter.png", label="target")
    metrics["plots_from"] = shown
    card = {
        "operating_point": None,
        "temperature": 1.0,
        "calibration": {"method": "none (the value is fitted directly)"},
        "metrics": _headline(metrics, ("mae", "rmse", "pearson_r", "pearson_r_ci95")),
    }
    return _clean(metrics), _clean(card)


def prediction_fields(task: Task, card: dict[str, Any], fold_logits: np.ndarray) -> dict[str, Any]:
    """What a prediction of a non-binary task says, from every fold's logits (F, C).

    Classes: ``class_probabilities`` (fold mean of the calibrated probabilities) and their
    spread, ``predicted_class``; with a benign class the screening fields every task with
    one shares with binary models: ``probability`` (of not benign), ``log_odds``,
    ``positive`` (at the operating point) and ``decision`` (the benign class, or the most
    probable other class). Survival: ``risk``, ``risk_std``, ``risk_group``,
    ``survival_times`` and ``survival`` (the fold-mean curve). Regression: ``value``,
    ``value_std`` and ``fold_values``.
    """
    z = np.asarray(fold_logits, dtype=np.float64)
    if task.has_classes:
        temperature = float(card.get("calibration", {}).get("temperature", 1.0))
        per_fold = softmax(z, temperature)
        probs = per_fold.mean(axis=0)
        top = int(np.argmax(probs))
        out: dict[str, Any] = {
            "class_probabilities": {c: float(p) for c, p in zip(task.classes, probs, strict=True)},
            "class_probability_std": {
                c: float(v) for c, v in zip(task.classes, per_fold.std(axis=0), strict=True)
            },
            "predicted_class": task.classes[top],
            "decision": task.classes[top],
        }
        neg = task.negative_index
        op = card.get("operating_point")
        if neg is not None and op:
            p_pos = 1.0 - probs[neg]
            fold_pos = 1.0 - per_fold[:, neg]
            score = float(tm.screening_score(probs[None], neg)[0])
            positive = score >= op["threshold_log_odds"]
            others = [i for i in range(len(probs)) if i != neg]
            called = others[int(np.argmax(probs[others]))] if positive else neg
            out.update(
                probability=float(p_pos),
                probability_std=float(fold_pos.std()),
                fold_probabilities=[float(v) for v in fold_pos],
                log_odds=score,
                positive=bool(positive),
                decision=task.classes[called],
                threshold=op["threshold"],
                threshold_log_odds=op["threshold_log_odds"],
                target_sensitivity=op["target_sensitivity"],
            )
        return out
    if task.kind == "survival":
        folds = [task.scores(z[i : i + 1]) for i in range(len(z))]
        risks = np.array([p["risk"][0] for p in folds])
        risk = float(risks.mean())
        groups = card["risk_groups"]
        g = int(np.searchsorted(groups["cuts"], risk, side="right"))
        return {
            "risk": risk,
            "risk_std": float(risks.std()),
            "fold_risks": [float(v) for v in risks],
            "risk_group": groups["names"][g],
            "decision": f"{groups['names'][g]} risk",
            "survival_times": list(task.bins),
            "survival": [float(v) for v in np.mean([p["survival"][0] for p in folds], 0)],
            "time_unit": task.time_unit,
        }
    values = task.scores(z)["value"]
    return {
        "value": float(values.mean()),
        "value_std": float(values.std()),
        "fold_values": [float(v) for v in values],
        "decision": f"{float(values.mean()):.4g}",
    }


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ci(part: dict[str, Any], key: str) -> str:
    lo, hi = part.get(f"{key}_ci95") or (None, None)
    return f"{_f(part.get(key), 2)} (95% CI {_f(lo, 2)}-{_f(hi, 2)})"


def summary_line(task: Task, part: dict[str, Any]) -> str:
    """One line of a metrics part (``metrics.json``'s ``validation_pooled`` or ``test``)
    of a non-binary task, as ``wsi train`` and the benchmark print it."""
    if task.has_classes:
        text = (
            f"macro AUROC {_ci(part, 'macro_auroc')}, balanced accuracy "
            f"{_f(part.get('balanced_accuracy'), 2)}"
        )
        if task.kind == "ordinal":
            text += f", kappa {_f(part.get('kappa_quadratic'), 2)}"
        at = (part.get("screening") or {}).get("at_threshold")
        if at:
            text += (
                f"; screening not {task.negative}: sensitivity {_f(at['sensitivity'], 2)}, "
                f"specificity {_f(at['specificity'], 2)}"
            )
        return text
    if task.kind == "survival":
        return (
            f"C-index {_ci(part, 'c_index_harrell')} (Uno {_f(part.get('c_index_uno'), 2)}), "
            f"integrated Brier {_f(part.get('ibs'))}"
        )
    return (
        f"Pearson r {_ci(part, 'pearson_r')}, MAE {_f(part.get('mae'), 4)}, "
        f"Spearman {_f(part.get('spearman_rho'), 2)}"
    )


def _class_probs(task: Task, logits: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.asarray(logits, np.float64), temperature)


def fit_conformal(
    task: Task,
    rows: dict[str, Any],
    oof_ids: list[str],
    oof_logits: np.ndarray,
    temperature: float,
    alpha: float = cf.DEFAULT_ALPHA,
) -> dict[str, Any] | None:
    """The model card's conformal section from the pooled out-of-fold predictions: class
    sets for class tasks (binary included), an interval for regression, None for
    survival."""
    if task.has_classes:
        y = np.array([rows[s].y for s in oof_ids])
        return cf.fit_classes(_class_probs(task, oof_logits, temperature), y, task.classes, alpha)
    if task.kind == "regression":
        y = np.array([rows[s].target for s in oof_ids], np.float64)
        return cf.fit_interval(task.scores(oof_logits)["value"], y, alpha)
    return None


def conformal_coverage(
    task: Task,
    conformal: dict[str, Any] | None,
    rows: dict[str, Any],
    ids: list[str],
    fold_logits: list[np.ndarray],
    temperature: float,
) -> dict[str, Any] | None:
    """Coverage of the fold ensemble's sets (intervals) on slides ``ids`` (a test part),
    with the share of uncertain and atypical sets."""
    if conformal is None or not ids:
        return None
    if task.has_classes:
        if task.kind == "binary":
            # as predict shows it: the probability of the folds' mean calibrated log-odds
            p1 = expit(np.mean([log_odds(z, temperature) for z in fold_logits], axis=0))
            probs = np.stack([1.0 - p1, p1], axis=1)
        else:  # the fold mean of the calibrated probabilities, as predict stores them
            probs = np.mean([_class_probs(task, z, temperature) for z in fold_logits], axis=0)
        sets = cf.class_sets(conformal, probs)
        truth = [task.classes[rows[s].y] for s in ids]
        status = [cf.set_status(x) for x in sets]
        return {
            "nominal": 1.0 - conformal["alpha"],
            "coverage": cf.coverage(sets, truth),
            "n": len(ids),
            "uncertain": status.count("uncertain") / len(ids),
            "atypical": status.count("atypical") / len(ids),
        }
    values = np.mean([task.scores(z)["value"] for z in fold_logits], axis=0)
    y = np.array([rows[s].target for s in ids], np.float64)
    half = conformal["half_width"]
    return {
        "nominal": 1.0 - conformal["alpha"],
        "coverage": 1.0 if half is None else float(np.mean(np.abs(y - values) <= half)),
        "n": len(ids),
        "half_width": half,
    }


def trust_fields(
    task: Task, card: dict[str, Any], result: dict[str, Any], shift: dict[str, Any] | None
) -> dict[str, Any]:
    """The prediction's trust section and the call shown to a pathologist.

    ``result`` holds the task's prediction fields (``prediction_fields`` or the binary
    ones). Returns ``conformal`` (the set in class names, or the interval, with its status),
    ``shift`` (the slide's site-shift check), ``flags`` (plain reasons to distrust the
    call) and ``call``: the decision, except that a screening-negative (or, without a
    benign class, any) call with a flag up is ``"uncertain"``: never a clean negative.
    """
    conformal = card.get("conformal")
    trust: dict[str, Any] = {"conformal": None, "shift": shift, "flags": []}
    flags: list[str] = trust["flags"]
    if conformal and task.has_classes:
        if task.kind == "binary":
            p1 = float(result["probability"])
            probs = np.array([[1.0 - p1, p1]])
        else:
            probs = np.array([[result["class_probabilities"][c] for c in task.classes]])
        labels = cf.class_sets(conformal, probs)[0]
        status = cf.set_status(labels)
        trust["conformal"] = {
            "set": labels,
            "status": status,
            "alpha": conformal["alpha"],
            "p_values": {
                c: float(v)
                for c, v in zip(task.classes, cf.class_p_values(conformal, probs)[0], strict=True)
            },
        }
        if status == "uncertain":
            flags.append(
                f"uncertain: at a {conformal['alpha']:.0%} error rate the model cannot rule "
                f"out {' or '.join(labels)}"
            )
        elif status == "atypical":
            flags.append(
                f"atypical: at a {conformal['alpha']:.0%} error rate the slide conforms to "
                "no class the model was trained on"
            )
    elif conformal and task.kind == "regression":
        half = conformal["half_width"]
        v = float(result["value"])
        trust["conformal"] = {
            "interval": None if half is None else [v - half, v + half],
            "alpha": conformal["alpha"],
            "status": "unbounded" if half is None else "interval",
        }
    if shift and shift.get("status") == "failed":
        flags.append("site shift: " + ", ".join(shift["failed"]))
    call = str(result["decision"])
    if flags and task.has_classes:
        screened = result.get("positive")  # None: no benign class, so no screening call
        if screened is False or screened is None:
            call = "uncertain"  # a flagged negative (or class) call is never shown clean
    trust["call"] = call
    return trust
