"""Tissue detection on real slides and real tiles: no pen, no glass."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TILES, need
from wsi.config import TissueConfig
from wsi.errors import SlideReadError
from wsi.slide import open_slide
from wsi.tissue import detect_tissue, tissue_mask_from_rgb


def test_real_slide_mask(real_slide):
    with open_slide(real_slide) as s:
        m = detect_tissue(s)
        thumb = s.read_downsampled(m.downsample)
    assert m.mask.shape == thumb.shape[:2]
    assert 0.2 < m.fraction < 0.5  # a strip of skin on glass
    # what is called tissue is darker and more coloured than what is not
    inside, outside = thumb[m.mask], thumb[~m.mask]
    assert inside.mean() < outside.mean() - 30
    assert outside.mean() > 225  # background is glass


def _quadrants() -> tuple[np.ndarray, list[str]]:
    names = [
        "histolab/tissue-level0-7352-11762-7864-12274.png",
        "histolab/no-tissue-red-pen.png",
        "histolab/almost-white-2.png",
        "histolab/no-tissue.png",
    ]
    parts = [
        np.asarray(Image.open(need(TILES / n)).convert("RGB").resize((512, 512))) for n in names
    ]
    top, bottom = np.concatenate(parts[:2], 1), np.concatenate(parts[2:], 1)
    return np.concatenate([top, bottom], 0), names


def test_pen_and_white_are_not_tissue():
    image, _ = _quadrants()  # 1024 x 1024 at about 0.5 um/px
    small = np.asarray(Image.fromarray(image).resize((64, 64), Image.Resampling.BOX))
    mask, _ = tissue_mask_from_rgb(small, mpp=8.0)
    tissue, pen = mask[:32, :32].mean(), mask[:32, 32:].mean()
    white, glass = mask[32:, :32].mean(), mask[32:, 32:].mean()
    assert tissue > 0.4
    assert pen < 0.05 and white == 0.0 and glass == 0.0
    # without pen exclusion, the same ink would be taken for tissue
    no_pen, _ = tissue_mask_from_rgb(small, mpp=8.0, config=TissueConfig(exclude_pen=False))
    assert no_pen[:32, 32:].mean() > 0.3


def test_synthetic_slide_matches_its_mask(synthetic_slide):
    truth = (
        np.asarray(Image.open(synthetic_slide.with_name(synthetic_slide.stem + "_mask.png"))) > 0
    )
    with open_slide(synthetic_slide) as s:
        m = detect_tissue(s)
        w, h = s.dimensions
    # bring the true mask to the detected mask's grid
    t = np.asarray(Image.fromarray(truth).resize(m.mask.shape[::-1], Image.Resampling.NEAREST))
    iou = (t & m.mask).sum() / (t | m.mask).sum()
    assert iou > 0.85, iou


def _corrupt_last_level_tile(pyramid: Path, out: Path, tile: int) -> Path:
    """A copy of the pyramid with random bytes from inside one tile of its smallest level
    into the next one (whose JPEG header they overwrite)."""
    with Image.open(pyramid) as im:
        im.seek(im.n_frames - 1)
        offset = int(im.tag_v2[324][tile])  # TileOffsets
    data = bytearray(pyramid.read_bytes())
    rng = np.random.default_rng(1)
    data[offset + 600 : offset + 2648] = rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


def test_corrupt_low_level_names_level_and_region(tmp_path, pyramid, backend):
    """Corrupt data in the level the tissue pass reads: the error names the file, the
    level and the region read in that level's pixels, not only a level-0 (0, 0)."""
    bad = _corrupt_last_level_tile(pyramid, tmp_path / "lowres_rot.tiff", tile=1)
    with open_slide(bad, backend=backend) as s:
        level = s.level_count - 1
        w, h = s.level_dimensions[level]
        with pytest.raises(SlideReadError) as err:  # libvips too: the tile is no JPEG
            detect_tissue(s)
    msg = str(err.value)
    assert "lowres_rot.tiff" in msg and f"level {level}" in msg
    found = re.search(r"region x=(\d+), y=(\d+), w=(\d+), h=(\d+)", msg)
    assert found and tuple(int(v) for v in found.groups()) == (0, 0, w, h), msg
