"""Heatmaps: tile-grid values, rendering, QuPath GeoJSON, pyramidal TIFF, and on a real
pipeline run (cohort -> tiles -> embeddings -> ABMIL -> predictions) the hottest region
overlapping the ground-truth lesion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsi.heatmap import HeatGrid, TileScores, heat_grid
from wsi.heatmap_exports import HeatmapOptions, make_heatmap, qupath_geojson, top_regions


def _scores(stride: int = 512, footprint: float = 512.0, n: int = 8) -> TileScores:
    coords = np.array(
        [(x, y) for y in range(0, n * stride, stride) for x in range(0, n * stride, stride)]
    )
    scores = (coords[:, 0] >= n * stride // 2).astype(np.float32)
    size = (int(coords[:, 0].max() + footprint), int(coords[:, 1].max() + footprint))
    return TileScores(coords, footprint, scores, size, "test")


def test_overlapping_tiles_average_and_edges_stay_true():
    grid = heat_grid(_scores(stride=256, footprint=512.0))
    assert grid.cell_l0 == 256 and grid.values.shape == (9, 9)
    # the cell at x 1024..1280 is covered by a 0-tile (x=768) and a 1-tile (x=1024)
    assert grid.values[0, 3] == 0 and grid.values[0, 4] == 0.5 and grid.values[0, 5] == 1
    heat = grid.render(64)
    assert heat.shape == (36, 36)
    assert set(np.unique(heat[0])) == {0.0, 0.5, 1.0}  # no blur without smoothing
    smooth = grid.render(64, smooth=True)
    assert len(np.unique(smooth[0])) > 3 and np.isfinite(smooth).all()


def test_render_is_sized_by_the_output_not_the_slide():
    n = 196  # a 100k x 100k px slide tiled at 512 px
    coords = np.array([(x * 512, y * 512) for y in range(n) for x in range(n)])
    ts = TileScores(
        coords,
        512.0,
        np.random.default_rng(0).random(len(coords)).astype(np.float32),
        (100_352, 100_352),
        "big",
    )
    grid = heat_grid(ts)
    assert grid.values.shape == (n, n) and grid.values.nbytes < 200_000
    heat = grid.render(100.352)
    assert heat.shape == (1000, 1000)
    off = HeatGrid(grid.values, (5000.0, 5000.0), 512.0, (200_000, 200_000))
    assert np.isnan(off.render(1000)[0, 0])  # outside every tile


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


def test_hottest_region_overlaps_the_ground_truth_lesion(tmp_path, predicted):
    import csv

    from PIL import Image

    root, cohort, model = predicted
    with open(cohort.labels_csv) as f:
        positives = [r["slide_id"] for r in csv.DictReader(f) if r["label"] == "tumor"]
    assert positives
    hits = 0
    for sid in positives:
        res = make_heatmap(
            root / "stores" / f"{sid}.zarr",
            model,
            tmp_path / "out",
            HeatmapOptions(exports=("geojson",)),
        )
        x0, y0, x1, y1 = res["regions"][0]["bbox_l0"]
        mask = np.asarray(Image.open(cohort.masks_dir / f"{sid}_lesion.png")) > 0
        d = cohort.mask_downsample
        window = mask[int(y0 // d) : int(np.ceil(y1 / d)), int(x0 // d) : int(np.ceil(x1 / d))]
        hits += bool(window.any())
    assert hits == len(positives)


def test_exports_png_and_aligned_pyramidal_tiff(tmp_path, predicted):
    import pyvips

    root, cohort, model = predicted
    sid = cohort.slides[0].stem
    res = make_heatmap(
        root / "stores" / f"{sid}.zarr", model, tmp_path, HeatmapOptions(tiff_downsample=8)
    )
    png = Path(res["files"]["png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tiff = pyvips.Image.new_from_file(res["files"]["tiff"])
    assert (tiff.width, tiff.height) == (375, 375) and tiff.bands == 4
    assert tiff.get_n_pages() > 1 or tiff.get("n-pages") > 1
    assert tiff.xres == pytest.approx(1000 / (0.25 * 8), rel=1e-3)  # px per mm
    from wsi import store as st

    group = st.open_store(root / "stores" / f"{sid}.zarr")
    assert st.stage_entry(group, f"heatmaps/{model}") is not None
    assert group[f"heatmaps/{model}/grid"].shape == tuple(res["grid"])
