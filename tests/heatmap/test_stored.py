"""One reader of the heat grid: the viewer, the report and the notebook show the grid the
heatmap stage stored (drawn with the options it ran with) while it is made from the current
prediction, never a stale one, and reading never writes into the store."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

import wsi
from tests.heatmap.helpers import store_copy
from wsi import store as st
from wsi.heatmap import HeatmapOptions, make_heatmap, stored_grid, write_viewer

#: added to the stored grid: no recomputed score (attention, ranks) comes near it
SHIFT = 100.0


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _doctored(root: Path, sid: str, model: str, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A store whose heatmap stage ran with raw scores, then had SHIFT added to its stored
    grid: what a recomputation can never give."""
    store = store_copy(root, sid, tmp_path)
    raw = HeatmapOptions(source="attention", normalise="raw", exports=("geojson",))
    make_heatmap(store, model, tmp_path / "out", raw)
    group = st.open_store(store, mode="r+")
    arr = group[st.heatmap_keys(model).grid]
    doctored = np.asarray(arr[:]) + SHIFT
    arr[...] = doctored
    return store, doctored


def _make_stale(store: Path, model: str) -> None:
    """As if the prediction were made again by another model of the same name."""
    group = st.open_store(store, mode="r+")
    meta = st.read_meta(group)
    meta["stages"][st.prediction_keys(model).stage]["params_hash"] = "0" * 16
    st.write_meta(group, meta)


def test_stored_grid_is_read_back_with_its_options(tmp_path, predicted):
    root, cohort, model = predicted
    store, doctored = _doctored(root, cohort.slides[0].stem, model, tmp_path)

    grid, options, regions = stored_grid(store, model)
    np.testing.assert_array_equal(grid.values, doctored)
    assert options.normalise == "raw" and options.exports == ("geojson",)
    assert regions and regions[0].mean_score > SHIFT  # the regions of the stored grid
    assert grid.slide_size_l0 == (3000, 3000)
    # options that change only the drawing keep the stored grid; others compute theirs
    gray = HeatmapOptions(source="attention", normalise="raw", cmap="gray")
    same, used, _ = stored_grid(store, model, gray)
    np.testing.assert_array_equal(same.values, doctored)
    assert used.cmap == "gray"
    fresh, used, _ = stored_grid(store, model, HeatmapOptions())
    assert np.nanmax(fresh.values) < SHIFT and used == HeatmapOptions()
    assert (fresh.vmin, fresh.vmax) == (0.0, pytest.approx(_model_scale(root)))

    # the notebook: the stored grid and options, field overrides on top of them
    heat = wsi.Heatmap(store, model)
    np.testing.assert_array_equal(heat.grid.values, doctored)
    assert heat.options == options
    light = wsi.Heatmap(store, model, alpha=0.3)
    np.testing.assert_array_equal(light.grid.values, doctored)
    assert light.options.normalise == "raw" and light.options.alpha == 0.3
    assert np.nanmax(wsi.Heatmap(store, model, normalise="rank").grid.values) <= 1.0
    assert len(heat.scores.scores) == wsi.open_store(store).tiles

    # the viewer: its colour scale spans the stored (raw, shifted) values
    folder = write_viewer(store, model, tmp_path / "viewers")
    page = (folder / "index.html").read_text()
    match = re.search(r'<script type="application/json" id="viewer-config">(.*?)</script>', page)
    assert match is not None
    config = json.loads(match.group(1).replace("<\\/", "</"))
    assert config["legend"]["min"] >= SHIFT
    assert config["legend"]["max"] == pytest.approx(float(np.nanmax(doctored)))
    assert config["regions"][0]["mean_score"] > SHIFT


def test_a_stale_or_old_stored_grid_is_not_used(tmp_path, predicted):
    root, cohort, model = predicted
    store, doctored = _doctored(root, cohort.slides[0].stem, model, tmp_path)
    _make_stale(store, model)
    grid, options, _ = stored_grid(store, model)
    assert options == HeatmapOptions()  # no current stored heatmap: the defaults
    assert np.nanmax(grid.values) < SHIFT  # computed from the prediction
    assert np.nanmax(wsi.Heatmap(store, model).grid.values) < SHIFT

    # a heatmap stored by a wsi that kept no options is computed again too
    old, _ = _doctored(root, cohort.slides[1].stem, model, tmp_path / "old")
    group = st.open_store(old, mode="r+")
    attrs = group[st.heatmap_keys(model).stage].attrs
    del attrs["options"]
    assert stored_grid(old, model)[1] == HeatmapOptions()


def test_reading_writes_nothing(tmp_path, predicted):
    root, cohort, model = predicted
    store = store_copy(root, cohort.slides[0].stem, tmp_path)
    before = _snapshot(store)
    stored_grid(store, model)
    wsi.Heatmap(store, model)
    assert _snapshot(store) == before
    assert st.HEATMAPS not in st.open_store(store)


def _model_scale(root: Path) -> float:
    return float(json.loads((root / "abmil" / "model.json").read_text())["evidence"]["scale"])


def _greenish(rgb: np.ndarray) -> int:
    """Pixels of the jet colour map's middle (green-cyan-yellow): never in H&E or grey."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    return int(((g - r > 40) & (g - b > 20)).sum())


def _grey_heat(rgb: np.ndarray) -> float:
    """Share of the picture that is grey and not white: a grey heat layer, opaque."""
    x = rgb.astype(np.int16)
    return float(((x.max(-1) - x.min(-1) < 12) & (x.min(-1) <= 235)).mean())


def _overlay(html: Path) -> np.ndarray:
    from PIL import Image

    srcs = re.findall(r'<img[^>]+src="(data:image/[a-z]+;base64,[^"]+)"', html.read_text())
    data = srcs[1].split(",", 1)[1]  # the thumbnail, then the overlay
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_report_draws_with_the_stored_options(tmp_path, predicted):
    from wsi.reports import ReportOptions, report_slide

    root, cohort, model = predicted
    store = store_copy(root, cohort.slides[0].stem, tmp_path)
    options = ReportOptions(pdf=False)
    default = report_slide(store, root / "abmil", tmp_path / "r1", options)
    drawn = _overlay(default.html)
    # no stored heatmap: the defaults (evidence, magma: no green; its dark end over the
    # tissue at opacity 0.5 is greyish, but far from an opaque grey layer)
    assert _greenish(drawn) < 20 and _grey_heat(drawn) < 0.2
    assert "evidence for tumor" in default.html.read_text()

    jet = HeatmapOptions(source="attention", normalise="rank", cmap="jet", exports=())
    make_heatmap(store, model, tmp_path / "out", jet)
    shown = _overlay(report_slide(store, root / "abmil", tmp_path / "r2", options).html)
    assert _greenish(shown) > 200  # the stored options: jet, ranked

    make_heatmap(store, model, tmp_path / "out", HeatmapOptions(cmap="gray", alpha=1.0, exports=()))
    grey = report_slide(store, root / "abmil", tmp_path / "r2", options)
    shown = _overlay(grey.html)
    assert _greenish(shown) < 20 and _grey_heat(shown) > 0.3  # the stored grey map, opaque

    _make_stale(store, model)  # a prediction made since: back to the defaults
    again = report_slide(store, root / "abmil", tmp_path / "r3", options)
    assert _grey_heat(_overlay(again.html)) < 0.2
