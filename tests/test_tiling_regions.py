"""Reading by region: strips cut into tiles give exactly the tiles read one by one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi import store as st
from wsi.config import TilingConfig
from wsi.errors import SlideReadError
from wsi.grid import make_grid
from wsi.slide import open_slide
from wsi.slide.base import LevelChoice, Slide
from wsi.tiling import ChunkJob, ReadOptions, plan_regions, read_tiles, tile_chunk, tile_slide
from wsi.tissue import detect_tissue

BY_TILE = ReadOptions(by_region=False, threads=1)


def _arrays(store: Path) -> dict[str, np.ndarray]:
    g = st.open_store(store)
    keys = (st.TISSUE_MASK, st.TILES_COORDS, st.TILES_PIXELS, st.TILES_QC, st.TILES_DONE)
    return {k: np.asarray(g[k][:]) for k in keys}


class ArraySlide(Slide):
    """A one-level slide over an array that counts its reads (and fails where told)."""

    backend = "array"

    def __init__(self, pixels: np.ndarray, exact: bool = True, bad: tuple[int, int] | None = None):
        import threading

        super().__init__(Path("array.tiff"), None)
        self.pixels, self.exact, self.bad, self.reads = pixels, exact, bad, 0
        self._count = threading.Lock()
        h, w = pixels.shape[:2]
        self.level_dimensions, self.level_downsamples = ((w, h),), (1.0,)
        self.vendor, self.objective_power, self.associated_images = None, None, ()

    def _read_level(self, location, level, size):
        with self._count:
            self.reads += 1
        (x, y), (w, h) = location, size
        if self.bad and x <= self.bad[0] < x + w and y <= self.bad[1] < y + h:
            raise SlideReadError(f"{self.path}: corrupt pixel at {self.bad}")
        return self.pixels[y : y + h, x : x + w].copy()

    def exact_region_reads(self, level):
        return self.exact


def _noise(h: int = 1200, w: int = 1600) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- the plan -----------------------------------------------------------------------------


def test_plan_row_runs_gaps_and_width():
    # row 0: three touching tiles, a gap, one tile; row 1: two touching tiles
    coords = np.array([[0, 0], [64, 0], [128, 0], [320, 0], [0, 64], [64, 64]])
    plan = plan_regions(coords, 64, 1.0, 2**20)
    assert [(r.location, r.size) for r in plan] == [
        ((0, 0), (192, 64)),
        ((320, 0), (64, 64)),
        ((0, 64), (128, 64)),
    ]
    assert plan[0].tiles == ((0, 0, 0), (1, 64, 0), (2, 128, 0))
    assert sorted(i for r in plan for i, _, _ in r.tiles) == list(range(len(coords)))
    # at most 64 * 150 // 64 = 150 px wide: two tiles per strip
    assert [r.size[0] for r in plan_regions(coords, 64, 1.0, 64 * 150)] == [128, 64, 64, 128]
    assert all(len(r.tiles) == 1 for r in plan_regions(coords, 64, 1.0, 0))  # tile by tile


def test_plan_overlapping_tiles_and_levels():
    coords = np.array([[0, 0], [96, 0], [192, 0]])  # stride 48 level px < tile 64 px
    (region,) = plan_regions(coords, 64, 2.0, 2**20)
    assert region.size == (64 + 96, 64) and region.tiles == ((0, 0, 0), (1, 48, 0), (2, 96, 0))
    # an origin that is not a whole pixel of the level is read on its own
    plan = plan_regions(np.array([[0, 0], [129, 0], [256, 0]]), 64, 2.0, 2**20)
    assert [len(r.tiles) for r in plan] == [1, 1, 1]


# -- pixels -------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("scale", [1.0, 1.5, 2.0])
def test_cut_tiles_equal_single_reads(threads, scale):
    pixels = _noise()
    choice = LevelChoice(0, 1.0, scale)
    src = round(64 * scale)
    xs, ys = np.meshgrid(np.arange(0, 1600 - src, src), np.arange(0, 1200 - src, src))
    coords = np.stack([xs.ravel(), ys.ravel()], 1)[::1]
    coords = np.delete(coords, [3, 4, 11], axis=0)  # gaps in the rows
    by_tile = ArraySlide(pixels, exact=True)
    ref = read_tiles(by_tile, coords, 64, choice, BY_TILE)
    assert by_tile.reads == len(coords)
    strips = ArraySlide(pixels, exact=True)
    got = read_tiles(strips, coords, 64, choice, ReadOptions(threads=threads))
    assert np.array_equal(got, ref)
    assert strips.reads < len(coords) // 4
    for i in (0, 7, len(coords) - 1):
        x, y = (int(v) for v in coords[i])
        assert np.array_equal(ref[i], by_tile.read_scaled((x, y), (64, 64), choice))


def test_reader_without_exact_cuts_reads_tile_by_tile():
    slide = ArraySlide(_noise(), exact=False)
    coords = np.array([[0, 0], [64, 0], [128, 0]])
    read_tiles(slide, coords, 64, LevelChoice(0, 1.0, 1.0), ReadOptions(threads=2))
    assert slide.reads == 3


@pytest.mark.parametrize("threads", [1, 3])
def test_failed_strip_raises_its_error(threads):
    coords = np.array([[x, y] for y in (0, 64) for x in range(0, 640, 64)])
    slide = ArraySlide(_noise(), bad=(300, 70))  # inside the second row's strip
    with pytest.raises(SlideReadError, match="array.tiff: corrupt pixel"):
        read_tiles(slide, coords, 64, LevelChoice(0, 1.0, 1.0), ReadOptions(threads=threads))


def test_reads_in_flight_stay_within_the_threads():
    import threading

    class Counting(ArraySlide):
        lock, now, most = threading.Lock(), 0, 0

        def _read_level(self, location, level, size):
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            try:
                return super()._read_level(location, level, size)
            finally:
                with self.lock:
                    self.now -= 1

    slide = Counting(_noise())
    coords = np.array([[x, y] for y in range(0, 1100, 64) for x in (0, 64, 256, 512, 768)])
    read_tiles(slide, coords, 64, LevelChoice(0, 1.0, 1.0), ReadOptions(threads=3))
    assert slide.reads > 3 and 1 <= slide.most <= 3


def test_reader_threads_share_the_cores():
    import os

    from wsi.tiling import reader_threads

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert reader_threads(1) == cores and reader_threads(10_000) == 1
    with pytest.raises(ValueError, match="threads"):
        ReadOptions(threads=0)


REAL_CASES = [  # (slide, target mpp): level 0 as is, resampled from level 0, fractional level
    ("svs", 0.5),
    ("svs", 0.75),
    ("svs", 1.0),
    ("pyramid", 0.5),
    ("pyramid", 0.75),
    ("pyramid", 1.0),
]


@pytest.mark.parametrize(("which", "mpp"), REAL_CASES)
def test_real_slides_region_reads_equal_tile_reads(request, backend, which, mpp):
    path = request.getfixturevalue(which)
    cfg = TilingConfig(target_mpp=mpp, min_tissue=0.0, stride=200 if mpp == 0.75 else None)
    with open_slide(path, backend=backend) as slide:
        grid = make_grid(slide, detect_tissue(slide, cfg.tissue), cfg)
        assert len(grid) > 10
        ref = read_tiles(slide, grid.coords, 256, grid.choice, BY_TILE)
        for threads in (1, 3):
            got = read_tiles(slide, grid.coords, 256, grid.choice, ReadOptions(threads=threads))
            assert np.array_equal(got, ref)
        for i in (0, len(grid) // 2, len(grid) - 1):
            x, y = (int(v) for v in grid.coords[i])
            assert np.array_equal(ref[i], slide.read_scaled((x, y), (256, 256), grid.choice))


@pytest.fixture(scope="module")
def aperio_like(tmp_path_factory) -> Path:
    """8,000 px square, 240 px JPEG tiles at 0.2527 mpp: 256 px tiles at 0.5 mpp come from
    level 1 (downsample 2) and straddle up to four source tiles."""
    from wsi.synthetic import make_synthetic_slide

    path = tmp_path_factory.mktemp("aperio_like") / "aperio_like.tiff"
    make_synthetic_slide(path, width=8000, height=8000, mpp=0.2527, seed=4, tile_size=240)
    return path


@pytest.mark.parametrize("mpp", [0.5, 0.75, 1.2])
def test_synthetic_stores_equal_tile_by_tile(tmp_path, aperio_like, mpp):
    cfg = TilingConfig(target_mpp=mpp, tile_size=128, codec="zstd", chunk_tiles=16)
    before = tile_slide(aperio_like, tmp_path / "before", cfg, progress=False, reading=BY_TILE)
    now = tile_slide(aperio_like, tmp_path / "now", cfg, progress=False)
    a, b = _arrays(before), _arrays(now)
    assert len(a[st.TILES_COORDS]) > 20
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    with open_slide(aperio_like) as slide:
        assert slide.exact_region_reads(st.open_store(now)[st.TILES_PIXELS].attrs["level"])


def test_real_stores_equal_tile_by_tile_on_a_cluster(tmp_path, real_slide, aperio_like):
    from pipelines.cluster import dask_client

    cfg = TilingConfig(codec="zstd", chunk_tiles=8)
    with dask_client(workers=2) as client:
        for slide in (real_slide, aperio_like):
            out = tmp_path / slide.stem
            before = tile_slide(slide, out / "before", cfg, client=client, reading=BY_TILE)
            now = tile_slide(slide, out / "now", cfg, client=client)
            a, b = _arrays(before), _arrays(now)
            for key in a:
                assert np.array_equal(a[key], b[key]), (slide.name, key)


# -- corrupt data ---------------------------------------------------------------------------


def test_corrupt_slide_fails_the_chunk_and_marks_nothing(tmp_path, real_slide):
    """The corruption of tests/slide/test_bad_input.py: 300 kB of zeros a third in."""
    data = bytearray(real_slide.read_bytes())
    n = len(data)
    data[n // 3 : n // 3 + 300_000] = bytes(300_000)
    bad = tmp_path / f"corrupt{real_slide.suffix}"
    bad.write_bytes(bytes(data))
    cfg = TilingConfig(codec="zstd", chunk_tiles=8, min_tissue=0.0)
    with pytest.raises(SlideReadError, match=f"{bad.name}.*(corrupt|truncated)"):
        tile_slide(bad, tmp_path / "out", cfg, progress=False)
    store = tmp_path / "out" / "corrupt.zarr"
    if not store.exists():  # the SVS has one level: its tissue mask already hit the damage
        assert real_slide.suffix == ".svs"
        return
    g = st.open_store(store)
    assert st.stage_entry(g, "tiles") is None
    done = np.asarray(g[st.TILES_DONE][:])
    assert not done.all()
    first_bad = int(np.argmin(done))
    assert not done[first_bad:].any()  # chunks run in order in-process: nothing after it
    assert not (
        tmp_path / "out" / "corrupt.zarr" / "tiles" / "pixels" / "c" / str(first_bad)
    ).exists()


def _corrupt_one_source_tile(pyramid: Path, out: Path, x: int, y: int) -> Path:
    """``pyramid`` with the JPEG data of the level-0 source tile at pixel (x, y) garbled."""
    import tifffile

    with tifffile.TiffFile(pyramid) as tif:
        page = tif.pages[0]
        per_row = -(-page.imagewidth // page.tilewidth)
        index = (y // page.tilelength) * per_row + x // page.tilewidth
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    data = bytearray(pyramid.read_bytes())
    lo, hi = offset + count // 4, offset + 3 * count // 4
    data[lo:hi] = np.random.default_rng(7).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("threads", [1, 3])
def test_corrupt_tile_in_the_middle_of_a_strip(tmp_path, pyramid, threads):
    """One garbled source tile in the middle of a strip fails the whole chunk, naming the
    file; nothing of the chunk is written or marked done; a later chunk in the same process
    opens the slide again (OpenSlide refuses every read of a handle that failed once)."""
    cfg = TilingConfig(codec="zstd", chunk_tiles=64, min_tissue=0.0)
    with open_slide(pyramid) as s:
        grid = make_grid(s, detect_tissue(s, cfg.tissue), cfg)
    row = grid.coords[grid.coords[:, 1] == 1024]  # one row of touching tiles: one strip
    assert len(row) >= 5 and (np.diff(row[:, 0]) == 256).all()
    (region,) = plan_regions(row, 256, 1.0, ReadOptions().max_region_px)
    bad = _corrupt_one_source_tile(pyramid, tmp_path / "bitrot.tiff", int(row[2, 0]), 1024)
    with open_slide(bad) as s:  # the garbled tile fails on its own; its neighbours read
        s.read_region((int(row[1, 0]), 1024), (256, 256), level=0)
        with pytest.raises(SlideReadError, match="bitrot.tiff"):
            s.read_region((int(row[2, 0]), 1024), (256, 256), level=0)

    with pytest.raises(SlideReadError, match="bitrot.tiff.*(corrupt|truncated)"):
        tile_slide(bad, tmp_path / "out", cfg, progress=False)
    store = tmp_path / "out" / "bitrot.zarr"
    g = st.open_store(store)
    assert st.stage_entry(g, "tiles") is None
    coords = np.asarray(g[st.TILES_COORDS][:])
    bad_index = int(np.flatnonzero((coords == [row[2, 0], 1024]).all(axis=1))[0])
    chunk = bad_index // cfg.chunk_tiles
    assert np.asarray(g[st.TILES_DONE][:]).tolist()[chunk] is False
    assert not (store / "tiles" / "pixels" / "c" / str(chunk)).exists()

    # the same chunk as a task with `threads` readers, then a good chunk in this process
    attrs = g[st.TILES_PIXELS].attrs
    choice = LevelChoice(
        int(attrs["level"]), float(attrs["level_downsample"]), float(attrs["scale"])
    )
    run_id = st.read_meta(g)["pending"]["tiles"]["run_id"]

    def job(c: int) -> ChunkJob:
        k = cfg.chunk_tiles
        return ChunkJob(str(bad), None, "openslide", str(store), c, c * k,
                        coords[c * k : (c + 1) * k], 256, choice, run_id,
                        ReadOptions(threads=threads))  # fmt: skip

    with pytest.raises(SlideReadError, match="bitrot.tiff.*(corrupt|truncated)"):
        tile_chunk(job(chunk))
    assert not np.asarray(g[st.TILES_DONE][:])[chunk]
    assert not (store / "tiles" / "pixels" / "c" / str(chunk)).exists()
    other = next(c for c in range(g[st.TILES_DONE].shape[0]) if c != chunk)
    assert tile_chunk(job(other))["tiles"] > 0
    assert np.asarray(g[st.TILES_DONE][:])[other]
