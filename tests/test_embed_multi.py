"""Several encoders in one pass: real stores made by the tiler, real torch encoders
(``efficientnet_lite0`` with its packaged weights, and a small timm network with random
weights saved to a file), real Zarr; reads counted by the loader itself."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi import store as st
from wsi.config import EmbedConfig
from wsi.embed import embed_store, features_of, is_embedded, views_of
from wsi.encoders import load_encoder
from wsi.errors import ConfigError
from wsi.tiling import tile_slide

LITE = "efficientnet_lite0"
TINY = "mobilenetv3_small_050"  # any timm architecture works by name with a weight file
BATCH = 4
CPU = EmbedConfig(device="cpu", batch_size=BATCH)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("multi")


@pytest.fixture(scope="module")
def tiled(root) -> Path:
    """A tiles-only store of a small synthetic slide (about 40 tiles); copy it first."""
    from wsi.synthetic import make_synthetic_slide

    slide = make_synthetic_slide(root / "small.tiff", width=4600, height=4600, mpp=0.25, seed=2)
    return tile_slide(slide.path, root / "stores", progress=False)


@pytest.fixture(scope="module")
def tiny_weights(root) -> Path:
    """Randomly initialised weights of a small timm network, as a user's weight file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model(TINY, pretrained=False, num_classes=0)
    path = root / "weights" / "tiny.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def lite():
    return load_encoder(LITE, device="cpu")


@pytest.fixture(scope="module")
def tiny(tiny_weights):
    return load_encoder(TINY, weights=tiny_weights, device="cpu")


@pytest.fixture(scope="module")
def reference(root, tiled, lite, tiny) -> Path:
    """The store embedded by two separate one-encoder runs, batches of 4."""
    store = _copy(tiled, root / "reference")
    embed_store(store, CPU, encoder=lite, progress=False)
    embed_store(store, CPU, encoder=tiny, progress=False)
    return store


def _copy(store: Path, dest: Path) -> Path:
    out = dest / store.name
    shutil.copytree(store, out)
    return out


def _bytes(store: Path, encoder: str) -> bytes:
    return features_of(store, encoder).view(np.uint32).tobytes()


def _counts(store: Path, encoder: str) -> dict:
    entry = st.stage_entry(st.open_store(store), st.features_keys(encoder)[0])
    assert entry is not None, f"{encoder} not complete in {store}"
    return entry["counts"]


def _batches(store: Path) -> int:
    return math.ceil(st.open_store(store)[st.TILES_COORDS].shape[0] / BATCH)


def _not_done(store: Path, encoder: str) -> set[int]:
    done = np.asarray(st.open_store(store)[st.features_keys(encoder)[2]][:])
    return {int(b) for b in np.flatnonzero(~done)}


@pytest.fixture(scope="module")
def passed(root, tiled, lite, tiny) -> Path:
    """The store embedded by one pass of both encoders, batches of 4."""
    store = _copy(tiled, root / "pass")
    embed_store(store, CPU, encoders=[lite, tiny], progress=False)
    return store


def test_one_pass_writes_the_bytes_of_separate_runs(passed, tiny, reference):
    group, ref = st.open_store(passed), st.open_store(reference)
    for name in (LITE, TINY):
        assert _bytes(passed, name) == _bytes(reference, name)
        stage, emb, _ = st.features_keys(name)
        assert dict(group[emb].attrs) == dict(ref[emb].attrs)  # identity, device, threads
        entry, alone = st.stage_entry(group, stage), st.stage_entry(ref, stage)
        assert entry is not None and alone is not None
        assert entry["params_hash"] == alone["params_hash"]
    both = EmbedConfig(device="cpu", encoders=(LITE, TINY),
                       encoder_weights={TINY: str(tiny.weights_path)})  # fmt: skip
    assert is_embedded(passed, both)
    assert not is_embedded(passed, EmbedConfig(device="cpu", encoders=(LITE, TINY)))


def test_each_batch_is_read_once_for_every_encoder(tiled, lite, tiny, passed, reference):
    batches = _batches(tiled)
    for name, other in ((LITE, TINY), (TINY, LITE)):
        counts = _counts(passed, name)
        assert counts["batches_read"] == batches == counts["batches_this_run"]
        assert counts["one_pass_with"] == [other]
    # two separate runs read every batch twice
    assert sum(_counts(reference, n)["batches_read"] for n in (LITE, TINY)) == 2 * batches
    assert "one_pass_with" not in _counts(reference, LITE)
    # a complete pass is a no-op: nothing read, nothing written
    before = {
        n: st.stage_entry(st.open_store(passed), st.features_keys(n)[0]) for n in (LITE, TINY)
    }
    embed_store(passed, CPU, encoders=[lite, tiny], progress=False)
    for name in (LITE, TINY):
        assert st.stage_entry(st.open_store(passed), st.features_keys(name)[0]) == before[name]


def _kill_part_way(store: Path, tiny_weights: Path) -> None:
    """`wsi embed --encoder LITE --encoder TINY` in a subprocess, SIGKILLed after TINY
    wrote 3 batches."""
    cmd = [sys.executable, "-m", "pipelines.cli", "-q", "embed", str(store), "--device", "cpu",
           "--batch-size", str(BATCH), "--encoder", LITE, "--encoder", TINY,
           "--weights", f"{TINY}={tiny_weights}"]  # fmt: skip
    # CPU features are bit-identical for the same batches and the same thread count
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    done = store / st.features_keys(TINY)[2] / "c"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if done.exists() and len(list(done.iterdir())) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_killed_pass_resumes_each_encoder_from_its_own_state(
    tmp_path, tiled, lite, tiny, tiny_weights, reference
):
    batches = _batches(tiled)
    killed = _copy(tiled, tmp_path / "killed")
    _kill_part_way(killed, tiny_weights)
    left = {name: _not_done(killed, name) for name in (LITE, TINY)}
    assert 0 < len(left[TINY]) <= batches - 3, "the pass should have been killed part-way"
    assert left[LITE] <= left[TINY]  # per batch, LITE is written before TINY
    for name in (LITE, TINY):
        assert st.stage_entry(st.open_store(killed), st.features_keys(name)[0]) is None

    # both half done: one pass resumes both, reading only what either lacks
    both = _copy(killed, tmp_path / "both")
    embed_store(both, CPU, encoders=[lite, tiny], progress=False)
    for name in (LITE, TINY):
        counts = _counts(both, name)
        assert counts["resumed"] is True and counts["batches_this_run"] == len(left[name])
        assert counts["batches_read"] == len(left[LITE] | left[TINY])
        assert _bytes(both, name) == _bytes(reference, name)

    # one complete, the other half done: the complete one is skipped
    one = _copy(killed, tmp_path / "one")
    embed_store(one, CPU, encoder=lite, progress=False)  # LITE alone finishes
    finished = st.stage_entry(st.open_store(one), st.features_keys(LITE)[0])
    embed_store(one, CPU, encoders=[lite, tiny], progress=False)
    assert st.stage_entry(st.open_store(one), st.features_keys(LITE)[0]) == finished
    counts = _counts(one, TINY)
    assert counts["batches_read"] == counts["batches_this_run"] == len(left[TINY])
    assert "one_pass_with" not in counts  # LITE had nothing to do: a pass of one
    for name in (LITE, TINY):
        assert _bytes(one, name) == _bytes(reference, name)


@pytest.fixture(scope="module")
def little(root) -> Path:
    """A tiles-only store of a smaller slide (about 16 tiles)."""
    from wsi.synthetic import make_synthetic_slide

    slide = make_synthetic_slide(root / "little.tiff", width=3000, height=3000, mpp=0.25, seed=4)
    return tile_slide(slide.path, root / "little", progress=False)


def test_stain_normalisation_and_views_apply_to_every_encoder(tmp_path, little, lite, tiny):
    from wsi.embed import fit_stain_target

    target = fit_stain_target([little], "reinhard", tmp_path / "target.json")
    config = EmbedConfig(device="cpu", batch_size=8, stain_target=str(target), stain_views=1)
    alone = _copy(little, tmp_path / "alone")
    for enc in (lite, tiny):
        embed_store(alone, config, encoder=enc, progress=False)
    store = _copy(little, tmp_path / "pass")
    embed_store(store, config, encoders=[lite, tiny], progress=False)
    for name in (LITE, TINY):
        assert _bytes(store, name) == _bytes(alone, name)
        views, ref = views_of(store, name), views_of(alone, name)
        assert views is not None and ref is not None and views.shape[1] == 1
        assert views.tobytes() == ref.tobytes()
        emb = st.features_keys(name)[1]
        assert st.open_store(store)[emb].attrs["stain_normalisation"]["method"] == "reinhard"


# -- the command line and config files --------------------------------------------------


def test_cli_embeds_with_several_encoders(tmp_path, little, tiny, tiny_weights, capsys):
    from pipelines.cli import main

    store = _copy(little, tmp_path)
    argv = ["-q", "embed", str(store), "--device", "cpu", "--batch-size", str(BATCH), "--encoder",
            LITE, "--encoder", TINY, "--weights", f"{TINY}={tiny_weights}"]  # fmt: skip
    assert main(argv) == 0
    assert f"with {LITE}, {TINY}" in capsys.readouterr().out
    for name, dim in ((LITE, 1280), (TINY, tiny.spec.feature_dim)):
        assert features_of(store, name).shape[1] == dim
        assert _counts(store, name)["batches_read"] == _batches(store)
    assert main(argv) == 0  # done: a no-op
    assert "ok " in capsys.readouterr().out


def test_config_file_lists_encoders_with_relative_weights(tmp_path, little, tiny_weights, capsys):
    from pipelines.cli import main
    from wsi.configfile import load_embed_config

    conf = tmp_path / "conf"
    (conf / "w").mkdir(parents=True)
    shutil.copy(tiny_weights, conf / "w" / "tiny.safetensors")
    path = conf / "embed.yaml"
    path.write_text(
        f"embed:\n  encoders: [{LITE}, {TINY}]\n  encoder_weights: {{{TINY}: w/tiny.safetensors}}\n"
        "  device: cpu\n  batch_size: 8\n"
    )
    config = load_embed_config(path)
    assert config.names == (LITE, TINY)
    assert config.weights_for(TINY) == str(conf / "w" / "tiny.safetensors")
    assert config.weights_for(LITE) is None
    store = _copy(little, tmp_path)
    assert main(["-q", "embed", str(store), "--config", str(path)]) == 0
    capsys.readouterr()
    for name in (LITE, TINY):
        assert _counts(store, name)["one_pass_with"] == [n for n in (LITE, TINY) if n != name]
    # one --encoder on the command line replaces the file's list; weights the file gives
    # an encoder that is no longer in the pass are refused, not silently left unused
    assert load_embed_config(path, encoder=TINY, encoders=[]).names == (TINY,)
    assert main(["-q", "embed", str(store), "--config", str(path), "--encoder", LITE]) == 2
    assert f"'{TINY}' is not an encoder of this pass ({LITE})" in capsys.readouterr().err


def test_one_weight_file_for_several_encoders_is_refused(tmp_path, tiled, tiny_weights, capsys):
    from pipelines.cli import main

    store = _copy(tiled, tmp_path)
    base = ["-q", "embed", str(store), "--device", "cpu", "--encoder", LITE, "--encoder", TINY]
    assert main([*base, "--weights", str(tiny_weights)]) == 2
    err = capsys.readouterr().err
    assert "embed.weights" in err and "ambiguous" in err and "--weights NAME=PATH" in err
    assert main([*base, "--weights", str(tiny_weights), "--weights", str(tiny_weights)]) == 2
    assert "Give NAME=PATH for each" in capsys.readouterr().err
    assert main([*base, "--weights", f"resnet50_trunc={tiny_weights}"]) == 2
    assert "'resnet50_trunc' is not an encoder of this pass" in capsys.readouterr().err
    assert st.FEATURES not in st.open_store(store)  # refused before anything was written


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoders": ("uni", "uni")}, "embed.encoders .* names an encoder twice"),
        ({"encoder": "uni", "encoders": (LITE, TINY)}, "embed.encoder is 'uni', not one of"),
        ({"encoders": (LITE, TINY), "weights": "w.pth"}, "embed.weights .* ambiguous"),
        ({"encoder_weights": {TINY: "w.pth"}}, f"'{TINY}' is not an encoder of this pass"),
        (
            {"weights": "a.pth", "encoder_weights": {LITE: "b.pth"}},
            "gives the weights of 'efficientnet_lite0' too",
        ),
    ],
)
def test_encoders_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EmbedConfig(**kwargs)


def test_one_encoder_config_of_a_pass():
    config = EmbedConfig(encoders=[LITE, TINY], encoder_weights={TINY: "t.pth"}, dtype="float16")
    assert config.encoders == (LITE, TINY)  # a list given in Python is kept as a tuple
    assert config.for_encoder(TINY) == EmbedConfig(encoder=TINY, weights="t.pth", dtype="float16")
    assert config.for_encoder(LITE) == EmbedConfig(encoder=LITE, dtype="float16")
    single = EmbedConfig(encoder="uni", weights="u.pth")
    assert single.names == ("uni",) and single.for_encoder("uni") == single
