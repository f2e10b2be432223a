"""The offline deep-zoom viewer: its files, and in a real headless Chromium (driven over the
DevTools protocol on a pipe, no extra packages) drawing, opacity, regions and no network.

Chromium: ``apt-get install -y chromium`` (Debian). Without it the browser test skips.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.browser import NEXT_FRAMES, Chromium, need_browser
from wsi.heatmap import HeatmapOptions, serve, write_viewer
from wsi.heatmap.viewer import asset


@pytest.fixture(scope="module")
def viewer_dir(predicted, tmp_path_factory):
    root, cohort, model = predicted
    sid = cohort.slides[0].stem
    out = tmp_path_factory.mktemp("viewer")
    # jet, ranked: every tile coloured, in colours (green) no H&E has, for the browser test
    jet = HeatmapOptions(source="attention", normalise="rank", cmap="jet")
    return write_viewer(root / "stores" / f"{sid}.zarr", model, out, jet)


def _dzi_size(path: Path) -> tuple[int, int]:
    import xml.etree.ElementTree as ET

    size = ET.parse(path).getroot().find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert size is not None
    return int(size.attrib["Width"]), int(size.attrib["Height"])


def test_viewer_files_hold_only_the_main_image_and_align(viewer_dir):
    names = {p.name for p in viewer_dir.iterdir()}
    assert names == {
        "slide.dzi",
        "slide_files",
        "heatmap.dzi",
        "heatmap_files",
        "regions.json",
        "index.html",
        "viewer.js",
    }
    suffixes = {p.suffix for p in viewer_dir.rglob("*") if p.is_file()}
    assert suffixes <= {".dzi", ".jpeg", ".png", ".json", ".html", ".js"}
    assert not [p for p in viewer_dir.rglob("*") if "label" in p.name or "macro" in p.name]
    # slide_files: only numbered level folders of tiles (no associated-image pyramids)
    assert all(p.name.isdigit() for p in (viewer_dir / "slide_files").iterdir())
    assert all(p.name.isdigit() for p in (viewer_dir / "heatmap_files").iterdir())
    size = _dzi_size(viewer_dir / "slide.dzi")
    assert size == _dzi_size(viewer_dir / "heatmap.dzi") == (3000, 3000)
    top = max(int(p.name) for p in (viewer_dir / "slide_files").iterdir())
    assert top == max(int(p.name) for p in (viewer_dir / "heatmap_files").iterdir()) == 12
    regions = json.loads((viewer_dir / "regions.json").read_text())
    assert regions and regions[0]["rank"] == 1 and len(regions[0]["bbox_l0"]) == 4
    html = (viewer_dir / "index.html").read_text() + (viewer_dir / "viewer.js").read_text()
    assert "http://" not in html and "https://" not in html and "//cdn" not in html


def test_page_style_and_script_are_package_data(viewer_dir):
    """The viewer's HTML, CSS and JavaScript are files in wsi/heatmap/assets, read with
    importlib.resources, and a wheel carries them (pyproject's package-data)."""
    from fnmatch import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    page = (viewer_dir / "index.html").read_text()
    assert (viewer_dir / "viewer.js").read_text() == asset("viewer.js")
    assert asset("viewer.css") in page and "$" not in page.split("<script")[0]
    assert '<script src="viewer.js"></script>' in asset("viewer.html")
    repo = Path(__file__).resolve().parents[2]
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["wsi.heatmap"]
    assets = sorted((repo / "wsi" / "heatmap" / "assets").iterdir())
    assert {p.name for p in assets} == {"viewer.html", "viewer.css", "viewer.js"}
    for path in assets:
        assert any(fnmatch(f"assets/{path.name}", g) for g in globs), path.name


def _greenish(shot: np.ndarray) -> int:
    """Pixels of the jet colour map's middle (green-cyan-yellow): never in H&E or white."""
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    return int(((g - r > 40) & (g - b > 20)).sum())


@pytest.fixture(scope="module")  # module scope: set up before the session-scoped cohort
def chromium() -> str:
    return need_browser()


def test_viewer_in_headless_chromium(chromium, viewer_dir, tmp_path):
    binary = chromium
    url, server = serve(viewer_dir.parent)
    browser = Chromium(binary, tmp_path / "profile")
    try:
        browser.page("Network.enable")
        browser.page("Page.enable")
        browser.page("Page.navigate", url=f"{url}{viewer_dir.name}/index.html")
        browser.wait_for("window.viewerReady === true")
        browser.wait_for("window.viewerPending === 0")
        state0 = browser.js("window.viewerState")
        assert state0["heatVisible"] is True and state0["opacity"] == pytest.approx(0.5)
        canvas = browser.js(
            "(() => { const r = document.getElementById('view').getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height]; })()"
        )
        x, y, w, h = (int(v) for v in canvas)
        assert w > 300 and h > 300

        def shot() -> np.ndarray:
            browser.js(NEXT_FRAMES)  # the change is drawn
            return browser.screenshot()[y : y + h, x : x + w]

        with_heat = shot()
        assert _greenish(with_heat) > 2000, "no heat colours on the canvas"

        def set_opacity(v: float) -> None:
            browser.js(
                "(() => { const o = document.getElementById('opacity');"
                f" o.value = '{v}'; o.dispatchEvent(new Event('input')); }})()"
            )
            assert browser.js("window.viewerState.opacity") == pytest.approx(v)

        set_opacity(0)
        bare = shot()
        # the slide is drawn: tissue (not white, not flat) fills part of the canvas
        tissue = (bare.sum(-1) < 3 * 230).mean()
        assert 0.05 < tissue < 0.95 and bare.std() > 10, "slide pixels missing"
        assert _greenish(bare) < 50, "heat still shown at opacity 0"
        heat_area = np.abs(with_heat - bare).sum(-1) > 30
        assert heat_area.mean() > 0.05
        set_opacity(1)
        full = shot()
        assert (np.abs(full - bare).sum(-1) > 30)[heat_area].mean() > 0.9
        assert np.abs(full - with_heat).sum(-1)[heat_area].mean() > 20

        # toggling the heat layer off hides it whatever the opacity
        browser.js("document.getElementById('heat-toggle').click()")
        assert browser.js("window.viewerState.heatVisible") is False
        assert _greenish(shot()) < 50
        browser.js("document.getElementById('heat-toggle').click()")

        # the first region: the view centres on it, zoomed in
        regions = json.loads((viewer_dir / "regions.json").read_text())
        x0, y0, x1, y1 = regions[0]["bbox_l0"]
        before = browser.js("window.viewerState")
        browser.js("document.querySelector('#regions button[data-rank=\"1\"]').click()")
        after = browser.js("window.viewerState")
        assert after["x"] == pytest.approx((x0 + x1) / 2) and after["y"] == pytest.approx(
            (y0 + y1) / 2
        )
        assert after["zoom"] > before["zoom"]
        assert (after["x"], after["y"]) != (before["x"], before["y"])
        browser.wait_for("window.viewerPending === 0")
        # zoom buttons
        browser.js("document.getElementById('zoom-out').click()")
        assert browser.js("window.viewerState.zoom") == pytest.approx(after["zoom"] / 2)
        browser.wait_for("window.viewerPending === 0")
        # a report's link (index.html#box=x0,y0,x1,y1, level-0 px) centres the view on the box
        browser.js("location.hash = '#box=256,512,768,1024'")
        browser.wait_for("window.viewerState.x === 512 && window.viewerState.y === 768")
        assert browser.js("window.viewerState.zoom") > before["zoom"]
        browser.wait_for("window.viewerPending === 0")

        requests = [
            e["params"]["request"]["url"]
            for e in browser.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        assert any(u.endswith(".jpeg") for u in requests) and any(
            u.endswith(".png") for u in requests
        )
        outside = [u for u in requests if not u.startswith(("http://127.0.0.1", "data:", "blob:"))]
        assert not outside, f"requests left localhost: {outside[:5]}"
    finally:
        browser.close()
        server.shutdown()
        server.server_close()


def test_slide_id_with_markup_cannot_swallow_the_script(predicted, tmp_path):
    """A store whose slide id is ``<!--<script>``: the embedded JSON holds no ``<``, ``>``
    or ``&``, reads back to the id, and viewer.js is still a script of the page (also in a
    real Chromium, whose parser a raw ``<!--<script>`` would send into escaped script
    data, swallowing the script tag after it)."""
    from html.parser import HTMLParser

    from tests.browser import Chromium, find_browser
    from tests.heatmap.helpers import store_copy
    from wsi import store as st

    evil = "<!--<script>"
    root, cohort, model = predicted
    store = store_copy(root, cohort.slides[0].stem, tmp_path)
    group = st.open_store(store, mode="r+")
    meta = st.read_meta(group)
    meta["slide_id"] = evil
    group.attrs["wsi"] = meta
    folder = write_viewer(store, model, tmp_path / "out")
    page = (folder / "index.html").read_text()

    class Scripts(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.scripts: list[tuple[dict[str, str | None], str]] = []
            self._in: dict[str, str | None] | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "script":
                self._in = dict(attrs)
                self.scripts.append((self._in, ""))

        def handle_data(self, data: str) -> None:
            if self._in is not None:
                attrs, text = self.scripts[-1]
                self.scripts[-1] = (attrs, text + data)

        def handle_endtag(self, tag: str) -> None:
            if tag == "script":
                self._in = None

    parser = Scripts()
    parser.feed(page)
    config = [text for attrs, text in parser.scripts if attrs.get("id") == "viewer-config"]
    assert len(config) == 1 and not any(c in config[0] for c in "<>&"), config
    assert json.loads(config[0])["slideId"] == evil
    assert [attrs.get("src") for attrs, _ in parser.scripts] == [None, "viewer.js"]

    binary = find_browser()
    if binary is None:
        pytest.skip("no Chromium for the in-browser half of this test")
    browser = Chromium(binary, tmp_path / "profile")
    try:
        browser.page("Page.enable")
        browser.page("Page.navigate", url=(folder / "index.html").resolve().as_uri())
        browser.wait_for("document.readyState === 'complete'")
        assert browser.js("document.querySelectorAll('script').length") == 2
        assert browser.js("document.querySelector('script[src=\"viewer.js\"]') !== null")
        slide_id = "JSON.parse(document.getElementById('viewer-config').textContent).slideId"
        assert browser.js(slide_id) == evil
    finally:
        browser.close()
