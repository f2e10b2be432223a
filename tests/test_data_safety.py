"""What wsi promises about your data (docs/data-safety.md), with real processes and files:
one writer per store (a second is refused naming the holder; a killed holder's lock is
taken over), folders wsi did not make are never deleted, a stage made from inputs that
were redone is removed or refused, and a store left inconsistent is repaired by
``--overwrite``."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DICOM_PATIENT, data_images, looks_like
from tests.heatmap.helpers import store_copy
from wsi import store as st
from wsi._lock import holding, lock_file, read_holder
from wsi.config import EmbedConfig, TilingConfig
from wsi.embed import embed_store, features_of
from wsi.errors import LockedError, StaleStageError, StoreError
from wsi.heatmap import HeatmapOptions, make_heatmap, stored_grid, tile_scores
from wsi.mil.predict import load_model, predict_store
from wsi.reports.facts import gather
from wsi.reports.options import ReportOptions
from wsi.tiling import tile_slide

ENCODER = "efficientnet_lite0"


def _wsi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def _stages(store: Path) -> set[str]:
    return set(st.read_meta(st.open_store(store)).get("stages", {}))


# -- locks ------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, predicted):
    root, cohort, model = predicted
    store = store_copy(root, cohort.slides[0].stem, tmp_path)
    before = _stages(store)
    with st.store_lock(store):
        holder = read_holder(lock_file(store.parent, store.name))
        assert holder["pid"] == os.getpid()
        proc = _wsi("embed", str(store), "--device", "cpu", "--overwrite")
    assert proc.returncode != 0
    assert f"store {store} is being written by pid {os.getpid()}" in proc.stderr
    assert "--wait" in proc.stderr and "Traceback" not in proc.stderr
    assert _stages(store) == before  # the refused writer changed nothing
    # the lock is free again: the same command now runs
    assert _wsi("heatmap", str(store), "--model", model, "--out",
                str(tmp_path / "hm"), "--exports", "geojson").returncode == 0  # fmt: skip


def test_a_waiting_writer_is_not_refused(tmp_path, predicted):
    root, cohort, model = predicted
    store = store_copy(root, cohort.slides[0].stem, tmp_path)
    with st.store_lock(store):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "heatmap", str(store), "--model",
             model, "--out", str(tmp_path / "hm"), "--exports", "geojson", "--wait", "300"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert st.heatmap_keys(model).stage in _stages(store)


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    lock = lock_file(tmp_path, "s1.zarr")
    code = (
        "import sys, time\n"
        "from wsi._lock import holding\n"
        f"with holding({str(lock)!r}, 'store s1'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    with pytest.raises(LockedError, match=rf"being written by pid {proc.pid} on host"):
        with holding(lock, "store s1", wait=0):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    with caplog.at_level(logging.INFO, logger="wsi._lock"):
        with holding(lock, "store s1", wait=0):
            assert read_holder(lock)["pid"] == os.getpid()
    assert f"stale lock of pid {proc.pid}" in caplog.text
    assert read_holder(lock) == {}  # released cleanly: nothing left to call stale


def test_two_concurrent_tile_runs_never_mix(tmp_path, synthetic_slide):
    """Two `wsi tile` of one slide into one folder at the same moment: each either tiles
    the store or is refused naming the other; never an internal error, and the store is
    complete and trusted by a third run."""
    out = tmp_path / "stores"
    cmd = [sys.executable, "-m", "pipelines.cli", "tile", str(synthetic_slide), "--out", str(out),
           "--workers", "1"]  # fmt: skip
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in procs]
    for rc, err in results:
        assert rc == 0 or "is being written by pid" in err, err
        assert "Traceback" not in err and "internal error" not in err
    assert any(rc == 0 for rc, _ in results)
    store = st.store_path(out, "synth")
    assert st.TILES in _stages(store)
    again = _wsi("-v", "tile", str(synthetic_slide), "--out", str(out))
    assert again.returncode == 0 and "nothing to do" in again.stderr


# -- what a slide file holds besides its image ---------------------------------------------


def test_a_dicom_slides_label_overview_and_patient_are_never_shown(dicom_svs):
    """The Aperio slide as DICOM: label, overview (macro) and thumbnail images, and a
    patient name and ID in the metadata of every file (OpenSlide lists them among its
    properties). `wsi info` names the associated images and shows neither them nor the
    patient; the slide's thumbnail and notebook view show the main image only. (`wsi run`
    on DICOM slides: the stores and reports, tests/pipelines/test_run.py.)"""
    import openslide

    from wsi.slide import open_slide

    with openslide.OpenSlide(str(next(dicom_svs.glob("*.dcm")))) as osr:
        assert osr.properties["dicom.PatientID"] == DICOM_PATIENT[1]  # there to leak
        hidden = [np.asarray(osr.associated_images[k].convert("RGB")) for k in ("label", "macro")]
    text, as_json = _wsi("info", str(dicom_svs)), _wsi("info", "--json", str(dicom_svs))
    assert text.returncode == as_json.returncode == 0, text.stderr
    assert "associated images: label, macro, thumbnail" in text.stdout
    with open_slide(dicom_svs) as slide:
        view = slide._repr_html_()
        images = [slide.thumbnail(384), *data_images(view)]
    bare = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", view)  # base64: anything
    for out in (text.stdout, as_json.stdout, text.stderr, bare):
        for secret in (*DICOM_PATIENT, "PatientName", "PatientID"):
            assert secret not in out, secret
    assert "label" not in bare and "macro" not in bare and str(dicom_svs.parent) not in bare
    assert len(images) == 2
    for image in images:
        for h in hidden:
            assert not looks_like(image, h), "an image looks like the label or overview"


# -- never delete what wsi did not make -----------------------------------------------------


def test_a_zarr_group_wsi_did_not_make_is_never_deleted(tmp_path, synthetic_slide):
    import zarr

    out = tmp_path / "stores"
    theirs = zarr.open_group(str(out / "synth.zarr"), mode="w")
    theirs.create_array("precious", data=np.arange(10))
    for extra in ([], ["--overwrite"]):
        proc = _wsi("tile", str(synthetic_slide), "--out", str(out), *extra)
        assert proc.returncode != 0
        assert "wsi did not make" in proc.stderr and "Move it away" in proc.stderr
    np.testing.assert_array_equal(zarr.open_group(str(out / "synth.zarr"))["precious"][:],
                                  np.arange(10))  # fmt: skip
    with pytest.raises(StoreError, match="wsi did not make"):
        st.remove_store(out / "synth.zarr")


def test_a_new_store_carries_the_marker_from_its_first_moment(tmp_path):
    path = tmp_path / "s.zarr"
    group = st.create_store(path, st.new_store_meta("s", {"h5": "x.h5"}))
    assert st.is_wsi_store(path) and st.read_meta(group)["slide_id"] == "s"
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]  # no temporary left
    with pytest.raises(StoreError):
        st.create_store(path, st.new_store_meta("s", {}))  # never over an existing store
    st.remove_store(path)
    assert not path.exists()


# -- stages made from inputs that were redone --------------------------------------------------


def test_new_tiles_remove_every_later_stage(tmp_path, predicted):
    root, cohort, model = predicted
    slide = cohort.slides[0]
    store = store_copy(root, slide.stem, tmp_path)
    make_heatmap(store, model, tmp_path / "hm", HeatmapOptions(exports=("geojson",)))
    assert len(_stages(store)) == 4
    tile_slide(slide, store.parent, TilingConfig(tile_size=224), overwrite=True, progress=False)
    assert _stages(store) == {st.TILES}
    group = st.open_store(store)
    assert st.FEATURES not in group and st.PREDICTIONS not in group and st.HEATMAPS not in group
    with pytest.raises(StoreError, match="no complete features"):
        features_of(store, ENCODER)


def test_new_features_remove_the_prediction_and_heatmap(tmp_path, predicted):
    root, cohort, model = predicted
    store = store_copy(root, cohort.slides[0].stem, tmp_path)
    loaded = load_model(root / model)
    make_heatmap(store, model, tmp_path / "hm", HeatmapOptions(exports=("geojson",)))
    # other parameters (here the stored dtype; in the field, other weights)
    embed_store(store, EmbedConfig(device="cpu", dtype="float16"), overwrite=True, progress=False)
    group = st.open_store(store)
    assert _stages(store) == {st.TILES, st.features_keys(ENCODER)[0]}
    assert st.models_with(group) == []
    assert st.PREDICTIONS not in group or model not in group[st.PREDICTIONS]
    for read in (
        lambda: tile_scores(store, model),
        lambda: stored_grid(store, model),
        lambda: gather(store, loaded, ReportOptions()),
    ):
        with pytest.raises(StoreError, match="predict"):
            read()
    result = predict_store(store, loaded)  # made again from the new features
    assert st.prediction_keys(model).stage in _stages(store) and 0 <= result["probability"] <= 1


def test_a_prediction_made_again_removes_its_heatmap(tmp_path, predicted):
    root, cohort, model = predicted
    store = store_copy(root, cohort.slides[0].stem, tmp_path)
    make_heatmap(store, model, tmp_path / "hm", HeatmapOptions(exports=("geojson",)))
    group = st.open_store(store, mode="r+")
    stage = st.prediction_keys(model).stage
    entry = st.stage_entry(group, stage)
    assert entry is not None
    st.begin_stage(group, stage, entry["params"], entry["params_hash"],
                   made_from=entry["made_from"]["stage"])  # fmt: skip
    assert st.heatmap_keys(model).stage not in _stages(store)
    assert st.HEATMAPS not in group or model not in group[st.HEATMAPS]


def _forge_run_id(store: Path, stage: str) -> None:
    """As if ``stage`` had been redone by a writer that did not clean up after it (another
    program, or an older wsi): its run id changes, what was made from it stays."""
    group = st.open_store(store, mode="r+")
    meta = st.read_meta(group)
    meta["stages"][stage]["run_id"] = "f" * 32
    st.write_meta(group, meta)


def test_every_reader_refuses_a_stage_made_from_redone_features(tmp_path, predicted):
    root, cohort, model = predicted
    store = store_copy(root, cohort.slides[0].stem, tmp_path)
    loaded = load_model(root / model)
    make_heatmap(store, model, tmp_path / "hm", HeatmapOptions(exports=("geojson",)))
    _forge_run_id(store, st.features_keys(ENCODER)[0])
    group = st.open_store(store)
    pred = st.prediction_keys(model).stage
    assert "made from other features" in str(st.stale_reason(group, pred))
    assert "stale" in str(st.stale_reason(group, st.heatmap_keys(model).stage))
    assert st.models_with(group) == [] and st.models_with(group, st.HEATMAPS) == []
    for read in (
        lambda: tile_scores(store, model),
        lambda: stored_grid(store, model),
        lambda: gather(store, loaded, ReportOptions()),
    ):
        with pytest.raises(StaleStageError, match=r"is stale: it was made from other features.*"
                           r"Re-run `wsi predict`"):  # fmt: skip
            read()
    proc = _wsi("report", str(store), "--model", str(root / model), "--out", str(tmp_path / "r"))
    assert proc.returncode != 0 and "is stale" in proc.stdout + proc.stderr
    predict_store(store, loaded)  # a stale prediction is simply made again
    assert st.models_with(st.open_store(store)) == [model]


def test_a_stage_of_tiles_redone_elsewhere_is_stale(tmp_path, predicted):
    root, cohort, model = predicted
    store = store_copy(root, cohort.slides[0].stem, tmp_path)
    _forge_run_id(store, st.TILES)
    group = st.open_store(store)
    assert "made from other tiles" in str(st.stale_reason(group, st.features_keys(ENCODER)[0]))
    assert "is stale" in str(st.stale_reason(group, st.prediction_keys(model).stage))
    with pytest.raises(StaleStageError, match="Re-run `wsi embed`"):
        features_of(store, ENCODER)


# -- repair ------------------------------------------------------------------------------------


def test_a_half_written_features_group_is_repaired_by_overwrite(tmp_path, predicted):
    """What two unlocked writers once left: embeddings without group metadata, no done
    flags, no stage record. Reading says so; --overwrite repairs it."""
    root, cohort, model = predicted
    store = store_copy(root, cohort.slides[0].stem, tmp_path)
    want = features_of(store, ENCODER)
    stage, _, done_key = st.features_keys(ENCODER)
    (store / stage / "zarr.json").unlink()
    for p in sorted((store / done_key).rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (store / done_key).rmdir()
    with pytest.raises(StoreError, match="overwrite"):
        features_of(store, ENCODER)
    proc = _wsi("embed", str(store), "--device", "cpu", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(features_of(store, ENCODER), want, rtol=1e-5, atol=1e-5)
    assert st.PREDICTIONS not in st.open_store(store) or not st.models_with(st.open_store(store))


def test_a_second_run_into_one_folder_is_refused_naming_the_first(tmp_path, predicted):
    root, cohort, _ = predicted
    out = tmp_path / "run"
    with holding(lock_file(out, "run"), f"run folder {out}"):
        proc = _wsi("-q", "run", str(cohort.slides[0]), "--out", str(out), "--model",
                    str(root / "abmil"), "--workers", "1", "--no-pdf")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"run folder {out} is being written by pid {os.getpid()}" in proc.stderr
    assert not (out / "stores").exists() and not (out / "summary.json").exists()


# -- model folders ------------------------------------------------------------------------------


def test_training_never_replaces_a_folder_that_is_not_a_model(tmp_path, predicted):
    from wsi.errors import ConfigError
    from wsi.mil.train import TrainConfig, train_model

    root, cohort, _ = predicted
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not part of a wsi model \(notes\.txt\)"):
        train_model(root / "stores", cohort.labels_csv, out, TrainConfig(folds=2, epochs=1))
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == [
        "notes.txt"
    ]


def test_a_second_training_into_one_model_folder_is_refused(tmp_path, predicted):
    root, cohort, _ = predicted
    out = tmp_path / "abmil"
    with holding(lock_file(out.parent, out.name), f"model folder {out}"):
        proc = _wsi("train", "--stores", str(root / "stores"), "--labels",
                    str(cohort.labels_csv), "--out", str(out), "--folds", "2")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"model folder {out} is being written by pid {os.getpid()}" in proc.stderr
    assert not out.exists()


def test_a_model_moved_aside_by_a_killed_swap_is_put_back(tmp_path, predicted, caplog):
    import shutil

    from wsi.mil.train import TrainConfig, train_model

    root, cohort, model = predicted
    aside = tmp_path / ".abmil.old-99999"  # killed between the two renames of the swap
    shutil.copytree(root / model, aside)
    with caplog.at_level(logging.WARNING, logger="wsi.mil.train"):
        out = train_model(root / "stores", cohort.labels_csv, tmp_path / "abmil",
                          TrainConfig(folds=2, epochs=2, patience=1))  # fmt: skip
    assert "restored the model a killed training had moved aside" in caplog.text
    assert not aside.exists() and load_model(out).card["model_id"]
