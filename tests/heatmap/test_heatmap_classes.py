"""Heatmaps per class: a tiny CLAM-MB multiclass model (features-only stores, as in
tests/mil/test_tasks.py) predicted on one store, then the heatmap stage with PNG, GeoJSON
and viewer: one stored grid per class, one GeoJSON measurement per class, one PNG per
class, and a class picker in the viewer that switches the layer in a real Chromium. A
binary model's heatmap of the same store has none of these; survival and regression
predictions say where the risk (the value) comes from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.browser import NEXT_FRAMES, Chromium, find_browser
from tests.mil.test_tasks import CLASSES, ENC, FAST, _stores, _write_csv
from wsi import store as st
from wsi.heatmap import HeatmapOptions, make_heatmap, stored_grid, stored_layers, write_viewer
from wsi.heatmap.classes import TASK_CAPTIONS
from wsi.heatmap.grid import heat_grid, rank_scores, tile_scores
from wsi.mil.predict import load_model, predict_store
from wsi.mil.train import TrainConfig, train_model

EXPORTS = ("png", "geojson", "viewer")
TINY = FAST | {"folds": 2, "epochs": 2, "patience": 2}


def _attach_slide(store: Path, root: Path) -> None:
    """Give a features-only store a slide file of its tiles' extent (the PNG and the
    viewer read the slide), recorded as its source."""
    from wsi.synthetic import make_synthetic_slide

    group = st.open_store(store, mode="r+")
    coords = np.asarray(group[st.TILES_COORDS][:])
    footprint = float(group[st.TILES_COORDS].attrs["footprint_l0"])
    w, h = (int(coords[:, k].max() + footprint) for k in (0, 1))
    path = root / "slides" / f"{store.stem}.tiff"
    make_synthetic_slide(path, width=w, height=h, mpp=0.5, seed=1)
    meta = st.read_meta(group)
    meta["source"] = st.source_record(path)
    group.attrs["wsi"] = meta


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """(root, store, multiclass model name, its prediction, binary model name)."""
    root = tmp_path_factory.mktemp("heat_classes")
    rng = np.random.default_rng(3)
    slides = [(f"P{p:02d}_S0", f"P{p:02d}", p % 4, float(rng.uniform(0.3, 0.5))) for p in range(16)]
    _stores(root, slides, seed=3)
    _write_csv(
        root / "labels.csv",
        ["slide_id", "patient_id", "label"],
        [(s, p, CLASSES[c]) for s, p, c, _ in slides],
    )
    _write_csv(
        root / "binary.csv",
        ["slide_id", "patient_id", "label"],
        [(s, p, "tumor" if c else "normal") for s, p, c, _ in slides],
    )
    stores = root / "stores"
    mc = load_model(
        train_model(
            stores,
            root / "labels.csv",
            root / "mc",
            TrainConfig(model="clam_mb", **TINY),
            encoder=ENC,
        )
    )
    binary = load_model(
        train_model(stores, root / "binary.csv", root / "bin", TrainConfig(**TINY), encoder=ENC)
    )
    store = st.store_path(stores, slides[1][0])
    _attach_slide(store, root)
    pred = predict_store(store, mc)
    predict_store(store, binary)
    return root, store, mc.name, pred, binary.name


#: the per-class attention layers, ranked within the slide (the evidence layers, the
#: default, are tested in test_evidence_layers_on_the_model_scale)
ATTENTION = {"source": "attention", "normalise": "rank"}


@pytest.fixture(scope="module")
def made(cohort):
    root, store, model, pred, _ = cohort
    res = make_heatmap(store, model, root / "out", HeatmapOptions(exports=EXPORTS, **ATTENTION))
    return res


def test_evidence_layers_on_the_model_scale(cohort, tmp_path):
    """The default: one evidence layer per class, all on the model's fixed scale, the main
    one the predicted class's; GeoJSON measurements named after the evidence."""
    root, store, model, pred, _ = cohort
    import shutil

    copy = tmp_path / store.name
    shutil.copytree(store, copy)
    res = make_heatmap(copy, model, tmp_path / "out", HeatmapOptions(exports=("geojson",)))
    group = st.open_store(copy)
    keys = st.prediction_keys(model)
    per_class = np.asarray(group[keys.evidence_classes][:])
    shown = CLASSES.index(pred["predicted_class"])
    np.testing.assert_allclose(per_class[:, shown], group[keys.evidence][:], atol=1e-6)
    layers = stored_layers(copy, model)
    scale = json.loads((root / "mc" / "model.json").read_text())["evidence"]["scale"]
    assert layers.measure == "evidence" and res["classes"] == list(CLASSES)
    for name, grid in zip(layers.classes, layers.grids, strict=True):
        assert (grid.vmin, grid.vmax) == (0.0, pytest.approx(scale))
        assert f"evidence for {name}" in grid.label
    doc = json.loads(Path(res["files"]["geojson"]).read_text())
    tile = next(f for f in doc["features"] if f["properties"]["objectType"] == "detection")
    assert set(tile["properties"]["measurements"]) == {"score"} | {f"evidence {c}" for c in CLASSES}


def test_one_grid_per_class_beside_the_main_one(cohort, made):
    root, store, model, pred, _ = cohort
    group = st.open_store(store)
    keys = st.heatmap_keys(model)
    per_class = np.asarray(group[st.prediction_keys(model).attention_classes][:])
    assert per_class.shape[1] == len(CLASSES)
    stack = np.asarray(group[keys.classes][:])
    main = np.asarray(group[keys.grid][:])
    assert stack.shape == (len(CLASSES), *main.shape)
    attrs = dict(group[keys.stage].attrs)
    assert attrs["classes"] == list(CLASSES) == made["classes"]
    assert group[keys.classes].attrs["classes"] == list(CLASSES)
    # each layer is the grid of its class's attention, ranked within the slide
    scores = tile_scores(store, model, **ATTENTION)
    for k in range(len(CLASSES)):
        ranked = type(scores)(
            scores.coords_l0,
            scores.footprint_l0,
            rank_scores(per_class[:, k]).astype(np.float32),
            scores.slide_size_l0,
            "",
        )
        np.testing.assert_allclose(stack[k], heat_grid(ranked).values, atol=1e-6)
    # the main grid stays the predicted class's attention
    shown = CLASSES.index(pred["predicted_class"])
    np.testing.assert_allclose(main, stack[shown], atol=1e-5)
    assert attrs["caption"] == f"class shown: {pred['predicted_class']} (the predicted class)"
    # read back, stored and current
    layers = stored_layers(store, model)
    assert layers.classes == CLASSES and layers.shown == pred["predicted_class"]
    assert layers.measure == "attention"
    np.testing.assert_array_equal(np.stack([g.values for g in layers.grids]), stack)
    assert stored_grid(store, model)[0].values.shape == main.shape


def test_geojson_has_one_measurement_per_class(cohort, made):
    root, store, model, _, _ = cohort
    doc = json.loads(Path(made["files"]["geojson"]).read_text())
    tiles = [f for f in doc["features"] if f["properties"]["objectType"] == "detection"]
    per_class = np.asarray(st.open_store(store)[st.prediction_keys(model).attention_classes][:])
    assert len(tiles) == len(per_class)
    for k, name in enumerate(CLASSES):
        values = [f["properties"]["measurements"][f"attention {name}"] for f in tiles]
        np.testing.assert_allclose(values, rank_scores(per_class[:, k]), atol=1e-6)
    names = {"score"} | {f"attention {c}" for c in CLASSES}
    assert all(set(f["properties"]["measurements"]) == names for f in tiles)
    regions = [f for f in doc["features"] if f["properties"]["objectType"] == "annotation"]
    assert regions and set(regions[0]["properties"]["measurements"]) == {"mean score", "rank"}


def test_one_png_per_class(cohort, made):
    from PIL import Image

    root, store, model, _, _ = cohort
    main = Path(made["files"]["png"])
    assert set(made["class_files"]["png"]) == set(CLASSES)
    for name, path in made["class_files"]["png"].items():
        assert Path(path).name == f"{main.stem}_{name}.png"
        assert Image.open(path).size == Image.open(main).size
    attrs = dict(st.open_store(store)[st.heatmap_keys(model).stage].attrs)
    assert attrs["class_files"] == made["class_files"]


def _panel(browser: Chromium) -> dict:
    return browser.js(
        "(() => { const p = document.getElementById('class-picker');"
        " return { visible: !document.getElementById('class-row').hidden &&"
        " p.offsetParent !== null, options: [...p.options].map(o => o.textContent),"
        " label: document.getElementById('heat-label').textContent,"
        " caption: document.getElementById('heat-caption').textContent }; })()"
    )


def test_viewer_class_picker_switches_the_layer(cohort, made, tmp_path):
    from wsi.heatmap import serve

    root, store, model, pred, _ = cohort
    folder = Path(made["files"]["viewer"]).parent
    for k in range(len(CLASSES)):
        assert (folder / f"heatmap_{k}.dzi").exists() and (folder / f"heatmap_{k}_files").is_dir()
    page = (folder / "index.html").read_text()
    assert 'id="class-picker"' in page and "https://" not in page
    config = json.loads(page.split('id="viewer-config">')[1].split("</script>")[0])
    assert [c["name"] for c in config["classes"]] == list(CLASSES)
    assert config["caption"] == f"class shown: {pred['predicted_class']} (the predicted class)"

    binary = find_browser()
    if binary is None:
        pytest.skip("no Chromium for the in-browser half of this test")
    url, server = serve(folder.parent)
    browser = Chromium(binary, tmp_path / "profile")
    try:
        browser.page("Page.enable")
        browser.page("Page.navigate", url=f"{url}{folder.name}/index.html")
        browser.wait_for("window.viewerReady === true && window.viewerPending === 0")
        panel = _panel(browser)
        assert panel["visible"]
        assert panel["options"] == [f"predicted class ({pred['predicted_class']})"] + [
            f"class {c}" for c in CLASSES
        ]
        x, y, w, h = (
            int(v)
            for v in browser.js(
                "(() => { const r = document.getElementById('view').getBoundingClientRect();"
                " return [r.left, r.top, r.width, r.height]; })()"
            )
        )
        browser.js("(() => { const o = document.getElementById('opacity'); o.value = '1';"
                   " o.dispatchEvent(new Event('input')); })()")  # fmt: skip

        def show(i: int) -> np.ndarray:
            browser.js(
                "(() => { const p = document.getElementById('class-picker');"
                f" p.value = '{i}'; p.dispatchEvent(new Event('change')); }})()"
            )
            assert browser.js("window.viewerState.layer") == i
            browser.wait_for("window.viewerPending === 0")
            browser.js(NEXT_FRAMES)
            return browser.screenshot()[y : y + h, x : x + w].astype(np.int32)

        main = show(0)
        shown = CLASSES.index(pred["predicted_class"])
        other = next(k for k in range(len(CLASSES)) if k != shown)
        changed = show(other + 1)
        assert (np.abs(changed - main).sum(-1) > 30).sum() > 500, "the layer did not change"
        panel = _panel(browser)
        assert (
            CLASSES[other] in panel["label"]
            and panel["caption"] == f"class shown: {CLASSES[other]}"
        )
        assert browser.js("window.viewerState.layerName") == CLASSES[other]
        same = show(shown + 1)  # the predicted class's own layer is the main layer
        assert (np.abs(same - main).sum(-1) > 30).sum() < 50
        back = show(0)
        assert (np.abs(back - main).sum(-1) > 30).sum() < 50
    finally:
        browser.close()
        server.shutdown()
        server.server_close()


def test_binary_heatmap_has_no_classes(cohort, tmp_path):
    root, store, _, _, model = cohort
    res = make_heatmap(store, model, tmp_path / "out", HeatmapOptions(exports=EXPORTS))
    assert set(res) == {"grid", "regions", "files"} and set(res["files"]) == set(EXPORTS)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"{store.stem}_{model}.png"]
    group = st.open_store(store)
    keys = st.heatmap_keys(model)
    assert keys.classes not in group
    assert not {"classes", "class_files", "caption"} & set(group[keys.stage].attrs)
    assert not stored_layers(store, model)
    doc = json.loads(Path(res["files"]["geojson"]).read_text())
    tiles = [f for f in doc["features"] if f["properties"]["objectType"] == "detection"]
    assert tiles and all(set(f["properties"]["measurements"]) == {"score"} for f in tiles)
    folder = Path(res["files"]["viewer"]).parent
    assert {p.name for p in folder.iterdir()} == {
        "slide.dzi",
        "slide_files",
        "heatmap.dzi",
        "heatmap_files",
        "regions.json",
        "index.html",
        "viewer.js",
    }
    page = (folder / "index.html").read_text()
    config = json.loads(page.split('id="viewer-config">')[1].split("</script>")[0])
    assert "classes" not in config and "caption" not in config
    assert '<label id="class-row" hidden>' in page  # the picker stays hidden


@pytest.mark.parametrize("kind", ["survival", "regression"])
def test_survival_and_regression_say_where_the_score_comes_from(cohort, tmp_path, kind):
    from tests.heatmap.helpers import store_copy

    root, store, _, _, model = cohort
    copy = store_copy(root, store.stem, tmp_path)
    group = st.open_store(copy, mode="r+")
    group[st.prediction_keys(model).stage].attrs["task"] = kind  # the caption reads the task
    res = make_heatmap(copy, model, tmp_path / "out", HeatmapOptions(exports=("geojson",)))
    attrs = dict(st.open_store(copy)[st.heatmap_keys(model).stage].attrs)
    assert attrs["caption"] == TASK_CAPTIONS[kind] and "classes" not in res
    assert "risk score" in TASK_CAPTIONS["survival"]
    folder = write_viewer(copy, model, tmp_path / "viewer")
    page = (folder / "index.html").read_text()
    assert f'id="heat-caption">{TASK_CAPTIONS[kind]}</div>' in page
