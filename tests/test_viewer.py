"""The offline deep-zoom viewer: its files, and in a real headless Chromium (driven over the
DevTools protocol on a pipe, no extra packages) drawing, opacity, regions and no network.

Chromium: ``apt-get install -y chromium`` (Debian). Without it the browser test skips.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_heatmap import predicted  # noqa: F401 - module fixture, used by name
from wsi.viewer import serve, write_viewer

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _browser() -> str | None:
    env = os.environ.get("WSI_CHROMIUM")
    if env:
        return env
    for name in _BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def viewer_dir(predicted, tmp_path_factory):  # noqa: F811 - the imported fixture
    root, cohort, model = predicted
    sid = cohort.slides[0].stem
    out = tmp_path_factory.mktemp("viewer")
    return write_viewer(root / "stores" / f"{sid}.zarr", model, out)


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


class _Chromium:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (fds 3 and 4, NUL-framed
    JSON), attached to one page target with a flat session."""

    def __init__(self, binary: str, profile: Path, width: int = 1000, height: int = 700) -> None:
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def fds() -> None:  # the child reads commands on fd 3, writes replies on fd 4
            import fcntl

            r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w))
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-extensions",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--mute-audio",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,  # noqa: PLW1509 - only dup2, before exec
            close_fds=False,  # fds 3, 4 must survive; Python's own fds are close-on-exec
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cond:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._cond.notify_all()

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        with self._lock:
            self._id += 1
            mid = self._id
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 20
        with self._cond:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no reply to {method}")
                self._cond.wait(min(left, 0.5))
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, self.session, **params)

    def js(self, expression: str) -> Any:
        res = self.page("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {expression}")
            time.sleep(0.05)

    def screenshot(self) -> np.ndarray:
        from PIL import Image

        data = base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass


_NEXT_FRAMES = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(1))))"


def _greenish(shot: np.ndarray) -> int:
    """Pixels of the jet colour map's middle (green-cyan-yellow): never in H&E or white."""
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    return int(((g - r > 40) & (g - b > 20)).sum())


@pytest.fixture(scope="module")  # module scope: set up before the module-scoped cohort
def chromium() -> str:
    """The browser binary; skips (before the slow fixtures) when there is none."""
    binary = _browser()
    if binary is None:
        pytest.skip(
            "no Chromium found (looked for chromium, chromium-browser, google-chrome; or set "
            "WSI_CHROMIUM): install it with `apt-get install -y chromium` to run this test"
        )
    return binary


def test_viewer_in_headless_chromium(chromium, viewer_dir, tmp_path):
    binary = chromium
    url, server = serve(viewer_dir.parent)
    browser = _Chromium(binary, tmp_path / "profile")
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
            browser.js(_NEXT_FRAMES)  # the change is drawn
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
