"""Heatmap exports: one registry that options, the CLI and the stage read; QuPath GeoJSON;
PNG overlay and the pyramidal TIFF aligned to the slide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.heatmap.helpers import store_copy
from wsi import store as st
from wsi.errors import ConfigError
from wsi.heatmap import (
    DEFAULT_EXPORTS,
    EXPORTS,
    HeatmapOptions,
    TileScores,
    heat_grid,
    make_heatmap,
    top_regions,
)
from wsi.heatmap.exports import qupath_geojson
from wsi.outputs import MANIFEST


def _scores(stride: int = 512, footprint: float = 512.0, n: int = 8) -> TileScores:
    coords = np.array(
        [(x, y) for y in range(0, n * stride, stride) for x in range(0, n * stride, stride)]
    )
    scores = (coords[:, 0] >= n * stride // 2).astype(np.float32)
    size = (int(coords[:, 0].max() + footprint), int(coords[:, 1].max() + footprint))
    return TileScores(coords, footprint, scores, size, "test")


def test_one_registry_of_exports_that_options_and_the_cli_read():
    assert list(EXPORTS) == ["png", "geojson", "tiff", "viewer"]
    assert all(callable(w) and (w.__doc__ or "").strip() for w in EXPORTS.values())
    assert set(DEFAULT_EXPORTS) <= set(EXPORTS)
    assert HeatmapOptions().exports == DEFAULT_EXPORTS
    with pytest.raises(ConfigError, match=r"heatmap exports \['pdf'\]: choose from"):
        HeatmapOptions(exports=("png", "pdf"))
    HeatmapOptions(exports=tuple(EXPORTS))  # every registered export is accepted
    with pytest.raises(TypeError):
        EXPORTS["pdf"] = EXPORTS["png"]  # type: ignore[index]  # read-only mapping

    from pipelines.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    heatmap = sub.choices["heatmap"]  # type: ignore[index]
    help_text = next(a.help for a in heatmap._actions if a.dest == "exports")
    assert help_text == (
        f"comma-separated: {','.join(EXPORTS)} (default: {','.join(DEFAULT_EXPORTS)})"
    )


def test_options_round_trip_through_attrs():
    opts = HeatmapOptions(normalise="raw", cmap="viridis", alpha=0.3, exports=("geojson",))
    attrs = json.loads(json.dumps(opts.to_attrs()))  # JSON-able, as a store holds them
    assert HeatmapOptions.from_attrs(attrs) == opts
    assert HeatmapOptions.from_attrs(attrs | {"from_a_newer_wsi": 1}) == opts
    assert opts.same_grid(HeatmapOptions(normalise="raw", cmap="jet"))
    assert not opts.same_grid(HeatmapOptions())


def test_geojson_is_valid_and_matches_the_tiles(tmp_path):
    from shapely.geometry import shape

    ts = _scores()
    grid = heat_grid(ts)
    regions = top_regions(grid, 0.2)
    path = qupath_geojson(ts, regions, tmp_path / "s.geojson")
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    tiles = [f for f in data["features"] if f["properties"]["objectType"] == "detection"]
    assert len(tiles) == len(ts.coords_l0)
    for feat, (x, y), s in zip(tiles, ts.coords_l0, ts.scores, strict=True):
        geom = shape(feat["geometry"])
        assert geom.is_valid and geom.bounds == (x, y, x + 512, y + 512)
        assert feat["properties"]["measurements"]["score"] == pytest.approx(float(s))
    tops = [f for f in data["features"] if f["properties"]["objectType"] == "annotation"]
    assert tops and all(shape(f["geometry"]).is_valid for f in tops)
    assert shape(tops[0]["geometry"]).bounds[0] >= 2048  # the hot half is on the right


def test_exports_png_and_aligned_pyramidal_tiff(tmp_path, predicted):
    import pyvips

    root, cohort, model = predicted
    sid = cohort.slides[0].stem
    store = store_copy(root, sid, tmp_path)
    res = make_heatmap(store, model, tmp_path / "out", HeatmapOptions(tiff_downsample=8))
    assert list(res["files"]) == list(DEFAULT_EXPORTS)
    png = Path(res["files"]["png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tiff = pyvips.Image.new_from_file(res["files"]["tiff"])
    assert (tiff.width, tiff.height) == (375, 375) and tiff.bands == 4
    assert tiff.get_n_pages() > 1 or tiff.get("n-pages") > 1
    assert tiff.xres == pytest.approx(1000 / (0.25 * 8), rel=1e-3)  # px per mm

    group = st.open_store(store)
    keys = st.heatmap_keys(model)
    assert st.stage_entry(group, keys.stage) is not None
    assert group[keys.grid].shape == tuple(res["grid"])
    temps = [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert [p.name for p in temps] == [MANIFEST]  # no temps; the list of what wsi wrote


def test_exports_never_replace_a_file_wsi_did_not_write(tmp_path, predicted, capsys):
    """``wsi heatmap --out <a folder of slides>``: a slide that happens to have an export's
    name is left alone (that store fails, saying which file and what to do); wsi's own
    exports are replaced on a re-run, but not once someone changed them."""
    from pipelines.cli import main

    root, cohort, model = predicted
    sid = cohort.slides[0].stem
    store = store_copy(root, sid, tmp_path)
    slides = tmp_path / "slides"
    slides.mkdir()
    someone = slides / f"{sid}_{model}.tiff"
    someone.write_bytes(cohort.slides[1].read_bytes())  # a slide, not wsi's export
    args = ["-q", "heatmap", str(store), "--model", model, "--out", str(slides)]
    assert main([*args, "--exports", "tiff"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and str(someone) in out and "--out" in out and "move" in out
    assert someone.read_bytes() == cohort.slides[1].read_bytes()
    assert not [p for p in slides.iterdir() if ".tmp" in p.name]

    someone.unlink()
    assert main([*args, "--exports", "tiff,geojson"]) == 0
    assert main([*args, "--exports", "tiff,geojson"]) == 0  # its own files: replaced
    geojson = slides / f"{sid}_{model}.geojson"
    geojson.write_text(geojson.read_text() + " ")  # edited by hand since
    assert main([*args, "--exports", "geojson"]) == 1
    assert str(geojson) in capsys.readouterr().out
    assert geojson.read_text().endswith(" ")
