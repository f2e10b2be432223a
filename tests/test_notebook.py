"""The notebook API: the tutorial runs end to end, and slides, stores and heatmaps show
themselves as safe, self-contained HTML (parsed here: no script, every image embedded,
no label or macro image, no slide path, markup shown as text)."""

from __future__ import annotations

import ast
import base64
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import wsi
from tests.conftest import REPO, SVS, need
from wsi.errors import ConfigError, StoreError

TUTORIAL = REPO / "docs" / "tutorial.py"
MARKUP = 'x<b onmouseover="alert(1)">y&z'
EVIL = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


class _Page(HTMLParser):
    """Tags, image sources and visible text of an HTML fragment; fails on any on* handler."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.images.append(str(a.get("src")))
        for key, value in a.items():
            assert not key.startswith("on"), f"{tag} has handler {key}={value}"
            assert not str(value).lower().startswith("javascript:"), f"{tag} {key}={value}"

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def body_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def _check_safe(html: str) -> _Page:
    page = _Page(html)
    assert "script" not in page.tags and "iframe" not in page.tags and "link" not in page.tags
    assert page.images, "no image"
    assert all(src.startswith(("data:image/jpeg;base64,", "data:image/png;base64,"))
               for src in page.images)  # fmt: skip
    return page


def _decode(uri: str) -> np.ndarray:
    from PIL import Image

    data = uri.split(",", 1)[1]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def _small(a: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(a).resize((48, 48))).astype(np.int16)


# -- the tutorial ---------------------------------------------------------------------------


def _public_api_only(source: str) -> None:
    """The tutorial imports ``wsi`` alone and uses only names in ``wsi.__all__``."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("wsi"), ast.unparse(node)
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name == "wsi" or not alias.name.startswith("wsi"), alias.name
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "wsi":
                assert node.attr in wsi.__all__, f"wsi.{node.attr} is not public"


def test_tutorial_runs_from_a_slide_to_reports(tmp_path):
    """docs/tutorial.py, run as a user would: a cohort, tiles, features, a model,
    predictions, a heatmap and reports, using only the public API."""
    _public_api_only(TUTORIAL.read_text())
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "WSI_TUTORIAL_OUT"}
    res = subprocess.run(
        [sys.executable, str(TUTORIAL), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert not (tmp_path / "tutorial_out").exists()  # the argument named the folder

    reports = out / "reports"
    rows = list(csv.DictReader((reports / "cohort.csv").open()))
    assert len(rows) == 8 and (reports / "cohort.html").exists()
    for row in rows:
        assert (reports / f"{row['slide_id']}.html").stat().st_size > 10_000
        assert json.loads((reports / f"{row['slide_id']}.json").read_text())["decision"] in (
            "tumor",
            "normal",
        )
    # the cohort table is sorted by risk: a tumour slide on top, a normal one at the bottom
    labels = {r["slide_id"]: r["label"] for r in csv.DictReader((out / "cohort/labels.csv").open())}
    ranked = [labels[r["slide_id"]] for r in sorted(rows, key=lambda r: int(r["rank"]))]
    assert ranked[0] == "tumor" and ranked[-1] == "normal", ranked
    assert str(reports / "cohort.html") in res.stdout

    assert len(list((out / "heatmaps").glob("*.png"))) == 1
    assert len(list((out / "heatmaps").glob("*.geojson"))) == 1
    views = (out / "views.html").read_text(encoding="utf-8")  # the terminal's rich views
    page = _check_safe(views)
    assert len(page.images) == 3  # slide, store, heatmap
    assert {"wsi-slide", "wsi-store", "wsi-heatmap"} <= set(views.split('"'))
    assert str(out / "cohort") not in views  # no slide path


# -- Slide -----------------------------------------------------------------------------------


def test_slide_html_shows_the_main_image_and_allowed_metadata(backend):
    """The Aperio slide has label and macro images: the view shows neither, nor the path."""
    import openslide

    svs = need(SVS)
    with wsi.open_slide(svs, backend=backend) as slide:
        html = slide._repr_html_()
    page = _check_safe(html)
    assert len(page.images) == 1
    text = page.body_text
    for fact in ("CMU-1-Small-Region.svs", backend, "aperio", "2,220 × 2,967 px",
                 "0.499 µm/px (metadata)", "20×"):  # fmt: skip
        assert fact in text, fact
    bare = html
    for src in page.images:
        bare = bare.replace(src, "")  # base64 could spell anything
    assert str(svs.parent) not in bare
    for secret in ("label", "macro", "ScanScope", "Filename"):
        assert secret not in bare, secret

    thumb = _decode(page.images[0])
    with openslide.OpenSlide(str(svs)) as osr:
        main_aspect = osr.dimensions[0] / osr.dimensions[1]
        hidden = [np.asarray(osr.associated_images[k].convert("RGB")) for k in ("label", "macro")]
    assert max(thumb.shape[:2]) == 384
    assert thumb.shape[1] / thumb.shape[0] == pytest.approx(main_aspect, rel=0.02)
    for h in hidden:
        assert abs(h.shape[1] / h.shape[0] - main_aspect) > 0.05  # the check can tell them apart
        assert np.abs(_small(thumb) - _small(h)).mean() > 15, "the thumbnail looks like label/macro"


def test_slide_html_escapes_a_markup_file_name_and_shows_unknown_mpp(tmp_path):
    """A file name holding markup is shown as text; a slide without mpp says "unknown"."""
    data = need(SVS).read_bytes()
    path = tmp_path / f"{MARKUP}.svs"
    path.write_bytes(data.replace(b"|MPP = 0.4990", b"|XXX = 0.4990"))
    with wsi.open_slide(path) as slide:
        assert not slide.has_mpp
        html = slide._repr_html_()
    assert "<b onmouseover" not in html and "&lt;b onmouseover=&quot;alert(1)&quot;&gt;" in html
    page = _check_safe(html)
    assert "b" not in page.tags
    assert f"{MARKUP}.svs" in page.body_text
    assert "Resolution unknown" in page.body_text


# -- SlideStore ------------------------------------------------------------------------------


def _store(root: Path, cohort, index: int = 0) -> Path:
    return root / "stores" / f"{cohort.slides[index].stem}.zarr"


def test_store_view_of_a_predicted_slide(predicted):
    root, cohort, model = predicted
    path = _store(root, cohort)
    store = wsi.open_store(path)
    assert isinstance(store, wsi.SlideStore) and os.fspath(store) == str(path)
    assert store.slide_id == cohort.slides[0].stem and store.path == path
    assert store.meta["schema_version"] == 1
    assert store.slide_info["level_dimensions"][0] == [3000, 3000]
    assert store.size_l0 == (3000, 3000)
    assert {"tiles", "features/efficientnet_lite0", f"predictions/{model}"} <= set(store.stages)
    assert all(finished.startswith("20") for finished in store.stages.values())
    coords = store.coords
    assert coords.shape == (store.tiles, 2) and store.tiles > 0
    assert coords.min() >= 0 and coords.max() < 3000  # level-0 px
    assert store.features().shape[0] == store.tiles
    assert store.features("efficientnet_lite0").shape[0] == store.tiles
    assert wsi.features_of(store, "efficientnet_lite0").shape[0] == store.tiles  # path-like
    pred = store.predictions[model]
    assert pred["decision"] in ("tumor", "normal") and 0 <= pred["probability"] <= 1
    mask = store.tissue_mask
    assert mask is not None and mask.dtype == bool and mask.any()
    thumb = store.thumbnail(200)
    assert thumb.dtype == np.uint8 and max(thumb.shape[:2]) == 200
    assert store.slide_id in repr(store) and "tiles=" in repr(store)

    html = store._repr_html_()
    page = _check_safe(html)
    text = page.body_text
    assert store.slide_id in text and pred["decision"] in text and model in text
    assert f"{pred['probability']:.3f}" in text and f"{store.tiles:,}" in text
    assert "from the slide file" in text and "0.25 µm/px" in text
    assert str(cohort.slides[0]) not in html and str(cohort.out_dir) not in html


def test_store_view_without_the_slide_file_shows_the_tiles(predicted, tmp_path):
    """Where the slide file is gone, the thumbnail is a mosaic of the stored tiles."""
    from wsi import store as st

    root, cohort, _ = predicted
    path = tmp_path / "moved.zarr"
    shutil.copytree(_store(root, cohort), path)
    group = st.open_store(path, mode="r+")
    meta = st.read_meta(group)
    meta["source"]["path"] = str(tmp_path / "gone.tiff")
    group.attrs["wsi"] = meta
    store = wsi.open_store(path)
    from_tiles = store.thumbnail(256)
    from_slide = wsi.open_store(_store(root, cohort)).thumbnail(256)
    assert from_tiles.shape == from_slide.shape
    tissue = from_tiles.mean(axis=2) < 235  # where tiles lie, the mosaic is the slide
    assert tissue.mean() > 0.2
    diff = np.abs(from_tiles.astype(int) - from_slide.astype(int)).mean(axis=2)
    assert diff[tissue].mean() < 25
    assert "a mosaic of the stored tiles" in _check_safe(store._repr_html_()).body_text


def test_store_markup_is_text(predicted, tmp_path):
    from wsi import store as st

    root, cohort, _ = predicted
    path = tmp_path / f"{MARKUP}.zarr"
    shutil.copytree(_store(root, cohort), path)
    group = st.open_store(path, mode="r+")
    meta = st.read_meta(group)
    meta["slide"]["vendor"] = EVIL
    meta["slide_id"] = MARKUP
    group.attrs["wsi"] = meta
    html = wsi.open_store(path)._repr_html_()
    assert "<script" not in html and "<img src=x" not in html and "<b onmouseover" not in html
    page = _check_safe(html)
    assert EVIL in page.body_text and MARKUP in page.body_text


def test_open_store_errors_name_the_path_and_the_fix(tmp_path, predicted):
    import zarr

    with pytest.raises(StoreError, match=r"nope\.zarr: no such slide store.*tile_slide"):
        wsi.open_store(tmp_path / "nope.zarr")
    slide = tmp_path / "s.tiff"
    slide.write_bytes(b"not a store")
    with pytest.raises(StoreError, match=r"s\.tiff: a file, not a slide store.*Tile the slide"):
        wsi.open_store(slide)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StoreError, match=r"empty\.zarr: not a slide store.*wsi tile"):
        wsi.open_store(tmp_path / "empty.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreError, match=r"plain\.zarr: a Zarr group but not a slide store"):
        wsi.open_store(tmp_path / "plain.zarr")
    with pytest.raises(RuntimeError):  # StoreError is also the matching built-in
        wsi.open_store(tmp_path / "nope.zarr")


# -- Heatmap ---------------------------------------------------------------------------------


def test_heatmap_view_of_a_tumour_slide(predicted, tmp_path):
    root, cohort, model = predicted
    stores = [wsi.open_store(_store(root, cohort, i)) for i in range(len(cohort.slides))]
    store = max(stores, key=lambda s: s.predictions[model]["probability"])
    heat = store.heatmap()  # the store's only prediction
    assert heat.model == model and heat.store is store
    rows, cols = heat.grid.values.shape
    assert rows * heat.grid.cell_l0 >= 1000 and np.isfinite(heat.grid.values).sum() == store.tiles
    assert heat.regions and heat.regions[0].rank == 1
    x0, y0, x1, y1 = heat.regions[0].bbox_l0
    assert 0 <= x0 < x1 <= 3000 and 0 <= y0 < y1 <= 3000  # level-0 px

    image = heat.overlay(400)
    assert image.size == (400 + 110, 400 + 36)  # thumbnail, colour bar, title
    assert heat._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    html = heat._repr_html_()
    page = _check_safe(html)
    assert len(page.images) == 1
    assert store.slide_id in page.body_text and model in page.body_text
    assert "Rank" in page.body_text and "level-0 px" in page.body_text
    overlay = _decode(page.images[0])
    assert overlay.shape[1] == 768 + 110
    assert store.slide_id in repr(heat) and "regions=" in repr(heat)

    same = wsi.Heatmap(store.path, model, normalise="raw", alpha=0.3)
    assert same.options.normalise == "raw" and same.options.alpha == 0.3
    assert same.grid.values.shape == heat.grid.values.shape

    copy = tmp_path / store.path.name  # the stage writes into the store: leave the fixture's
    shutil.copytree(store.path, copy)
    result = wsi.Heatmap(copy, model).save(tmp_path / "heat", exports=("png", "geojson"))
    assert sorted(result["files"]) == ["geojson", "png"]
    assert all(Path(f).exists() for f in result["files"].values())
    assert f"heatmaps/{model}" in wsi.open_store(copy).stages  # the stage ran


def test_heatmap_errors(predicted):
    root, cohort, model = predicted
    store = wsi.open_store(_store(root, cohort))
    with pytest.raises(ConfigError, match=r"heatmap option\(s\) \['colour'\]: choose from"):
        wsi.Heatmap(store, model, colour="red")
    with pytest.raises(StoreError, match="no complete predictions/other.*wsi predict"):
        wsi.Heatmap(store, "other")


# -- import wsi --------------------------------------------------------------------------------


def test_import_wsi_loads_no_heavy_module():
    code = (
        "import sys, wsi\n"
        "heavy = ('torch', 'timm', 'openslide', 'pyvips', 'dask', 'zarr', 'numpy', 'PIL')\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "assert set(wsi.__all__) <= set(dir(wsi))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves_and_report_is_not_reports():
    import importlib
    import types

    for name in wsi.__all__:
        assert getattr(wsi, name) is not None, name
    assert callable(wsi.report) and callable(wsi.report_slide)
    importlib.import_module("wsi.reports")  # the subpackage beside the function
    assert isinstance(wsi.reports, types.ModuleType) and callable(wsi.report)
    assert wsi.open_store.__module__ == "wsi.notebook"  # not wsi.store.open_store
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = wsi.nope  # type: ignore[attr-defined]
