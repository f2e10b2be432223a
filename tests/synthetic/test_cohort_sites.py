"""Tests of the cohort generator's second sites: texture sets (wsi.synthetic.texture_sets)
and stain shifts (wsi.synthetic.stains), on small real cohorts.

The cohorts use an empty texture folder, so every texture is procedural and the
expected numbers hold on any machine; the tests of the real images skip where
``../shared/data/tiles`` is missing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
from PIL import Image
from skimage.color import rgb2hed

from wsi.errors import ConfigError
from wsi.synthetic import TEXTURE_SETS, Cohort, make_cohort
from wsi.synthetic.lesions import lesion_mask
from wsi.synthetic.masks import COHORT_LAYOUT, tissue_mask
from wsi.synthetic.plan import (
    MAX_LESIONS,
    TISSUE_FRACTION_RANGE,
    check_args,
    cohort_params,
    load_cohort_sources,
)
from wsi.synthetic.stains import shift_stains
from wsi.synthetic.texture_sets import BACKGROUND_SOURCES, LESION_SOURCES
from wsi.synthetic.textures import default_tile_source_dir

REPO = Path(__file__).resolve().parents[2]
#: Tiny cohorts: two 1024-px slides of one tumour patient, lesions >= 64 um across.
TINY: dict[str, Any] = {
    "slides": 2,
    "size": 1024,
    "seed": 7,
    "positive_fraction": 1.0,
    "min_lesion_diameter_um": 64.0,
    "mask_downsample": 8,
    "lesion_fraction": (0.1, 0.2),
}
SHIFT = (1.5, 0.5, 1.0)


@pytest.fixture(scope="module")
def no_textures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty texture folder: every texture set is procedural (machine-independent)."""
    return tmp_path_factory.mktemp("no_textures")


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory, no_textures: Path) -> dict[str, Cohort]:
    """The same tiny cohort with each texture set, and with the default set stain-shifted."""
    root = tmp_path_factory.mktemp("sites")
    made = {
        name: make_cohort(root / name, tile_source_dir=no_textures, textures=name, **TINY)
        for name in TEXTURE_SETS
    }
    made["shifted"] = make_cohort(
        root / "shifted", tile_source_dir=no_textures, stain_shift=SHIFT, **TINY
    )
    return made


def _pixels(cohort: Cohort, slide_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level-0 RGB of a slide (read back with OpenSlide), and its lesion and tissue masks
    on the level-0 grid."""
    side = TINY["size"]
    with openslide.OpenSlide(str(cohort.out_dir / "slides" / f"{slide_id}.tiff")) as slide:
        rgb = np.asarray(slide.read_region((0, 0), 0, (side, side)).convert("RGB"))

    def mask(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.resize((side, side), Image.Resampling.NEAREST)) > 0

    return rgb, mask(cohort.lesion_mask(slide_id)), mask(cohort.tissue_mask(slide_id))


def _ids(cohort: Cohort) -> list[str]:
    return [p.stem for p in cohort.slides]


def _hed_means(cohort: Cohort) -> tuple[np.ndarray, np.ndarray]:
    """Mean HED optical density (skimage's rgb2hed) of the tissue pixels of all slides,
    and the mean RGB of their glass."""
    hed, glass = [], []
    for sid in _ids(cohort):
        rgb, _, tissue = _pixels(cohort, sid)
        hed.append(rgb2hed(rgb)[tissue])
        glass.append(rgb[~tissue].astype(np.float64))
    return np.concatenate(hed).mean(axis=0), np.concatenate(glass).mean(axis=0)


def _lesion_and_background_grey(cohort: Cohort) -> tuple[float, float]:
    les, bg = [], []
    for sid in _ids(cohort):
        rgb, lesion, tissue = _pixels(cohort, sid)
        grey = rgb.astype(np.float64).mean(axis=-1)
        les.append(grey[lesion])
        bg.append(grey[tissue & ~lesion])
    return float(np.concatenate(les).mean()), float(np.concatenate(bg).mean())


# --------------------------------------------------------------------------- #
# defaults unchanged
# --------------------------------------------------------------------------- #


def _hash(described: dict[str, Any], **kwargs: Any) -> str:
    defaults = {
        "slides": 60,
        "size": 4000,
        "patients": None,
        "positive_fraction": 0.5,
        "seed": 0,
        "lesion_fraction": (0.01, 0.10),
        "mask_downsample": 16,
        "min_lesion_diameter_um": 256.0,
    }
    params = cohort_params(check_args(**{**defaults, **kwargs}), described)
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def test_defaults_keep_the_parameter_hash(no_textures: Path) -> None:
    """At their defaults, textures and stain_shift leave the hash of test_cohort_tasks's
    test_binary_unchanged (recorded before they existed); otherwise they change it."""
    procedural = load_cohort_sources(no_textures)[1]
    assert _hash(procedural) == "b8b3e39efbaa0b6f"
    assert _hash(procedural, textures="default", stain_shift=(1, 1, 1.0)) == "b8b3e39efbaa0b6f"
    assert _hash(procedural, stain_shift=SHIFT) != "b8b3e39efbaa0b6f"
    for name in ("site_b", "subtle"):
        described = load_cohort_sources(no_textures, textures=name)[1]
        assert described["set"]["name"] == name
        assert _hash(described, textures=name) != "b8b3e39efbaa0b6f"
    assert "set" not in procedural


def test_default_manifest_has_no_new_keys(cohorts: dict[str, Cohort]) -> None:
    manifest = json.loads(cohorts["default"].manifest.read_text())
    assert "stain_shift" not in manifest and "set" not in manifest["textures"]
    assert "stain_shift" not in manifest["params"] and "texture_set" not in manifest["params"]


# --------------------------------------------------------------------------- #
# stain shift
# --------------------------------------------------------------------------- #


def test_shift_stains_keeps_white_and_scales_each_stain() -> None:
    white = np.full((4, 4, 3), 255, dtype=np.uint8)
    assert np.array_equal(shift_stains(white, SHIFT), white)
    assert np.array_equal(shift_stains(white, (3.0, 0.2, 2.0)), white)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    assert np.abs(shift_stains(rgb, (1.0, 1.0, 1.0)).astype(int) - rgb).max() <= 1  # identity
    near_white = np.full((1, 1, 3), 245, dtype=np.uint8)
    assert shift_stains(near_white, SHIFT).min() >= 237  # near-white stays near white
    he = np.array([[[150, 90, 170], [220, 150, 200]]], dtype=np.uint8)  # nucleus, stroma
    before, after = rgb2hed(he), rgb2hed(shift_stains(he, SHIFT))
    assert np.all(after[..., 0] > 1.3 * before[..., 0])  # haematoxylin x1.5
    assert np.all(after[..., 1] < 0.7 * before[..., 1])  # eosin x0.5


def test_stain_shift_changes_slide_pixels(cohorts: dict[str, Cohort]) -> None:
    """(1.5, 0.5, 1): more haematoxylin and less eosin on the tissue of the written slides,
    the same masks, and the same near-white glass."""
    base, shifted = cohorts["default"], cohorts["shifted"]
    hed0, glass0 = _hed_means(base)
    hed1, glass1 = _hed_means(shifted)
    assert hed1[0] / hed0[0] > 1.3, (hed0, hed1)  # measured 1.47
    assert hed1[1] / hed0[1] < 0.7, (hed0, hed1)  # measured 0.50
    assert np.all(glass0 > 235) and np.abs(glass1 - glass0).max() < 0.5
    for sid in _ids(base):
        for mask in (base.lesion_mask(sid), base.tissue_mask(sid)):
            assert mask.read_bytes() == (shifted.masks_dir / mask.name).read_bytes()
    manifest = json.loads(shifted.manifest.read_text())
    assert manifest["params"]["stain_shift"] == list(SHIFT)
    shift = manifest["stain_shift"]
    assert (shift["haematoxylin"], shift["eosin"], shift["dab"]) == SHIFT


@pytest.mark.skipif(not default_tile_source_dir().is_dir(), reason="no ../shared/data/tiles")
def test_stain_shift_on_real_textures(tmp_path: Path) -> None:
    args = {**TINY, "slides": 1}
    base = make_cohort(tmp_path / "a", **args)
    shifted = make_cohort(tmp_path / "b", stain_shift=SHIFT, **args)
    (h0, e0, _), glass0 = _hed_means(base)
    (h1, e1, _), glass1 = _hed_means(shifted)
    assert h1 > 1.3 * h0 and e1 < 0.7 * e0
    assert np.abs(glass1 - glass0).max() < 0.5


# --------------------------------------------------------------------------- #
# texture sets
# --------------------------------------------------------------------------- #


def test_each_texture_set_gives_a_cohort_with_its_own_lesions(cohorts: dict[str, Cohort]) -> None:
    """Same plan and masks for every set (textures draw from their own random streams),
    different lesion pixels; subtle's lesions are closer to the background than
    default's."""
    grey = {}
    for name in TEXTURE_SETS:
        cohort = cohorts[name]
        manifest = json.loads(cohort.manifest.read_text())
        assert manifest["complete"] and len(cohort.slides) == 2
        assert all(r["n_lesions"] >= 1 for r in manifest["slides"])
        if name != "default":
            assert manifest["params"]["texture_set"] == name
            assert manifest["textures"]["set"]["name"] == name
            assert manifest["textures"]["lesion"][0]["name"] == f"procedural-{name}-lesion"
        grey[name] = _lesion_and_background_grey(cohort)
    base = cohorts["default"]
    for sid in _ids(base):
        for name in ("site_b", "subtle"):
            other = cohorts[name]
            assert other.lesion_mask(sid).read_bytes() == base.lesion_mask(sid).read_bytes()
            rgb0, lesion, _ = _pixels(base, sid)
            rgb1, _, _ = _pixels(other, sid)
            diff = np.abs(rgb0[lesion].astype(float) - rgb1[lesion].astype(float)).mean()
            assert diff > 10, (name, sid, diff)
    contrast = {k: bg - les for k, (les, bg) in grey.items()}
    assert contrast["default"] > 30 and 5 < contrast["subtle"] < 0.7 * contrast["default"], grey


def test_procedural_lesion_sets_follow_the_choice(no_textures: Path) -> None:
    means = {}
    for name in TEXTURE_SETS:
        sources, described = load_cohort_sources(no_textures, per_class=True, textures=name)
        prefix = "procedural" if name == "default" else f"procedural-{name}"
        assert [s[0]["name"] for s in described["lesion_sets"]] == [
            f"{prefix}-lesion-{k}" for k in range(3)
        ]
        means[name] = np.array([s[0].reshape(-1, 3).mean(axis=0) for s in sources.lesion_sets])
        means[name + "/bg"] = sources.background[0].reshape(-1, 3).mean(axis=0)
    assert np.abs(means["site_b"] - means["default"]).max() > 10
    assert np.abs(means["site_b/bg"] - means["default/bg"]).max() > 10
    # subtle's lesion sets carry half the tint: nearer the background than default's
    gap = {k: np.linalg.norm(means[k] - means[k + "/bg"], axis=1) for k in ("default", "subtle")}
    assert np.all(gap["subtle"] < 0.8 * gap["default"]), gap


@pytest.mark.skipif(not default_tile_source_dir().is_dir(), reason="no ../shared/data/tiles")
def test_real_texture_sets_use_their_images() -> None:
    tiles = default_tile_source_dir()
    for name, tset in TEXTURE_SETS.items():
        if not all((tiles / n).is_file() for n in tset.background + tset.lesion):
            continue
        _, described = load_cohort_sources(tiles, per_class=True, textures=name)
        assert [e["name"] for e in described["background"]] == list(tset.background)
        assert [e["name"] for e in described["lesion"]] == list(tset.lesion)
        assert [s[0]["name"] for s in described["lesion_sets"]] == list(tset.lesion[:3])
    site_b = TEXTURE_SETS["site_b"]
    assert not set(site_b.background + site_b.lesion) & set(BACKGROUND_SOURCES + LESION_SOURCES)


# --------------------------------------------------------------------------- #
# errors and CLI
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"textures": "site_c"}, "textures must be one of default, site_b, subtle"),
        ({"textures": None}, "textures must be one of"),
        ({"stain_shift": (1.5, 0.0, 1.0)}, "stain_shift must be three positive factors"),
        ({"stain_shift": (1.0, -1.0, 1.0)}, "stain_shift"),
        ({"stain_shift": (1.0, 1.0)}, "stain_shift"),
        ({"stain_shift": (1.0, float("nan"), 1.0)}, "stain_shift"),
        ({"stain_shift": "1.5"}, "stain_shift"),
        ({"stain_shift": 1.5}, "stain_shift"),
    ],
)
def test_bad_site_arguments(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_cohort(tmp_path / "bad", **{**TINY, **kwargs})
    assert not (tmp_path / "bad").exists()


def test_cli_site_flags(tmp_path: Path, no_textures: Path) -> None:
    out = tmp_path / "cli"
    cmd = [sys.executable, str(REPO / "tools" / "make_cohort.py"), "--out", str(out), "-q"]
    cmd += ["--slides", "1", "--size", "1024", "--min-lesion-um", "64", "--tiles", str(no_textures)]
    ok = subprocess.run(
        cmd + ["--textures", "site_b", "--stain-shift", "1.5", "0.5", "1"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    params = json.loads((out / "cohort.json").read_text())["params"]
    assert params["texture_set"] == "site_b" and params["stain_shift"] == [1.5, 0.5, 1.0]
    bad = subprocess.run(cmd + ["--stain-shift", "1", "0", "1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "stain_shift must be three positive" in bad.stderr
    bad = subprocess.run(cmd + ["--textures", "site_c"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


# --------------------------------------------------------------------------- #
# small lesions
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("side", [8000, 12000])
def test_small_lesion_fraction_on_large_slides(side: int) -> None:
    """lesion_fraction (0.01, 0.03) with the default 256 um lesions, on the masks
    make_cohort draws (no slide written): every slide's lesions cover 1-3 % of its
    tissue, at least the minimum area each.  On 8000-px slides one such lesion is
    1.6-2.0 % of the tissue, which raises the low end (a single lesion each)."""
    args = check_args(1, side, None, 1.0, 0, (0.01, 0.03), 16, 256.0)
    min_area = args.min_lesion_area_l0 / 16**2  # mask pixels
    mask_side = -(-side // 16)
    fractions = []
    for seed in range(6):
        tissue = tissue_mask(np.random.default_rng(seed), mask_side, mask_side, COHORT_LAYOUT)
        lesion, records = lesion_mask(
            np.random.default_rng(seed + 100), tissue, (0.01, 0.03), min_area, MAX_LESIONS
        )
        fraction = (lesion > 0).sum() / (tissue > 0).sum()
        assert 0.01 <= fraction <= 0.03 + 1e-9, (seed, fraction)
        assert fraction >= len(records) * min_area / (tissue > 0).sum() - 1e-9
        assert all(r["area_mask_px"] >= int(min_area) for r in records)
        fractions.append(fraction)
    lowest_raised = min_area / (TISSUE_FRACTION_RANGE[1] * mask_side**2)
    if side == 8000:
        assert lowest_raised > 0.015 and min(fractions) >= lowest_raised - 1e-3
