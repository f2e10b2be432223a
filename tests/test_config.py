"""Configs: YAML maps onto the dataclasses one to one; wrong values name the file, key and fix."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import yaml

from wsi.config import (
    SECTIONS,
    ClusterConfig,
    EmbedConfig,
    RunConfig,
    TilingConfig,
    TissueConfig,
    load_config,
    load_embed_config,
    load_file,
    load_run_config,
    load_section,
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
    assert set(raw) == set(SECTIONS) - {"run"}
    built = load_file(DEFAULT)
    for section, data in raw.items():
        cls = section_class(section)
        assert set(data) == _names(cls), section
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
    for path in files:
        assert load_file(path), path


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


def test_cluster_and_run_examples():
    cluster = load_file(CONFIGS / "cluster.yaml")["cluster"]
    assert cluster == ClusterConfig(scheduler="tcp://127.0.0.1:8786")
    run, cluster, others = load_run_config(CONFIGS / "run.yaml")
    assert run.out == os.path.normpath(CONFIGS.parent / "runs" / "example")
    assert run.slides == (os.path.normpath(CONFIGS.parent / "slides" / "*.svs"),)
    assert (cluster, others) == (ClusterConfig(), {})


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
        ("cluster:\n  colour: red\n", "cluster.colour: unknown key; known keys: gpu_resource"),
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
        # a missing required value
        ("run:\n  model: m\n  slides: [a.svs]\n", "run.out: required, but missing"),
        # __post_init__ checks name the file and the section
        ("train:\n  epochs: 0\n", "train: epochs and patience must be at least 1"),
        ("heatmap:\n  exports: [jpg]\n", "heatmap exports ['jpg']: choose from"),
        ("report:\n  top_k: 0\n", "report top_k 0 must be >= 1"),
        ("run:\n  out: o\n  model: m\n", "run: give either `slides`"),
        ("run:\n  out: o\n  model: m\n  slides: [a]\n  exports: [jpg]\n", "run.exports = ('jpg',)"),
        (
            "cluster:\n  scheduler: tcp://h:8786\n  n_workers: 4\n",
            "cluster: n_workers apply only to a LocalCluster",
        ),
        ("cluster:\n  memory_limit: lots\n", "cluster.memory_limit = 'lots': give a size"),
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


def test_relative_paths_are_resolved_against_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "jobs"
    folder.mkdir()
    p = folder / "run.yaml"
    p.write_text(
        "run:\n  out: ../out\n  model: models/abmil\n"
        "  slides: [slides/*.svs, /data/a.svs, ~/b.svs]\n"
        "embed:\n  weights: w/uni.bin\n"
        "cluster:\n  scheduler: tcp://127.0.0.1:8786\n"
    )
    monkeypatch.chdir(tmp_path.parent)  # not the file's folder
    run, cluster, others = load_run_config(p)
    assert run.out == str(tmp_path / "out")
    assert run.model == str(folder / "models" / "abmil")
    assert run.slides == (
        str(folder / "slides" / "*.svs"),
        "/data/a.svs",
        os.path.expanduser("~/b.svs"),
    )
    assert cluster.scheduler == "tcp://127.0.0.1:8786"
    assert others == {"embed": EmbedConfig(weights=str(folder / "w" / "uni.bin"))}
    # a relative path given as an override is kept as given (the working directory's)
    run, _, _ = load_run_config(p, out="here", manifest="m.csv", slides=())
    assert (run.out, run.manifest, run.slides) == ("here", "m.csv", ())
    assert load_embed_config(p).weights == str(folder / "w" / "uni.bin")


def test_run_config_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("run:\n  model: m\n  slides: [a.svs]\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(p))}: run.out: required, but missing$"):
        load_run_config(p)
    run, cluster, others = load_run_config(
        p, out="o", n_workers=2, scheduler=None, embed={"device": "cpu"}, tiling=None
    )
    assert (run.out, run.model, cluster.n_workers) == ("o", str(tmp_path / "m"), 2)
    assert others == {"embed": EmbedConfig(device="cpu")}
    with pytest.raises(ConfigError, match="overrides: run.exports: Input should be a valid list"):
        load_run_config(p, out="o", exports="png")
    with pytest.raises(ConfigError, match="overrides: cluster.n_workers: .*valid integer"):
        load_run_config(p, out="o", n_workers="2")
    with pytest.raises(ConfigError, match="overrides: outt: unknown key; did you mean 'out'"):
        load_run_config(p, outt="o")
    with pytest.raises(ConfigError, match="overrides: embed.devise: unknown key"):
        load_run_config(p, out="o", embed={"devise": "cpu"})


def test_run_and_cluster_dataclasses():
    run = RunConfig("o", "m", ["a.svs"])  # positional, a list becomes a tuple
    assert run.slides == ("a.svs",) and run.exports == ("png", "geojson")
    assert RunConfig("o", "m", manifest="s.csv").slides == ()
    with pytest.raises(ConfigError, match="not both"):
        RunConfig("o", "m", ("a.svs",), "s.csv")
    with pytest.raises(ConfigError, match="run.out = ''"):
        RunConfig("", "m", ("a.svs",))
    with pytest.raises(ConfigError, match="run.slides = 'a.svs': must be a list"):
        RunConfig("o", "m", "a.svs")  # type: ignore[arg-type]
    assert ClusterConfig(n_workers=3).local_workers() == 3
    assert ClusterConfig().local_workers() == max(1, os.cpu_count() or 1)
    for address in ("tcp://10.0.0.1:8786", "localhost:8786", "tls://sched.example.org:8786"):
        assert ClusterConfig(scheduler=address).scheduler == address
    with pytest.raises(ConfigError, match="cluster.scheduler = 'my scheduler'"):
        ClusterConfig(scheduler="my scheduler")
    for limit in ("auto", "4GiB", "500 MB", "2e9", "1.5GB"):
        assert ClusterConfig(memory_limit=limit).memory_limit == limit


def test_unknown_section_class():
    with pytest.raises(ConfigError, match="tilling: unknown section; did you mean 'tiling'"):
        section_class("tilling")
