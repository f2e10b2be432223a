"""Tests of the streaming synthetic slide generator (wsi.synthetic.slide)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from wsi.synthetic import SyntheticSlide, default_tile_source_dir, make_synthetic_slide

REPO = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 3000, 2000


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an (..., 3) uint8 RGB array."""
    f = rgb.astype(np.float32)
    mx = f.max(axis=-1)
    mn = f.min(axis=-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)


def _check_slide(result: SyntheticSlide, mpp: float) -> None:
    assert result.path.is_file()
    assert result.mask_path == result.path.with_name(f"{result.path.stem}_mask.png")
    assert (result.width, result.height, result.mpp) == (WIDTH, HEIGHT, mpp)
    assert 0.25 <= result.tissue_fraction <= 0.65

    with openslide.OpenSlide(str(result.path)) as slide:
        props = slide.properties
        assert props["openslide.vendor"] == "generic-tiff"
        assert float(props["openslide.mpp-x"]) == pytest.approx(mpp, abs=1e-3)
        assert float(props["openslide.mpp-y"]) == pytest.approx(mpp, abs=1e-3)
        assert slide.dimensions == (WIDTH, HEIGHT)
        assert slide.level_count >= 3
        level = 2
        lw, lh = slide.level_dimensions[level]
        rgb = np.asarray(slide.read_region((0, 0), level, (lw, lh)).convert("RGB"))

    mask = np.asarray(Image.open(result.mask_path))
    ds = result.mask_downsample
    assert mask.dtype == np.uint8
    assert mask.shape == (math.ceil(HEIGHT / ds), math.ceil(WIDTH / ds))
    assert set(np.unique(mask).tolist()) <= {0, 255}
    assert (mask > 0).mean() == pytest.approx(result.tissue_fraction, abs=0.03)

    # Mask resampled onto the level grid; compare saturation in and out of it.
    tissue = np.asarray(Image.fromarray(mask).resize((lw, lh), Image.Resampling.NEAREST)) > 0
    sat = _saturation(rgb)
    sat_tissue = float(sat[tissue].mean())
    sat_background = float(sat[~tissue].mean())
    assert sat_tissue > 0.12, sat_tissue
    assert sat_background < 0.05, sat_background
    assert sat_tissue > 4 * sat_background


@pytest.mark.real_data
def test_slide_from_real_tiles(tmp_path: Path) -> None:
    tiles = default_tile_source_dir()
    if not tiles.is_dir():
        pytest.skip(f"real H&E tiles not found: {tiles}")
    result = make_synthetic_slide(
        tmp_path / "real.tiff",
        width=WIDTH,
        height=HEIGHT,
        mpp=0.25,
        seed=1,
        tile_source_dir=tiles,
    )
    _check_slide(result, 0.25)


def test_slide_procedural_fallback(tmp_path: Path) -> None:
    result = make_synthetic_slide(
        tmp_path / "proc.tiff",
        width=WIDTH,
        height=HEIGHT,
        mpp=0.5,
        seed=2,
        tile_source_dir=tmp_path / "does-not-exist",
    )
    _check_slide(result, 0.5)


def test_same_seed_same_layout(tmp_path: Path) -> None:
    kw = dict(width=900, height=700, tile_source_dir=tmp_path / "none", mask_downsample=16)
    a = make_synthetic_slide(tmp_path / "a.tiff", seed=5, **kw)  # type: ignore[arg-type]
    b = make_synthetic_slide(tmp_path / "b.tiff", seed=5, **kw)  # type: ignore[arg-type]
    c = make_synthetic_slide(tmp_path / "c.tiff", seed=6, **kw)  # type: ignore[arg-type]
    mask_a = np.asarray(Image.open(a.mask_path))
    assert np.array_equal(mask_a, np.asarray(Image.open(b.mask_path)))
    assert not np.array_equal(mask_a, np.asarray(Image.open(c.mask_path)))
    assert a.tissue_fraction == b.tissue_fraction
    with openslide.OpenSlide(str(a.path)) as sa, openslide.OpenSlide(str(b.path)) as sb:
        ra = np.asarray(sa.read_region((0, 0), 0, (900, 700)))
        rb = np.asarray(sb.read_region((0, 0), 0, (900, 700)))
    assert np.array_equal(ra, rb)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"width": 0}, "width"),
        ({"width": -5}, "width"),
        ({"height": 0}, "height"),
        ({"width": 200_001}, "width"),
        ({"height": 250_000}, "height"),
        ({"mpp": 0}, "mpp"),
        ({"mpp": -0.25}, "mpp"),
        ({"mpp": float("nan")}, "mpp"),
        ({"tile_size": 100}, "tile_size"),
        ({"quality": 0}, "quality"),
        ({"mask_downsample": 0}, "mask_downsample"),
        ({"width": 1000.5}, "width"),
        ({"height": True}, "height"),
        ({"mpp": "0.25"}, "mpp"),
        ({"width": 200_000, "height": 200_000, "mask_downsample": 2}, "mask_downsample"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"width": 1000, "height": 800, "mpp": 0.25}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        make_synthetic_slide(tmp_path / "bad.tiff", **args)  # type: ignore[arg-type]
    assert not (tmp_path / "bad.tiff").exists()


def test_import_is_cheap() -> None:
    code = (
        "import sys, wsi.synthetic; assert 'pyvips' not in sys.modules; "
        "assert 'numpy' not in sys.modules; wsi.synthetic.make_cohort; "
        "assert 'pyvips' not in sys.modules and 'numpy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli.tiff"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "make_synthetic_slide.py"),
            str(out),
            "--size",
            "1200",
            "--height",
            "900",
            "--mpp",
            "0.5",
            "--seed",
            "3",
            "--tiles",
            str(tmp_path / "none"),
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(out) in proc.stdout
    assert "tissue fraction" in proc.stdout
    assert out.is_file() and (tmp_path / "cli_mask.png").is_file()
    with openslide.OpenSlide(str(out)) as slide:
        assert slide.dimensions == (1200, 900)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5, abs=1e-3)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half way leaves neither the slide, nor its mask, nor a temporary."""
    import wsi.synthetic.slide as slide_module

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(slide_module, "save_slide_tiff", disk_full)
    with pytest.raises(OSError, match="disk full"):
        make_synthetic_slide(
            tmp_path / "x.tiff", width=600, height=500, tile_source_dir=tmp_path / "none"
        )
    assert sorted(tmp_path.iterdir()) == []
