"""Stain normalisation before embedding: `wsi stain-target`, `wsi embed --stain-target`,
the features' identity, and a model that refuses features of other preprocessing.

Real slides (synthetic TIFFs), real stores, the real default encoder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from wsi import store as st
from wsi.config import EmbedConfig
from wsi.embed import embed_store, features_of, fit_stain_target, is_embedded
from wsi.errors import ConfigError, StageConflictError, StoreError


@pytest.fixture(scope="module")
def tiled(tmp_path_factory) -> Path:
    from wsi.synthetic import make_synthetic_slide
    from wsi.tiling import tile_slide

    root = tmp_path_factory.mktemp("stainembed")
    slide = make_synthetic_slide(root / "s.tiff", width=5000, height=4000, mpp=0.25, seed=2)
    return Path(tile_slide(slide.path, root / "stores", progress=False))


def test_stain_target_embed_and_identity(tiled, tmp_path):
    from pipelines.cli import main

    target = tmp_path / "target.json"
    assert main(["stain-target", str(tiled), "--method", "macenko", "--out", str(target)]) == 0
    stored = json.loads(target.read_text())
    assert stored["method"] == "macenko" and len(stored["target"]["he"]) == 3

    store = tmp_path / "copy.zarr"
    shutil.copytree(tiled, store)
    plain = EmbedConfig(device="cpu")
    normed = EmbedConfig(device="cpu", stain_target=str(target))
    embed_store(store, plain, progress=False)
    raw = features_of(store, plain.encoder)
    assert is_embedded(store, plain) and not is_embedded(store, normed)
    with pytest.raises(StageConflictError):  # other preprocessing, same name: never mixed
        embed_store(store, normed, progress=False)
    embed_store(store, normed, overwrite=True, progress=False)
    assert is_embedded(store, normed) and not is_embedded(store, plain)
    feats = features_of(store, normed.encoder)
    assert feats.shape == raw.shape and not np.allclose(feats, raw)
    attrs = st.open_store(store)[st.features_keys(normed.encoder)[1]].attrs
    assert attrs["stain_normalisation"]["method"] == "macenko"
    assert attrs["stain_target"]["target"] == stored["target"]


def test_bad_targets_name_the_file(tiled, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        embed_store(tiled, EmbedConfig(device="cpu", stain_target=str(bad)), progress=False)
    with pytest.raises(ConfigError, match="missing.json"):
        missing = EmbedConfig(device="cpu", stain_target=str(tmp_path / "missing.json"))
        embed_store(tiled, missing, progress=False)
    empty = tmp_path / "empty.zarr"
    st.create_store(empty, st.new_store_meta("empty", {"kind": "test"}))
    with pytest.raises(ConfigError, match="no stored tiles"):
        fit_stain_target([empty], "macenko", tmp_path / "t.json")
    with pytest.raises(ConfigError, match="reinhard"):  # an unknown method lists the known
        fit_stain_target([tiled], "vahadane", tmp_path / "t.json")


def test_models_refuse_features_of_other_preprocessing(tmp_path):
    """A model trained on plain features refuses a store whose features were normalised;
    a training over mixed preprocessing is refused, naming a slide of each."""
    from tests.mil.test_train import ENC, make_cohort
    from wsi.mil.predict import load_model, predict_store
    from wsi.mil.train import TrainConfig, train_model

    labels = make_cohort(tmp_path / "c", patients=8)
    stores = sorted((tmp_path / "c" / "stores").glob("*.zarr"))
    config = TrainConfig(folds=2, epochs=2, patience=2, test_fraction=0.0)
    model_dir = train_model(tmp_path / "c" / "stores", labels, tmp_path / "m", config,
                            encoder=ENC)  # fmt: skip
    forged = {"method": "macenko", "target_sha256": "f" * 64}
    st.open_store(stores[0], mode="r+")[st.features_keys(ENC)[1]].attrs.update(
        {"stain_normalisation": forged}
    )
    with pytest.raises(StoreError, match="macenko normalisation.*no stain normalisation"):
        predict_store(stores[0], load_model(model_dir), overwrite=True)
    with pytest.raises(StoreError, match="different stain normalisations"):
        train_model(tmp_path / "c" / "stores", labels, tmp_path / "m2", config, encoder=ENC)


def test_stain_views_are_embedded_beside_the_tiles_the_same_on_every_run(tiled, tmp_path):
    from wsi.embed import views_of

    config = EmbedConfig(device="cpu", stain_views=2, stain_jitter=0.3)
    runs = []
    for name in ("a", "b"):
        store = tmp_path / f"{name}.zarr"
        shutil.copytree(tiled, store)
        embed_store(store, config, progress=False)
        runs.append((features_of(store, config.encoder), views_of(store, config.encoder)))
    (feats, views), (feats2, views2) = runs
    assert views.shape == (len(feats), 2, feats.shape[1])
    np.testing.assert_array_equal(views, views2)  # the same views on every run
    assert not np.allclose(views[:, 0], feats) and not np.allclose(views[:, 0], views[:, 1])
    plain = EmbedConfig(device="cpu")
    assert not is_embedded(tmp_path / "a.zarr", plain)  # views are part of the identity
    embed_store(tmp_path / "a.zarr", plain, overwrite=True, progress=False)
    assert views_of(tmp_path / "a.zarr", plain.encoder) is None
    with pytest.raises(ConfigError, match="stain_views"):
        EmbedConfig(stain_views=17)


def test_stain_augmented_training(tmp_path):
    """Training draws each tile as stored or as one of its views; stores without views are
    refused naming the store and the fix."""
    from tests.mil.test_train import ENC, make_cohort
    from wsi.mil.train import TrainConfig, train_model

    labels = make_cohort(tmp_path / "c", patients=8)
    stores = sorted((tmp_path / "c" / "stores").glob("*.zarr"))
    config = TrainConfig(folds=2, epochs=2, patience=2, test_fraction=0.0, stain_augment=True)
    with pytest.raises(ConfigError, match="--stain-views"):
        train_model(tmp_path / "c" / "stores", labels, tmp_path / "m", config, encoder=ENC)
    rng = np.random.default_rng(0)
    for store in stores:  # views as `wsi embed --stain-views 3` writes them
        group = st.open_store(store, mode="r+")
        feats = features_of(store, ENC)
        views = feats[:, None, :] + rng.normal(0, 0.1, (len(feats), 3, feats.shape[1]))
        group.create_array(st.feature_views_key(ENC), data=views.astype(np.float32))
    model = train_model(tmp_path / "c" / "stores", labels, tmp_path / "m", config, encoder=ENC)
    card = json.loads((model / "model.json").read_text())
    assert card["training"]["stain_augment"] is True
