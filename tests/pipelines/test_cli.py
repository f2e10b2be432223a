"""The `wsi` command line: info, and a batch where one bad slide does not stop the rest."""

from __future__ import annotations

import json
import subprocess
import sys

from wsi import store as st


def _wsi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_info_json(real_slide, tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    r = _wsi("info", "--json", str(real_slide), str(bad))
    assert r.returncode == 1
    rows = json.loads(r.stdout)
    assert rows[0]["mpp"]["x"] == 0.499 and rows[0]["level_dimensions"][0] == [2220, 2967]
    assert "bad.svs" in rows[1]["error"]


def test_info_table(svs):
    r = _wsi("info", str(svs))
    assert r.returncode == 0
    assert "0.4990 x 0.4990 um/px (metadata)" in r.stdout and "aperio" in r.stdout


def test_batch_with_a_bad_slide(tmp_path, svs, pyramid):
    bad = tmp_path / "renamed.svs"
    bad.write_text("a text file")
    out = tmp_path / "out"
    r = _wsi("-q", "tile", str(svs), str(bad), str(pyramid), "--out", str(out), "--workers", "2")
    assert r.returncode == 1, r.stderr
    assert "tiled 2 of 3 slide(s)" in r.stdout
    assert "FAILED" in r.stdout and "renamed.svs" in r.stdout
    for name in ("CMU-1-Small-Region", "CMU-1-Small-Region_pyramid_generic"):
        assert st.stage_entry(st.open_store(out / f"{name}.zarr"), "tiles") is not None
    assert not (out / "renamed.zarr").exists()


def test_tile_batch_with_a_slide_id_taken_twice(tmp_path, svs, pyramid):
    """Two files of one id: the first is tiled, the second fails naming both, exit 1."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "S1.svs", tmp_path / "b" / "S1.tiff"
    first.write_bytes(svs.read_bytes())
    second.write_bytes(pyramid.read_bytes())
    out = tmp_path / "out"
    r = _wsi("-q", "tile", str(first), str(second), "--out", str(out), "--workers", "1")
    assert r.returncode == 1, r.stderr
    assert "tiled 1 of 2 slide(s)" in r.stdout
    failed = [line for line in r.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and str(second) in failed[0] and str(first) in failed[0]
    assert st.read_meta(st.open_store(out / "S1.zarr"))["source"]["size"] == svs.stat().st_size


def test_wrong_option_value_is_reported(tmp_path, svs):
    r = _wsi("tile", str(svs), "--out", str(tmp_path), "--tile-size", "3")
    assert r.returncode == 2
    assert "tile_size = 3" in r.stderr


def test_existing_scheduler(tmp_path, pyramid):
    from pipelines.cluster import dask_client

    with dask_client(workers=1) as client:
        address = client.scheduler.address
        r = _wsi("-q", "tile", str(pyramid), "--out", str(tmp_path), "--scheduler", address)
        assert r.returncode == 0, r.stderr
        # the tasks ran on that cluster's worker
        assert any(
            "tile-" in str(k)
            for k in client.run_on_scheduler(
                lambda dask_scheduler: list(dask_scheduler.task_prefixes)
            )
        )
    store = tmp_path / "CMU-1-Small-Region_pyramid_generic.zarr"
    assert st.stage_entry(st.open_store(store), "tiles")["counts"]["tiles"] > 10


def test_demo_runs_the_whole_pipeline(tmp_path, capsys):
    """wsi demo, smaller than its default: cohort -> train ABMIL -> wsi run on held-out
    slides -> heatmaps, viewer, reports (HTML + PDF), and where to look."""
    import csv
    import json

    from pipelines.cli import main

    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--slides", "16", "--size", "2800"]) == 0
    printed = capsys.readouterr().out
    assert "Where to look" in printed and "held-out slides against the truth" in printed
    summary = json.loads((out / "run" / "summary.json").read_text())
    held = {r["slide_id"] for r in summary["per_slide"]}
    with open(out / "train_labels.csv") as f:
        trained = {r["slide_id"] for r in csv.DictReader(f)}
    assert held and not held & trained  # the run saw only slides the model never trained on
    assert summary["ok"] == len(held) and summary["failed"] == 0
    reports = out / "run" / "reports"
    for sid in held:
        assert (reports / f"{sid}.html").exists() and (reports / f"{sid}.pdf").exists()
        assert (out / "run" / "heatmaps" / f"{sid}_abmil_viewer" / "index.html").exists()
    assert (reports / "cohort.html").exists() and (out / "abmil" / "model.json").exists()
