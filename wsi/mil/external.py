"""A trained model on new labelled slides (an external cohort): its task's metrics with its
own operating point, calibration and risk-group cuts, nothing refitted.

``evaluate_model`` checks the labels against the MODEL's task (its classes, its time unit),
predicts each store (a prediction of the same model on the same features already in the
store is reused: :func:`wsi.mil.predict.predict_store`), and writes into the output folder:

    metrics.json      what ``wsi train`` writes per part, for the part ``external``, with
                      the model, the counts (n, failed, missing) and what was not refitted
    predictions.csv   one row per labelled slide: slide_id, patient_id, status (ok, failed,
                      missing), truth, the task's prediction fields, error
    roc.png, reliability.png          binary
    confusion.png, reliability.png    multiclass, ordinal
    km.png                            survival: the model's risk groups, log-rank p
    scatter.png                       regression

A store that fails (no features, features of other weights) is listed with its error and
left out of the metrics; the run goes on. Metrics are per slide: a patient with several
slides counts once per slide (``"level": "slide"``); a model trained per patient
(``level: patient``) is evaluated per patient, on the tiles of its slides given. Every
file is written atomically and only over wsi's own earlier outputs (:mod:`wsi.outputs`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi.errors import ConfigError, WsiError
from wsi.mil import task_metrics as tm
from wsi.mil.calibration import expit
from wsi.mil.data import LabelTable, SlideLabel, read_labels
from wsi.mil.evaluate import _clean, evaluate, plot_reliability, plot_roc
from wsi.mil.predict import TrainedModel, load_model, predict_store
from wsi.mil.tasks import Task
from wsi.outputs import check_output, output_error, output_path, write_output

__all__ = ["evaluate_model", "PLOTS"]

log = logging.getLogger(__name__)

#: the plots of each task kind
PLOTS = {
    "binary": ("roc.png", "reliability.png"),
    "multiclass": ("confusion.png", "reliability.png"),
    "ordinal": ("confusion.png", "reliability.png"),
    "survival": ("km.png",),
    "regression": ("scatter.png",),
}
_PART = "external"
_SHOWN = 5


def evaluate_model(
    stores: Sequence[str | os.PathLike[str]],
    labels: str | os.PathLike[str],
    model: str | os.PathLike[str] | TrainedModel,
    out: str | os.PathLike[str],
    *,
    time_unit: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Evaluate ``model`` on the labelled slides of ``stores``; write the metrics, the
    per-slide predictions and the task's plots into ``out``.

    Nothing is refitted: binary and class models keep their temperatures and operating
    point, survival models their risk-group cuts. For Uno's C, the time-dependent AUROC
    and the Brier score the censoring distribution is the evaluated cohort's own (the
    model keeps none of its training cohort's); ``metrics.json`` says so.

    Args:
        stores: slide stores (``<slide_id>.zarr``) with features of the model's encoder.
            Stores of unlabelled slides are listed and skipped.
        labels: labels.csv of these slides, in the columns of the model's task.
        model: a model folder written by ``wsi train``, or a loaded ``TrainedModel``.
        out: the output folder (created).
        time_unit: survival: the unit of the labels' ``time`` column; it must be the
            model's (None: the model's).
        overwrite: replace a prediction of another model of this name in a store.

    Returns:
        ``out``, holding ``metrics.json`` (``n``, ``failed``, ``missing``, ``level``,
        ``operating_point``, ``external``: the task's metrics), ``predictions.csv`` and
        the task's plots (``PLOTS``).

    Raises:
        ConfigError: the model cannot be loaded; the labels do not fit its task (a label
            not among its classes, named with its line; a survival file in another time
            unit); two stores of one slide.
        OutputExistsError: a file wsi did not write is in the way in ``out``.
        OutputError: ``out`` cannot be written (full, read-only).

    Example::

        out = evaluate_model(sorted(Path("site_b").glob("*.zarr")), "site_b.csv",
                             "models/abmil", "eval/site_b")
        json.loads((out / "metrics.json").read_text())["external"]["auroc"]
    """
    trained = model if isinstance(model, TrainedModel) else load_model(model)
    task = trained.task
    table = _read_labels(Path(labels), trained, time_unit)
    given = _store_ids(stores)
    out_dir = Path(out)
    names = ("metrics.json", "predictions.csv", *PLOTS[task.kind])
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(out_dir, err) from err
    for name in names:  # before any work: a file in the way stops the run now
        check_output(out_dir / name)

    rows = {r.slide_id: r for r in table.rows}
    level = str(trained.card.get("training", {}).get("level") or "slide")
    preds, failed = _predict(trained, level, rows, given, overwrite)
    ok = [r for r in table.rows if r.slide_id in preds]  # the labels file's order
    if level == "patient":  # one case per patient: its first slide's row
        firsts: dict[str, SlideLabel] = {}
        for r in ok:
            firsts.setdefault(r.patient_id, r)
        ok = list(firsts.values())
    missing = [r.slide_id for r in table.rows if r.slide_id not in given]
    unlabelled = [sid for sid in given if sid not in rows]
    if missing:
        log.warning("%d labelled slide(s) have no store given: %s", len(missing), missing[:5])

    result: dict[str, Any] = {
        "model": {"name": trained.name, "model_id": trained.card["model_id"]},
        "task": task.as_card(),
        "labels": str(table.path),
        "level": level,
        "level_note": "metrics are per slide: a patient with several slides counts once per slide"
        if level == "slide"
        else "metrics are per patient: the model scores the tiles of all its slides as one bag",
        "n": len(ok),
        "n_patients": len({r.patient_id for r in ok}),
        "n_labelled": len(table.rows),
        "failed": [{"slide_id": s, "error": e} for s, e in failed.items()],
        "missing": missing,
        "unlabelled": unlabelled,
        "refitted": "nothing: the model's own calibration, operating point and risk-group cuts",
    }
    # the model's own values, as its card holds them (not rounded again)
    card_values = {
        "operating_point": trained.card.get("operating_point"),
        "model_metrics": trained.card.get("metrics"),
    }
    files: dict[str, Callable[[Path], Any]] = {}
    try:
        part, files = _score(task, trained, ok, preds, result)
        result[_PART] = part
    except ValueError as err:  # too few slides, or no event, among those that worked
        result[_PART] = None
        result["not_computed"] = f"the {len(ok)} slide(s) evaluated give no metrics: {err}"
        log.error("%s", result["not_computed"])
    if ok:
        result["trust"] = _trust_summary(task, trained, ok, preds)
    result["plots"] = sorted(files)
    if "risk_groups" in result:  # the model card's cuts, verbatim
        card_values["risk_groups"] = result.pop("risk_groups")
    try:
        for name, draw in files.items():
            with output_path(out_dir / name) as tmp:
                draw(tmp)
        write_output(out_dir / "predictions.csv", _predictions_csv(task, table, preds, failed))
        text = json.dumps({**_clean(result), **card_values}, indent=2, default=str)
        write_output(out_dir / "metrics.json", text + "\n")
    except OSError as err:
        if isinstance(err, WsiError):
            raise
        raise output_error(out_dir, err) from err
    log.info("%s evaluated on %d slide(s) into %s", trained.name, len(ok), out_dir)
    return out_dir


# ---------------------------------------------------------------------- trust


def _trust_summary(
    task: Task, model: TrainedModel, rows: list[SlideLabel], preds: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """How the model's trust checks did on this cohort: conformal coverage, the slides
    flagged by the shift check, the batch test, and (screening tasks) the missed
    positives a flag did not catch."""
    from wsi.mil import conformal as cf
    from wsi.mil.shift import check_batch

    trusts = [preds[r.slide_id].get("trust") or {} for r in rows]
    out: dict[str, Any] = {}
    maybe = [(t.get("conformal") or {}).get("set") for t in trusts]
    sets: list[list[str]] = [s for s in maybe if s is not None]
    if task.has_classes and len(sets) == len(maybe):
        statuses = [cf.set_status(s) for s in sets]
        out["conformal"] = {
            "coverage": cf.coverage(sets, [r.label for r in rows]),
            "nominal": 1.0 - float(model.card["conformal"]["alpha"]),
            "uncertain": statuses.count("uncertain"),
            "atypical": statuses.count("atypical"),
            "n": len(rows),
        }
    elif task.kind == "regression":
        given = [(t.get("conformal") or {}).get("interval") for t in trusts]
        intervals: list[list[float]] = [i for i in given if i is not None]
        if len(intervals) == len(given):
            truth = [float(r.target if r.target is not None else np.nan) for r in rows]
            inside = [lo <= t <= hi for t, (lo, hi) in zip(truth, intervals, strict=True)]
            out["conformal"] = {"coverage": float(np.mean(inside)), "n": len(rows)}
    checks: list[dict[str, Any]] = [t["shift"] for t in trusts if t.get("shift")]
    out["shift"] = {
        "flagged": sum(c.get("status") == "failed" for c in checks),
        "not_checked": sum(c.get("status") == "not checked" for c in checks),
        "n": len(rows),
        "batch": check_batch(model.card.get("shift"), checks),
    }
    negative = task.classes[0] if task.kind == "binary" else task.negative
    if task.has_classes and negative is not None:
        missed = [
            (r, preds[r.slide_id])
            for r in rows
            if r.label != negative and preds[r.slide_id].get("positive") is False
        ]
        clean = [r.slide_id for r, p in missed if p.get("call", p["decision"]) != "uncertain"]
        out["false_negatives"] = len(missed)
        out["unflagged_false_negatives"] = len(clean)
        out["unflagged_false_negative_slides"] = clean
    return out


# ---------------------------------------------------------------------- inputs


def _store_ids(stores: Sequence[str | os.PathLike[str]]) -> dict[str, Path]:
    """Each store by its slide id (the folder's name without ``.zarr``)."""
    given: dict[str, Path] = {}
    for s in stores:
        p = Path(s)
        sid = p.name.removesuffix(".zarr")
        if sid in given and given[sid] != p:
            raise ConfigError(
                f"two stores of the slide {sid!r}: {given[sid]} and {p}. Give one of them."
            )
        given[sid] = p
    return given


def _predict(
    model: TrainedModel,
    level: str,
    rows: dict[str, SlideLabel],
    given: dict[str, Path],
    overwrite: bool,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Each labelled store's prediction (a patient-level model: its patient's, from the
    patient's stores given, as one bag), or its error."""
    units: dict[str, list[str]] = {}
    for sid in given:
        if sid in rows:
            units.setdefault(rows[sid].patient_id if level == "patient" else sid, []).append(sid)
    preds: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for sids in units.values():
        try:
            if level == "patient":
                from wsi.mil.predict import predict_patient

                pred = predict_patient([given[s] for s in sids], model, overwrite=overwrite)
            else:
                pred = predict_store(given[sids[0]], model, overwrite=overwrite)
        except (WsiError, OSError) as err:  # one bad store never stops the cohort
            log.error("%s", err)
            failed.update({s: str(err) for s in sids})
            continue
        preds.update({s: pred for s in sids})
    return preds, failed


def _read_labels(path: Path, model: TrainedModel, time_unit: str | None) -> LabelTable:
    """labels.csv read as the model's task: its kind, classes, benign class, time unit."""
    task = model.task
    if task.kind == "survival":
        if time_unit is not None and time_unit != task.time_unit:
            raise ConfigError(
                f"{path}: times in {time_unit}, but the model {model.name!r} predicts in "
                f"{task.time_unit}. Convert the time column to {task.time_unit}."
            )
        return read_labels(path, kind="survival", time_unit=task.time_unit,
                           horizons=task.horizons)  # fmt: skip
    if not task.has_classes:
        return read_labels(path, kind=task.kind)
    negative = None if task.kind == "binary" else task.negative
    return read_labels(path, positive=task.positive, kind=task.kind, classes=task.classes,
                       negative_class=negative, known=True)  # fmt: skip


# ---------------------------------------------------------------------- metrics


def _score(
    task: Task,
    model: TrainedModel,
    rows: list[SlideLabel],
    preds: dict[str, dict[str, Any]],
    result: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Callable[[Path], Any]]]:
    """The task's metrics of ``rows`` and the plots to draw (file name -> drawer)."""
    if not rows:
        raise ValueError("no slide was predicted")
    p = [preds[r.slide_id] for r in rows]
    if task.has_classes:
        y = np.array([task.classes.index(r.label) for r in rows])
        if task.kind == "binary":
            return _score_binary(task, model, rows, y, p, result)
        return _score_classes(task, model, y, p, result)
    if task.kind == "survival":
        return _score_survival(task, model, rows, p, result)
    target = np.array([r.target for r in rows], dtype=np.float64)
    value = np.array([q["value"] for q in p], dtype=np.float64)
    part = tm.regression_metrics(target, value)
    return part, {"scatter.png": lambda f: tm.plot_scatter(target, value, f, label="target")}


def _score_binary(
    task: Task,
    model: TrainedModel,
    rows: list[SlideLabel],
    y: np.ndarray,
    p: list[dict[str, Any]],
    result: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Callable[[Path], Any]]]:
    op = model.card["operating_point"]
    threshold = float(op["threshold_log_odds"])
    score = np.array([q["log_odds"] for q in p], dtype=np.float64)
    groups = [r.group for r in rows]
    part = evaluate(y, score, threshold, youden=op.get("youden_threshold_log_odds"),
                    groups=groups if any(groups) else None)  # fmt: skip
    result["calibration"] = (
        "the model's temperature (not refitted): the ECE is of its calibrated probabilities"
    )
    return part, {
        "roc.png": lambda f: plot_roc({"external cohort": (y, score)}, f, threshold),
        "reliability.png": lambda f: plot_reliability(y, None, expit(score), f),
    }


def _score_classes(
    task: Task,
    model: TrainedModel,
    y: np.ndarray,
    p: list[dict[str, Any]],
    result: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Callable[[Path], Any]]]:
    classes = list(task.classes)
    probs = np.array([[q["class_probabilities"][c] for c in classes] for q in p])
    op = model.card.get("operating_point")
    part = tm.class_metrics(
        y,
        probs,
        classes,
        ordinal=task.kind == "ordinal",
        negative=task.negative_index,
        screen_threshold=op["threshold_log_odds"] if op and task.screens else None,
    )
    temperature = model.card.get("calibration", {}).get("temperature")
    result["calibration"] = f"the model's temperature {temperature} (not refitted)"
    cm = np.asarray(part["confusion"])
    return part, {
        "confusion.png": lambda f: tm.plot_confusion(cm, classes, f),
        "reliability.png": lambda f: tm.plot_reliability_classwise(y, probs, classes, f),
    }


def _score_survival(
    task: Task,
    model: TrainedModel,
    rows: list[SlideLabel],
    p: list[dict[str, Any]],
    result: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Callable[[Path], Any]]]:
    from wsi.mil.outcomes import survival_calibration

    t = np.array([r.time for r in rows], dtype=np.float64)
    e = np.array([r.event for r in rows], dtype=np.int64)
    risk = np.array([q["risk"] for q in p], dtype=np.float64)
    times = np.asarray(task.bins, dtype=np.float64)
    surv = np.array([q["survival"] for q in p], dtype=np.float64)[:, : len(times)]
    part = tm.survival_metrics(
        t,
        e,
        risk,
        train_time=t,
        train_event=e,
        horizons=list(task.horizons),
        surv=surv if len(times) else None,
        surv_times=times if len(times) else None,
    )
    part["censoring_from"] = (
        "the evaluated cohort's own times (Kaplan-Meier): Uno's C, the time-dependent AUROC "
        "and the Brier score need a censoring distribution, and the model keeps none of "
        "its training cohort's"
    )
    groups_card = model.card["risk_groups"]
    names = list(groups_card["names"])
    group = np.array([names.index(q["risk_group"]) for q in p])
    part["calibration_at_horizons"] = survival_calibration(task, t, e, group, surv)
    part["risk_groups"] = {name: int((group == g).sum()) for g, name in enumerate(names)}
    result["risk_groups"] = {
        "names": names,
        "cuts": groups_card["cuts"],
        "from": f"the model card ({groups_card.get('from', 'training')}); not refitted",
    }
    unit = task.time_unit or "time"

    def km(f: Path) -> None:
        result["logrank_p"] = tm.plot_km(
            t, e, group, f, group_names=names,
            title=f"external cohort: the model's risk groups (time in {unit})",
        )  # fmt: skip

    result["logrank_p"] = None  # set when km.png is drawn (one log-rank test)
    return part, {"km.png": km}


# ---------------------------------------------------------------------- predictions.csv


_TRUST_FIELDS = ["call", "conformal_set", "shift"]


def _fields(task: Task) -> list[str]:
    """The prediction columns of ``predictions.csv`` per task."""
    if task.kind == "binary":
        return ["probability", "probability_std", "log_odds", "threshold", "positive",
                "decision", *_TRUST_FIELDS]  # fmt: skip
    if task.has_classes:
        fields = ["predicted_class", "decision", *[f"p_{c}" for c in task.classes]]
        fields += ["probability", "log_odds", "positive"] if task.screens else []
        return fields + _TRUST_FIELDS
    if task.kind == "survival":
        return ["risk", "risk_std", "risk_group", "decision", "call", "shift"]
    return ["value", "value_std", "decision", *_TRUST_FIELDS]


def _trust_cell(pred: dict[str, Any], field: str) -> Any:
    trust = pred.get("trust") or {}
    if field == "conformal_set":
        conformal = trust.get("conformal") or {}
        if "set" in conformal:
            return "{" + ", ".join(conformal["set"]) + "}"
        return (
            ""
            if not conformal.get("interval")
            else "{:.4g} to {:.4g}".format(*conformal["interval"])
        )
    if field == "shift":
        shift = trust.get("shift") or {}
        status = shift.get("status", "")
        return f"failed: {', '.join(shift['failed'])}" if status == "failed" else status
    return pred.get("call", pred.get("decision"))


def _predictions_csv(
    task: Task,
    table: LabelTable,
    preds: dict[str, dict[str, Any]],
    failed: dict[str, str],
) -> str:
    """One row per labelled slide, in the labels file's order."""
    truth = ["truth", "time", "event"] if task.kind == "survival" else ["truth"]
    fields = _fields(task)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["slide_id", "patient_id", "status", *truth, *fields, "error"])
    for r in table.rows:
        pred = preds.get(r.slide_id)
        status = "ok" if pred else "failed" if r.slide_id in failed else "missing"
        known = [r.label, r.time, r.event] if task.kind == "survival" else [r.label]
        values: list[Any] = [""] * len(fields)
        if pred:
            probs = pred.get("class_probabilities") or {}
            values = [
                _trust_cell(pred, f) if f in ("call", "conformal_set", "shift")
                else probs[f[2:]] if f.startswith("p_") and f[2:] in probs
                else pred.get(f)
                for f in fields
            ]  # fmt: skip
        writer.writerow([r.slide_id, r.patient_id, status, *known, *values,
                         failed.get(r.slide_id, "")])  # fmt: skip
    return buf.getvalue()
