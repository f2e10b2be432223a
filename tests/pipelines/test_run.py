"""``wsi run``: the whole pipeline on real Dask clusters (a LocalCluster, and a real
``dask scheduler`` with ``dask worker`` processes, one declaring a GPU resource), a bad slide
in the batch, a killed run that resumes, manifests, and config errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.config import ClusterConfig, RunConfig
from pipelines.run import run_job
from pipelines.slides import claim_ids, resolve_slides
from wsi.errors import ConfigError
from wsi.reports import ReportOptions

NO_PDF = ReportOptions(pdf=False, top_k=2, least_k=0)


def _slides(predicted, n: int) -> list[Path]:
    _, cohort, _ = predicted
    return sorted(cohort.slides)[:n]


def _status(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "status").glob("*.json")}


def test_run_on_local_cluster_with_a_bad_slide(predicted, tmp_path):
    root, cohort, _ = predicted
    good = _slides(predicted, 2)
    broken = tmp_path / "broken.tiff"
    data = good[0].read_bytes()
    broken.write_bytes(data[: len(data) // 3])  # a truncated slide file
    missing = tmp_path / "gone.svs"
    out = tmp_path / "run"
    run = RunConfig(out=str(out), model=str(root / "abmil"),
                    slides=tuple(map(str, [*good, broken, missing])))  # fmt: skip
    result = run_job(run, ClusterConfig(n_workers=2), report=NO_PDF, progress=False)
    assert result.exit_code == 1
    by_id = {s["slide_id"]: s for s in result.slides}
    for p in good:
        rec = by_id[p.stem]
        assert rec["status"] == "ok" and set(rec["stages"]) == {
            "tile", "embed", "predict", "heatmap", "report"
        }  # fmt: skip
        assert (out / "reports" / f"{p.stem}.html").exists()
        assert (out / "heatmaps" / f"{p.stem}_abmil.png").exists()
        assert (out / "heatmaps" / f"{p.stem}_abmil.geojson").exists()
    for bad, name in ((broken, "broken"), (missing, "gone")):
        rec = by_id[name]
        assert rec["status"] == "failed" and rec["stage"] == "tile"
        assert str(bad) in rec["error"] or bad.name in rec["error"]
        assert (
            not (out / "stores" / f"{name}.zarr" / "zarr.json").exists()
            or not (out / "reports" / f"{name}.html").exists()
        )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 2 and summary["failed"] == 2 and summary["exit_code"] == 1
    with open(out / "reports" / "cohort.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["slide_id"] for r in rows if r["error"]] == ["broken", "gone"]
    assert "wsi run finished: 2 ok, 2 failed" in (out / "run.log").read_text()
    for name in ("cohort.html", "cohort.csv"):  # recipient-side: no paths (they name people)
        text = (out / "reports" / name).read_text()
        assert str(tmp_path) not in text and "[path]" in text
    assert set(_status(out)) == {"broken", "gone", *(p.stem for p in good)}

    # a second run: the finished slides are skipped, the failed ones tried again
    again = run_job(run, ClusterConfig(n_workers=1), report=NO_PDF, progress=False)
    by_id = {s["slide_id"]: s for s in again.slides}
    assert all(by_id[p.stem].get("skipped") for p in good)
    assert by_id["broken"]["status"] == "failed" and not by_id["broken"].get("skipped")


@pytest.fixture
def dask_cluster(tmp_path):
    """A real ``dask scheduler`` and two ``dask worker`` processes on localhost: ``gpu0``
    declares the resource GPU=1 (this machine has no GPU: the encoder runs on its CPU),
    ``cpu0`` declares none."""
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
                "--host",
                "127.0.0.1",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    ]
    deadline = time.monotonic() + 60
    while not sched_file.exists():
        assert time.monotonic() < deadline, "the dask scheduler did not start"
        time.sleep(0.2)
    time.sleep(0.5)
    address = json.loads(sched_file.read_text())["address"]
    for name, extra in (("gpu0", ["--resources", "GPU=1"]), ("cpu0", [])):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    address,
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--no-dashboard",
                    "--name",
                    name,
                    "--memory-limit",
                    "4GiB",
                    *extra,
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                cwd=tmp_path,
            )  # fmt: skip
        )
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=90)
        workers = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
    try:
        yield address, workers
    finally:
        for p in procs[::-1]:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_run_on_a_real_scheduler_embeds_on_the_gpu_worker(predicted, dask_cluster, tmp_path):
    address, workers = dask_cluster
    root, _, _ = predicted
    slides = _slides(predicted, 3)
    out = tmp_path / "run"
    rc = main(["-q", "run", *map(str, slides), "--out", str(out), "--model",
               str(root / "abmil"), "--scheduler", address, "--no-pdf"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 3
    for s in summary["per_slide"]:
        assert s["embed_worker"] == workers["gpu0"], "the encoder ran off the GPU worker"
    assert (out / "reports" / "cohort.html").exists()
    # a model whose encoder weights the workers lack: each slide fails with the weights
    # error itself (the workers may differ from this machine, so it is not checked up front)
    uni = tmp_path / "uni_model"
    shutil.copytree(root / "abmil", uni)
    card = json.loads((uni / "model.json").read_text())
    card["encoder"]["name"] = "uni"  # as if trained on UNI features
    (uni / "model.json").write_text(json.dumps(card))
    rc = main(["-q", "run", str(slides[0]), "--out", str(tmp_path / "u"), "--model", str(uni),
               "--scheduler", address, "--no-pdf"])  # fmt: skip
    failed = json.loads((tmp_path / "u" / "summary.json").read_text())["per_slide"][0]
    assert rc == 2 and failed["status"] == "failed"  # 2: no slide done
    assert "internal error" not in failed["error"] and "uni" in failed["error"]
    # the same job against an unreachable scheduler: a clear error, exit 2
    rc = main(["-q", "run", str(slides[0]), "--out", str(tmp_path / "x"), "--model",
               str(root / "abmil"), "--scheduler", "tcp://127.0.0.1:9", "--no-pdf"])  # fmt: skip
    assert rc == 2


def test_killed_run_resumes_and_finishes_only_what_is_missing(predicted, tmp_path):
    root, _, _ = predicted
    slides = _slides(predicted, 4)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipelines.cli", "-q", "run", *map(str, slides), "--out",
           str(out), "--model", str(root / "abmil"), "--no-pdf", "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while not any((out / "status").glob("*.json")):  # one slide finished: kill the run
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = set(_status(out))
    assert 1 <= len(first) < len(slides)
    assert not (out / "summary.json").exists()
    rc = main(["-q", "run", *map(str, slides), "--out", str(out), "--model",
               str(root / "abmil"), "--no-pdf", "--workers", "2"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    done_before = {s["slide_id"] for s in summary["per_slide"] if s.get("skipped")}
    assert done_before == first and summary["ok"] == len(slides)
    assert len(list((out / "reports").glob("slide_*.html"))) == len(slides)


def test_manifest_ids_and_mpp(predicted, tmp_path):
    root, _, _ = predicted
    slide = _slides(predicted, 1)[0]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_id,path,mpp,patient_id,label\ncase-A,{slide},0.25,Jane Doe,tumor\n")
    out = tmp_path / "run"
    run = RunConfig(out=str(out), model=str(root / "abmil"), manifest=str(manifest))
    result = run_job(run, ClusterConfig(n_workers=1), report=NO_PDF, progress=False)
    assert result.exit_code == 0
    assert (out / "stores" / "case-A.zarr").is_dir()
    html = (out / "reports" / "case-A.html").read_text()
    assert "case-A" in html and "Resolution set by hand" in html
    assert "Jane Doe" not in html and slide.stem not in html  # the pseudonym only
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,path,mpp\nx,a.svs,fast\n")
    with pytest.raises(ConfigError, match=r"bad.csv:2: mpp 'fast'"):
        resolve_slides(RunConfig(out="o", model="m", manifest=str(bad)))


def test_run_config_file_and_its_errors(predicted, tmp_path, capsys):
    root, _, _ = predicted
    slide = _slides(predicted, 1)[0]
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"run:\n  out: out\n  model: {root / 'abmil'}\n  slides: [{slide}]\n"
        "report:\n  pdf: false\n  top_k: 2\ncluster:\n  n_workers: 1\n"
    )
    assert main(["-q", "run", "--config", str(cfg)]) == 0
    assert (tmp_path / "out" / "reports" / f"{slide.stem}.html").exists()  # relative to file
    cfg.write_text(f"run:\n  out: out\n  modle: {root / 'abmil'}\n  slides: [{slide}]\n")
    assert main(["-q", "run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "run.modle" in err and "model" in err


def test_folder_and_glob_inputs(predicted, tmp_path):
    slides = _slides(predicted, 2)
    folder = tmp_path / "in"
    folder.mkdir()
    for s in slides:
        shutil.copy(s, folder / s.name)
    (folder / "notes.txt").write_text("not a slide")
    jobs = resolve_slides(RunConfig(out="o", model="m", slides=(str(folder),)))
    assert [j.slide_id for j in jobs] == [s.stem for s in slides]
    jobs = resolve_slides(RunConfig(out="o", model="m", slides=(str(folder / "*.tiff"),)))
    assert len(jobs) == 2
    with pytest.raises(ConfigError, match="nothing|no slide"):
        resolve_slides(RunConfig(out="o", model="m", slides=(str(folder / "*.svs"),)))
    twice = tmp_path / "other"
    twice.mkdir()
    shutil.copy(slides[0], twice / slides[0].name)
    # the same id twice: the slide of the second file fails alone (tests below), naming both
    jobs = resolve_slides(RunConfig(out="o", model="m", slides=(str(folder), str(twice))))
    claimed = claim_ids([*jobs, jobs[0]])  # a file listed twice is one slide
    assert [(j.path.parent.name, msg is None) for j, msg in claimed] == [
        ("in", True), ("in", True), ("other", False)
    ]  # fmt: skip
    msg = claimed[2][1]
    assert "stores would collide" in msg
    assert str(folder / slides[0].name) in msg and str(twice / slides[0].name) in msg


def test_a_slide_id_taken_twice_fails_that_slide_only(predicted, tmp_path):
    """Two files of one id in a run: the first is done, the second fails with a message
    naming both files, and it leaves the first one's status file alone."""
    root, _, _ = predicted
    first, other = _slides(predicted, 2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(first, tmp_path / "a" / "S1.tiff")
    shutil.copy(other, tmp_path / "b" / "S1.tiff")
    out = tmp_path / "run"
    run = RunConfig(out=str(out), model=str(root / "abmil"),
                    slides=(str(tmp_path / "a"), str(tmp_path / "b")))  # fmt: skip
    result = run_job(run, ClusterConfig(n_workers=1), report=NO_PDF, progress=False)
    assert result.exit_code == 1
    ok, clash = result.slides
    assert ok["slide_id"] == clash["slide_id"] == "S1"
    assert ok["status"] == "ok" and ok["path"] == str(tmp_path / "a" / "S1.tiff")
    assert clash["status"] == "failed" and clash["stage"] == "tile"
    assert str(tmp_path / "a" / "S1.tiff") in clash["error"]
    assert str(tmp_path / "b" / "S1.tiff") in clash["error"]
    assert _status(out)["S1"]["status"] == "ok"
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ok"], summary["failed"]) == (1, 1)
    with open(out / "reports" / "cohort.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(bool(r["error"]) for r in rows) == [False, True]


@pytest.mark.slow  # 73 s; the default run keeps the killed-run resume test of wsi run
def test_rerun_redoes_what_changed(predicted, tmp_path):
    """A retrained model (new id) redoes predictions and reports; a deleted store is
    rebuilt; an unchanged slide is skipped."""
    from wsi.mil.train import TrainConfig, train_model

    root, cohort, _ = predicted
    model = tmp_path / "abmil"
    shutil.copytree(root / "abmil", model)
    slide = _slides(predicted, 1)[0]
    out = tmp_path / "run"
    run = RunConfig(out=str(out), model=str(model), slides=(str(slide),))
    first = run_job(run, ClusterConfig(n_workers=1), report=NO_PDF, progress=False)
    assert first.exit_code == 0
    old_id = json.loads((model / "model.json").read_text())["model_id"]
    train_model(
        root / "stores",
        cohort.labels_csv,
        model,
        TrainConfig(folds=2, epochs=5, patience=5, lr=1e-3, target_sensitivity=0.5),
    )
    new_id = json.loads((model / "model.json").read_text())["model_id"]
    assert new_id != old_id
    again = run_job(run, ClusterConfig(n_workers=1), report=NO_PDF, progress=False)
    assert again.exit_code == 0 and not again.slides[0].get("skipped")
    row = json.loads((out / "reports" / f"{slide.stem}.json").read_text())
    assert row["model_id"] == new_id
    shutil.rmtree(out / "stores" / f"{slide.stem}.zarr")
    rebuilt = run_job(run, ClusterConfig(n_workers=1), report=NO_PDF, progress=False)
    assert rebuilt.exit_code == 0 and not rebuilt.slides[0].get("skipped")
    assert (out / "stores" / f"{slide.stem}.zarr" / "zarr.json").exists()
    same = run_job(run, ClusterConfig(n_workers=1), report=NO_PDF, progress=False)
    assert same.slides[0].get("skipped")


def test_missing_encoder_weights_stop_the_run_before_any_slide(
    predicted, tmp_path, monkeypatch, capsys
):
    """A model trained on `uni` features where no `uni` weights are installed: `wsi run` on
    a LocalCluster stops at once (exit 2), naming the weights and where to put them,
    instead of failing every slide with an internal error."""
    root, _, _ = predicted
    monkeypatch.setenv("WSI_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model = tmp_path / "uni_model"
    shutil.copytree(root / "abmil", model)
    card = json.loads((model / "model.json").read_text())
    card["encoder"]["name"] = "uni"  # as if trained on UNI features
    (model / "model.json").write_text(json.dumps(card))
    out = tmp_path / "run"
    slides = [str(p) for p in _slides(predicted, 2)]
    code = main(["-q", "run", *slides, "--model", str(model), "--out", str(out),
                 "--workers", "1", "--no-pdf"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "'uni' encoder weights" in err and "no weight file" in err
    assert "--weights PATH" in err and "weights/uni/" in err and "internal error" not in err
    assert not (out / "stores").exists() or not any((out / "stores").iterdir())


@pytest.mark.parametrize(
    "option", [["--workers", "0"], ["--workers", "-3"], ["--mpp", "0"], ["--mpp", "-1"],
               ["--mpp", "nan"], ["--mpp", "inf"]],
)  # fmt: skip
def test_bad_workers_and_mpp_are_refused_before_any_work(tmp_path, option):
    slide = tmp_path / "s.svs"
    slide.write_bytes(b"not read: the options are refused first")
    out = str(tmp_path / "out")
    commands = [["tile", str(slide), "--out", out]]
    if option[0] == "--workers":  # wsi run takes mpp from a manifest
        commands.append(["run", str(slide), "--out", out, "--model", "m"])
    for command in commands:
        r = subprocess.run([sys.executable, "-m", "pipelines.cli", *command, *option],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 2, r.stderr
        assert f"argument {option[0]}: {option[1]!r} is not" in r.stderr
        assert "from 1 to 1024" in r.stderr or "micrometres per pixel from 0.05" in r.stderr
        assert not (tmp_path / "out").exists()


def test_bad_inputs_fail_alone_and_every_slide_error_is_in_run_log(predicted, tmp_path, capsys):
    """A symlink loop, a folder named like a slide and a truncated slide among the inputs:
    each fails as that slide (summary.json, the printed table, run.log with slide, stage
    and message), and the good slide is done."""
    root, _, _ = predicted
    good = _slides(predicted, 1)[0]
    (tmp_path / "loop_a.svs").symlink_to(tmp_path / "loop_b.svs")
    (tmp_path / "loop_b.svs").symlink_to(tmp_path / "loop_a.svs")
    (tmp_path / "x.svs").mkdir()
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(good.read_bytes()[:20000])  # fails once the cluster is up
    out = tmp_path / "run"
    inputs = [good, tmp_path / "loop_a.svs", tmp_path / "x.svs", broken]
    rc = main(["-q", "run", *map(str, inputs), "--out", str(out), "--model",
               str(root / "abmil"), "--workers", "1", "--no-pdf"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 1
    summary = json.loads((out / "summary.json").read_text())
    by_id = {s["slide_id"]: s for s in summary["per_slide"]}
    assert by_id[good.stem]["status"] == "ok"
    assert "symbolic link loop" in by_id["loop_a"]["error"]
    assert "is a folder" in by_id["x"]["error"]
    assert by_id["broken"]["status"] == "failed"
    log_text = (out / "run.log").read_text()
    for sid in ("loop_a", "x", "broken"):
        rec = by_id[sid]
        assert rec["status"] == "failed" and rec["stage"] == "tile"
        assert f"{sid:<28} FAILED   tile     {rec['error']}" in printed
        assert f"{sid}: tile failed: {rec['error']}" in log_text
    assert "wsi run finished: 1 ok, 3 failed" in log_text


@pytest.mark.slow  # the same error path is proved fast by tests/test_report.py's two tests
def test_a_read_only_reports_folder_stops_the_run_with_one_clear_error(
    predicted, tmp_path, small_disk, capsys
):
    """The report stage of ``wsi run`` cannot write: exit 2 with a message naming the
    output folder and the fix, no traceback, no temporary file left."""
    root, _, _ = predicted
    good = _slides(predicted, 1)[0]
    out = tmp_path / "run"
    small_disk("run/reports", read_only=True)
    rc = main(["-q", "run", str(good), "--out", str(out), "--model", str(root / "abmil"),
               "--workers", "1", "--no-pdf"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert f"output folder {out}" in err and "writable" in err and "--out" in err
    assert "Traceback" not in err
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or ".partial" in p.name]
    assert json.loads((out / "status" / f"{good.stem}.json").read_text())["stage"] == "report"


def test_a_run_never_takes_its_own_outputs_for_slides(tmp_path):
    """--out inside the input folder, and a wsi export among the slides: neither is an
    input (a recursive glob would otherwise find the run's heatmap TIFFs)."""
    from wsi.outputs import write_output

    folder = tmp_path / "in"
    (folder / "run" / "heatmaps").mkdir(parents=True)
    (folder / "s.tiff").write_bytes(b"II*\0 a slide")
    (folder / "run" / "heatmaps" / "s_abmil.tiff").write_bytes(b"II*\0 an export")
    write_output(folder / "other_abmil.tiff", b"II*\0 an export")  # wsi wrote it here
    for entry in (str(folder), str(folder / "**" / "*.tiff")):
        run = RunConfig(out=str(folder / "run"), model="m", slides=(entry,))
        assert [j.path for j in resolve_slides(run)] == [folder / "s.tiff"]


def test_a_patient_level_model_reads_each_patients_slides_as_one_bag(predicted, tmp_path):
    """A model trained with level: patient: `wsi run` waits until all the slides of a
    manifest patient are embedded, predicts them as one bag, and reports every slide."""
    from wsi.mil.train import TrainConfig, train_model
    from wsi.store import open_store, prediction_keys

    root, cohort, _ = predicted
    model_dir = train_model(root / "stores", cohort.labels_csv, tmp_path / "by_patient",
                            TrainConfig(folds=2, epochs=3, level="patient"))  # fmt: skip
    with open(cohort.labels_csv) as f:
        labels = list(csv.DictReader(f))
    by_patient: dict[str, list[str]] = {}
    for r in labels:
        by_patient.setdefault(r["patient_id"], []).append(r["slide_id"])
    two = [p for p, ids in by_patient.items() if len(ids) == 2][:2]
    paths = {p.stem: p for p in cohort.slides}
    manifest = tmp_path / "manifest.csv"
    lines = [f"{s},{paths[s]},,{p}" for p in two for s in by_patient[p]]
    manifest.write_text("slide_id,path,mpp,patient_id\n" + "\n".join(lines) + "\n")
    out = tmp_path / "run"
    run = RunConfig(out=str(out), model=str(model_dir), manifest=str(manifest))
    result = run_job(run, ClusterConfig(n_workers=2), report=NO_PDF, progress=False)
    assert result.exit_code == 0, result.slides
    for p in two:
        preds = [
            dict(
                open_store(out / "stores" / f"{s}.zarr")[prediction_keys("by_patient").stage].attrs
            )
            for s in by_patient[p]
        ]
        # in slide-id order, whichever slide was embedded first
        assert preds[0]["patient_slides"] == preds[1]["patient_slides"] == sorted(by_patient[p])
        assert preds[0]["probability"] == preds[1]["probability"]
        assert sum(q["attention_share"] for q in preds) == pytest.approx(1, abs=1e-4)
        for s in by_patient[p]:
            html = (out / "reports" / f"{s}.html").read_text()
            assert "A patient-level call" in html and p not in html  # slide ids only


def test_a_folder_of_dicom_slides(predicted, dicom_svs, dicom_synthetic, tmp_path):
    """A folder of DICOM slides, each a folder of .dcm files, and a loose .dcm file of
    one of them: each slide is found and done once, under its folder's name; its store
    and report hold nothing of its label, overview (macro) or patient."""
    import openslide

    from tests.conftest import DICOM_PATIENT, data_images, looks_like

    root, _, _ = predicted
    cohort = tmp_path / "cohort"
    a = shutil.copytree(dicom_svs, cohort / "case_a")
    b = shutil.copytree(dicom_synthetic, cohort / "case_b")
    (cohort / "notes.txt").write_text("not a slide")
    loose = sorted(b.glob("*.dcm"))[0]
    for entries in ([cohort, loose], [cohort / "**" / "*.dcm"], [cohort / "case_*"]):
        jobs = resolve_slides(RunConfig(out="o", model="m", slides=tuple(map(str, entries))))
        claimed = [job for job, msg in claim_ids(jobs) if msg is None]
        assert [(j.slide_id, j.path) for j in claimed] == [("case_a", a), ("case_b", b)]
        assert len(claim_ids(jobs)) == 2  # the loose file is its folder's slide, once

    out = tmp_path / "run"
    run = RunConfig(out=str(out), model=str(root / "abmil"), slides=(str(cohort), str(loose)))
    result = run_job(run, ClusterConfig(n_workers=1), report=NO_PDF, progress=False)
    assert result.exit_code == 0, result.slides
    assert [(s["slide_id"], s["status"]) for s in result.slides] == [
        ("case_a", "ok"), ("case_b", "ok")
    ]  # fmt: skip
    with openslide.OpenSlide(str(next(a.glob("*.dcm")))) as osr:
        hidden = [np.asarray(osr.associated_images[k].convert("RGB")) for k in ("label", "macro")]
    store_text = "".join(p.read_text() for p in (out / "stores").rglob("zarr.json"))
    html = (out / "reports" / "case_a.html").read_text()
    for secret in (*DICOM_PATIENT, "PatientName", "PatientID"):
        assert secret not in store_text and secret not in html, secret
    assert "label" not in html and "macro" not in html
    images = data_images(html)
    assert len(images) > 2  # the thumbnail and tiles
    assert not any(looks_like(img, h) for img in images for h in hidden)
