"""Export to and import from CLAM / TRIDENT h5 features files, on a real embedded slide."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from wsi import store as st
from wsi.errors import StageConflictError, StoreError, WsiError
from wsi.h5io import COORDS_STAGE, H5FormatError, H5NotFoundError, export_h5, import_h5

ENCODER = "efficientnet_lite0"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiled and embedded synthetic slide store (256 px tiles at 0.5 mpp: 64 with the
    real textures, 71 with the procedural ones)."""
    from wsi.config import EmbedConfig
    from wsi.embed import embed_store
    from wsi.synthetic import make_synthetic_slide
    from wsi.tiling import tile_slide

    root = tmp_path_factory.mktemp("h5io")
    slide = root / "slide2.tiff"
    make_synthetic_slide(slide, width=6000, height=6000, mpp=0.25, seed=2)
    store = tile_slide(slide, root / "stores", progress=False)
    embed_store(store, EmbedConfig(device="cpu"), progress=False)
    return store


@pytest.fixture(scope="module")
def exported(embedded: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_h5(embedded, ENCODER, tmp_path_factory.mktemp("h5"))


@pytest.fixture
def store_copy(embedded: Path, tmp_path: Path) -> Path:
    """A private copy of the embedded store, for tests that write into it."""
    dst = tmp_path / "stores" / embedded.name
    shutil.copytree(embedded, dst)
    return dst


def _features(store: Path, encoder: str = ENCODER) -> np.ndarray:
    from wsi.embed import features_of

    return features_of(store, encoder)


def _coords(store: Path) -> np.ndarray:
    return np.asarray(st.open_store(store)[st.TILES_COORDS][:])


def _write_h5(path: Path, feats: np.ndarray, coords: np.ndarray, **root: object) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        f.create_dataset("coords", data=coords)
        f.attrs.update(root)
    return path


def test_export_layout(embedded: Path, exported: Path) -> None:
    group = st.open_store(embedded)
    pix = dict(group[st.TILES_PIXELS].attrs)
    meta = st.read_meta(group)
    assert exported.name == f"{meta['slide_id']}.h5"
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temp
    with h5py.File(exported, "r") as f:
        assert set(f.keys()) == {"coords", "features"}
        coords, feats = f["coords"][()], f["features"][()]
        assert coords.dtype == np.int64 and feats.dtype == np.float32
        np.testing.assert_array_equal(coords, _coords(embedded))
        # bit for bit
        assert feats.tobytes() == _features(embedded).astype(np.float32).tobytes()
        a = dict(f["coords"].attrs)
        footprint = float(group[st.TILES_COORDS].attrs["footprint_l0"])
        assert a["patch_level"] == pix["level"] == 1
        assert a["patch_size"] == round(footprint / pix["level_downsample"]) == pix["tile_size"]
        assert a["patch_size_level0"] == round(footprint) == 512
        assert a["level0_magnification"] == 40  # no objective power: 10 / 0.25
        assert a["target_magnification"] == round(10 / pix["tile_mpp"]) == 20
        assert a["overlap"] == 0 and a["name"] == meta["slide_id"]
        root = dict(f.attrs)
        emb_attrs = dict(group[f"features/{ENCODER}/embeddings"].attrs)
        assert root["encoder"] == ENCODER and root["feature_dim"] == feats.shape[1]
        assert root["weights_sha256"] == emb_attrs["weights_sha256"]
        assert root["tile_mpp"] == pix["tile_mpp"] and "wsi_version" in root
        # privacy: no slide path, label or macro anywhere in the file
        text = repr({**a, **root})
        source = meta["source"]["path"]
        assert source not in text and "label" not in text and "macro" not in text


def test_round_trip_into_features_only_store(embedded: Path, exported: Path, tmp_path: Path):
    store = import_h5(exported, ENCODER, tmp_path)
    assert store == tmp_path / f"{exported.stem}.zarr"
    assert _features(store).tobytes() == _features(embedded).tobytes()
    np.testing.assert_array_equal(_coords(store), _coords(embedded))
    group = st.open_store(store)
    meta = st.read_meta(group)
    assert meta["slide"] == {} and meta["source"]["h5"] == exported.name
    assert len(meta["source"]["fingerprint"]) == 32
    assert st.stage_entry(group, COORDS_STAGE) is not None
    assert st.stage_entry(group, "tiles") is None and st.TILES_PIXELS not in group
    c_attrs = dict(group[st.TILES_COORDS].attrs)
    assert c_attrs["patch_size"] == 256 and c_attrs["patch_level"] == 1
    params = st.stage_entry(group, f"features/{ENCODER}")["params"]  # type: ignore[index]
    assert params["imported_from"] == exported.name and params["feature_dim"] == 1280
    sha = dict(st.open_store(embedded)[f"features/{ENCODER}/embeddings"].attrs)["weights_sha256"]
    assert params["weights_sha256"] == sha
    # same file again: a no-op; and the features-only store exports to the same file content
    finished = st.stage_entry(group, f"features/{ENCODER}")["finished"]  # type: ignore[index]
    import_h5(exported, ENCODER, tmp_path)
    assert st.stage_entry(st.open_store(store), f"features/{ENCODER}")["finished"] == finished  # type: ignore[index]
    again = export_h5(store, ENCODER, tmp_path / "again")
    with h5py.File(again, "r") as f, h5py.File(exported, "r") as g:
        np.testing.assert_array_equal(f["coords"][()], g["coords"][()])
        assert f["features"][()].tobytes() == g["features"][()].tobytes()
        assert f["coords"].attrs["patch_size"] == g["coords"].attrs["patch_size"]


def test_shuffled_rows_into_existing_store(store_copy: Path, exported: Path, tmp_path: Path):
    with h5py.File(exported, "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    perm = np.random.default_rng(0).permutation(len(coords))
    src = tmp_path / "h5" / f"{store_copy.stem}.h5"
    src.parent.mkdir()
    _write_h5(src, feats[perm], coords[perm])
    out = import_h5(src, "efficientnet_lite0_copy", store_copy.parent)
    assert out == store_copy
    assert _features(store_copy, "efficientnet_lite0_copy").tobytes() == feats.tobytes()
    assert _features(store_copy).tobytes() == feats.tobytes()  # the original is untouched


def test_clam_layout_1nd(store_copy: Path, exported: Path, tmp_path: Path) -> None:
    with h5py.File(exported, "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    src = _write_h5(tmp_path / f"{store_copy.stem}.h5", feats[None], coords)
    import_h5(src, "clam_style", store_copy.parent)
    group = st.open_store(store_copy)
    params = st.stage_entry(group, "features/clam_style")["params"]  # type: ignore[index]
    assert params["weights_sha256"] is None and params["feature_dim"] == feats.shape[1]
    assert _features(store_copy, "clam_style").tobytes() == feats.tobytes()


def test_mismatched_coords_refused(store_copy: Path, exported: Path, tmp_path: Path) -> None:
    with h5py.File(exported, "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    n = len(coords)  # the store's tile count (depends on the textures the slide was made of)
    assert n == st.open_store(store_copy)[st.TILES_COORDS].shape[0] and n > 13
    coords = coords.copy()
    coords[:3] += 7
    src = _write_h5(tmp_path / f"{store_copy.stem}.h5", feats, coords)
    with pytest.raises(StoreError, match=rf"3 of its {n} coords do not match") as err:
        import_h5(src, "moved", store_copy.parent)
    assert src.name in str(err.value)
    # fewer rows than tiles are refused too
    src = _write_h5(tmp_path / f"{store_copy.stem}.h5", feats[3:13], coords[3:13])
    with pytest.raises(StoreError, match=rf"10 rows for the {n} tiles"):
        import_h5(src, "moved", store_copy.parent)
    assert st.stage_entry(st.open_store(store_copy), "features/moved") is None


def test_bad_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(H5FormatError, match="not an HDF5 file") as err:
        import_h5(text, ENCODER, tmp_path / "out")
    assert "notes.h5" in str(err.value)
    with pytest.raises(H5NotFoundError, match="no such file"):
        import_h5(tmp_path / "gone.h5", ENCODER, tmp_path / "out")
    no_feats = tmp_path / "nofeats.h5"
    with h5py.File(no_feats, "w") as f:
        f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
    with pytest.raises(WsiError, match="no `features` dataset") as missing:
        import_h5(no_feats, ENCODER, tmp_path / "out")
    assert "nofeats.h5" in str(missing.value)
    coords = np.arange(8, dtype=np.int64).reshape(4, 2)
    short = _write_h5(tmp_path / "short.h5", np.zeros((3, 5), np.float32), coords)
    with pytest.raises(H5FormatError, match="3 feature rows but 4 coords"):
        import_h5(short, ENCODER, tmp_path / "out")
    feats = np.zeros((4, 5), np.float32)
    feats[1, 2] = np.nan
    nan = _write_h5(tmp_path / "nan.h5", feats, coords)
    with pytest.raises(H5FormatError, match="1 non-finite"):
        import_h5(nan, ENCODER, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing was written for any of them


def test_other_weights_refused(store_copy: Path, exported: Path, tmp_path: Path) -> None:
    # our own export imported back under the same name with the same weights: other params
    with pytest.raises(StageConflictError, match="other parameters"):
        import_h5(exported, ENCODER, store_copy.parent)
    with h5py.File(exported, "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    src = _write_h5(tmp_path / f"{store_copy.stem}.h5", feats + 1, coords, weights_sha256="ab" * 32)
    with pytest.raises(StageConflictError, match="other weights"):
        import_h5(src, ENCODER, store_copy.parent)
    np.testing.assert_array_equal(_features(store_copy), feats)
    import_h5(src, ENCODER, store_copy.parent, overwrite=True)
    np.testing.assert_array_equal(_features(store_copy), feats + 1)


def test_cli(store_copy: Path, exported: Path, tmp_path: Path, capsys) -> None:
    from pipelines.h5cli import add_parsers

    parser = argparse.ArgumentParser(prog="wsi")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "h5out"
    missing = tmp_path / "missing.zarr"
    args = parser.parse_args(
        ["export-h5", str(store_copy), str(missing), "--encoder", ENCODER, "--out", str(out)]
    )
    assert args.func(args) == 1
    text = capsys.readouterr().out
    assert "exported 1 of 2 store(s)" in text
    assert "  ok      " in text and f"FAILED  {missing}" in text
    assert (out / f"{store_copy.stem}.h5").exists()

    bad = tmp_path / "bad.h5"
    bad.write_text("x")
    stores = tmp_path / "imported"
    args = parser.parse_args(
        ["import-h5", str(bad), str(out / f"{store_copy.stem}.h5"), "--encoder", "e2"]
        + ["--out", str(stores)]
    )
    assert args.func(args) == 1
    text = capsys.readouterr().out
    assert "imported 1 of 2 file(s)" in text and "FAILED" in text and "not an HDF5" in text
    assert st.stage_entry(st.open_store(stores / f"{store_copy.stem}.zarr"), "features/e2")
    args = parser.parse_args(
        ["import-h5", str(out / f"{store_copy.stem}.h5"), "--encoder", "e2", "--out", str(stores)]
    )
    assert args.func(args) == 0
    assert args.overwrite is False
