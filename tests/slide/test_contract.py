"""The contract every slide backend passes, on real slides: the Aperio SVS, the generic
pyramidal TIFF, and the SVS converted to DICOM (a folder of .dcm files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import wsi
from tests.conftest import PYRAMID, SVS, need
from wsi.slide import open_slide

#: (slide, backend) of the contract; libvips does not decode DICOM: it refuses it
#: (tests/slide/test_dicom.py), and DICOM slides are read through OpenSlide.
CASES = [("svs", "openslide"), ("svs", "pyvips"), ("pyramid", "openslide"),
         ("pyramid", "pyvips"), ("dicom", "openslide")]  # fmt: skip


@pytest.fixture(params=CASES, ids=[f"{name}-{backend}" for name, backend in CASES])
def slide_backend(request: pytest.FixtureRequest) -> tuple[Path, str]:
    name, backend = request.param
    if name == "dicom":
        return request.getfixturevalue("dicom_svs"), backend
    return need(SVS if name == "svs" else PYRAMID), backend


def test_metadata(slide_backend):
    real_slide, backend = slide_backend
    with open_slide(real_slide, backend=backend) as s:
        assert s.backend == backend
        assert s.dimensions == (2220, 2967)
        assert s.level_downsamples[0] == 1.0
        assert len(s.level_dimensions) == len(s.level_downsamples)
        assert s.mpp.x == pytest.approx(0.499, abs=1e-3)
        assert s.mpp.source in ("metadata", "tiff-resolution")
        info = s.info().as_dict()
        assert info["mpp"]["x"] == pytest.approx(0.499, abs=1e-3)


def test_mpp_source_and_associated_images(svs, pyramid):
    with open_slide(svs) as s:
        assert s.mpp.source == "metadata"
        assert s.vendor == "aperio"
        assert s.objective_power == 20.0
        assert set(s.associated_images) == {"label", "macro", "thumbnail"}
    with open_slide(pyramid) as s:
        assert s.mpp.source == "tiff-resolution"
        assert s.level_count == 4
    with open_slide(svs, mpp=0.25) as s:
        assert (s.mpp.x, s.mpp.source) == (0.25, "override")


def test_read_region_by_level(slide_backend):
    real_slide, backend = slide_backend
    with open_slide(real_slide, backend=backend) as s:
        for level in range(s.level_count):
            px = s.read_region((1000, 1500), (300, 200), level=level)
            assert px.shape == (200, 300, 3) and px.dtype == np.uint8
            assert px.std() > 5  # tissue there, not blank


def test_backends_agree_at_level_0(real_slide):
    with open_slide(real_slide) as a, open_slide(real_slide, backend="pyvips") as b:
        for loc in [(0, 0), (517, 1001), (2000, 2800)]:
            x = a.read_region(loc, (256, 256), level=0)
            y = b.read_region(loc, (256, 256), level=0)
            assert np.array_equal(x, y)


def test_outside_the_slide_is_white(slide_backend):
    real_slide, backend = slide_backend
    with open_slide(real_slide, backend=backend) as s:
        w, h = s.dimensions
        px = s.read_region((w - 50, h - 50), (100, 100), level=0)
        assert (px[60:, :] == 255).all() and (px[:, 60:] == 255).all()
        assert px[:50, :50].std() > 0


def test_read_region_by_mpp_picks_coarser_level(pyramid, backend):
    with open_slide(pyramid, backend=backend) as s:
        choice = s.choose_level(s.downsample_for_mpp(2.0))
        assert choice.level == 2 and choice.scale == 1.0
        px = s.read_region((0, 0), (128, 128), mpp=2.0)
        assert np.array_equal(px, s.read_region((0, 0), (128, 128), level=2))
        # between levels: read the finer one and shrink
        choice = s.choose_level(s.downsample_for_mpp(1.5))
        assert choice.level == 1 and choice.scale == pytest.approx(1.5 / 0.499 / 2.0, rel=1e-3)
        assert s.read_region((100, 100), (64, 32), mpp=1.5).shape == (32, 64, 3)


def test_thumbnail(slide_backend):
    real_slide, backend = slide_backend
    with open_slide(real_slide, backend=backend) as s:
        t = s.thumbnail(300)
        assert max(t.shape[:2]) <= 300 and min(t.shape[:2]) > 200
        assert t.mean() < 250  # tissue shows


def test_top_level_api_is_lazy():
    import subprocess
    import sys

    code = (
        "import sys, wsi, wsi.encoders, wsi.config\n"
        "heavy = [m for m in ('openslide', 'pyvips', 'dask', 'torch', 'timm', 'zarr', 'h5py')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert callable(wsi.open_slide)


def test_tile_backend_choice(svs, pyramid, tmp_path):
    from wsi.slide import tile_backend

    with open_slide(svs) as s:
        assert tile_backend(s) == "pyvips"  # Aperio with JPEG tiles
    with open_slide(pyramid) as s:
        assert tile_backend(s) == "pyvips"
        assert tile_backend(s, level=1) == "openslide"  # downsample 2.0003: OpenSlide only
    j2k = tmp_path / "j2k.svs"  # an Aperio description naming JPEG 2000 tiles
    j2k.write_bytes(svs.read_bytes().replace(b"JPEG/RGB Q=30", b"J2K/YUV16Q=30"))
    with open_slide(j2k) as s:
        assert tile_backend(s) == "openslide"


def test_pyvips_reader_is_thread_safe(real_slide):
    from concurrent.futures import ThreadPoolExecutor

    locations = [(x, y) for x in range(0, 1800, 300) for y in range(0, 2600, 300)]
    with open_slide(real_slide, backend="pyvips") as s:
        serial = [s.read_region(loc, (256, 256), level=0) for loc in locations]
        with ThreadPoolExecutor(8) as pool:
            for _ in range(3):
                threaded = list(
                    pool.map(lambda loc: s.read_region(loc, (256, 256), level=0), locations)
                )
                assert all(np.array_equal(a, b) for a, b in zip(serial, threaded, strict=True))
