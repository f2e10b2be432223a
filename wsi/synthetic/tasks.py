"""The prediction tasks a synthetic cohort can be labelled for, and their label truth.

A cohort's ``task`` decides what ``labels.csv`` holds (see :mod:`wsi.synthetic.cohort`):

* ``binary``: ``slide_id,patient_id,label``, label ``tumor`` / ``normal`` per patient;
* ``multiclass``: ``slide_id,patient_id,label``, label ``normal`` or one of
  :data:`MULTICLASS_LABELS`' lesion classes per patient; lesion class ``k`` (1-based)
  is painted with lesion texture set ``k - 1`` only;
* ``ordinal``: ``slide_id,patient_id,label``, label ``grade_0`` (normal, no lesion) to
  ``grade_3`` per patient; grade ``k`` uses lesion texture set ``k - 1`` and the
  ``k``-th of three increasing thirds of the lesion-fraction range;
* ``survival``: ``slide_id,patient_id,time,event`` per patient (:func:`draw_survival`);
* ``regression``: ``slide_id,patient_id,target`` per slide: the slide's true lesion
  fraction of its tissue plus Gaussian noise (sd :data:`REGRESSION_NOISE_SD`).

Survival truth.  A patient's hazard (per month) is
``h = SURVIVAL_H0 * exp(b1 * burden + SURVIVAL_LOG_HR_LESION * is_lesion)`` where
``burden`` is the mean true lesion fraction of the patient's slides (0 for normal
patients) and ``b1 = SURVIVAL_LOG_HR_BURDEN / high`` (``high``: upper end of the
cohort's lesion-fraction range), so that a lesion patient at the upper end of the range
has ``exp(log(4) + log(1.5)) = 6`` times the hazard of a normal patient whatever the
range.  Event times are exponential with that hazard; censoring times are independent
of them, uniform on ``[0, c_max]`` with ``c_max`` chosen so that the expected censored
fraction of the cohort is :data:`SURVIVAL_CENSORED_FRACTION`.

Nothing here writes a file; ``numpy`` is imported inside the functions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from wsi.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

__all__ = [
    "CLASS_TASKS",
    "LESION_CLASSES",
    "MULTICLASS_LABELS",
    "ORDINAL_LABELS",
    "REGRESSION_NOISE_SD",
    "SURVIVAL_CENSORED_FRACTION",
    "SURVIVAL_H0",
    "SURVIVAL_LOG_HR_BURDEN",
    "SURVIVAL_LOG_HR_LESION",
    "TASKS",
    "check_task",
    "class_labels",
    "draw_survival",
    "grade_range",
    "label_columns",
    "label_rows",
    "label_rule",
    "survival_patients",
    "task_params",
]

#: The tasks :func:`wsi.synthetic.make_cohort` can label a cohort for.
TASKS = ("binary", "multiclass", "ordinal", "survival", "regression")
#: Tasks whose lesion patients fall into :data:`LESION_CLASSES` classes, one lesion
#: texture set each.
CLASS_TASKS = ("multiclass", "ordinal")
#: Lesion classes of the class tasks (one per lesion texture set).
LESION_CLASSES = 3
#: Labels of the class tasks, index = class (0: normal, k: lesion class k, texture set k-1).
MULTICLASS_LABELS = ("normal", "type_a", "type_b", "type_c")
ORDINAL_LABELS = ("grade_0", "grade_1", "grade_2", "grade_3")
#: Standard deviation of the Gaussian noise added to regression targets.
REGRESSION_NOISE_SD = 0.005
#: Baseline hazard per month (a normal patient's median survival is 60 months).
SURVIVAL_H0 = math.log(2.0) / 60.0
#: Log hazard ratio of a lesion patient at the upper end of the lesion-fraction range
#: versus burden 0 (the burden term), and of having a lesion at all.
SURVIVAL_LOG_HR_BURDEN = math.log(4.0)
SURVIVAL_LOG_HR_LESION = math.log(1.5)
#: Expected fraction of censored patients.
SURVIVAL_CENSORED_FRACTION = 0.30

_LABEL_COLUMNS = {
    "binary": ("label",),
    "multiclass": ("label",),
    "ordinal": ("label",),
    "survival": ("time", "event"),
    "regression": ("target",),
}
_LABEL_RULES = {
    "binary": "per patient: every slide of a patient carries the patient's label; "
    "tumor slides hold 1-3 lesions, normal slides none",
    "multiclass": "per patient: label normal (no lesion) or type_a/type_b/type_c; every "
    "slide of a type_k patient holds 1-3 lesions painted with lesion texture set k only "
    "(type_a: set 0, type_b: set 1, type_c: set 2); normal slides none",
    "ordinal": "per patient: grade_0 (normal, no lesion) to grade_3; every slide of a "
    "grade_k patient (k >= 1) holds 1-3 lesions painted with lesion texture set k-1 "
    "covering a fraction of the tissue in the k-th third of lesion_fraction",
    "survival": "per patient: time (months) and event (1 event, 0 censored); hazard "
    "h0*exp(b1*burden + b2*is_lesion), burden the mean lesion fraction of the patient's "
    "slides; tumor patients' slides hold 1-3 lesions, normal none; truth in truth.csv",
    "regression": "per slide: target = the slide's lesion fraction of its tissue plus "
    f"Gaussian noise (sd {REGRESSION_NOISE_SD:g}); tumor patients' slides hold 1-3 lesions, "
    "normal none",
}


def check_task(task: Any) -> str:
    """``task`` if it is one of :data:`TASKS`, else :class:`ConfigError` naming them."""
    if not isinstance(task, str) or task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return task


def label_columns(task: str) -> tuple[str, ...]:
    """The columns of ``labels.csv`` after ``slide_id,patient_id``."""
    return _LABEL_COLUMNS[task]


def label_rule(task: str) -> str:
    """How the labels of a ``task`` cohort are made, in words (for the manifest)."""
    return _LABEL_RULES[task]


def class_labels(task: str) -> tuple[str, ...]:
    """The class labels of a class task, index = class (0: normal)."""
    return MULTICLASS_LABELS if task == "multiclass" else ORDINAL_LABELS


def grade_range(fraction_range: tuple[float, float], k: int) -> tuple[float, float]:
    """The ``k``-th (1-based) of three increasing thirds of ``fraction_range``: the
    lesion fraction range of ordinal grade ``k``."""
    lo, hi = fraction_range
    step = (hi - lo) / LESION_CLASSES
    return (lo + (k - 1) * step, hi if k == LESION_CLASSES else lo + k * step)


def task_params(task: str, fraction_range: tuple[float, float]) -> dict[str, Any]:
    """The task's part of the cohort parameters (empty for ``binary``, whose parameter
    hash predates tasks)."""
    if task == "binary":
        return {}
    extra: dict[str, Any] = {"task": task}
    if task == "ordinal":
        extra["grade_ranges"] = [
            list(grade_range(fraction_range, k)) for k in range(1, LESION_CLASSES + 1)
        ]
    elif task == "survival":
        extra["survival"] = {
            "h0_per_month": SURVIVAL_H0,
            "log_hr_burden_at_high": SURVIVAL_LOG_HR_BURDEN,
            "log_hr_lesion": SURVIVAL_LOG_HR_LESION,
            "censored_fraction": SURVIVAL_CENSORED_FRACTION,
        }
    elif task == "regression":
        extra["regression_noise_sd"] = REGRESSION_NOISE_SD
    return extra


# --------------------------------------------------------------------------- #
# survival
# --------------------------------------------------------------------------- #


def _expected_censored(hazard: np.ndarray, c_max: float) -> float:
    """Expected censored fraction with censoring uniform on ``[0, c_max]``:
    the mean over patients of ``P(C < T) = (1 - exp(-h c)) / (h c)``."""
    import numpy as np

    hc = hazard * c_max
    return float(np.mean(-np.expm1(-hc) / hc))


def censoring_scale(hazard: np.ndarray, censored_fraction: float) -> float:
    """``c_max`` (months) such that censoring uniform on ``[0, c_max]`` censors
    ``censored_fraction`` of patients with these hazards, in expectation (bisection
    on the log scale: the expected fraction falls from 1 to 0 as ``c_max`` grows)."""
    import numpy as np

    lo, hi = math.log(1e-3 / float(np.max(hazard))), math.log(1e4 / float(np.min(hazard)))
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _expected_censored(hazard, math.exp(mid)) > censored_fraction:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def draw_survival(
    rng: np.random.Generator,
    burden: Any,
    is_lesion: Any,
    *,
    fraction_high: float,
    censored_fraction: float = SURVIVAL_CENSORED_FRACTION,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True hazards and observed (time, event) of patients (see module doc).

    Args:
        rng: Draws the event and censoring times.
        burden: ``(N,)`` mean true lesion fraction of each patient's slides (0 for
            normal patients).
        is_lesion: ``(N,)`` whether each patient has lesions.
        fraction_high: Upper end of the cohort's lesion-fraction range (scales the
            burden term, so the hazard ratio does not depend on the range).
        censored_fraction: Expected fraction of censored patients, in (0, 1).

    Returns:
        ``hazard`` (per month, float64), ``time`` (months, rounded to 0.01, >= 0.01)
        and ``event`` (int64: 1 event observed, 0 censored), each ``(N,)``.
    """
    import numpy as np

    b = np.asarray(burden, dtype=np.float64).reshape(-1)
    les = np.asarray(is_lesion, dtype=bool).reshape(-1)
    if b.shape != les.shape or b.size == 0:
        raise ConfigError(f"burden and is_lesion must be equal non-empty 1-D, got {b.shape}")
    if not (fraction_high > 0 and 0 < censored_fraction < 1):
        raise ConfigError(
            f"fraction_high must be > 0 and censored_fraction in (0, 1), got "
            f"{fraction_high!r}, {censored_fraction!r}"
        )
    b1 = SURVIVAL_LOG_HR_BURDEN / fraction_high
    hazard = SURVIVAL_H0 * np.exp(b1 * b + SURVIVAL_LOG_HR_LESION * les)
    t_event = rng.exponential(1.0 / hazard)
    t_censor = rng.uniform(0.0, censoring_scale(hazard, censored_fraction), size=b.size)
    event = (t_event <= t_censor).astype(np.int64)
    time = np.maximum(np.round(np.minimum(t_event, t_censor), 2), 0.01)
    return hazard, time, event


def survival_patients(
    rng: np.random.Generator, records: list[dict[str, Any]], fraction_high: float
) -> list[dict[str, Any]]:
    """Per patient (in patient-id order): ``patient_id``, ``burden`` (mean
    ``lesion_fraction`` of its slide ``records``), ``is_lesion``, true ``hazard`` per
    month, and the drawn ``time`` (months) and ``event`` (:func:`draw_survival`)."""
    import numpy as np

    fractions: dict[str, list[float]] = {}
    lesion: dict[str, bool] = {}
    for rec in records:
        pid = str(rec["patient_id"])
        fractions.setdefault(pid, []).append(float(rec["lesion_fraction"]))
        lesion[pid] = lesion.get(pid, False) or int(rec["n_lesions"]) > 0
    pids = sorted(fractions)
    burden = np.array([np.mean(fractions[p]) if lesion[p] else 0.0 for p in pids])
    is_lesion = np.array([lesion[p] for p in pids], dtype=bool)
    hazard, time, event = draw_survival(rng, burden, is_lesion, fraction_high=fraction_high)
    return [
        {
            "patient_id": p,
            "burden": round(float(burden[i]), 6),
            "is_lesion": bool(is_lesion[i]),
            "hazard": round(float(hazard[i]), 8),
            "time": float(time[i]),
            "event": int(event[i]),
        }
        for i, p in enumerate(pids)
    ]


def label_rows(
    task: str, records: list[dict[str, Any]], patients: list[dict[str, Any]] | None = None
) -> list[list[Any]]:
    """The rows of ``labels.csv``, header first, one per slide record (``patients``:
    the :func:`survival_patients` table, for ``survival``)."""
    rows: list[list[Any]] = [["slide_id", "patient_id", *label_columns(task)]]
    by_patient = {p["patient_id"]: p for p in patients or []}
    for rec in records:
        head = [rec["slide_id"], rec["patient_id"]]
        if task == "survival":
            p = by_patient[rec["patient_id"]]
            rows.append([*head, f"{p['time']:.2f}", p["event"]])
        elif task == "regression":
            rows.append([*head, f"{rec['target']:.6f}"])
        else:
            rows.append([*head, rec["label"]])
    return rows
