"""Bad slides end in clear errors that name the file, never in a crash or a hang."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi.errors import MppError, SlideOpenError, SlideReadError, WsiError
from wsi.slide import open_slide


def test_text_file_renamed_svs(tmp_path, backend):
    p = tmp_path / "notes.svs"
    p.write_text("patient notes, not a slide\n" * 20)
    with pytest.raises(SlideOpenError, match="notes.svs.*not a slide format"):
        open_slide(p, backend=backend)


def test_truncated_file(tmp_path, real_slide, backend):
    p = tmp_path / f"truncated{real_slide.suffix}"
    p.write_bytes(real_slide.read_bytes()[: real_slide.stat().st_size // 3])
    with pytest.raises(SlideOpenError, match=f"{p.name}.*(truncated|corrupt)"):
        open_slide(p, backend=backend)


def test_corrupt_tile_data_fails_at_first_bad_read(tmp_path, real_slide, backend):
    data = bytearray(real_slide.read_bytes())
    n = len(data)
    data[n // 3 : n // 3 + 300_000] = bytes(300_000)
    p = tmp_path / f"corrupt{real_slide.suffix}"
    p.write_bytes(bytes(data))
    with open_slide(p, backend=backend) as s:  # the header is intact
        w, h = s.dimensions
        with pytest.raises(SlideReadError, match=f"{p.name}.*(truncated|corrupt)"):
            s.read_region((0, 0), (w, h), level=0)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(SlideOpenError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideOpenError, match="empty.svs.*empty"):
        open_slide(tmp_path / "empty.svs")
    with pytest.raises(FileNotFoundError):  # also the matching built-in
        open_slide(tmp_path / "nope.svs")


def _svs_without_mpp(svs: Path, tmp_path: Path) -> Path:
    data = svs.read_bytes()
    assert data.count(b"|MPP = 0.4990") >= 1
    p = tmp_path / "no_mpp.svs"
    p.write_bytes(data.replace(b"|MPP = 0.4990", b"|XXX = 0.4990"))
    return p


def test_slide_without_mpp(tmp_path, svs, backend):
    p = _svs_without_mpp(svs, tmp_path)
    with open_slide(p, backend=backend) as s:
        assert not s.has_mpp
        with pytest.raises(MppError, match=r"no_mpp.svs.*no resolution.*--mpp"):
            _ = s.mpp
        with pytest.raises(MppError, match="no_mpp.svs"):
            s.read_region((0, 0), (64, 64), mpp=0.5)
    with open_slide(p, mpp=0.5, backend=backend) as s:
        assert s.mpp.source == "override"
        assert s.read_region((0, 0), (64, 64), mpp=0.5).shape == (64, 64, 3)


@pytest.mark.parametrize("bad", [0, -1, 1000, float("nan"), "abc"])
def test_implausible_mpp_override(svs, bad):
    with pytest.raises(MppError, match="CMU-1-Small-Region.svs.*(implausible|not a number)"):
        open_slide(svs, mpp=bad)


def test_implausible_mpp_in_metadata(tmp_path, svs):
    data = svs.read_bytes().replace(b"|MPP = 0.4990", b"|MPP = 999.00")
    p = tmp_path / "huge_mpp.svs"
    p.write_bytes(data)
    with open_slide(p) as s, pytest.raises(MppError, match="huge_mpp.svs.*implausible"):
        _ = s.mpp


def test_all_errors_share_one_root():
    for cls in (MppError, SlideOpenError, SlideReadError):
        assert issubclass(cls, WsiError)
