"""Config files (``wsi.configfile``): YAML maps onto the stage dataclasses one to one; wrong
values name the file, key and fix. The job file of ``wsi run`` is tests/pipelines/test_config.py."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from wsi.config import EmbedConfig, TilingConfig, TissueConfig
from wsi.configfile import (
    JOB_SECTIONS,
    SECTIONS,
    load_config,
    load_embed_config,
    load_file,
    load_section,
    load_sections,
    section_class,
)
from wsi.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT = CONFIGS / "default.yaml"


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_default_yaml_equals_dataclass_defaults():
    assert load_config(DEFAULT) == TilingConfig()
    raw = yaml.safe_load(DEFAULT.read_text())
    assert set(raw["tiling"]["tissue"]) == _names(TissueConfig)
    assert load_embed_config(DEFAULT) == EmbedConfig()
    from wsi.mil.train import TrainConfig

    assert load_section(DEFAULT, "train", TrainConfig) == TrainConfig()
    # every section but `run` (it has required keys) is there, with every key, at its default
    assert set(raw) == (set(SECTIONS) | set(JOB_SECTIONS)) - {"run"}
    built = load_file(DEFAULT)
    assert set(built) == set(SECTIONS)  # `cluster` is the job loader's (pipelines.config)
    for section in SECTIONS:
        cls = section_class(section)
        assert set(raw[section]) == _names(cls), section
        assert built[section] == cls(), section


def test_every_config_file_validates():
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert {p.relative_to(CONFIGS).as_posix() for p in files} >= {
        "default.yaml",
        "cluster.yaml",
        "run.yaml",
        "encoders/efficientnet_lite0.yaml",
        "encoders/resnet50_trunc.yaml",
        "encoders/uni.yaml",
        "encoders/uni2_h.yaml",
    }
    for path in files:  # cluster.yaml holds only a job section: see tests/pipelines
        assert load_file(path) or path.name == "cluster.yaml", path


def test_one_encoder_file_per_registered_encoder():
    from wsi.encoders.registry import REGISTRY

    files = {p.stem: p for p in (CONFIGS / "encoders").glob("*.yaml")}
    assert set(files) == set(REGISTRY)
    for name, path in files.items():
        config = load_embed_config(path)
        assert config.encoder == name
        assert config.weights is None  # found locally (the file says where), never downloaded
        if REGISTRY[name].weights.kind == "file":
            assert f"$WSI_WEIGHTS_DIR/{name}/" in path.read_text()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"precision": "int8"}, "precision = 'int8'"),
        ({"batch_size": 0}, "batch_size = 0"),
        ({"dtype": "float64"}, "dtype = 'float64'"),
        ({"device": "gpu"}, "device = 'gpu'"),
        ({"encoder_name": "x"}, "overrides: embed.encoder_name: unknown key; did you mean"),
        ({"batch_size": "64"}, "overrides: embed.batch_size: Input should be a valid integer"),
    ],
)
def test_embed_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_embed_config(None, **overrides)


def test_overrides_and_codec_defaults():
    cfg = load_config(None, tile_size=224, codec="zstd")
    assert (cfg.tile_size, cfg.level) == (224, 1)
    assert TilingConfig().level == 90


def test_overrides_win_over_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tiling:\n  tile_size: 512\n  tissue:\n    mask_mpp: 4.0\n")
    cfg = load_config(p, tile_size=224, stride=None, tissue={"median_size": 5})
    assert (cfg.tile_size, cfg.tissue.mask_mpp, cfg.tissue.median_size) == (224, 4.0, 5)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("tiling:\n  tile_sise: 256\n", "tiling.tile_sise: unknown key; did you mean 'tile_size'"),
        ("tiling:\n  target_mpp: 0\n", "tiling.target_mpp = 0.0: must be between"),
        ("tiling:\n  codec: png\n", "codec = 'png'.*jpeg"),
        ("tiling:\n  tissue:\n    mask_mpp: 8\n    colour: red\n", "tiling.tissue.colour: unknown"),
        ("tilling:\n  tile_size: 256\n", "tilling: unknown section; did you mean 'tiling'"),
        ("tiling: [1, 2\n", "line 2, column 1: not valid YAML"),
        ("tiling: [1, 2]\n", "tiling: must be a mapping"),
        ("tiling:\n  tile_size: 256.5\n", "tiling.tile_size: .*valid integer, got 256.5"),
        ("tiling:\n  target_mpp: fast\n", "tiling.target_mpp: .*valid number, got 'fast'"),
        ("tiling:\n  tile_size: 4096\n  chunk_tiles: 64\n", "MiB per chunk"),
    ],
)
def test_wrong_config_is_a_clear_error(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(p)
    assert str(info.value).startswith(f"{p}: ")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml.*not found"):
        load_config(tmp_path / "nope.yaml")


def _error(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_file(p)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # a misspelt key: the dotted key and a hint
        ("tiling:\n  target_mp: 1\n", "tiling.target_mp: unknown key; did you mean 'target_mpp'?"),
        # a misspelt nested key
        (
            "tiling:\n  tissue:\n    mask_mp: 4\n",
            "tiling.tissue.mask_mp: unknown key; did you mean 'mask_mpp'?",
        ),
        # an unknown key without a close match lists the known ones
        # wrong types
        (
            "tiling:\n  tissue:\n    mask_mpp: abc\n",
            "tiling.tissue.mask_mpp: Input should be a valid number, got 'abc'",
        ),
        ("tiling:\n  tile_size: '256'\n", "tiling.tile_size: Input should be a valid integer"),
        ("report:\n  pdf: 'yes'\n", "report.pdf: Input should be a valid boolean, got 'yes'"),
        ("embed:\n  device: 0\n", "embed.device: Input should be a valid string, got 0"),
        ("heatmap:\n  exports: png\n", "heatmap.exports: Input should be a valid list, got 'png'"),
        ("heatmap:\n  exports: [png, 3]\n", "heatmap.exports[1]: Input should be a valid string"),
        ("tiling:\n  tissue: 5\n", "tiling.tissue: Input should be a mapping, got 5"),
        # null only where the type allows it
        (
            "tiling:\n  tile_size: null\n",
            "tiling.tile_size: Input should be a valid integer, got null",
        ),
        ("report:\n  pdf:\n", "report.pdf: Input should be a valid boolean, got null"),
        # __post_init__ checks name the file and the section
        ("train:\n  epochs: 0\n", "train: epochs and patience must be at least 1"),
        ("heatmap:\n  exports: [jpg]\n", "heatmap exports ['jpg']: choose from"),
        ("report:\n  top_k: 0\n", "report top_k 0 must be >= 1"),
        # unknown section
        ("heatmaps:\n  alpha: 0.3\n", "heatmaps: unknown section; did you mean 'heatmap'?"),
        # a section that is not a mapping
        ("report: 3\n", "report: must be a mapping of keys to values, got 3"),
    ],
)
def test_each_problem_names_the_file_and_the_key(tmp_path, text, line):
    message = _error(tmp_path, text)
    assert message == f"{tmp_path / 'c.yaml'}: {line}" or message.startswith(
        f"{tmp_path / 'c.yaml'}: {line}"
    ), message


def test_int_where_a_float_is_expected_is_accepted(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tiling:\n  target_mpp: 1\n  stride: null\nheatmap:\n  tiff_downsample: 8\n")
    built = load_file(p)
    assert built["tiling"].target_mpp == 1.0 and built["tiling"].stride is None
    assert built["heatmap"].tiff_downsample == 8.0


def test_all_problems_of_a_file_at_once(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "tiling:\n  target_mp: 1\n  tissue:\n    mask_mpp: abc\n"
        "report:\n  pdf: 'yes'\nheatmapp: {}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_section(p, "train", section_class("train"))  # a per-section loader sees them all
    lines = str(info.value).splitlines()
    assert lines[0] == f"{p}: 4 problems:"
    assert sorted(line.strip() for line in lines[1:]) == sorted(
        [
            f"{p}: heatmapp: unknown section; did you mean 'heatmap'?",
            f"{p}: tiling.target_mp: unknown key; did you mean 'target_mpp'?",
            f"{p}: tiling.tissue.mask_mpp: Input should be a valid number, got 'abc'",
            f"{p}: report.pdf: Input should be a valid boolean, got 'yes'",
        ]
    )


def test_wrong_types_and_every_bad_value_are_listed_together(tmp_path):
    """A wrong type, two bad values (one a choice) and an unknown key in one section and a
    bad value in another: five problems, five lines, ``codec: png`` among them."""
    p = tmp_path / "c.yaml"
    p.write_text(
        "tiling:\n  tile_size: big\n  codec: png\n  min_tissue: 2.0\n  bogus: 1\n"
        "embed:\n  batch_size: -4\n"
    )
    with pytest.raises(ConfigError) as info:
        load_file(p)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{p}: 5 problems:", str(info.value)
    text = str(info.value)
    for words in ("tiling.tile_size", "tiling.codec = 'png': choose one of", "tiling.min_tissue",
                  "tiling.bogus: unknown key", "embed.batch_size = -4"):  # fmt: skip
        assert words in text, words


def test_a_check_that_depends_on_another_key_is_not_a_false_problem(tmp_path):
    # stride 2000 is fine for 1024 px tiles (not for the default 256), and 1024 px tiles
    # are fine in chunks of 16 (not in the default 64)
    p = tmp_path / "c.yaml"
    p.write_text("tiling:\n  stride: 2000\n  tile_size: 1024\n  chunk_tiles: 16\n  codec: png\n")
    with pytest.raises(ConfigError) as info:
        load_file(p)
    assert str(info.value).startswith(f"{p}: tiling.codec = 'png': choose one of")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- tiling\n- embed\n", "expected a mapping of sections .* got \\['tiling', 'embed'\\]"),
        ("just words\n", "expected a mapping of sections"),
        ("tiling:\n  tile_size: 256\n tissue: {}\n", "line 3, column 2: not valid YAML"),
        ("tiling:\n\ttile_size: 256\n", "line 2, column 1: not valid YAML"),
    ],
)
def test_bad_files(tmp_path, text, match):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(p))}: {match}"):
        load_file(p)


def test_empty_file_and_empty_section_are_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("# nothing yet\n")
    assert load_file(p) == {}
    assert load_config(p) == TilingConfig()
    p.write_text("tiling:\n")
    assert load_file(p) == {"tiling": TilingConfig()}


def test_unknown_section_class():
    with pytest.raises(ConfigError, match="tilling: unknown section; did you mean 'tiling'"):
        section_class("tilling")


def test_job_sections_pass_unread_and_others_are_refused(tmp_path):
    """`run` and `cluster` belong to `wsi run` (pipelines.config): the stage loaders let
    them through unread, so one job file serves every command."""
    p = tmp_path / "job.yaml"
    p.write_text("run:\n  whatever: 1\ncluster: 3\ntiling:\n  tile_size: 224\n")
    assert load_file(p) == {"tiling": TilingConfig(tile_size=224)}
    assert load_config(p).tile_size == 224
    p.write_text("runs:\n  out: o\n")
    with pytest.raises(ConfigError, match="runs: unknown section; sections: embed, heatmap"):
        load_file(p)
    with pytest.raises(ConfigError, match="run: unknown section"):
        section_class("run")


def test_moved_keys_are_named_with_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tiling:\n  size: 224\n")
    moved = {"tiling.size": "it is tiling.tile_size"}
    with pytest.raises(ConfigError, match=f"^{re.escape(str(p))}: tiling.size: it is tiling.tile"):
        load_sections(p, moved=moved)
    with pytest.raises(ConfigError, match="^overrides: tiling.size: it is"):
        load_sections(None, {"tiling": {"size": 1}}, moved=moved)
