"""The tiler on real slides, a real LocalCluster, and kill-and-resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wsi import store as st
from wsi.config import TilingConfig
from wsi.errors import MppError, StageConflictError, StoreError
from wsi.qc import tile_qc
from wsi.slide import open_slide
from wsi.tiling import NoTissueError, tile_slide

LOSSLESS = TilingConfig(codec="zstd", backend="openslide")


def _arrays(store: Path) -> dict[str, np.ndarray]:
    g = st.open_store(store)
    keys = (st.TISSUE_MASK, st.TILES_COORDS, st.TILES_PIXELS, st.TILES_QC, st.TILES_DONE)
    return {k: np.asarray(g[k][:]) for k in keys}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_lossless_tiles_equal_read_region(tmp_path, real_slide):
    store = tile_slide(real_slide, tmp_path, LOSSLESS)
    a = _arrays(store)
    assert len(a[st.TILES_COORDS]) > 10 and a[st.TILES_DONE].all()
    with open_slide(real_slide) as s:
        for (x, y), tile in zip(a[st.TILES_COORDS], a[st.TILES_PIXELS], strict=True):
            assert np.array_equal(tile, s.read_region((int(x), int(y)), (256, 256), mpp=0.5))
    assert np.allclose(a[st.TILES_QC], tile_qc(a[st.TILES_PIXELS]))
    meta = st.read_meta(st.open_store(store))
    entry = meta["stages"]["tiles"]
    assert entry["counts"]["tiles"] == len(a[st.TILES_COORDS])
    assert meta["source"]["fingerprint"] and meta["slide"]["mpp"]["x"] == pytest.approx(0.499)
    assert "label" not in str(st.open_store(store).tree())  # no associated images stored


def test_tiles_only_over_tissue(tmp_path, real_slide):
    store = tile_slide(real_slide, tmp_path, LOSSLESS)
    g = st.open_store(store)
    qc = np.asarray(g[st.TILES_QC][:])
    background = qc[:, list(g[st.TILES_QC].attrs["columns"]).index("background")]
    assert np.median(background) < 0.5
    with open_slide(real_slide) as s:  # the glass in the corner is not tiled
        assert s.read_region((0, 0), (256, 256), level=0).mean() > 225
    assert not ((np.asarray(g[st.TILES_COORDS][:]) < 256).all(axis=1)).any()


def test_jpeg_tiles_within_stated_loss(tmp_path, real_slide):
    store = tile_slide(real_slide, tmp_path, TilingConfig(backend="openslide"))
    g = st.open_store(store)
    attrs = dict(g[st.TILES_PIXELS].attrs)
    assert (attrs["codec"], attrs["quality"], attrs["lossless"]) == ("jpeg", 90, False)
    assert attrs["chroma_subsampling"] == "444"
    a = _arrays(store)
    with open_slide(real_slide) as s:
        for (x, y), tile in zip(a[st.TILES_COORDS], a[st.TILES_PIXELS], strict=True):
            ref = s.read_region((int(x), int(y)), (256, 256), mpp=0.5)
            assert _psnr(tile, ref) > 36.0  # docs/codecs.md: q90 4:4:4 gives about 40 dB


def test_coarser_level_used(tmp_path, pyramid):
    cfg = TilingConfig(target_mpp=2.0, tile_size=64, codec="zstd")
    store = tile_slide(pyramid, tmp_path, cfg)
    g = st.open_store(store)
    assert g[st.TILES_PIXELS].attrs["level"] == 2
    a = _arrays(store)
    with open_slide(pyramid) as s:
        x, y = (int(v) for v in a[st.TILES_COORDS][0])
        assert np.array_equal(a[st.TILES_PIXELS][0], s.read_region((x, y), (64, 64), level=2))


def test_rerun_is_a_no_op_and_params_conflict(tmp_path, svs):
    store = tile_slide(svs, tmp_path, LOSSLESS)
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    t0 = time.perf_counter()
    assert tile_slide(svs, tmp_path, LOSSLESS) == store
    assert time.perf_counter() - t0 < 2.0
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == before
    other = TilingConfig(codec="zstd", backend="openslide", tile_size=128)
    with pytest.raises(StageConflictError, match="--overwrite"):
        tile_slide(svs, tmp_path, other)
    tile_slide(svs, tmp_path, other, overwrite=True)
    assert _arrays(store)[st.TILES_PIXELS].shape[1] == 128


def test_same_name_other_slide_refused(tmp_path, svs, pyramid):
    tile_slide(svs, tmp_path / "out", LOSSLESS)
    impostor = tmp_path / svs.name
    impostor.write_bytes(pyramid.read_bytes())
    with pytest.raises(StoreError, match="another file"):
        tile_slide(impostor, tmp_path / "out", LOSSLESS)


def test_missing_mpp_writes_nothing(tmp_path, svs):
    p = tmp_path / "no_mpp.svs"
    p.write_bytes(svs.read_bytes().replace(b"|MPP = 0.4990", b"|XXX = 0.4990"))
    with pytest.raises(MppError, match="no_mpp.svs.*--mpp"):
        tile_slide(p, tmp_path / "out", LOSSLESS)
    assert not (tmp_path / "out" / "no_mpp.zarr").exists()
    store = tile_slide(p, tmp_path / "out", LOSSLESS, mpp=0.499)
    assert st.stage_entry(st.open_store(store), "tiles")["params"]["mpp_override"] == 0.499


def test_blank_slide_is_a_clear_error(tmp_path):
    import pyvips

    blank = tmp_path / "blank.tiff"
    img = (pyvips.Image.black(3000, 3000, bands=3) + 243).cast("uchar")
    img.tiffsave(
        str(blank),
        tile=True,
        pyramid=True,
        compression="jpeg",
        xres=4000.0,
        yres=4000.0,
        resunit="cm",
    )
    with pytest.raises(NoTissueError, match="blank.tiff.*no tile"):
        tile_slide(blank, tmp_path / "out", LOSSLESS)
    assert not (tmp_path / "out" / "blank.zarr").exists()


@pytest.fixture(scope="module")
def cluster_client():
    from pipelines.cluster import dask_client

    with dask_client(workers=2) as client:
        yield client


def test_local_cluster_two_workers_equals_in_process(tmp_path, synthetic_slide, cluster_client):
    cfg = TilingConfig(chunk_tiles=32)
    assert len(cluster_client.scheduler_info()["workers"]) == 2
    dist = tile_slide(synthetic_slide, tmp_path / "dist", cfg, client=cluster_client)
    local = tile_slide(synthetic_slide, tmp_path / "local", cfg)
    a, b = _arrays(dist), _arrays(local)
    assert len(a[st.TILES_COORDS]) > 300
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    entry = st.stage_entry(st.open_store(dist), "tiles")
    assert entry["counts"]["chunks_written_this_run"] == len(a[st.TILES_DONE])


def _done_files(store: Path) -> list[Path]:
    d = store / "tiles" / "done" / "c"
    return sorted(d.iterdir()) if d.exists() else []


def test_kill_and_resume(tmp_path, synthetic_slide):
    from wsi.configfile import load_config

    cfg = tmp_path / "small_chunks.yaml"
    cfg.write_text("tiling:\n  chunk_tiles: 4\n")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "-q",
        "tile",
        str(synthetic_slide),
        "--out",
        str(out),
        "--config",
        str(cfg),
        "--workers",
        "1",
    ]
    store = out / "synth.zarr"
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while len(_done_files(store)) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(_done_files(store))
    meta = st.read_meta(st.open_store(store))
    n_chunks = st.open_store(store)[st.TILES_DONE].shape[0]
    assert "tiles" not in meta["stages"], "the run finished before it could be killed"
    assert 5 <= n_done < n_chunks
    # chunks already written must not be rewritten by the resumed run
    done_idx = [int(p.name) for p in _done_files(store)]
    pix = store / "tiles" / "pixels" / "c"
    written = {i: (pix / str(i) / "0" / "0" / "0").stat() for i in done_idx}
    subprocess.run(cmd, check=True, timeout=300)
    for i, stat in written.items():
        now = (pix / str(i) / "0" / "0" / "0").stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    entry = st.stage_entry(st.open_store(store), "tiles")
    assert entry["counts"]["resumed"] is True
    assert entry["counts"]["chunks_written_this_run"] == n_chunks - n_done
    reference = tile_slide(synthetic_slide, tmp_path / "ref", load_config(cfg))
    a, b = _arrays(store), _arrays(reference)
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_fast_reader_falls_back_at_fractional_levels(tmp_path, pyramid):
    # level 2 of this TIFF has downsample 4.002: only OpenSlide gives OpenSlide's pixels
    cfg = TilingConfig(target_mpp=2.0, tile_size=64, codec="zstd", backend="pyvips")
    store = tile_slide(pyramid, tmp_path, cfg)
    g = st.open_store(store)
    assert g[st.TILES_PIXELS].attrs["reader"] == "openslide"
    a = _arrays(store)
    with open_slide(pyramid) as s:
        for (x, y), tile in zip(a[st.TILES_COORDS], a[st.TILES_PIXELS], strict=True):
            assert np.array_equal(tile, s.read_region((int(x), int(y)), (64, 64), mpp=2.0))


def test_stale_pending_record_is_not_resumed(tmp_path, svs):
    store = tile_slide(svs, tmp_path, LOSSLESS)
    # a run with other params killed after marking itself pending but before its layout
    other = TilingConfig(codec="zstd", backend="openslide", tile_size=128)
    with open_slide(svs) as s:
        from wsi.store import params_hash
        from wsi.tiling import _stage_params

        params = _stage_params(other, s, None)
    g = st.open_store(store, mode="r+")
    meta = st.read_meta(g)
    meta["stages"] = {}
    meta["pending"] = {
        "tiles": {
            "params": params,
            "params_hash": params_hash(params),
            "run_id": "killed",
            "started": st.now_iso(),
        }
    }
    st.write_meta(g, meta)
    tile_slide(svs, tmp_path, other)
    a = _arrays(store)
    assert a[st.TILES_PIXELS].shape[1:] == (128, 128, 3) and a[st.TILES_DONE].all()


def test_rerun_after_the_slide_file_changed(tmp_path, svs, pyramid):
    work = tmp_path / "slide.tiff"
    work.write_bytes(svs.read_bytes())
    tile_slide(work, tmp_path / "out", LOSSLESS, mpp=0.25)
    work.write_bytes(pyramid.read_bytes())  # same name, other content, in the same process
    store = tile_slide(work, tmp_path / "out", LOSSLESS, mpp=0.4, overwrite=True)
    meta = st.read_meta(st.open_store(store))
    assert meta["slide"]["mpp"] == {"x": 0.4, "y": 0.4, "source": "override"}
    assert meta["source"]["size"] == pyramid.stat().st_size
    assert _arrays(store)[st.TILES_DONE].all()


def test_duplicate_slide_ids_in_one_batch(tmp_path, svs, pyramid):
    from pipelines.tasks import tile_slides

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "S1.svs", tmp_path / "b" / "S1.tiff"
    first.write_bytes(svs.read_bytes())
    second.write_bytes(pyramid.read_bytes())
    results = tile_slides([first, second], tmp_path / "out", LOSSLESS, client=None)
    assert [r.status for r in results] == ["ok", "failed"]
    assert "also that of" in results[1].error and str(first) in results[1].error


def test_corrupt_tile_data_fails_the_slide(tmp_path, pyramid):
    from wsi.errors import SlideReadError

    data = bytearray(pyramid.read_bytes())
    rng = np.random.default_rng(1)
    at = len(data) // 3  # inside level-0 tile data: the header still opens
    data[at : at + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    bad = tmp_path / "bitrot.tiff"
    bad.write_bytes(bytes(data))
    with pytest.raises(SlideReadError, match="bitrot.tiff.*(corrupt|truncated)"):
        tile_slide(bad, tmp_path / "out", TilingConfig())  # default reader: OpenSlide
    g = st.open_store(tmp_path / "out" / "bitrot.zarr")
    assert st.stage_entry(g, "tiles") is None  # never marked complete


def test_pyvips_reader_says_it_does_not_verify_tile_data(tmp_path, pyramid, caplog):
    """libvips decodes the corrupt tile to wrong pixels without an error (whatever its
    fail_on): the run says so, and the store records that its tiles were not verified."""
    data = bytearray(pyramid.read_bytes())
    rng = np.random.default_rng(1)
    at = len(data) // 3  # the same 4 KiB of random bytes that OpenSlide detects above
    data[at : at + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    bad = tmp_path / "bitrot.tiff"
    bad.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="wsi.tiling"):
        store = tile_slide(bad, tmp_path / "out", TilingConfig(backend="pyvips"), progress=False)
    assert "pyvips does not verify tile data; use --backend openslide" in caplog.text
    attrs = st.open_store(store)[st.TILES_PIXELS].attrs
    assert attrs["reader"] == "pyvips" and attrs["verifies_data"] is False
    good = tile_slide(pyramid, tmp_path / "good", LOSSLESS, progress=False)
    good_attrs = st.open_store(good)[st.TILES_PIXELS].attrs
    assert good_attrs["reader"] == "openslide" and good_attrs["verifies_data"] is True


def _allocated(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file()}


def test_full_disk_says_how_many_chunks_are_kept_and_which_folder(tmp_path, pyramid):
    """`wsi tile` onto a real tmpfs with room for two of the three chunks (mounted in a
    user and mount namespace): the message counts the chunks kept and names the output
    folder that is full, with the fix."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("no unshare to mount a small tmpfs")
    config = TilingConfig(codec="zstd", chunk_tiles=11)
    probe = tile_slide(pyramid, tmp_path / "probe", config, progress=False)
    assert len(_arrays(probe)[st.TILES_DONE]) == 3
    sizes = _allocated(probe)
    chunks = [n for p, n in sizes.items() if p.parent.parent.parent.parent.name == "c"
              and "pixels" in p.parts]  # fmt: skip
    assert len(chunks) == 3
    room = sum(sizes.values()) - min(chunks) // 2  # any two chunks fit, never all three
    (tmp_path / "job.yaml").write_text("tiling:\n  codec: zstd\n  chunk_tiles: 11\n")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "stores"
    script = f'mount -t tmpfs -o size={room} tmpfs "{disk}" || exit 99; exec "$@"'
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
           sys.executable, "-m", "pipelines.cli", "-q", "tile", str(pyramid), "--out", str(out),
           "--config", str(tmp_path / "job.yaml"), "--workers", "1"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode == 99 or "unshare:" in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:200]}")
    text = r.stdout + r.stderr
    assert r.returncode == 1, text
    assert "nothing was marked done" not in text
    assert f"{out}: no space left on the device" in text, text
    assert "2 of 3 chunks of tiles were written" in text and "kept" in text
    assert "Free space there and re-run" in text
