"""Trust end to end on real stores and real models: calibration that never sharpens
without evidence, conformal sets, the site-shift check per slide and per batch, and what
`predict`, `evaluate` and the reports make of them.

Features-only stores (``test_train.make_cohort``: no tile pixels, so the stain measure is
"not checked" and says why); a second site is the same design with every tile's features
moved. The stain measure on real tiled stores is checked with the ``predicted`` run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.mil.test_train import ENC, make_cohort
from wsi.mil.external import evaluate_model
from wsi.mil.predict import load_model, predict_store
from wsi.mil.train import TrainConfig, train_model

CONFIG = {"folds": 3, "test_fraction": 0.3, "epochs": 12, "patience": 4, "lr": 1e-3}


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    """A model trained on site A (56 patients, about 84 slides); site B shifted."""
    root = tmp_path_factory.mktemp("trust")
    labels = make_cohort(root / "a", patients=56, seed=0)
    model = train_model(root / "a" / "stores", labels, root / "model", TrainConfig(**CONFIG),
                        encoder=ENC)  # fmt: skip
    shifted = make_cohort(root / "b", patients=12, seed=7, offset=0.6)
    return {"model": model, "a": root / "a", "b": root / "b", "b_labels": shifted}


def test_the_card_holds_calibration_conformal_sets_and_the_shift_reference(sites):
    card = json.loads((sites["model"] / "model.json").read_text())
    cal = card["calibration"]
    # a toy problem the folds separate: no evidence for sharpening, so T is at least 1
    assert cal["validation_errors"] < 10 and cal["temperature"] >= 1.0
    assert cal["limited_by_data"] == (cal["temperature_unconstrained"] < 1.0)
    assert cal["ece_n"] == cal["n"] and len(cal["ece_validation_calibrated_ci95"]) == 2
    assert {f["temperature"] for f in card["folds"]} == {cal["temperature"]}
    conf = card["conformal"]
    assert conf["alpha"] == 0.05 and conf["classes"] == ["normal", "tumor"]
    assert sum(conf["n_per_class"]) == cal["n"]
    shift = card["shift"]["measures"]
    assert shift["embedding_centroid"]["threshold"] is not None
    assert shift["stain"]["threshold"] is None and "stain statistics" in shift["stain"]["note"]
    metrics = json.loads((sites["model"] / "metrics.json").read_text())
    cov = metrics["test"]["conformal"]
    assert cov["nominal"] == 0.95 and 0.8 <= cov["coverage"] <= 1.0


def test_predictions_carry_the_set_the_shift_check_and_the_call(sites):
    model = load_model(sites["model"])
    in_site = sorted((sites["a"] / "stores").glob("*.zarr"))[0]
    result = predict_store(in_site, model, overwrite=True)
    trust = result["trust"]
    assert trust["conformal"]["status"] in ("certain", "uncertain", "atypical")
    assert set(trust["conformal"]["set"]) <= {"normal", "tumor"}
    assert trust["shift"]["status"] in ("passed", "failed")
    assert "stain statistics of 0 training slides" in trust["shift"]["measures"]["stain"]["note"]
    shifted = [predict_store(s, model) for s in sorted((sites["b"] / "stores").glob("*.zarr"))]
    failed = [r for r in shifted if r["trust"]["shift"]["status"] == "failed"]
    assert len(failed) >= 0.9 * len(shifted)
    for r in failed:
        assert any(f.startswith("site shift") for f in r["trust"]["flags"])
        # a flagged negative call is never shown as a clean negative
        if not r["positive"]:
            assert r["call"] == "uncertain" and r["decision"] == "normal"


def test_evaluate_counts_flags_coverage_and_unflagged_false_negatives(sites, tmp_path):
    model = load_model(sites["model"])
    stores = sorted((sites["b"] / "stores").glob("*.zarr"))
    out = evaluate_model(stores, sites["b_labels"], model, tmp_path / "ev")
    trust = json.loads((out / "metrics.json").read_text())["trust"]
    assert trust["shift"]["n"] == len(stores)
    assert trust["shift"]["flagged"] >= 0.9 * len(stores)
    assert trust["shift"]["batch"]["status"] == "differs"
    assert "embedding_centroid" in trust["shift"]["batch"]["differs"]
    assert trust["unflagged_false_negatives"] <= trust["false_negatives"]
    assert 0.0 <= trust["conformal"]["coverage"] <= 1.0
    header = (out / "predictions.csv").read_text().splitlines()[0].split(",")
    assert {"call", "conformal_set", "shift"} <= set(header)


def test_reports_show_the_set_the_shift_check_and_the_batch_banner(sites, tmp_path):
    from wsi.reports import ReportOptions, report

    model = load_model(sites["model"])
    stores = sorted((sites["b"] / "stores").glob("*.zarr"))
    for s in stores:
        predict_store(s, model)
    result = report(stores, model, tmp_path / "rep", ReportOptions(pdf=False))
    assert not result.failed
    html = result.slides[0].html.read_text()
    assert "How sure" in html and "Conformal prediction set (95%)" in html
    assert "Site-shift check</th><td>failed" in html
    assert "Site shift." in html  # the flag
    cohort = result.cohort_html.read_text()
    assert "This batch differs from the training slides." in cohort
    rows = [r.row for r in result.slides]
    negatives = [r for r in rows if not r["positive"]]
    assert all(r["call"] == "uncertain" for r in negatives if r["shift"] == "failed")


def test_stain_statistics_of_real_tiled_stores_and_a_reference_too_small(predicted):
    from wsi.mil.shift import slide_stain
    from wsi.stain import STAIN_FEATURES

    root, _, name = predicted
    stores = sorted((root / "stores").glob("*.zarr"))
    vec, why = slide_stain(stores[0])
    assert why == "" and len(vec) == len(STAIN_FEATURES) and np.all(np.isfinite(vec))
    card = json.loads((root / name / "model.json").read_text())
    stain = card["shift"]["measures"]["stain"]
    # eight slides: too few to set a threshold at 2.5% per measure, and it says so
    assert stain["threshold"] is None and "too few" in stain["note"]
    assert len(card["shift"]["stain"]["mean"]) == len(STAIN_FEATURES)
