"""QC measures on real tiles: pen and near-white examples score as such."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.conftest import TILES, need
from wsi.qc import QC_COLUMNS, tile_qc

BLUR, PEN, BACKGROUND = (QC_COLUMNS.index(c) for c in ("blur", "pen", "background"))

TISSUE = [
    "histolab/tissue-level0-7352-11762-7864-12274.png",
    "histolab/tissue-level0-4302-10273-4814-10785.png",
    "histolab/high-nuclei-score-level0.png",
    "histolab/medium-nuclei-score-level0.png",
    "histolab/tcga-lung-rgb.png",
    "histoqc_template1.png",
    "histoqc_template3.png",
    "tiatoolbox_target_image.png",
]


def _tiles(name: str, size: int = 256) -> np.ndarray:
    img = np.asarray(Image.open(need(TILES / name)).convert("RGB"))
    h, w = img.shape[:2]
    return np.stack(
        [
            img[y : y + size, x : x + size]
            for y in range(0, h - size + 1, size)
            for x in range(0, w - size + 1, size)
        ]
    )


@pytest.mark.parametrize("name", TISSUE)
def test_tissue_tiles_are_not_pen_or_background(name):
    qc = tile_qc(_tiles(name))
    assert qc.shape[1] == len(QC_COLUMNS) and qc.dtype == np.float32
    assert np.median(qc[:, PEN]) < 0.05
    assert np.median(qc[:, BACKGROUND]) < 0.5


def test_red_pen_tile_scores_as_pen():
    qc = tile_qc(_tiles("histolab/no-tissue-red-pen.png", 512))
    assert qc[0, PEN] > 0.25
    tissue = tile_qc(_tiles(TISSUE[0], 512))
    assert qc[0, PEN] > 10 * tissue[0, PEN]


@pytest.mark.parametrize("name", ["histolab/almost-white-2.png", "histolab/no-tissue.png"])
def test_near_white_tiles_score_as_background(name):
    whole = tile_qc(_tiles(name, 512))
    assert whole[0, BACKGROUND] > 0.9
    quarters = tile_qc(_tiles(name))  # almost-white-2 has a wisp of tissue top right
    assert np.sort(quarters[:, BACKGROUND])[1] > 0.95
    assert quarters[:, PEN].max() < 0.01


def test_blur_is_low_on_blurred_tiles():
    path = need(TILES / TISSUE[0])
    sharp = np.asarray(Image.open(path).convert("RGB"))[:256, :256]
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(3)))
    qc = tile_qc(np.stack([sharp, blurred]))
    assert qc[1, BLUR] < qc[0, BLUR] / 10


def test_empty_batch_and_bad_shape():
    assert tile_qc(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 3)
    with pytest.raises(ValueError):
        tile_qc(np.zeros((8, 8, 3), np.uint8))
