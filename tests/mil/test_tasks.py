"""Tasks beyond binary, end to end on real Zarr stores: multiclass (CLAM-MB, per-class
attention), ordinal, survival and regression trained, their metrics checked against a
library computation on the predictions `wsi predict` writes, and bad label files refused
before training.

The stores are features-only stores (``wsi import-h5`` of synthetic features, as in
``test_train.py``): lesion tiles are shifted along one direction per class, so what each
slide holds is known. The benchmark on slides is ``tools/bench_mil.py --task``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.mil.test_train import ENC, _write_h5
from wsi.errors import ConfigError
from wsi.mil.data import read_labels
from wsi.mil.predict import load_model, predict_store
from wsi.mil.splits import TEST, read_splits
from wsi.mil.train import TrainConfig, train_model
from wsi.store import open_store, prediction_keys, store_path

D = 16
CLASSES = ("normal", "type_a", "type_b", "type_c")
FAST = {
    "folds": 3,
    "test_fraction": 0.25,
    "epochs": 12,
    "patience": 12,
    "lr": 2e-3,
    "hparams": {"hidden": 32, "attn_dim": 16},
}


def _stores(root: Path, slides: list[tuple[str, str, int, float]], seed: int) -> Path:
    """Features-only stores: per slide (id, patient, lesion class 0..3, lesion fraction)."""
    from wsi.h5io import import_h5

    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.normal(size=(D, D)))[0][:3] * 3.0
    (root / "h5").mkdir(parents=True, exist_ok=True)
    for sid, _, cls, frac in slides:
        n = int(rng.integers(24, 40))
        feats = rng.normal(size=(n, D))
        if cls > 0:
            k = max(1, int(round(frac * n)))
            feats[rng.choice(n, k, replace=False)] += directions[cls - 1]
        _write_h5(root / "h5" / f"{sid}.h5", feats, "a" * 64)
        import_h5(root / "h5" / f"{sid}.h5", ENC, root / "stores")
    return root / "stores"


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def class_cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(1)
    slides = []
    for p in range(40):
        cls = p % 4
        for s in range(1 + (p % 3 == 0)):  # some patients have two slides
            slides.append((f"P{p:02d}_S{s}", f"P{p:02d}", cls, float(rng.uniform(0.2, 0.4))))
    _stores(root, slides, seed=1)
    _write_csv(
        root / "labels.csv",
        ["slide_id", "patient_id", "label"],
        [(s, p, CLASSES[c]) for s, p, c, _ in slides],
    )
    grades = [(s, p, f"grade_{c}") for s, p, c, _ in slides]
    _write_csv(root / "grades.csv", ["slide_id", "patient_id", "label"], grades)
    return root


def _test_predictions(model_dir: Path, stores: Path, labels: Path) -> dict[str, dict]:
    table = read_labels(labels, **_task_of(model_dir))
    splits = read_splits(model_dir / "splits.csv", table)
    model = load_model(model_dir)
    test = [s for s, part in splits.part.items() if part == TEST]
    assert test
    return {s: predict_store(store_path(stores, s), model) for s in test}


def _task_of(model_dir: Path) -> dict:
    task = json.loads((model_dir / "model.json").read_text())["task"]
    return {
        "kind": task["kind"],
        "classes": task["classes"] or None,
        "time_unit": task["time_unit"],
    }


def test_multiclass_clam_mb_end_to_end(class_cohort):
    from sklearn.metrics import roc_auc_score

    model_dir = train_model(
        class_cohort / "stores",
        class_cohort / "labels.csv",
        class_cohort / "mc",
        TrainConfig(model="clam_mb", **FAST),
        encoder=ENC,
    )
    card = json.loads((model_dir / "model.json").read_text())
    assert card["task"]["kind"] == "multiclass" and card["task"]["classes"] == list(CLASSES)
    assert card["task"]["negative"] == "normal" and card["n_outputs"] == 4
    assert card["operating_point"]["target_sensitivity"] == 0.95
    assert card["calibration"]["temperature"] > 0
    for png in ("confusion.png", "reliability.png"):
        assert (model_dir / png).stat().st_size > 1000
    metrics = json.loads((model_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert test["macro_auroc"] >= 0.85, test
    assert test["macro_auroc_ci95"][0] <= test["macro_auroc"] <= test["macro_auroc_ci95"][1]
    assert sum(map(sum, test["confusion"])) == test["n"]
    assert set(test["per_class"]) == set(CLASSES) and "kappa_quadratic" not in test

    preds = _test_predictions(model_dir, class_cohort / "stores", class_cohort / "labels.csv")
    truth = {r.slide_id: r.y for r in read_labels(class_cohort / "labels.csv").rows}
    ids = sorted(preds)
    probs = np.array([[preds[s]["class_probabilities"][c] for c in CLASSES] for s in ids])
    y = np.array([truth[s] for s in ids])
    # the metrics are those of what `predict` writes: the fold ensemble of the test slides
    assert roc_auc_score(y, probs, multi_class="ovr") == pytest.approx(test["macro_auroc"], 1e-5)
    for s in ids:
        pred = preds[s]
        assert pred["positive"] == (pred["log_odds"] >= pred["threshold_log_odds"])
        assert (pred["decision"] == "normal") == (not pred["positive"])
        assert pred["probability"] == pytest.approx(1 - pred["class_probabilities"]["normal"])
        group = open_store(store_path(class_cohort / "stores", s))
        per_class = np.asarray(group[prediction_keys(model_dir.name).attention_classes][:])
        assert per_class.shape[1] == 4 and np.allclose(per_class.sum(axis=0), 1, atol=1e-4)


def test_ordinal_grades_report_kappa(class_cohort):
    config = TrainConfig(model="abmil", ordinal=True, **{**FAST, "epochs": 4})
    model_dir = train_model(
        class_cohort / "stores",
        class_cohort / "grades.csv",
        class_cohort / "ord",
        config,
        encoder=ENC,
    )
    card = json.loads((model_dir / "model.json").read_text())
    assert card["task"]["kind"] == "ordinal"  # classes ordered by their trailing number
    assert card["task"]["classes"] == [f"grade_{k}" for k in range(4)]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert -1 <= metrics["test"]["kappa_quadratic"] <= 1


def _survival_slides(rng: np.random.Generator, patients: int) -> tuple[list, dict[str, float]]:
    slides, hazard = [], {}
    for p in range(patients):
        burden = float(rng.uniform(0.1, 0.5)) if p % 3 else 0.0
        pid = f"P{p:02d}"
        hazard[pid] = 0.02 * np.exp(6.0 * burden)
        slides.append((f"{pid}_S0", pid, 1 if burden else 0, burden))
    return slides, hazard


@pytest.fixture(scope="module")
def survival_cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("survival")
    rng = np.random.default_rng(2)
    slides, hazard = _survival_slides(rng, 48)
    _stores(root, slides, seed=2)
    rows = []
    for sid, pid, _, _ in slides:
        t_event = rng.exponential(1 / hazard[pid])
        t_censor = rng.uniform(0, 150)
        rows.append((sid, pid, f"{max(min(t_event, t_censor), 0.1):.2f}", int(t_event <= t_censor)))
    _write_csv(root / "labels.csv", ["slide_id", "patient_id", "time", "event"], rows)
    (root / "hazard.json").write_text(json.dumps(hazard))
    return root


def test_survival_end_to_end(survival_cohort):
    from sksurv.metrics import concordance_index_censored

    config = TrainConfig(time_unit="months", **FAST)
    model_dir = train_model(
        survival_cohort / "stores",
        survival_cohort / "labels.csv",
        survival_cohort / "surv",
        config,
        encoder=ENC,
    )
    card = json.loads((model_dir / "model.json").read_text())
    assert card["task"]["kind"] == "survival" and card["task"]["time_unit"] == "months"
    assert card["n_outputs"] == len(card["task"]["bins"]) + 1
    assert set(card["risk_groups"]["kaplan_meier"]) <= {"low", "intermediate", "high"}
    metrics = json.loads((model_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert (model_dir / "km.png").stat().st_size > 1000 and 0 <= metrics["logrank_p"] <= 1
    assert test["c_index_harrell"] >= 0.6, test

    preds = _test_predictions(model_dir, survival_cohort / "stores", survival_cohort / "labels.csv")
    rows = {
        r.slide_id: r for r in read_labels(survival_cohort / "labels.csv", time_unit="months").rows
    }
    ids = sorted(preds)
    risk = np.array([preds[s]["risk"] for s in ids])
    c = concordance_index_censored(
        np.array([bool(rows[s].event) for s in ids]), np.array([rows[s].time for s in ids]), risk
    )[0]
    assert c == pytest.approx(test["c_index_harrell"], abs=1e-5)
    # the oracle: the true hazards ranked on the same test patients
    hazard = json.loads((survival_cohort / "hazard.json").read_text())
    oracle = concordance_index_censored(
        np.array([bool(rows[s].event) for s in ids]),
        np.array([rows[s].time for s in ids]),
        np.array([hazard[rows[s].patient_id] for s in ids]),
    )[0]
    assert oracle >= 0.6
    for s in ids:
        curve = np.array(preds[s]["survival"])
        assert np.all(np.diff(curve) <= 1e-9) and 0 <= curve.min() <= curve.max() <= 1
        assert preds[s]["risk_group"] in ("low", "intermediate", "high")


def test_regression_through_the_cli(tmp_path, capsys):
    from scipy.stats import pearsonr

    from pipelines.cli import main

    rng = np.random.default_rng(3)
    slides = [(f"P{p:02d}_S0", f"P{p:02d}", 1, float(rng.uniform(0.05, 0.6))) for p in range(36)]
    stores = _stores(tmp_path, slides, seed=3)
    labels = _write_csv(
        tmp_path / "labels.csv",
        ["slide_id", "patient_id", "target"],
        [(s, p, f"{f + rng.normal(0, 0.01):.4f}") for s, p, _, f in slides],
    )
    out = tmp_path / "reg"
    rc = main(
        [
            "-q",
            "train",
            "--stores",
            str(stores),
            "--labels",
            str(labels),
            "--encoder",
            ENC,
            "--out",
            str(out),
            "--folds",
            "3",
            "--test-fraction",
            "0.25",
            "--epochs",
            "12",
            "--lr",
            "0.002",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test: Pearson r" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["pearson_r"] >= 0.8, metrics["test"]
    assert (out / "scatter.png").stat().st_size > 1000
    preds = _test_predictions(out, stores, labels)
    targets = {r.slide_id: r.target for r in read_labels(labels).rows}
    ids = sorted(preds)
    r = pearsonr([targets[s] for s in ids], [preds[s]["value"] for s in ids])[0]
    assert r == pytest.approx(metrics["test"]["pearson_r"], abs=1e-5)
    assert all(preds[s]["value_std"] >= 0 and len(preds[s]["fold_values"]) == 3 for s in ids)
    rc = main(["-q", "predict", str(store_path(stores, ids[0])), "--model", str(out)])
    assert rc == 0 and "value " in capsys.readouterr().out


# ---------------------------------------------------------------------- bad label files

SURV = ["slide_id", "patient_id", "time", "event"]


@pytest.mark.parametrize(
    ("header", "rows", "task", "match"),
    [
        (
            SURV,
            [("a", "p1", "-3", "1"), ("b", "p2", "5", "0")],
            {"time_unit": "months"},
            r"not above 0 on line\(s\): 2",
        ),
        (
            SURV,
            [("a", "p1", "", "1"), ("b", "p2", "5", "0")],
            {"time_unit": "months"},
            r"time missing.*line\(s\): 2",
        ),
        (
            SURV,
            [("a", "p1", "3", "2"), ("b", "p2", "5", "0")],
            {"time_unit": "months"},
            r"event not 0 or 1 on line\(s\): 2",
        ),
        (SURV, [("a", "p1", "3", "0"), ("b", "p2", "5", "0")], {"time_unit": "months"}, "no event"),
        (SURV, [("a", "p1", "3", "1"), ("b", "p2", "5", "0")], {}, "time_unit"),
        (
            SURV,
            [("a", "p1", "3", "1"), ("b", "p1", "5", "1")],
            {"time_unit": "months"},
            "disagree on the time/event: p1",
        ),
        (
            ["slide_id", "patient_id", "target"],
            [("a", "p1", "0.1"), ("b", "p2", "nan")],
            {},
            r"not a finite number on line\(s\): 3",
        ),
        (["slide_id", "patient_id", "label", "target"], [("a", "p1", "x", "0.1")], {}, "--task"),
        (
            ["slide_id", "patient_id", "label"],
            [("a", "p1", "x"), ("b", "p2", "y")],
            {"kind": "multiclass", "classes": ("x", "y", "z")},
            r"\['z'\] of `classes:`",
        ),
        (
            ["slide_id", "patient_id", "label"],
            [("a", "p1", "x"), ("b", "p2", "w")],
            {"kind": "multiclass", "classes": ("x", "y")},
            r"not in `classes:`: 'w' \(line 3\)",
        ),
        (
            ["slide_id", "patient_id", "label"],
            [("a", "p1", "low"), ("b", "p2", "high"), ("c", "p3", "mid")],
            {"ordinal": True},
            "list them in order with `classes:`",
        ),
        (["slide_id", "patient_id"], [("a", "p1")], {}, "no task column"),
    ],
)
def test_bad_label_files_name_the_file_the_line_and_the_fix(tmp_path, header, rows, task, match):
    labels = _write_csv(tmp_path / "labels.csv", header, rows)
    with pytest.raises(ConfigError, match=match) as err:
        read_labels(labels, **task)
    assert "labels.csv" in str(err.value) or "classes" in str(err.value)


def test_a_class_with_fewer_patients_than_folds_is_named_before_training(class_cohort, tmp_path):
    rows = list(csv.reader(open(class_cohort / "labels.csv")))[1:]
    keep = [r for r in rows if r[2] != "type_c"] + [r for r in rows if r[2] == "type_c"][:2]
    labels = _write_csv(tmp_path / "labels.csv", ["slide_id", "patient_id", "label"], keep)
    with pytest.raises(ConfigError, match="labelled 'type_c'.*fewer than 3 folds"):
        train_model(
            class_cohort / "stores",
            labels,
            tmp_path / "m",
            TrainConfig(folds=3, epochs=1),
            encoder=ENC,
        )
    assert not (tmp_path / "m").exists()


def test_survival_splits_keep_patients_whole_and_spread_events(survival_cohort):
    from wsi.mil.splits import make_splits

    table = read_labels(survival_cohort / "labels.csv", time_unit="months")
    splits = make_splits(table, folds=4, test_fraction=0.25, seed=0)
    by_patient: dict[str, set[str]] = {}
    for r in table.rows:
        by_patient.setdefault(r.patient_id, set()).add(splits.part[r.slide_id])
    assert all(len(parts) == 1 for parts in by_patient.values())
    events = {
        k: sum(r.event for r in table.rows if splits.part[r.slide_id] == str(k)) for k in range(4)
    }
    assert min(events.values()) >= max(events.values()) - 2, events


# ---------------------------------------------------------------------- patient level


def test_patient_level_bags_train_predict_and_split_attention_per_slide(tmp_path, capsys):
    """Labels per patient, lesion in one of a tumour patient's two or three slides: one bag
    per patient; metrics per patient; each slide's heatmap keeps its own attention."""
    from wsi.mil.predict import predict_patient

    slides, lesion_slide = [], {}
    for p in range(24):
        pid, tumour = f"P{p:02d}", p % 2 == 1
        n = 2 + p % 2
        for s in range(n):
            has = tumour and s == n - 1  # the last slide of a tumour patient holds the lesion
            slides.append((f"{pid}_S{s}", pid, 1 if has else 0, 0.4))
            if has:
                lesion_slide[pid] = f"{pid}_S{s}"
    stores = _stores(tmp_path, slides, seed=4)
    labels = _write_csv(
        tmp_path / "labels.csv",
        ["slide_id", "patient_id", "label"],
        [(s, p, "tumor" if p in lesion_slide else "normal") for s, p, _, _ in slides],
    )
    model_dir = train_model(
        stores, labels, tmp_path / "patients", TrainConfig(level="patient", **FAST), encoder=ENC
    )
    card = json.loads((model_dir / "model.json").read_text())
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert card["data"]["level"] == "patient"
    splits = read_splits(model_dir / "splits.csv", read_labels(labels))
    test_slides = [s for s, part in splits.part.items() if part == TEST]
    test_patients = sorted({s.split("_")[0] for s in test_slides})
    assert metrics["test"]["n"] == len(test_patients) < len(test_slides)  # per patient
    parts: dict[str, set[str]] = {}
    for sid, part in splits.part.items():
        parts.setdefault(sid.split("_")[0], set()).add(part)
    assert all(len(v) == 1 for v in parts.values())  # a patient's slides in one part
    assert metrics["test"]["auroc"] >= 0.8, metrics["test"]

    model = load_model(model_dir)
    pid = next(p for p in test_patients if p in lesion_slide)
    own = sorted(s for s in test_slides if s.startswith(pid))
    result = predict_patient([store_path(stores, s) for s in own], model)
    assert result["patient_slides"] == own and result["tiles"] > 0
    shares = {}
    for sid in own:
        group = open_store(store_path(stores, sid))
        attrs = dict(group[prediction_keys(model.name).stage].attrs)
        assert attrs["probability"] == result["probability"]
        att = np.asarray(group[prediction_keys(model.name).attention_mean][:])
        assert att.sum() == pytest.approx(1, abs=1e-4)
        shares[sid] = attrs["attention_share"]
    assert sum(shares.values()) == pytest.approx(1, abs=1e-4)
    assert max(shares, key=shares.__getitem__) == lesion_slide[pid]
    again = predict_patient([store_path(stores, s) for s in own], model)  # kept, not redone
    assert again == result
    from wsi.reports import ReportOptions, report

    shown = report([store_path(stores, own[0])], model, tmp_path / "reports",
                   ReportOptions(pdf=False))  # fmt: skip
    html = shown.slides[0].html.read_text()
    assert "A patient-level call" in html and all(s in html for s in own)
    # the CLI groups the stores by patient given a slide -> patient file
    from pipelines.cli import main

    other = next(p for p in test_patients if p not in lesion_slide)
    given = [str(store_path(stores, s)) for s in test_slides if s.split("_")[0] == other]
    rc = main(["-q", "predict", *given, "--model", str(model_dir), "--patients", str(labels)])
    assert rc == 0
    probs = {
        dict(open_store(g)[prediction_keys(model.name).stage].attrs)["probability"] for g in given
    }
    assert len(given) >= 2 and len(probs) == 1  # one bag, one result for every slide


def test_patient_level_needs_one_target_per_patient(tmp_path):
    rows = [("a", "p1", "0.1"), ("b", "p1", "0.2"), ("c", "p2", "0.3")]
    labels = _write_csv(tmp_path / "labels.csv", ["slide_id", "patient_id", "target"], rows)
    slides = [(s, p, 1, 0.2) for s, p, _ in rows]
    stores = _stores(tmp_path, slides, seed=5)
    with pytest.raises(ConfigError, match="patient p1's slides have different targets"):
        train_model(
            stores, labels, tmp_path / "m", TrainConfig(level="patient", folds=2), encoder=ENC
        )
