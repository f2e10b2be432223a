"""The embedding stage on real weights: real H&E tiles, real slide stores, real Zarr."""

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

from tests.conftest import TILES, need
from wsi import store as st
from wsi._files import sha256_file
from wsi.config import EmbedConfig
from wsi.embed import embed_store, features_of, is_embedded
from wsi.encoders import find_weights, get_spec, load_encoder
from wsi.errors import StageConflictError, StoreError
from wsi.tiling import tile_slide

CPU = EmbedConfig(device="cpu")
STAGE, EMB, DONE = st.features_keys("efficientnet_lite0")


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def tiled(tmp_path_factory) -> Path:
    """A tiles-only store of a small synthetic slide (64 tiles with the real textures of
    ../shared/data, 71 with the procedural ones); copy it before embedding."""
    from wsi.synthetic import make_synthetic_slide

    root = tmp_path_factory.mktemp("embed")
    slide = make_synthetic_slide(root / "small.tiff", width=6000, height=6000, mpp=0.25, seed=2)
    return tile_slide(slide.path, root / "stores", progress=False)


def _copy(store: Path, dest: Path) -> Path:
    out = dest / store.name
    shutil.copytree(store, out)
    return out


def _crop(path: Path, size: int = 256) -> np.ndarray:
    from PIL import Image

    a = np.asarray(Image.open(path).convert("RGB"))
    h, w, _ = a.shape
    y, x = (h - size) // 2, (w - size) // 2
    return a[y : y + size, x : x + size]


def test_real_tiles_give_distinct_features_and_white_sits_apart(encoder):
    need(TILES)
    tissue = (
        sorted((TILES / "histolab").glob("tissue-*.png"))
        + sorted((TILES / "histolab").glob("*nuclei*.png"))
        + sorted(TILES.glob("histoqc_template*.png"))
        + [TILES / "tiatoolbox_target_image.png"]
    )
    white = [TILES / "histolab" / "almost-white-2.png", TILES / "histolab" / "no-tissue.png"]
    batch = torch.from_numpy(np.stack([_crop(p) for p in tissue + white]))
    f = encoder(batch).numpy()
    assert f.shape == (len(tissue) + 2, 1280) and np.isfinite(f).all()
    unit = f / np.linalg.norm(f, axis=1, keepdims=True)
    sim = unit @ unit.T
    nt = len(tissue)
    off = ~np.eye(nt, dtype=bool)
    assert sim[:nt, :nt][off].max() < 0.95, "different tissue must give different embeddings"
    tissue_tissue = sim[:nt, :nt][off].mean()
    white_tissue = sim[nt:, :nt].mean()
    assert white_tissue < tissue_tissue - 0.1
    for i in (nt, nt + 1):  # each near-white tile's nearest neighbour is the other one
        others = [j for j in range(nt + 2) if j != i]
        assert others[int(np.argmax(sim[i, others]))] in (nt, nt + 1)


def test_real_slide_store_embeds_deterministically(tmp_path, svs, encoder):
    store = tile_slide(svs, tmp_path / "a", progress=False)
    twin = _copy(store, tmp_path / "b")
    embed_store(store, CPU, encoder=encoder, progress=False)
    group = st.open_store(store)
    n = group[st.TILES_COORDS].shape[0]
    feats = features_of(store, "efficientnet_lite0")
    assert feats.shape == (n, 1280) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert np.abs(feats).sum(axis=1).min() > 0
    attrs = dict(group[EMB].attrs)
    weights = find_weights(get_spec("efficientnet_lite0"))
    assert weights is not None
    assert attrs["name"] == "efficientnet_lite0" and attrs["weights_sha256"] == sha256_file(weights)
    assert attrs["preprocessing"]["input_size"] == 224 and attrs["dtype"] == "float32"
    assert "torch" in attrs["versions"] and "timm" in attrs["versions"]
    entry = st.stage_entry(group, STAGE)
    assert entry and entry["counts"]["tiles"] == n
    embed_store(twin, CPU, encoder=encoder, progress=False)  # same store, second run
    again = features_of(twin, "efficientnet_lite0")
    assert feats.view(np.uint32).tobytes() == again.view(np.uint32).tobytes()
    # a repeat on a complete store is a no-op
    mtime = (store / "features" / "efficientnet_lite0" / "embeddings" / "zarr.json").stat().st_mtime
    embed_store(store, CPU, encoder=encoder, progress=False)
    assert (store / STAGE / "embeddings" / "zarr.json").stat().st_mtime == mtime


def _done_files(store: Path) -> list[Path]:
    d = store / STAGE / "done" / "c"
    return sorted(d.iterdir()) if d.exists() else []


def test_killed_run_resumes_to_the_same_bytes(tmp_path, tiled, encoder):
    reference = _copy(tiled, tmp_path / "ref")
    embed_store(reference, EmbedConfig(device="cpu", batch_size=4), encoder=encoder, progress=False)
    # batches of 4 tiles: their count follows from the store (the slide's tiles depend on
    # the textures it was made of)
    batches = math.ceil(st.open_store(reference)[st.TILES_COORDS].shape[0] / 4)
    assert batches > 4
    store = _copy(tiled, tmp_path / "killed")
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "-q",
        "embed",
        str(store),
        "--device",
        "cpu",
        "--batch-size",
        "4",
    ]
    # CPU features are bit-identical for the same batches and the same thread count
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    deadline = time.time() + 120
    while len(_done_files(store)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(_done_files(store))
    assert 3 <= done_before < batches, "the run should have been killed part-way"
    assert st.stage_entry(st.open_store(store), STAGE) is None  # not trusted as complete
    embed_store(store, EmbedConfig(device="cpu", batch_size=4), encoder=encoder, progress=False)
    entry = st.stage_entry(st.open_store(store), STAGE)
    assert entry and entry["counts"]["resumed"] is True
    assert entry["counts"]["batches_this_run"] == batches - done_before
    a = features_of(store, "efficientnet_lite0")
    b = features_of(reference, "efficientnet_lite0")
    assert a.view(np.uint32).tobytes() == b.view(np.uint32).tobytes()


def test_other_weights_under_the_same_name_are_refused(tmp_path, tiled, encoder):
    store = _copy(tiled, tmp_path)
    embed_store(store, CPU, encoder=encoder, progress=False)
    before = features_of(store, "efficientnet_lite0")
    path = find_weights(get_spec("efficientnet_lite0"))
    sd = torch.load(path, weights_only=True)
    sd["_fc.bias"] = sd["_fc.bias"] + 1.0  # other weights (the head only: same features)
    sd["_conv_stem.weight"] = sd["_conv_stem.weight"] * 1.01
    other = tmp_path / "lite0-finetuned.pth"
    torch.save(sd, other)
    config = EmbedConfig(device="cpu", weights=str(other))
    with pytest.raises(StageConflictError, match="other weights.*never mixed"):
        embed_store(store, config, progress=False)
    assert np.array_equal(features_of(store, "efficientnet_lite0"), before)
    embed_store(store, config, overwrite=True, progress=False)
    group = st.open_store(store)
    assert group[EMB].attrs["weights_sha256"] == sha256_file(other)
    assert not np.array_equal(features_of(store, "efficientnet_lite0"), before)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_non_finite_features_suggest_fp32_only_below_fp32(tmp_path, tiled, precision):
    from wsi.errors import EmbeddingError

    store = _copy(tiled, tmp_path)
    sd = torch.load(find_weights(get_spec("efficientnet_lite0")), weights_only=True)
    sd["_conv_stem.weight"] = torch.full_like(sd["_conv_stem.weight"], float("nan"))
    broken = tmp_path / "lite0-nan.pth"
    torch.save(sd, broken)
    config = EmbedConfig(device="cpu", precision=precision, weights=str(broken))
    with pytest.raises(EmbeddingError, match="non-finite features") as err:
        embed_store(store, config, progress=False)
    msg = str(err.value)
    if precision == "fp32":
        assert "--precision fp32" not in msg
        assert str(broken) in msg and "check the weights file" in msg
    else:
        assert "Re-run with --precision fp32" in msg


def test_float16_storage(tmp_path, tiled, encoder):
    store = _copy(tiled, tmp_path)
    embed_store(store, EmbedConfig(device="cpu", dtype="float16"), encoder=encoder, progress=False)
    f16 = features_of(store, "efficientnet_lite0")
    assert f16.dtype == np.float16 and np.isfinite(f16).all()


def test_store_without_complete_tiles_is_refused(tmp_path, tiled, encoder):
    store = _copy(tiled, tmp_path)
    group = st.open_store(store, mode="r+")
    meta = st.read_meta(group)
    meta["pending"]["tiles"] = meta["stages"].pop("tiles")
    st.write_meta(group, meta)
    with pytest.raises(StoreError, match="tiles stage is not complete.*wsi tile"):
        embed_store(store, CPU, encoder=encoder, progress=False)
    with pytest.raises(StoreError, match="not a slide store"):
        embed_store(tmp_path / "nothing.zarr", CPU, encoder=encoder, progress=False)
    with pytest.raises(StoreError, match="no complete features.*wsi embed"):
        features_of(store, "efficientnet_lite0")


def test_retiling_drops_old_features(tmp_path, tiled, encoder):
    store = _copy(tiled, tmp_path / "stores")
    embed_store(store, CPU, encoder=encoder, progress=False)
    meta = st.read_meta(st.open_store(store))
    slide = meta["source"]["path"]
    from wsi.config import TilingConfig

    tile_slide(
        slide, tmp_path / "stores", TilingConfig(min_tissue=0.7), overwrite=True, progress=False
    )
    group = st.open_store(store)
    assert st.FEATURES not in group and st.stage_entry(group, STAGE) is None


def test_cli_embeds_many_stores_and_reports_a_bad_one(tmp_path, tiled, capsys):
    from pipelines.cli import main

    good = _copy(tiled, tmp_path)
    bad = tmp_path / "broken.zarr"
    bad.mkdir()
    rc = main(["-q", "embed", str(good), str(bad), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"ok      {good}" in out and f"FAILED  {bad}" in out and "not a slide store" in out
    assert features_of(good, "efficientnet_lite0").shape[1] == 1280


def test_cli_lists_encoders(capsys):
    import json

    from pipelines.cli import main

    assert main(["encoders", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["efficientnet_lite0"]["weights"].endswith("efficientnet-lite0-57934424.pth")
    assert {"resnet50_trunc", "uni", "uni2_h"} <= set(rows)


def test_is_embedded_checks_weights_without_building_the_model(tmp_path, tiled, encoder):
    store = _copy(tiled, tmp_path)
    assert not is_embedded(store, CPU)
    embed_store(store, CPU, encoder=encoder, progress=False)
    assert is_embedded(store, CPU)
    assert not is_embedded(store, EmbedConfig(device="cpu", dtype="float16"))
    other = tmp_path / "other.pth"
    path = find_weights(get_spec("efficientnet_lite0"))
    sd = torch.load(path, weights_only=True)
    sd["_bn0.bias"] = sd["_bn0.bias"] + 0.5
    torch.save(sd, other)
    assert not is_embedded(store, EmbedConfig(device="cpu", weights=str(other)))


def test_cli_missing_weights_stop_the_batch(tmp_path, tiled, capsys):
    from pipelines.cli import main

    store = _copy(tiled, tmp_path)
    rc = main(
        [
            "-q",
            "embed",
            str(store),
            "--encoder",
            "uni",
            "--weights",
            str(tmp_path / "UNI" / "pytorch_model.bin"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "pytorch_model.bin: weight file not found" in err


@pytest.mark.slow  # the full-disk path (OutputFullError) is proved fast in test_tiling.py
def test_full_disk_says_how_many_batches_are_kept_and_which_folder(tmp_path, tiled, encoder):
    """`wsi embed` of a store on a real tmpfs with room for some of its batches (mounted in
    a user and mount namespace): the message counts the batches kept and names the folder
    of stores that is full, with the fix."""
    import re

    if shutil.which("unshare") is None:
        pytest.skip("no unshare to mount a small tmpfs")
    config = EmbedConfig(device="cpu", batch_size=8)
    probe = _copy(tiled, tmp_path / "probe")
    embed_store(probe, config, encoder=encoder, progress=False)
    sizes = [p.stat().st_blocks * 512 for p in probe.rglob("*") if p.is_file()]
    batch_files = [p for p in (probe / EMB).rglob("*") if p.is_file() and p.name != "zarr.json"]
    batches = len(batch_files)
    assert batches >= 4
    one = max(p.stat().st_blocks * 512 for p in batch_files)
    room = sum(sizes) - 2 * one  # short of two batches: some are written, not all
    disk = tmp_path / "disk"
    disk.mkdir()
    store = disk / "stores" / tiled.name
    script = (
        f'mount -t tmpfs -o size={room} tmpfs "{disk}" || exit 99; '
        f'mkdir -p "{store.parent}" && cp -r "{tiled}" "{store.parent}/" && exec "$@"'
    )
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
           sys.executable, "-m", "pipelines.cli", "-q", "embed", str(store), "--device", "cpu",
           "--batch-size", "8"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if r.returncode == 99 or "unshare:" in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:200]}")
    text = r.stdout + r.stderr
    assert r.returncode == 1, text
    assert f"{store.parent}: no space left on the device" in text, text
    found = re.search(r"(\d+) of (\d+) batches of efficientnet_lite0 features", text)
    assert found, text
    assert 0 < int(found.group(1)) < int(found.group(2)) == batches, text
    assert "kept" in text and "Free space there and re-run" in text
