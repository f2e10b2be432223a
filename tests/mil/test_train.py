"""Training, evaluation and prediction end to end on real Zarr stores.

The stores are features-only stores made by ``wsi import-h5`` from h5 files of synthetic
features: positive slides hold a few tiles shifted along one direction, so the truth
of every tile is known. (The benchmark on slides, tiles and real embeddings is
``tools/bench_mil.py``.)
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from wsi import store as st
from wsi.errors import ConfigError, StoreError
from wsi.mil.predict import load_model, predict_store
from wsi.mil.train import TrainConfig, train_model

ENC = "synthetic_enc"
D = 32


def _write_h5(path: Path, feats: np.ndarray, sha: str) -> None:
    import h5py

    n = len(feats)
    side = int(np.ceil(np.sqrt(n)))
    coords = np.array([(512 * (i % side), 512 * (i // side)) for i in range(n)], dtype=np.int64)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats.astype(np.float32))
        ds = f.create_dataset("coords", data=coords)
        ds.attrs.update({"patch_size": 256, "patch_level": 0})
        f.attrs["weights_sha256"] = sha


def make_cohort(
    root: Path, patients: int = 24, seed: int = 0, sha: str = "a" * 64, offset: float = 0.0
) -> Path:
    """Features-only stores + labels.csv; returns the labels path. Truth in truth.json.
    ``offset`` moves every tile's features (a site whose embeddings all shifted)."""
    from wsi.h5io import import_h5

    rng = np.random.default_rng(seed)
    direction = rng.normal(size=D)
    direction /= np.linalg.norm(direction)
    rows, truth = [], {}
    (root / "h5").mkdir(parents=True, exist_ok=True)
    for p in range(patients):
        label = "tumor" if p % 2 else "normal"
        for s in range(1 + p % 2):
            sid = f"P{p:02d}_S{s}"
            n = int(rng.integers(30, 80))
            feats = rng.normal(size=(n, D)) + offset
            lesion = np.zeros(n, dtype=bool)
            if label == "tumor":
                lesion[rng.choice(n, int(rng.integers(3, 8)), replace=False)] = True
                feats[lesion] += 3.0 * direction
            _write_h5(root / "h5" / f"{sid}.h5", feats, sha)
            import_h5(root / "h5" / f"{sid}.h5", ENC, root / "stores")
            rows.append((sid, f"P{p:02d}", label, "even" if p % 4 < 2 else "odd"))
            truth[sid] = lesion.tolist()
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "patient_id", "label", "group"])
        w.writerows(rows)
    (root / "truth.json").write_text(json.dumps(truth))
    return labels


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mil")
    make_cohort(root)
    return root


@pytest.fixture(scope="module")
def trained(cohort) -> Path:
    config = TrainConfig(folds=3, test_fraction=0.25, epochs=20, patience=5, lr=1e-3)
    return train_model(
        cohort / "stores", cohort / "labels.csv", cohort / "model", config, encoder=ENC
    )


def test_training_writes_cards_metrics_and_plots(trained):
    card = json.loads((trained / "model.json").read_text())
    assert card["encoder"] == {
        "name": ENC,
        "weights_sha256": "a" * 64,
        "stain_normalisation": None,
    }
    assert card["head"]["name"] == "abmil" and card["task"]["positive"] == "tumor"
    assert len(card["folds"]) == 3 and card["data"]["test"]["slides"] > 0
    assert "never replaces" in card["intended_use"]
    for fold in card["folds"]:
        d = trained / fold["dir"]
        assert (d / "model.safetensors").exists() and (d / "train_log.csv").exists()
        fold_card = json.loads((d / "card.json").read_text())
        assert fold_card["temperature"] > 0 and np.isfinite(fold_card["threshold_log_odds"])
    metrics = json.loads((trained / "metrics.json").read_text())
    test = metrics["test"]
    assert test["auroc"] >= 0.9 and test["auroc_ci95"][0] <= test["auroc"] <= test["auroc_ci95"][1]
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        assert key in test["at_threshold"] and key in test["at_youden"]
    assert metrics["validation_pooled"]["at_threshold"]["sensitivity"] >= 0.95
    assert set(metrics["validation_pooled"]["groups"]) == {"even", "odd"}
    assert "ece_uncalibrated" in test and "ece_calibrated" in test
    for png in ("roc.png", "reliability.png"):
        assert (trained / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(trained / "splits.csv") as f:
        parts = list(csv.DictReader(f))
    by_patient: dict[str, set[str]] = {}
    for r in parts:
        by_patient.setdefault(r["patient_id"], set()).add(r["part"])
    assert all(len(v) == 1 for v in by_patient.values())


def _weights_mtimes(model: Path) -> list[int]:
    return [(model / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns for k in range(3)]


def test_a_rerun_keeps_finished_folds_and_retrains_on_other_labels(tmp_path, cohort, trained):
    import shutil

    config = TrainConfig(folds=3, test_fraction=0.25, epochs=20, patience=5, lr=1e-3)
    before = _weights_mtimes(trained)
    train_model(cohort / "stores", cohort / "labels.csv", trained, config, encoder=ENC)
    assert _weights_mtimes(trained) == before  # kept, not retrained
    # the same folder with one patient's label flipped: nothing may be kept
    copy = tmp_path / "model"
    shutil.copytree(trained, copy)
    text = (cohort / "labels.csv").read_text().splitlines()
    flipped = [text[0]] + [
        line.replace(",tumor,", ",normal,") if line.startswith("P01_") else line
        for line in text[1:]
    ]
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(flipped) + "\n")
    (copy / "splits.csv").unlink()
    kept = _weights_mtimes(copy)
    train_model(cohort / "stores", labels, copy, config, encoder=ENC)
    assert all(a != b for a, b in zip(_weights_mtimes(copy), kept, strict=True))


def test_splits_that_contradict_the_run_are_refused(tmp_path, cohort, trained):
    config = TrainConfig(folds=2, test_fraction=0.25)
    with pytest.raises(ConfigError, match="3 folds.*asks for 2 folds"):
        train_model(cohort / "stores", cohort / "labels.csv", trained, config, encoder=ENC)
    with pytest.raises(ConfigError, match="splits file not found"):
        train_model(
            cohort / "stores",
            cohort / "labels.csv",
            tmp_path / "m",
            config,
            encoder=ENC,
            splits=tmp_path / "typo.csv",
        )


def test_prediction_writes_attention_that_finds_the_lesion(cohort, trained):
    model = load_model(trained)
    truth = json.loads((cohort / "truth.json").read_text())
    att_all, truth_all = [], []
    for sid, lesion in truth.items():
        result = predict_store(cohort / "stores" / f"{sid}.zarr", model)
        assert 0 <= result["probability"] <= 1 and result["probability_std"] >= 0
        assert len(result["fold_probabilities"]) == 3
        assert result["decision"] in ("tumor", "normal")
        group = st.open_store(cohort / "stores" / f"{sid}.zarr")
        att = np.asarray(group[f"predictions/{model.name}/attention_mean"][:])
        assert group[f"predictions/{model.name}/attention"].shape == (len(lesion), 3)
        assert att.sum() == pytest.approx(1, abs=1e-4)
        if any(lesion):  # within-slide ranks, pooled over the positive slides
            att_all.append(np.argsort(np.argsort(att)) / (len(att) - 1))
            truth_all.append(np.asarray(lesion, dtype=int))
    from wsi.mil.metrics import auroc

    assert auroc(np.concatenate(truth_all), np.concatenate(att_all)) >= 0.9


def test_changed_fold_weights_say_the_file_was_changed(tmp_path, trained):
    """Garbage written over a fold's weights, then also the card's sha256 forged to match
    it: both say the weights do not match the model card, naming the file."""
    import hashlib
    import shutil

    from wsi.errors import WsiError

    model = tmp_path / "model"
    shutil.copytree(trained, model)
    weights = model / "fold_1" / "model.safetensors"
    garbage = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    weights.write_bytes(garbage)
    expected = "weights do not match the model card: the file was changed"
    with pytest.raises(WsiError, match=expected) as err:
        load_model(model)
    assert str(weights) in str(err.value) and "interrupted" not in str(err.value)

    card_path = model / "fold_1" / "card.json"
    card = json.loads(card_path.read_text())
    card["weights_sha256"] = hashlib.sha256(garbage).hexdigest()  # a forged checksum
    card_path.write_text(json.dumps(card))
    with pytest.raises(WsiError, match=expected) as err:
        load_model(model)
    assert str(weights) in str(err.value)


def test_bad_input_is_refused_before_training(tmp_path, cohort):
    labels = tmp_path / "labels.csv"
    text = (cohort / "labels.csv").read_text()
    labels.write_text(text + "ghost,P99,tumor,odd\n")
    with pytest.raises(StoreError, match="have no store.*ghost"):
        train_model(cohort / "stores", labels, tmp_path / "m", encoder=ENC)
    with pytest.raises(StoreError, match="no complete 'uni' features"):
        train_model(cohort / "stores", cohort / "labels.csv", tmp_path / "m", encoder="uni")
    with pytest.raises(ConfigError, match="unknown model 'abmill'. Did you mean 'abmil'"):
        train_model(
            cohort / "stores",
            cohort / "labels.csv",
            tmp_path / "m",
            TrainConfig(model="abmill"),
            encoder=ENC,
        )
    assert not (tmp_path / "m").exists()


def test_features_of_other_weights_are_refused(tmp_path):
    labels = make_cohort(tmp_path, patients=6, seed=1)
    from wsi.h5io import import_h5

    import_h5(tmp_path / "h5" / "P03_S0.h5", ENC, tmp_path / "other")
    h5 = tmp_path / "h5" / "P03_S0.h5"
    import h5py

    with h5py.File(h5, "a") as f:
        f.attrs["weights_sha256"] = "b" * 64
    import_h5(h5, ENC, tmp_path / "stores", overwrite=True)
    with pytest.raises(StoreError, match="different weights"):
        train_model(tmp_path / "stores", labels, tmp_path / "m", encoder=ENC)


def test_cli_train_and_predict(tmp_path, cohort, capsys):
    from pipelines.cli import main

    out = tmp_path / "cli_model"
    rc = main(
        [
            "-q",
            "train",
            "--stores",
            str(cohort / "stores"),
            "--labels",
            str(cohort / "labels.csv"),
            "--encoder",
            ENC,
            "--out",
            str(out),
            "--folds",
            "3",
            "--epochs",
            "5",
            "--model",
            "mean",
        ]
    )
    assert rc == 0
    assert "validation_pooled: AUROC" in capsys.readouterr().out
    stores = sorted((cohort / "stores").glob("*.zarr"))[:2]
    rc = main(
        ["-q", "predict", *map(str, stores), str(tmp_path / "missing.zarr"), "--model", str(out)]
    )
    text = capsys.readouterr().out
    assert rc == 1 and "FAILED" in text and "p = " in text


@pytest.mark.parametrize("head", ["clam_sb", "clam_mb", "transmil", "max"])
def test_every_head_trains_and_predicts_through_the_pipeline(tmp_path, cohort, head):
    config = TrainConfig(model=head, folds=2, epochs=2, patience=2)
    out = train_model(
        cohort / "stores", cohort / "labels.csv", tmp_path / head, config, encoder=ENC
    )
    card = json.loads((out / "model.json").read_text())
    fold_card = json.loads((out / "fold_0" / "card.json").read_text())
    assert card["head"]["name"] == head and fold_card["encoder"]["name"] == ENC
    store = sorted((cohort / "stores").glob("*.zarr"))[0]
    result = predict_store(store, load_model(out), overwrite=True)
    group = st.open_store(store)
    att = np.asarray(group[f"predictions/{head}/attention_mean"][:])
    assert np.isfinite(att).all() and att.sum() == pytest.approx(1, abs=1e-4)
    assert 0 <= result["probability"] <= 1


def test_a_killed_train_leaves_the_old_model_working(tmp_path, cohort, trained):
    """``wsi train`` into a folder holding a model, killed mid-training: the old model is
    still there, loads and predicts the same; the next training cleans up after it."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    store = tmp_path / "s.zarr"
    shutil.copytree(sorted((cohort / "stores").glob("*.zarr"))[0], store)
    before = predict_store(store, load_model(folder), overwrite=True)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "-q", "train", "--stores", str(cohort / "stores"),
         "--labels", str(cohort / "labels.csv"), "--encoder", ENC, "--out", str(folder),
         "--folds", "3", "--test-fraction", "0.25", "--epochs", "2000", "--patience", "2000",
         "--seed", "11"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    work = tmp_path / f".model.training-{proc.pid}"
    try:
        deadline = time.monotonic() + 180
        while not (work / "fold_0").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the training never started"
            time.sleep(0.05)
        time.sleep(0.5)  # well into fold 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert work.exists()  # what the killed training left, beside the model
    model = load_model(folder)
    assert model.card["model_id"] == json.loads((trained / "model.json").read_text())["model_id"]
    after = predict_store(store, model, overwrite=True)
    assert after["probability"] == before["probability"]
    # the next training takes the stale folder over, swaps in, and leaves nothing behind
    config = TrainConfig(folds=3, test_fraction=0.25, epochs=20, patience=5, lr=1e-3)
    train_model(cohort / "stores", cohort / "labels.csv", folder, config, encoder=ENC)
    assert not list(tmp_path.glob(".model.*"))
    assert load_model(folder).name == "model"


def test_no_fold_stops_early_before_min_epochs(cohort, tmp_path):
    """Early stopping waits for ``min_epochs`` (CLAM's stop_epoch): with patience 1 a fold
    would stop at its second epoch without a better validation loss; with min_epochs 6
    every fold runs at least 6 epochs, and the lowest-loss weights are still kept."""
    config = TrainConfig(folds=2, test_fraction=0.0, epochs=7, patience=1, min_epochs=6,
                         lr=5e-2)  # fmt: skip
    model = train_model(cohort / "stores", cohort / "labels.csv", tmp_path / "m", config,
                        encoder=ENC)  # fmt: skip

    def epochs_run(folder: Path) -> list[int]:
        out = []
        for fold in ("fold_0", "fold_1"):
            with open(folder / fold / "train_log.csv", newline="") as f:
                out.append(len(list(csv.DictReader(f))))
        return out

    assert min(epochs_run(model)) >= 6
    # the same without min_epochs: patience 1 stops a fold before 6 epochs
    control = train_model(cohort / "stores", cohort / "labels.csv", tmp_path / "c",
                          dataclasses.replace(config, min_epochs=0), encoder=ENC)  # fmt: skip
    assert min(epochs_run(control)) < 6
    with pytest.raises(ConfigError, match="min_epochs"):
        TrainConfig(min_epochs=-1)
