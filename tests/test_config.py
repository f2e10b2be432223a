"""Configs: YAML maps onto the dataclasses one to one; wrong values name the key and fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from wsi.config import EmbedConfig, TilingConfig, TissueConfig, load_config, load_embed_config
from wsi.errors import ConfigError

DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def test_default_yaml_equals_dataclass_defaults():
    assert load_config(DEFAULT) == TilingConfig()
    raw = yaml.safe_load(DEFAULT.read_text())["tiling"]
    assert set(raw) == {f.name for f in dataclasses.fields(TilingConfig)}
    assert set(raw["tissue"]) == {f.name for f in dataclasses.fields(TissueConfig)}
    assert load_embed_config(DEFAULT) == EmbedConfig()
    embed = yaml.safe_load(DEFAULT.read_text())["embed"]
    assert set(embed) == {f.name for f in dataclasses.fields(EmbedConfig)}
    from wsi.config import load_section
    from wsi.mil.train import TrainConfig

    assert load_section(DEFAULT, "train", TrainConfig) == TrainConfig()
    train = yaml.safe_load(DEFAULT.read_text())["train"]
    assert set(train) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"precision": "int8"}, "precision = 'int8'"),
        ({"batch_size": 0}, "batch_size = 0"),
        ({"dtype": "float64"}, "dtype = 'float64'"),
        ({"device": "gpu"}, "device = 'gpu'"),
        ({"encoder_name": "x"}, r"unknown key\(s\) \['encoder_name'\]"),
    ],
)
def test_embed_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_embed_config(None, **overrides)


def test_overrides_and_codec_defaults():
    cfg = load_config(None, tile_size=224, codec="zstd")
    assert (cfg.tile_size, cfg.level) == (224, 1)
    assert TilingConfig().level == 90


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("tiling:\n  tile_sise: 256\n", r"unknown key\(s\) \['tile_sise'\]"),
        ("tiling:\n  target_mpp: 0\n", "target_mpp = 0"),
        ("tiling:\n  codec: png\n", "codec = 'png'.*jpeg"),
        ("tiling:\n  tissue:\n    mask_mpp: 8\n    colour: red\n", "tissue.*colour"),
        ("tilling:\n  tile_size: 256\n", r"unknown section\(s\) \['tilling'\]"),
        ("tiling: [1, 2\n", "not valid YAML"),
        ("tiling: [1, 2]\n", "`tiling` must be a mapping"),
        ("tiling:\n  tile_size: 256.5\n", "tile_size = 256.5: must be a whole number"),
        ("tiling:\n  target_mpp: fast\n", "target_mpp = 'fast': must be a number"),
        ("tiling:\n  tile_size: 4096\n  chunk_tiles: 64\n", "MiB per chunk"),
    ],
)
def test_wrong_config_is_a_clear_error(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml.*not found"):
        load_config(tmp_path / "nope.yaml")
