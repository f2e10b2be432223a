"""Second-opinion reports on real stores: a synthetic cohort slide and the real Aperio slide.

The HTML is parsed (sections, images, links), the PDF is rendered to PNG pages with
pdftoppm and its text read with pdftotext, and the privacy rules are checked: no label or
macro image, no slide path, markup from slide metadata shown as text (also in a real
headless Chromium, where a planted ``onerror`` must not run).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SVS, need
from wsi.reports import ReportOptions, report, report_slide

EVIL = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


class _Page(HTMLParser):
    """Tags, ids, image sources, links and visible text of an HTML page."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.links: list[str] = []
        self.meta: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self._skip = 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "img":
            self.images.append(str(a.get("src")))
        if tag in ("a", "link") and a.get("href") is not None:
            self.links.append(str(a["href"]))
        if tag == "meta":
            self.meta.append(a)
        if tag in ("style", "script"):
            self._skip += 1
        for key, value in a.items():  # no event handlers and no external sources anywhere
            assert not key.startswith("on"), f"{tag} has handler {key}={value}"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)

    @property
    def body_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def _decode(uri: str) -> np.ndarray:
    from PIL import Image

    head, data = uri.split(",", 1)
    assert head in ("data:image/jpeg;base64", "data:image/png;base64")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def _pdf_pages(pdf: Path, out: Path) -> list[np.ndarray]:
    from PIL import Image

    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm not found: `apt-get install -y poppler-utils` (make test does)")
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(out / "page")], check=True)
    pages = sorted(out.glob("page-*.png"))
    return [np.asarray(Image.open(p).convert("RGB")).astype(np.int16) for p in pages]


def _pdf_text(pdf: Path) -> str:
    res = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True,
                         capture_output=True, text=True)  # fmt: skip
    return " ".join(res.stdout.split())


def _check_report(html_path: Path, options: ReportOptions) -> _Page:
    html = html_path.read_text(encoding="utf-8")
    page = _Page(html)
    assert {"finding", "slide", "evidence", "quality", "model"} <= page.ids
    assert "script" not in page.tags and "iframe" not in page.tags
    # self-contained: every image is embedded; links stay on this disk (relative)
    assert len(page.images) == 2 + options.top_k + options.least_k
    assert all(src.startswith("data:image/") for src in page.images)
    assert all("://" not in href and not href.startswith("//") for href in page.links)
    csp = [m for m in page.meta if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in str(csp[0]["content"])
    text = page.body_text
    assert "the diagnosis is the pathologist's" in text
    for words in (
        "Calibrated probability",
        "Operating point",
        "At this threshold the model found",
        "Tiles with the most evidence for tumor",
        "Tiles with the least evidence for tumor",
        "model scale 0..",
        "weights sha256",
        "AUROC",
    ):
        assert words in text, words
    return page


def _hne(pages: list[np.ndarray]) -> int:
    """Pixels of stained tissue (pink-purple) on the rendered pages."""
    total = 0
    for p in pages:
        r, g, b = p[..., 0], p[..., 1], p[..., 2]
        total += int(((r - g > 40) & (b - g > 20) & (r < 250)).sum())
    return total


@pytest.fixture(scope="module")
def cohort_reports(predicted, tmp_path_factory):
    root, cohort, model = predicted
    out = tmp_path_factory.mktemp("reports")
    stores = sorted((root / "stores").glob("*.zarr"))
    return root, cohort, report(stores, root / "abmil", out), out


def test_slide_report_html_and_pdf(cohort_reports, tmp_path):
    root, cohort, result, out = cohort_reports
    assert not result.failed and len(result.slides) == len(cohort.slides)
    with open(cohort.labels_csv) as f:
        truth = {r["slide_id"]: r["label"] for r in csv.DictReader(f)}
    positive = next(r for r in result.slides if truth[r.slide_id] == "tumor")
    page = _check_report(positive.html, ReportOptions())
    text = page.body_text
    assert f"Second opinion: slide {positive.slide_id}" in text
    assert positive.row["decision"] in text
    assert "Tiles analysed" in text and "Tissue area" in text and "generic-tiff" in text
    # the numbers shown are the store's prediction and the model card's
    pred = json.loads((out / f"{positive.slide_id}.json").read_text())
    from wsi.reports.render import prob

    assert prob(pred["probability"]) in text
    card = json.loads((root / "abmil" / "model.json").read_text())
    assert card["encoder"]["weights_sha256"] in text and card["model_id"] in text
    # the thumbnail has the main image's shape (3000 x 3000 px), not a label's
    thumb = _decode(page.images[0])
    assert thumb.shape[0] == thumb.shape[1] and max(thumb.shape) <= 1024
    # evidence tiles are the store's tiles at the tiling resolution
    assert _decode(page.images[2]).shape == (256, 256, 3)

    assert positive.pdf is not None and positive.pdf.read_bytes()[:5] == b"%PDF-"
    pages = _pdf_pages(positive.pdf, tmp_path)
    assert 2 <= len(pages) <= 5
    for p in pages:
        assert p.std() > 5, "a blank page"
    assert _hne(pages) > 2000, "no tissue images rendered in the PDF"
    # the heatmap's colours are on a page: the lesion's evidence in magma's warm end
    # (orange: red well above blue, green above blue), never in H&E's pink or purple
    assert sum(int(((p[..., 0] - p[..., 2] > 60) & (p[..., 1] - p[..., 2] > 10)
                    & (p[..., 0] > 150)).sum()) for p in pages) > 200  # fmt: skip
    pdf_text = _pdf_text(positive.pdf)
    for words in (
        positive.slide_id,
        "Finding",
        "Evidence",
        "Quality",
        "Model card",
        "the diagnosis is the pathologist's",
        "Page 1 of",
    ):
        assert words in pdf_text, words


def test_cohort_report_sorted_by_risk(cohort_reports):
    _, cohort, result, out = cohort_reports
    with open(out / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in rows] == list(range(1, len(cohort.slides) + 1))
    log_odds = {r.slide_id: r.row["log_odds"] for r in result.slides}
    assert [log_odds[r["slide_id"]] for r in rows] == sorted(log_odds.values(), reverse=True)
    for r in rows:
        assert (out / r["report"]).exists() and r["decision"] in ("tumor", "normal")
    page = _Page(result.cohort_html.read_text())
    assert [h for h in page.links] == [f"./{r['report']}" for r in rows]
    assert "the diagnosis is the pathologist's" in page.body_text


def test_failed_store_is_listed_and_the_rest_go_on(predicted, tmp_path):
    root, cohort, _ = predicted
    good = root / "stores" / f"{cohort.slides[0].stem}.zarr"
    bad = tmp_path / "broken.zarr"
    bad.mkdir()
    result = report([bad, good], root / "abmil", tmp_path / "out", ReportOptions(pdf=False))
    assert [r.slide_id for r in result.slides] == [cohort.slides[0].stem]
    error = result.failed[0]["error"]
    assert result.failed[0]["slide_id"] == "broken" and "not a slide store" in error
    assert str(tmp_path) not in error and "[path]" in error  # the cohort table has no paths
    assert str(tmp_path) not in result.cohort_html.read_text()
    with open(result.cohort_csv) as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["slide_id"] == "broken" and rows[-1]["error"]
    assert not list((tmp_path / "out").glob("broken*"))


def test_metadata_markup_is_text_and_never_runs(predicted, tmp_path):
    """A slide whose metadata (and file name) holds markup renders it as text."""
    from wsi import store as st

    root, cohort, _ = predicted
    src = root / "stores" / f"{cohort.slides[0].stem}.zarr"
    name = 'x<b onmouseover="alert(1)">y&z'
    store = tmp_path / f"{name}.zarr"
    shutil.copytree(src, store)
    group = st.open_store(store, mode="r+")
    meta = st.read_meta(group)
    meta["slide"]["vendor"] = EVIL
    meta["slide_id"] = name
    group.attrs["wsi"] = meta
    rep = report_slide(store, root / "abmil", tmp_path / "out")
    html = rep.html.read_text()
    assert "<script" not in html and "<img src=x" not in html and "<b onmouseover" not in html
    assert "&lt;script&gt;" in html
    page = _check_report(rep.html, ReportOptions())  # no on* attribute parsed anywhere
    assert EVIL in page.body_text and name in page.body_text
    pdf_text = _pdf_text(rep.pdf).replace(" ", "")  # shown as text in the PDF too (wrapped)
    assert "<script>window.__xss=1</" in pdf_text and 'onerror="window.__xss=2">' in pdf_text
    row = json.loads(rep.html.with_suffix(".json").read_text())
    cohort_html, _ = __import__("wsi.reports", fromlist=["report_cohort"]).report_cohort(
        [row], tmp_path / "out", model="abmil", positive="tumor"
    )
    assert "<b onmouseover" not in cohort_html.read_text()

    from tests.browser import Chromium, find_browser

    binary = find_browser()
    if binary is None:
        pytest.skip("no Chromium for the in-browser half of this test")
    browser = Chromium(binary, tmp_path / "profile")
    try:
        browser.page("Network.enable")
        browser.page("Page.enable")
        browser.page("Page.navigate", url=rep.html.resolve().as_uri())
        browser.wait_for("document.readyState === 'complete'")
        assert browser.js("window.__xss === undefined")
        assert browser.js("document.querySelectorAll('script').length") == 0
        loaded = browser.js(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        assert loaded, "an embedded image did not load offline"
        requests = [
            e["params"]["request"]["url"]
            for e in browser.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        assert all(u.startswith(("file://", "data:")) for u in requests), requests[:5]
    finally:
        browser.close()


def test_real_slide_report_holds_no_label_or_macro(predicted, tmp_path):
    """The Aperio slide (it has label and macro images): tiled, embedded, predicted with
    the cohort model, reported; nothing of its label, macro or path reaches the report."""
    import openslide

    from wsi.config import EmbedConfig
    from wsi.embed import embed_store
    from wsi.encoders import load_encoder
    from wsi.mil.predict import load_model, predict_store
    from wsi.tiling import tile_slide

    svs = need(SVS)
    root, _, _ = predicted
    store = tile_slide(svs, tmp_path / "stores", progress=False)
    embed_store(store, EmbedConfig(device="cpu"), encoder=load_encoder(device="cpu"),
                progress=False)  # fmt: skip
    predict_store(store, load_model(root / "abmil"))
    options = ReportOptions(top_k=4, least_k=2)
    rep = report_slide(store, root / "abmil", tmp_path / "out", options)
    page = _check_report(rep.html, options)
    text = page.body_text
    assert "aperio" in text and "0.499" in text and "20× objective" in text
    html = rep.html.read_text()
    for secret in (str(svs.parent), svs.name, "label", "macro", "ScanScope", "Filename"):
        assert secret not in html, secret
    pdf_text = _pdf_text(rep.pdf)
    assert str(svs.parent) not in pdf_text and "CMU-1-Small-Region" in pdf_text

    with openslide.OpenSlide(str(svs)) as osr:
        hidden = [np.asarray(osr.associated_images[k].convert("RGB")) for k in ("label", "macro")]
        main_aspect = osr.dimensions[0] / osr.dimensions[1]

    def small(a: np.ndarray) -> np.ndarray:
        from PIL import Image

        return np.asarray(Image.fromarray(a).resize((48, 48))).astype(np.int16)

    images = [_decode(src) for src in page.images]
    thumb = images[0]
    assert thumb.shape[1] / thumb.shape[0] == pytest.approx(main_aspect, rel=0.02)
    for img in images:
        for h in hidden:
            assert img.shape[:2] != h.shape[:2]
            assert np.abs(small(img) - small(h)).mean() > 15, "an image looks like label/macro"
    pages = _pdf_pages(rep.pdf, tmp_path)
    assert _hne(pages) > 2000


def test_out_of_distribution_and_training_slide_flags(predicted, tmp_path):
    """With the model's reference of training tiles: a training slide is flagged as seen in
    training; the same slide with its features pushed far away is flagged out of
    distribution; with the default (larger) minimum reference the check is not made."""
    from wsi import store as st

    root, cohort, _ = predicted
    options = ReportOptions(pdf=False, ood_min_tiles=100, ood_min_slides=4)
    sid = cohort.slides[0].stem
    seen = report_slide(root / "stores" / f"{sid}.zarr", root / "abmil", tmp_path / "a",
                        options)  # fmt: skip
    assert "Slide was in the training data" in seen.row["flags"]
    assert "Out of distribution" not in seen.row["flags"]

    far = tmp_path / f"{sid}.zarr"
    shutil.copytree(root / "stores" / f"{sid}.zarr", far)
    emb = st.open_store(far, mode="r+")["features/efficientnet_lite0/embeddings"]
    emb[:] = np.asarray(emb[:]) * 4.0 + 3.0  # tiles unlike anything in training
    rep = report_slide(far, root / "abmil", tmp_path / "b", options)
    assert "Out of distribution" in rep.row["flags"]
    assert "Slide was in the training data" not in rep.row["flags"]

    default = report_slide(far, root / "abmil", tmp_path / "c", ReportOptions(pdf=False))
    assert "Out of distribution" not in default.row["flags"]
    assert "too few to say what is unusual" in default.html.read_text()


def test_quality_says_whether_tile_data_was_verified(predicted, tmp_path):
    """A cohort slide tiled with the pyvips reader (which does not detect corrupt tile
    data), embedded and predicted: the quality section says its tiles were not verified;
    with the default OpenSlide reader it says they were."""
    from wsi.config import EmbedConfig, TilingConfig
    from wsi.embed import embed_store
    from wsi.encoders import load_encoder
    from wsi.mil.predict import load_model, predict_store
    from wsi.tiling import tile_slide

    root, cohort, _ = predicted
    model = load_model(root / "abmil")
    encoder = load_encoder(device="cpu")
    texts = {}
    for backend in ("pyvips", "openslide"):
        store = tile_slide(cohort.slides[0], tmp_path / backend, TilingConfig(backend=backend),
                           progress=False)  # fmt: skip
        embed_store(store, EmbedConfig(device="cpu"), encoder=encoder, progress=False)
        predict_store(store, model)
        rep = report_slide(store, root / "abmil", tmp_path / f"out_{backend}",
                           ReportOptions(pdf=False))  # fmt: skip
        texts[backend] = _Page(rep.html.read_text(encoding="utf-8")).body_text
    assert "Tile data check" in texts["pyvips"]
    assert "not verified" in texts["pyvips"] and "--backend openslide" in texts["pyvips"]
    assert "verified on reading (openslide)" in texts["openslide"]
    assert "not verified" not in texts["openslide"]


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name or ".partial" in p.name]


def test_report_into_a_read_only_folder_is_one_clear_error(predicted, read_only_folder, capsys):
    from pipelines.cli import main

    root, cohort, _ = predicted
    stores = [str(root / "stores" / f"{s.stem}.zarr") for s in cohort.slides[:2]]
    rc = main(["-q", "report", *stores, "--model", str(root / "abmil"),
               "--out", str(read_only_folder), "--no-pdf"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert f"output folder {read_only_folder}" in err and "writable" in err and "--out" in err
    assert "Traceback" not in err


def test_report_onto_a_full_disk_leaves_no_temporary_file(predicted, small_disk, capsys):
    from pipelines.cli import main
    from tests.conftest import fill

    root, cohort, _ = predicted
    disk = small_disk("disk", size="1M")
    fill(disk, leave=8192)
    stores = [str(root / "stores" / f"{s.stem}.zarr") for s in cohort.slides[:2]]
    rc = main(["-q", "report", *stores, "--model", str(root / "abmil"),
               "--out", str(disk / "reports"), "--no-pdf"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert f"output folder {disk / 'reports'}" in err and "free space" in err.lower()
    assert "Traceback" not in err
    assert _temps(disk) == []
