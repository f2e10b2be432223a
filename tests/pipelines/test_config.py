"""The ``wsi run`` job file (``pipelines.config``): the ``run`` and ``cluster`` sections beside
the stage sections, relative paths, overrides, and the one exports setting (``heatmap``)."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import yaml

from pipelines.config import (
    JOB_CLASSES,
    ClusterConfig,
    RunConfig,
    load_job_file,
    load_job_section,
    load_run_config,
)
from wsi.config import EmbedConfig, TilingConfig
from wsi.configfile import load_embed_config
from wsi.errors import ConfigError
from wsi.heatmap import HeatmapOptions

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULT = CONFIGS / "default.yaml"


def test_default_yaml_holds_the_cluster_defaults():
    raw = yaml.safe_load(DEFAULT.read_text())
    built = load_job_file(DEFAULT)
    assert set(raw) - set(built) == set()  # every section of it validates, `run` left out
    assert set(raw["cluster"]) == {f.name for f in dataclasses.fields(ClusterConfig)}
    assert built["cluster"] == ClusterConfig()
    assert set(JOB_CLASSES) == {"run", "cluster"} and "run" not in raw


def test_every_config_file_validates_as_a_job_file():
    for path in sorted(CONFIGS.rglob("*.yaml")):
        assert load_job_file(path), path


def test_cluster_and_run_examples():
    cluster = load_job_file(CONFIGS / "cluster.yaml")["cluster"]
    assert cluster == ClusterConfig(scheduler="tcp://127.0.0.1:8786")
    run, cluster, others = load_run_config(CONFIGS / "run.yaml")
    assert run.out == os.path.normpath(CONFIGS.parent / "runs" / "example")
    assert run.slides == (os.path.normpath(CONFIGS.parent / "slides" / "*.svs"),)
    assert cluster == ClusterConfig()
    assert others == {"heatmap": HeatmapOptions(exports=("png", "geojson"))}


def _error(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_job_file(p)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("cluster:\n  colour: red\n", "cluster.colour: unknown key; known keys: gpu_resource"),
        # a missing required value
        ("run:\n  model: m\n  slides: [a.svs]\n", "run.out: required, but missing"),
        ("run:\n  out: o\n  model: m\n", "run: give either `slides`"),
        ("run:\n  out: o\n  model: m\n  slides: [a]\n  slides_: 1\n", "run.slides_: unknown"),
        (
            "cluster:\n  scheduler: tcp://h:8786\n  n_workers: 4\n",
            "cluster: n_workers apply only to a LocalCluster",
        ),
        ("cluster:\n  memory_limit: lots\n", "cluster.memory_limit = 'lots': give a size"),
        # the stage sections keep their own checks in a job file
        ("heatmap:\n  exports: [jpg]\n", "heatmap exports ['jpg']: choose from"),
        ("runn:\n  out: o\n", "runn: unknown section; did you mean 'run'?"),
    ],
)
def test_each_problem_names_the_file_and_the_key(tmp_path, text, line):
    message = _error(tmp_path, text)
    assert message == f"{tmp_path / 'c.yaml'}: {line}" or message.startswith(
        f"{tmp_path / 'c.yaml'}: {line}"
    ), message


def test_run_exports_moved_to_the_heatmap_section(tmp_path):
    """One exports setting: a job file that still has `run.exports` is told where it went."""
    p = tmp_path / "job.yaml"
    p.write_text("run:\n  out: o\n  model: m\n  slides: [a.svs]\n  exports: [png, tiff]\n")
    for load in (load_job_file, load_run_config):
        with pytest.raises(ConfigError) as info:
            load(p)
        message = str(info.value)
        assert message.startswith(f"{p}: run.exports: moved to the heatmap section"), message
        assert "heatmap: {exports: [...]}" in message
    with pytest.raises(ConfigError, match=r"^overrides: run.exports: moved to the heatmap"):
        load_run_config(None, out="o", model="m", slides=("a",), exports=("png",))
    p.write_text("run:\n  out: o\n  model: m\n  slides: [a.svs]\nheatmap:\n  exports: [tiff]\n")
    _, _, others = load_run_config(p, heatmap={"exports": ("png", "viewer")})
    assert others["heatmap"].exports == ("png", "viewer")  # the command line wins
    _, _, others = load_run_config(p)
    assert others["heatmap"] == HeatmapOptions(exports=("tiff",))


def test_per_stage_loader_validates_the_whole_job_file(tmp_path):
    """`wsi tile --config job.yaml` reads `tiling` and still reports a bad `run` key."""
    p = tmp_path / "job.yaml"
    p.write_text("run:\n  out: o\n  model: m\n  slides: [a]\n  modle: x\ntiling:\n  stride: 64\n")
    with pytest.raises(ConfigError, match="run.modle: unknown key; did you mean 'model'"):
        load_job_section(p, "tiling", TilingConfig)
    p.write_text("run:\n  out: o\n  model: m\n  slides: [a]\ntiling:\n  stride: 64\n")
    assert load_job_section(p, "tiling", TilingConfig, tile_size=128) == TilingConfig(
        tile_size=128, stride=64
    )


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
    with pytest.raises(ConfigError, match="overrides: heatmap.exports: Input should be a valid"):
        load_run_config(p, out="o", heatmap={"exports": "png"})
    with pytest.raises(ConfigError, match="overrides: cluster.n_workers: .*valid integer"):
        load_run_config(p, out="o", n_workers="2")
    with pytest.raises(ConfigError, match="overrides: outt: unknown key; did you mean 'out'"):
        load_run_config(p, outt="o")
    with pytest.raises(ConfigError, match="overrides: embed.devise: unknown key"):
        load_run_config(p, out="o", embed={"devise": "cpu"})


def test_run_and_cluster_dataclasses():
    run = RunConfig("o", "m", ["a.svs"])  # positional, a list becomes a tuple
    assert run.slides == ("a.svs",) and run.retry_failed is True
    assert "exports" not in {f.name for f in dataclasses.fields(RunConfig)}  # heatmap.exports
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
