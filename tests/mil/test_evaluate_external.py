"""`wsi evaluate`: a trained model's metrics on a second cohort (built with another seed),
with the model's own operating point, checked against a library computation on the
``predictions.csv`` it writes; failed and missing slides listed, never fatal; a labels
file the model's task cannot read refused, naming the file and the line.

The stores are features-only stores, as in ``test_train.py`` and ``test_tasks.py``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.mil.test_tasks import CLASSES, ENC, FAST, _stores, _write_csv
from tests.mil.test_train import make_cohort
from wsi import store as st
from wsi.errors import ConfigError, OutputExistsError
from wsi.mil.external import evaluate_model
from wsi.mil.train import TrainConfig, train_model
from wsi.outputs import is_output

QUICK = {**FAST, "epochs": 2, "patience": 2, "test_fraction": 0.0}


def _cohort(root: Path, patients: int, seed: int) -> Path:
    """``make_cohort``'s binary cohort, without its group column (each group adds a
    bootstrap: the time of these tests)."""
    labels = make_cohort(root, patients=patients, seed=seed)
    rows = [r[:3] for r in csv.reader(open(labels))]
    return _write_csv(labels, rows[0], rows[1:])


def _read(out: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "predictions.csv", newline="") as f:
        return metrics, list(csv.DictReader(f))


def _bare_store(root: Path, slide_id: str) -> Path:
    """A store with no features (tiled, never embedded)."""
    path = st.store_path(root, slide_id)
    st.create_store(path, st.new_store_meta(slide_id, {"kind": "test"}))
    return path


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ext_binary")
    train = _cohort(root / "train", patients=18, seed=0)
    model = train_model(root / "train" / "stores", train, root / "model", TrainConfig(**QUICK),
                        encoder=ENC)  # fmt: skip
    labels = _cohort(root / "ext", patients=16, seed=1)
    # a labelled slide whose store has no features, one whose store is not given
    with open(labels, "a", newline="") as f:
        csv.writer(f).writerow(["X00_S0", "X00", "tumor"])
    stores = sorted((root / "ext" / "stores").glob("*.zarr"))
    return {"model": model, "labels": labels, "missing": stores[0],
            "stores": [*stores[1:], _bare_store(root / "bare", "X00_S0")]}  # fmt: skip


def test_binary_metrics_are_those_of_the_predictions_at_the_models_threshold(binary, tmp_path):
    from sklearn.metrics import roc_auc_score

    out = evaluate_model(binary["stores"], binary["labels"], binary["model"], tmp_path / "ev")
    metrics, rows = _read(out)
    card = json.loads((binary["model"] / "model.json").read_text())
    ok = [r for r in rows if r["status"] == "ok"]
    assert metrics["level"] == "slide" and metrics["n"] == len(ok) == len(binary["stores"]) - 1
    assert [f["slide_id"] for f in metrics["failed"]] == ["X00_S0"]
    assert "features" in metrics["failed"][0]["error"]
    assert metrics["missing"] == [binary["missing"].name.removesuffix(".zarr")]
    by_id = {r["slide_id"]: r for r in rows}
    assert by_id["X00_S0"]["status"] == "failed" and by_id["X00_S0"]["error"]
    assert by_id[metrics["missing"][0]]["status"] == "missing"

    ext = metrics["external"]
    y = np.array([r["truth"] == "tumor" for r in ok])
    p = np.array([float(r["probability"]) for r in ok])
    z = np.array([float(r["log_odds"]) for r in ok])
    assert ext["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    # the model's operating point, not one refitted on this cohort
    op = card["operating_point"]
    assert metrics["operating_point"] == op
    assert ext["at_threshold"]["threshold"] == pytest.approx(op["threshold_log_odds"], abs=1e-6)
    called = z >= op["threshold_log_odds"]
    assert ext["at_threshold"]["tp"] == int((called & y).sum())
    assert ext["at_threshold"]["sensitivity"] == pytest.approx((called & y).sum() / y.sum())
    assert ext["at_threshold"]["specificity"] == pytest.approx((~called & ~y).sum() / (~y).sum())
    assert all((r["positive"] == "True") == c for r, c in zip(ok, called, strict=True))
    assert {r["threshold"] for r in ok} == {str(op["threshold"])}
    for name in ("roc.png", "reliability.png", "metrics.json", "predictions.csv"):
        assert is_output(out / name), name
    assert (out / "roc.png").stat().st_size > 1000

    # again into the same folder: wsi's own files are replaced, the predictions reused
    evaluate_model(binary["stores"], binary["labels"], binary["model"], out)
    assert _read(out)[0]["external"] == ext
    # a file wsi did not write is never replaced, and nothing is written beside it
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "roc.png").write_text("mine")
    with pytest.raises(OutputExistsError, match="roc.png"):
        evaluate_model(binary["stores"], binary["labels"], binary["model"], foreign)
    assert (foreign / "roc.png").read_text() == "mine"
    assert not (foreign / "metrics.json").exists()


def test_the_cli_prints_the_metrics_and_the_failures(binary, tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "ev"
    args = ["--labels", str(binary["labels"]), "--model", str(binary["model"]), "--out", str(out)]
    rc = main(["-q", "evaluate", *map(str, binary["stores"]), *args])
    printed = capsys.readouterr().out
    assert rc == 1  # one slide failed
    assert "external: AUROC" in printed and "at the model's probability" in printed
    assert "FAILED  X00_S0" in printed and "1 failed, 1 missing" in printed
    assert f"MISSING {binary['missing'].name.removesuffix('.zarr')}" in printed
    assert str(out) in printed and (out / "metrics.json").exists()


# ---------------------------------------------------------------------- multiclass


def _class_slides(rng: np.random.Generator, patients: int, prefix: str = "P") -> list[tuple]:
    return [(f"{prefix}{p:02d}_S0", f"{prefix}{p:02d}", p % 4, float(rng.uniform(0.2, 0.4)))
            for p in range(patients)]  # fmt: skip


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ext_classes")
    slides = _class_slides(np.random.default_rng(1), 24)
    stores = _stores(root / "train", slides, seed=1)
    labels = _write_csv(root / "train.csv", ["slide_id", "patient_id", "label"],
                        [(s, p, CLASSES[c]) for s, p, c, _ in slides])  # fmt: skip
    model = train_model(stores, labels, root / "model", TrainConfig(**QUICK), encoder=ENC)
    ext = _class_slides(np.random.default_rng(5), 16, prefix="E")
    ext_stores = _stores(root / "ext", ext, seed=5)
    ext_labels = _write_csv(root / "ext.csv", ["slide_id", "patient_id", "label"],
                            [(s, p, CLASSES[c]) for s, p, c, _ in ext])  # fmt: skip
    return {"model": model, "stores": ext_stores, "labels": ext_labels}


def test_multiclass_metrics_and_the_models_screening_threshold(multiclass, tmp_path):
    from sklearn.metrics import roc_auc_score

    stores = sorted(multiclass["stores"].glob("*.zarr"))
    out = evaluate_model(stores, multiclass["labels"], multiclass["model"], tmp_path / "ev")
    metrics, rows = _read(out)
    card = json.loads((multiclass["model"] / "model.json").read_text())
    assert metrics["n"] == len(rows) == len(stores) and not metrics["failed"]
    ext = metrics["external"]
    y = np.array([CLASSES.index(r["truth"]) for r in rows])
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    assert ext["macro_auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), 1e-5)
    thr = card["operating_point"]["threshold_log_odds"]
    assert metrics["operating_point"] == card["operating_point"]
    called = np.array([float(r["log_odds"]) for r in rows]) >= thr
    sick = y != CLASSES.index("normal")
    at = ext["screening"]["at_threshold"]
    assert at["threshold"] == pytest.approx(thr, abs=1e-6)
    assert (at["tp"], at["fn"]) == (int((called & sick).sum()), int((~called & sick).sum()))
    assert sum(map(sum, ext["confusion"])) == len(rows)
    for name in ("confusion.png", "reliability.png"):
        assert (out / name).stat().st_size > 1000

    # a cohort without one of the model's classes is evaluated on the others
    no_c = tmp_path / "no_c.csv"
    kept = [r for r in rows if r["truth"] != "type_c"]
    _write_csv(no_c, ["slide_id", "patient_id", "label"],
               [(r["slide_id"], r["patient_id"], r["truth"]) for r in kept])  # fmt: skip
    metrics = _read(evaluate_model(stores, no_c, multiclass["model"], tmp_path / "ev2"))[0]
    assert metrics["n"] == len(kept) and metrics["external"]["absent_classes"] == ["type_c"]
    assert len(metrics["unlabelled"]) == len(rows) - len(kept)


def test_a_label_the_model_does_not_know_is_refused_naming_file_and_line(multiclass, tmp_path):
    rows = list(csv.reader(open(multiclass["labels"])))
    rows[2][2] = "type_z"  # line 3
    labels = _write_csv(tmp_path / "site_b.csv", rows[0], rows[1:])
    out = tmp_path / "ev"
    with pytest.raises(ConfigError, match=r"site_b\.csv.*'type_z' \(line 3\).*normal, type_a"):
        evaluate_model(sorted(multiclass["stores"].glob("*.zarr")), labels,
                       multiclass["model"], out)  # fmt: skip
    assert not out.exists()


def test_a_survival_file_in_another_time_unit_is_refused(multiclass, tmp_path):
    model = tmp_path / "surv"
    shutil.copytree(multiclass["model"], model)
    card = json.loads((model / "model.json").read_text())
    card["task"] = {"kind": "survival", "time_unit": "months", "bins": [10.0], "horizons": []}
    (model / "model.json").write_text(json.dumps(card))
    labels = _write_csv(tmp_path / "l.csv", ["slide_id", "patient_id", "time", "event"],
                        [("a", "p1", "300", "1")])  # fmt: skip
    with pytest.raises(ConfigError, match="times in days.*predicts in months"):
        evaluate_model([], labels, model, tmp_path / "ev", time_unit="days")


# ---------------------------------------------------------------------- survival


def _survival_cohort(root: Path, seed: int, patients: int) -> tuple[Path, Path]:
    from tests.mil.test_tasks import _survival_slides

    rng = np.random.default_rng(seed)
    slides, hazard = _survival_slides(rng, patients)
    stores = _stores(root, slides, seed=seed)
    rows = []
    for sid, pid, _, _ in slides:
        t_event, t_censor = rng.exponential(1 / hazard[pid]), rng.uniform(0, 150)
        rows.append((sid, pid, f"{max(min(t_event, t_censor), 0.1):.2f}", int(t_event <= t_censor)))
    return stores, _write_csv(
        root / "labels.csv", ["slide_id", "patient_id", "time", "event"], rows
    )


@pytest.mark.slow  # ~20 s: a third model; binary and multiclass cover the shared path fast
def test_survival_c_index_and_the_models_risk_groups(tmp_path):
    from sksurv.metrics import concordance_index_censored

    stores, labels = _survival_cohort(tmp_path / "train", 2, 36)
    model = train_model(stores, labels, tmp_path / "model",
                        TrainConfig(time_unit="months", **QUICK), encoder=ENC)  # fmt: skip
    ext_stores, ext_labels = _survival_cohort(tmp_path / "ext", 7, 24)
    out = evaluate_model(sorted(ext_stores.glob("*.zarr")), ext_labels, model, tmp_path / "ev")
    metrics, rows = _read(out)
    ext = metrics["external"]
    event = np.array([r["event"] == "1" for r in rows])
    time = np.array([float(r["time"]) for r in rows])
    risk = np.array([float(r["risk"]) for r in rows])
    c = concordance_index_censored(event, time, risk)[0]
    assert ext["c_index_harrell"] == pytest.approx(c, abs=1e-6)
    assert "evaluated cohort's own times" in ext["censoring_from"]
    card = json.loads((model / "model.json").read_text())
    cuts = card["risk_groups"]["cuts"]
    assert metrics["risk_groups"]["cuts"] == cuts  # the model's, not this cohort's tertiles
    names = card["risk_groups"]["names"]
    for r, v in zip(rows, risk, strict=True):
        assert r["risk_group"] == names[int(np.searchsorted(cuts, v, side="right"))]
    assert 0 <= metrics["logrank_p"] <= 1 and (out / "km.png").stat().st_size > 1000
