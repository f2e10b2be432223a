"""Tile evidence in predictions: stored per tile on an absolute scale (the tile's share of
the calibrated slide log-odds), summing with the bias terms to the prediction's log-odds;
the model card's evidence scale; heads without contributions store none; models trained
before the scale still predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.mil.test_train import ENC, make_cohort
from wsi import store as st
from wsi.mil.predict import load_model, predict_store
from wsi.mil.train import TrainConfig, train_model

FAST = {"folds": 2, "test_fraction": 0.25, "epochs": 20, "patience": 5, "lr": 1e-3}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evidence")
    make_cohort(root, patients=12, seed=4)
    return root


def _train(cohort: Path, head: str, name: str) -> Path:
    config = TrainConfig(model=head, hparams={"hidden": 32, "attn_dim": 16}, **FAST)
    if head == "transmil":
        config = TrainConfig(model=head, hparams={"dim": 32, "heads": 2}, **FAST)
    return train_model(cohort / "stores", cohort / "labels.csv", cohort / name, config,
                       encoder=ENC)  # fmt: skip


@pytest.fixture(scope="module")
def abmil(cohort) -> Path:
    return _train(cohort, "abmil", "abmil")


def _bias_log_odds(model) -> float:
    """The fold mean of the calibrated log-odds that no tile contributes: (b1 - b0) / T."""
    temps = [f["temperature"] for f in model.card["folds"]]
    offsets = [h.logit_offset().double().numpy() for h in model.heads]
    return float(np.mean([(b[1] - b[0]) / t for b, t in zip(offsets, temps, strict=True)]))


@pytest.mark.parametrize("head", ["abmil", "clam_sb"])
def test_evidence_sums_to_the_calibrated_log_odds_less_the_bias(cohort, abmil, head):
    folder = abmil if head == "abmil" else _train(cohort, head, head)
    model = load_model(folder)
    card = model.card["evidence"]
    assert card["kind"] == "contribution" and card["scale"] > 0
    assert card["unit"] == "calibrated log-odds per tile" and "out-of-fold" in card["from"]
    truth = json.loads((cohort / "truth.json").read_text())
    lesion_ev, other_ev = [], []
    for sid, lesion in truth.items():
        store = cohort / "stores" / f"{sid}.zarr"
        result = predict_store(store, model, overwrite=True)
        group = st.open_store(store)
        ev = np.asarray(group[st.prediction_keys(model.name).evidence][:], dtype=np.float64)
        assert ev.shape == (len(lesion),) and ev.dtype == np.float64
        assert result["evidence"]["scale"] == card["scale"]
        assert result["evidence"]["shown"] == "tumor"
        # times T: sum_i (c1 - c0) / T = (z1 - z0 - (b1 - b0)) / T, fold mean
        assert ev.sum() + _bias_log_odds(model) == pytest.approx(result["log_odds"], abs=1e-4)
        assert result["evidence"]["sum"] == pytest.approx(ev.sum(), abs=1e-4)
        lesion_ev += list(ev[np.asarray(lesion)])
        other_ev += list(ev[~np.asarray(lesion)])
    # the lesion tiles carry the evidence for tumour; the others next to none
    assert np.median(lesion_ev) > 0.25 * card["scale"]
    assert np.median(np.abs(other_ev)) < np.median(lesion_ev)


def test_a_head_without_contributions_stores_no_evidence(cohort):
    model = load_model(_train(cohort, "transmil", "transmil"))
    assert "evidence" not in model.card
    store = cohort / "stores" / "P01_S0.zarr"
    result = predict_store(store, model)
    assert result["evidence"] is None
    assert st.prediction_keys(model.name).evidence not in st.open_store(store)


def test_a_model_without_an_evidence_scale_still_predicts(cohort, abmil, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(abmil, old)
    card = json.loads((old / "model.json").read_text())
    del card["evidence"]
    (old / "model.json").write_text(json.dumps(card))
    model = load_model(old)
    store = tmp_path / "s.zarr"
    shutil.copytree(cohort / "stores" / "P01_S0.zarr", store)
    group = st.open_store(store, mode="r+")
    if model.name in st.models_with(group):  # predicted by the model of this id: drop it
        st.remove_member(group, st.prediction_keys(model.name).stage)
    result = predict_store(store, model, overwrite=True)
    assert result["evidence"]["scale"] is None and result["evidence"]["sum"] != 0
    assert st.prediction_keys(model.name).evidence in st.open_store(store)


def test_a_prediction_made_before_evidence_is_redone(cohort, abmil, tmp_path):
    model = load_model(abmil)
    store = tmp_path / "s.zarr"
    shutil.copytree(cohort / "stores" / "P03_S0.zarr", store)
    predict_store(store, model)
    group = st.open_store(store, mode="r+")
    key = st.prediction_keys(model.name).evidence
    st.remove_member(group, key)  # as a wsi before evidence wrote it
    predict_store(store, model)
    assert key in st.open_store(store)
