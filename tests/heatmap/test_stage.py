"""The heatmap stage on a real pipeline run (cohort -> tiles -> embeddings -> ABMIL ->
predictions): the hottest region overlaps the ground-truth lesion, and the stage stores the
grid with the options it ran with and the prediction it was made from."""

from __future__ import annotations

import numpy as np

from tests.heatmap.helpers import store_copy
from wsi import store as st
from wsi.heatmap import HeatmapOptions, make_heatmap, stored_options, tile_scores


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
            store_copy(root, sid, tmp_path),
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


def test_stage_stores_the_grid_and_the_options_it_ran_with(tmp_path, predicted):
    root, cohort, model = predicted
    store = store_copy(root, cohort.slides[0].stem, tmp_path)
    options = HeatmapOptions(
        source="attention_raw", normalise="raw", cmap="viridis", alpha=0.25, exports=("geojson",)
    )
    res = make_heatmap(store, model, tmp_path / "out", options)

    group = st.open_store(store)
    keys = st.heatmap_keys(model)
    attrs = dict(group[keys.stage].attrs)
    assert attrs["options"] == options.to_attrs()
    assert attrs["regions"] == res["regions"] and list(attrs["files"]) == ["geojson"]
    grid = group[keys.grid]
    assert list(grid.shape) == res["grid"]
    assert grid.attrs["slide_size_l0"] == [3000, 3000]
    assert {"origin_l0", "cell_l0", "label"} <= set(grid.attrs)
    # the grid is the mean of the raw scores the options asked for
    scores = tile_scores(store, model, source="attention_raw", normalise="raw")
    values = np.asarray(grid[:])
    assert np.nanmax(values) <= scores.scores.max() + 1e-6
    assert np.isfinite(values).sum() == len(scores.scores)  # one cell per tile here
    # its record names the prediction it was made from
    entry = st.stage_entry(group, keys.stage)
    pred = st.stage_entry(group, st.prediction_keys(model).stage)
    assert entry is not None and pred is not None
    assert entry["params"]["prediction"] == pred["params_hash"]
    assert stored_options(store, model) == options
