"""Second-opinion reports of every task: multiclass (CLAM-MB, screened against "normal"),
survival and regression models trained on features-only stores (as tests/mil/test_tasks.py
builds them), each reported on two stores. The HTML is parsed (the class bar chart, the
Kaplan-Meier figure, the value and their numbers against the prediction attrs), the PDF is
read with pdftotext and rendered with pdftoppm, and the cohort CSV's columns and order are
checked. Features-only stores have no pixels: the picture is the tiles' places and the
evidence tiles are positions without images.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from tests.mil.test_tasks import CLASSES, ENC, _stores, _write_csv
from tests.test_report import _Page, _pdf_pages, _pdf_text
from wsi.mil.predict import load_model, predict_store
from wsi.mil.train import TrainConfig, train_model
from wsi.reports import ReportOptions, report, report_cohort
from wsi.reports.render import pct, prob
from wsi.store import TILES_COORDS, open_store

TINY = {"folds": 2, "test_fraction": 0.0, "epochs": 3, "patience": 3, "lr": 2e-3,
        "hparams": {"hidden": 16, "attn_dim": 8}}  # fmt: skip
OPTIONS = ReportOptions(top_k=3, least_k=1)
TAIL = ["flags", "tiles", "tissue_mm2", "report", "error"]


def _reported(root: Path, labels: Path, config: TrainConfig) -> tuple[Path, dict, object]:
    """Train ``config`` on ``root/stores``, predict and report the first two stores."""
    for store in (root / "stores").glob("*.zarr"):
        # the h5 of _stores is CLAM's (patch_size at patch_level 0): its footprint is known
        assert open_store(store)[TILES_COORDS].attrs["footprint_l0"] == 256.0
    model_dir = train_model(root / "stores", labels, root / "model", config, encoder=ENC)
    model = load_model(model_dir)
    stores = sorted((root / "stores").glob("*.zarr"))[:2]
    preds = {s.name.removesuffix(".zarr"): predict_store(s, model) for s in stores}
    return model_dir, preds, report(stores, model, root / "reports", OPTIONS)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _common(result, preds: dict) -> dict[str, _Page]:
    """What every report has, whatever the task; the parsed pages by slide id."""
    assert not result.failed and {r.slide_id for r in result.slides} == set(preds)
    pages = {}
    for rep in result.slides:
        page = _Page(rep.html.read_text(encoding="utf-8"))
        assert {"finding", "slide", "evidence", "quality", "model"} <= page.ids
        assert "script" not in page.tags
        text = page.body_text
        for words in ("Tiles with the most evidence for", "weights sha256", "the diagnosis is the "
                      "pathologist's", "No image: the store holds features only",
                      "no image stored", str(preds[rep.slide_id]["decision"])):  # fmt: skip
            assert words in text, words
        assert len(page.images) == 2  # the tiles' places and the heatmap; no tile pixels
        assert rep.pdf is not None and rep.pdf.read_bytes()[:5] == b"%PDF-"
        pages[rep.slide_id] = page
    return pages


def _colour(pages: list[np.ndarray], rgb: tuple[int, int, int], tol: int = 30) -> int:
    return sum(int((np.abs(p - np.array(rgb)).max(axis=-1) < tol).sum()) for p in pages)


# ---------------------------------------------------------------------- multiclass


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    rng = np.random.default_rng(1)
    slides = [(f"P{p:02d}_S0", f"P{p:02d}", p % 4, float(rng.uniform(0.2, 0.4))) for p in range(16)]
    _stores(root, slides, seed=1)
    labels = _write_csv(root / "labels.csv", ["slide_id", "patient_id", "label"],
                        [(s, p, CLASSES[c]) for s, p, c, _ in slides])  # fmt: skip
    return root, *_reported(root, labels, TrainConfig(model="clam_mb", **TINY))


def test_multiclass_report_shows_class_bars_and_the_screening_call(multiclass, tmp_path):
    root, model_dir, preds, result = multiclass
    pages = _common(result, preds)
    for rep in result.slides:
        pred, html = preds[rep.slide_id], rep.html.read_text(encoding="utf-8")
        text = pages[rep.slide_id].body_text
        assert "classes" in pages[rep.slide_id].ids and 'aria-label="class probabilities"' in html
        for c in CLASSES:  # one bar per class, its length the prediction's probability
            p = pred["class_probabilities"][c]
            width = re.search(rf'data-class="{c}">.*?<rect [^>]*width="([0-9.]+)"', html, re.S)
            assert width and float(width[1]) == pytest.approx(300 * p, abs=0.01), c
            assert f"{prob(p)} ± {100 * pred['class_probability_std'][c]:.1f}%" in text
        top = pred["predicted_class"]
        assert f"Most probable class {top}: {prob(pred['class_probabilities'][top])}" in text
        # the screening finding at the operating point, as binary reports show it
        assert f"Calibrated probability of non-normal {prob(pred['probability'])}" in text
        assert "Operating point called non-normal" in text
        assert "At this threshold the model found" in text
        # the attention shown is the called class's branch (predict writes that one)
        assert f"Tiles with the most evidence for {pred['decision']}" in text
        assert "multiclass (normal, type_a, type_b, type_c, negative class 'normal')" in text
    pdf = result.slides[0].pdf
    pdf_text = _pdf_text(pdf)
    for words in ("Class probabilities", "Most probable class", *CLASSES, "Page 1 of"):
        assert words in pdf_text, words
    assert _colour(_pdf_pages(pdf, tmp_path), (0x1F, 0x5F, 0xA8)) > 30  # the bars are drawn

    rows = _csv(result.cohort_csv)
    assert list(rows[0]) == ["rank", "slide_id", "decision", "probability", "probability_std",
                             "positive", "predicted_class",
                             *(f"probability_{c}" for c in CLASSES), *TAIL]  # fmt: skip
    assert [r["slide_id"] for r in rows] == sorted(preds, key=lambda s: -preds[s]["log_odds"])
    for r in rows:
        pred = preds[r["slide_id"]]
        assert r["predicted_class"] == pred["predicted_class"]
        assert float(r["probability"]) == pytest.approx(pred["probability"], abs=1e-6)
        for c in CLASSES:
            assert float(r[f"probability_{c}"]) == pytest.approx(
                pred["class_probabilities"][c], abs=1e-6
            )


# ---------------------------------------------------------------------- survival


@pytest.fixture(scope="module")
def survival(tmp_path_factory):
    root = tmp_path_factory.mktemp("surv")
    rng = np.random.default_rng(2)
    slides, rows = [], []
    for p in range(18):
        burden = float(rng.uniform(0.1, 0.5)) if p % 3 else 0.0
        slides.append((f"P{p:02d}_S0", f"P{p:02d}", 1 if burden else 0, burden))
        t = rng.exponential(1 / (0.02 * np.exp(6.0 * burden)))
        rows.append((f"P{p:02d}_S0", f"P{p:02d}", f"{min(max(t, 0.1), 120):.2f}", int(t < 120)))
    _stores(root, slides, seed=2)
    labels = _write_csv(root / "labels.csv", ["slide_id", "patient_id", "time", "event"], rows)
    return root, *_reported(root, labels, TrainConfig(time_unit="months", **TINY))


def test_survival_report_shows_the_risk_group_against_the_training_cohort(survival, tmp_path):
    root, model_dir, preds, result = survival
    card = load_model(model_dir).card
    km = card["risk_groups"]["kaplan_meier"]
    assert km
    pages = _common(result, preds)
    for rep in result.slides:
        pred, html = preds[rep.slide_id], rep.html.read_text(encoding="utf-8")
        text = pages[rep.slide_id].body_text
        assert f"Risk group {pred['risk_group']} risk, among the tertiles of the training " \
               "cohort" in text  # fmt: skip
        assert f"Risk score {pred['risk']:.3g} ± {pred['risk_std']:.2g}" in text
        assert "The risk is relative to the training cohort" in text
        assert 'aria-label="survival curves"' in html and "time (months)" in text
        # one curve per training risk group with a Kaplan-Meier curve, and the slide's
        assert len(re.findall(r'<polyline class="group"', html)) == len(km)
        assert len(re.findall(r'<polyline class="slide"', html)) == 1
        for name in km:
            assert f"{name} risk (training cohort, Kaplan-Meier)" in text
        assert "this slide (predicted)" in text
    pdf = result.slides[0].pdf
    pdf_text = _pdf_text(pdf)
    for words in ("Risk group", "relative to the training cohort", "time (months)",
                  "survival probability"):  # fmt: skip
        assert words in pdf_text, words
    pages_png = _pdf_pages(pdf, tmp_path)
    assert _colour(pages_png, (0xD5, 0x5E, 0x00)) + _colour(pages_png, (0x00, 0x9E, 0x73)) > 20

    rows = _csv(result.cohort_csv)
    assert list(rows[0]) == ["rank", "slide_id", "decision", "risk", "risk_std", "risk_group",
                             *TAIL]  # fmt: skip
    assert [r["slide_id"] for r in rows] == sorted(preds, key=lambda s: -preds[s]["risk"])
    for r in rows:
        assert r["risk_group"] == preds[r["slide_id"]]["risk_group"]
        assert float(r["risk"]) == pytest.approx(preds[r["slide_id"]]["risk"], rel=1e-5)
    assert "Risk score" in _Page(result.cohort_html.read_text()).body_text


# ---------------------------------------------------------------------- regression


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    rng = np.random.default_rng(3)
    slides = [(f"P{p:02d}_S0", f"P{p:02d}", 1, float(rng.uniform(0.05, 0.6))) for p in range(12)]
    _stores(root, slides, seed=3)
    labels = _write_csv(root / "labels.csv", ["slide_id", "patient_id", "target"],
                        [(s, p, f"{f:.4f}") for s, p, _, f in slides])  # fmt: skip
    return root, *_reported(root, labels, TrainConfig(**TINY))


def test_regression_report_shows_the_value_with_its_fold_spread(regression):
    root, model_dir, preds, result = regression
    pages = _common(result, preds)
    for rep in result.slides:
        pred = preds[rep.slide_id]
        text = pages[rep.slide_id].body_text
        folds = pred["fold_values"]
        assert f"Predicted target {pred['value']:.4g} ± {pred['value_std']:.2g}" in text
        assert f"from {min(folds):.4g} to {max(folds):.4g}" in text
        assert "Pearson r" in text
    assert "Predicted target" in _pdf_text(result.slides[0].pdf)
    rows = _csv(result.cohort_csv)
    assert list(rows[0]) == ["rank", "slide_id", "decision", "value", "value_std", "value_min",
                             "value_max", *TAIL]  # fmt: skip
    assert [r["slide_id"] for r in rows] == sorted(preds, key=lambda s: -preds[s]["value"])
    for r in rows:
        assert float(r["value"]) == pytest.approx(preds[r["slide_id"]]["value"], rel=1e-5)
        assert float(r["value_std"]) == pytest.approx(preds[r["slide_id"]]["value_std"], rel=1e-5)


# ---------------------------------------------------------------------- classes, no screening


def test_cohort_of_grades_without_a_benign_class_sorts_by_class_then_probability(tmp_path):
    """No benign class: no screening call; the highest grade first, then its probability."""
    task = {"kind": "ordinal", "classes": ["g0", "g1", "g2"], "negative": None}

    def row(sid: str, top: str, p: float) -> dict:
        probs = {c: (p if c == top else (1 - p) / 2) for c in task["classes"]}
        return {"slide_id": sid, "decision": top, "predicted_class": top,
                "class_probabilities": probs, "class_probability_std": dict.fromkeys(probs, 0.01),
                "task": "ordinal", "flags": [], "tiles": 9, "tissue_mm2": None,
                "report": f"{sid}.html"}  # fmt: skip

    rows = [row("a", "g0", 0.9), row("b", "g2", 0.5), row("c", "g2", 0.8), row("d", "g1", 0.6)]
    html, csv_path = report_cohort(rows, tmp_path, model="m", task=task)
    got = _csv(csv_path)
    assert [r["slide_id"] for r in got] == ["c", "b", "d", "a"]
    assert list(got[0]) == ["rank", "slide_id", "decision", "predicted_class", "probability_g0",
                            "probability_g1", "probability_g2", *TAIL]  # fmt: skip
    text = _Page(html.read_text()).body_text
    assert "Sorted by predicted class (g2, g1, g0)" in text
    assert f"{prob(0.8)} ± {pct(0.01, 1)}" in text
