"""Tile a slide into its store: tissue mask, tile grid, then Dask tasks per chunk of tiles.

Each task opens the slide itself (one cached handle per worker process), reads its
tiles, computes their QC, and writes its own Zarr chunk; no pixels pass through the
scheduler. ``tiles/done`` is written last per chunk, and the stage record last of all,
so a killed run resumes where it stopped and never trusts a half-written chunk.

A task reads by region, not tile by tile: the tiles of a chunk that touch along a grid
row are read as one strip of the level (``plan_regions``, at most
``ReadOptions.max_region_px`` level pixels each) by a few reader threads, and cut out
in memory, so no source tile of a strip is decoded twice. Where a reader cannot promise
that a cut equals a read of the tile alone (``Slide.exact_region_reads``), each tile
is read on its own, as before.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st
from wsi.codecs import CODECS
from wsi.config import TilingConfig
from wsi.errors import (
    ConfigError,
    NoTissueError,
    OutputFullError,
    SlideReadError,
    StoreError,
    WsiError,
)
from wsi.grid import TileGrid, make_grid
from wsi.progress import progress_reporter
from wsi.qc import QC_COLUMNS, tile_qc
from wsi.slide import open_slide, tile_backend
from wsi.slide.base import LevelChoice, Slide, resize_rgb
from wsi.store import params_hash
from wsi.tissue import TissueMask, detect_tissue

__all__ = [
    "tile_slide",
    "NoTissueError",
    "ReadOptions",
    "Region",
    "plan_regions",
    "read_tiles",
    "ChunkJob",
    "tile_chunk",
    "peak_rss",
    "STAGE",
]

log = logging.getLogger(__name__)

STAGE = st.TILES


@dataclass(frozen=True)
class ReadOptions:
    """How chunk tasks read their tiles. It never changes a pixel, so it is not a parameter
    of the stage (re-running with other options is a no-op).

    ``by_region``: read the strips of ``plan_regions`` and cut the tiles out (False: one
    read per tile, the path before 2026-12; kept for benchmarks). ``threads``: reader
    threads per task; None: the cores each worker task has (``os.sched_getaffinity``
    divided by the tasks that run at once on that machine: ``reader_threads``), at least
    1. ``max_region_px``: the most level pixels one read may cover (a longer strip is
    split); a strip takes up to about 16 bytes per pixel while OpenSlide's RGBA becomes
    RGB, so a task holds at most about ``threads * max_region_px * 16`` bytes of strips
    (32 MiB per thread by default) besides its chunk of tiles.
    """

    by_region: bool = True
    threads: int | None = None
    max_region_px: int = 2**21

    def __post_init__(self) -> None:
        if self.threads is not None and not 1 <= self.threads <= 64:
            raise ConfigError(f"ReadOptions.threads must be 1..64 or None, got {self.threads}")
        if self.max_region_px < 1:
            raise ConfigError(
                f"ReadOptions.max_region_px must be positive, got {self.max_region_px}"
            )


@dataclass(frozen=True)
class Region:
    """One read: ``size`` = (w, h) pixels of the level at level-0 ``location`` = (x, y),
    and the tiles cut from it: (index in the chunk, x, y offset in pixels of the level)."""

    location: tuple[int, int]
    size: tuple[int, int]
    tiles: tuple[tuple[int, int, int], ...]


def plan_regions(
    coords: np.ndarray, src_px: int, level_downsample: float, max_region_px: int
) -> list[Region]:
    """The reads that cover tiles of ``src_px`` level pixels at level-0 ``coords`` (n, 2).

    Tiles of one grid row that touch or overlap (row-major, as ``make_grid`` orders them)
    share one strip ``src_px`` high and at most ``max(src_px, max_region_px // src_px)``
    wide; a gap between tiles starts a new strip, because reading a gap costs more than
    decoding the source tiles at its two edges again. A tile whose origin is not a whole
    pixel of the level is read on its own (a cut could not place it exactly), and so is
    every tile when ``max_region_px`` is 0. Returns the regions in the tiles' order.
    """
    ds = float(level_downsample)
    max_w = max(src_px, max_region_px // src_px) if max_region_px > 0 else 0
    regions: list[Region] = []
    run: list[tuple[int, int, int]] = []  # (index, level x, level y) of the open strip
    origin = (0, 0)

    def close() -> None:
        if run:
            x0 = run[0][1]
            width = run[-1][1] + src_px - x0
            cuts = tuple((i, lx - x0, 0) for i, lx, _ in run)
            regions.append(Region(origin, (width, src_px), cuts))
            run.clear()

    for i, (x, y) in enumerate(np.asarray(coords).tolist()):
        lx, ly = x / ds, y / ds
        whole = lx == int(lx) and ly == int(ly)
        if not whole or max_w == 0:
            close()
            size = (src_px, src_px)
            regions.append(Region((int(x), int(y)), size, ((i, 0, 0),)))
            continue
        lx, ly = int(lx), int(ly)
        if run:
            last_x, last_y = run[-1][1], run[-1][2]
            touches = ly == last_y and last_x <= lx <= last_x + src_px
            if not touches or lx + src_px - run[0][1] > max_w:
                close()
        if not run:
            origin = (int(x), int(y))
        run.append((i, lx, ly))
    close()
    return regions


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _reader_pool(threads: int) -> ThreadPoolExecutor:
    """This process's pool of ``threads`` reader threads (never one made before a fork)."""
    key = (os.getpid(), threads)
    with _CACHE_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix="wsi-read")
        return pool


def reader_threads(tasks_per_machine: int = 1) -> int:
    """Reader threads per task when ``ReadOptions.threads`` is None: the cores this process
    may use, shared by the ``tasks_per_machine`` tasks that run at once, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, tasks_per_machine))


def read_tiles(
    slide: Slide,
    coords: np.ndarray,
    tile_size: int,
    choice: LevelChoice,
    options: ReadOptions | None = None,
) -> np.ndarray:
    """The tiles at level-0 ``coords`` (n, 2): uint8 (n, tile_size, tile_size, 3) RGB.

    Each tile has exactly the pixels of ``slide.read_scaled((x, y), (tile_size,
    tile_size), choice)``: where the reader promises exact cuts
    (``slide.exact_region_reads``) the tiles are cut from the strips of ``plan_regions``
    (and resized from there, as ``read_scaled`` resizes), read by ``options.threads``
    threads; otherwise one read per tile. A failed read raises its ``SlideReadError``
    (naming the file) once the reads in flight have stopped; no tile is returned.
    """
    options = options or ReadOptions()
    n = len(coords)
    tiles = np.empty((n, tile_size, tile_size, 3), dtype=np.uint8)
    if n == 0:
        return tiles
    scale = choice.scale
    src = tile_size if scale == 1.0 else max(1, round(tile_size * scale))
    exact = options.by_region and slide.exact_region_reads(choice.level)
    plan = plan_regions(coords, src, choice.level_downsample, options.max_region_px if exact else 0)

    def read(region: Region) -> None:
        pixels = slide.read_level_region(region.location, choice.level, region.size)
        for i, ox, oy in region.tiles:
            cut = pixels[oy : oy + src, ox : ox + src]
            tiles[i] = (
                cut
                if scale == 1.0
                else resize_rgb(np.ascontiguousarray(cut), (tile_size, tile_size))
            )

    threads = options.threads or reader_threads()
    if threads == 1 or len(plan) == 1:
        for region in plan:
            read(region)
        return tiles
    pool = _reader_pool(threads)
    pending: deque[Future[None]] = deque()
    todo = iter(plan)
    try:
        # at most ``threads`` reads in flight, so strips in memory stay bounded
        for region in itertools.islice(todo, threads):
            pending.append(pool.submit(read, region))
        while pending:
            pending.popleft().result()  # in plan order: the first bad region is raised
            region_left = next(todo, None)
            if region_left is not None:
                pending.append(pool.submit(read, region_left))
    except BaseException:
        for fut in pending:
            fut.cancel()
        for fut in pending:  # let reads in flight finish before the caller moves on
            if not fut.cancelled():
                fut.exception()
        raise
    return tiles


@dataclass(frozen=True)
class ChunkJob:
    """One task: read, check and write the tiles of one chunk. Small enough to pickle."""

    slide_path: str
    mpp_override: float | None
    backend: str
    store_path: str
    chunk: int
    start: int
    coords: np.ndarray  #: int32 (n, 2) level-0 top-left of this chunk's tiles
    tile_size: int
    choice: LevelChoice
    run_id: str  #: identity of this layout of the store: cached array handles never outlive it
    reading: ReadOptions = ReadOptions()
    tasks_per_machine: int = 1  #: tasks run at once on a worker's machine (reader threads)

    def __repr__(self) -> str:
        return (
            f"ChunkJob({Path(self.store_path).name} chunk {self.chunk}, {len(self.coords)} tiles)"
        )


# -- worker side ------------------------------------------------------------------------

_SLIDES: dict[tuple[int, str, int, int, float | None, str], Slide] = {}
_ARRAYS: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
_MAX_CACHED = 4
# workers of an existing cluster may run several task threads; an evicted handle is only
# dropped (closed when the last task using it lets go), never closed under a reader
_CACHE_LOCK = threading.Lock()


def _slide_key(
    path: str, mpp: float | None, backend: str
) -> tuple[int, str, int, int, float | None, str]:
    stat = os.stat(path)  # a replaced file gets a new handle; a forked process its own
    return (os.getpid(), path, stat.st_size, stat.st_mtime_ns, mpp, backend)


def _worker_slide(path: str, mpp: float | None, backend: str) -> Slide:
    key = _slide_key(path, mpp, backend)
    with _CACHE_LOCK:
        slide = _SLIDES.get(key)
        if slide is None:
            while len(_SLIDES) >= _MAX_CACHED:
                _SLIDES.pop(next(iter(_SLIDES)))
            slide = _SLIDES[key] = open_slide(path, mpp=mpp, backend=backend)
        return slide


def _worker_arrays(store_path: str, run_id: str) -> tuple[Any, Any, Any]:
    key = (store_path, run_id)
    with _CACHE_LOCK:
        arrays = _ARRAYS.get(key)
        if arrays is None:
            while len(_ARRAYS) >= _MAX_CACHED:
                _ARRAYS.pop(next(iter(_ARRAYS)))
            group = st.open_store(store_path, mode="r+")
            # every chunk is written whole and holds tissue: skip zarr's all-fill-value
            # scan, which cost more than the JPEG encoding itself (docs/tiling.md)
            fast = {"write_empty_chunks": True}
            arrays = _ARRAYS[key] = tuple(
                group[k].with_config(fast) for k in (st.TILES_PIXELS, st.TILES_QC, st.TILES_DONE)
            )
        return arrays


def tile_chunk(job: ChunkJob) -> dict[str, Any]:
    """Run one chunk job in this process; returns small counts for the driver."""
    slide = _worker_slide(job.slide_path, job.mpp_override, job.backend)
    n = len(job.coords)
    try:
        reading = job.reading
        if reading.threads is None:
            reading = dataclasses.replace(reading, threads=reader_threads(job.tasks_per_machine))
        tiles = read_tiles(slide, job.coords, job.tile_size, job.choice, reading)
    except SlideReadError:
        # OpenSlide refuses every later read of a handle that failed once: let a retry
        # of this chunk in this process open the slide again
        with _CACHE_LOCK:
            for key in [k for k, v in _SLIDES.items() if v is slide]:
                del _SLIDES[key]
        raise
    qc = tile_qc(tiles)
    pixels, qc_arr, done = _worker_arrays(job.store_path, job.run_id)
    pixels[job.start : job.start + n] = tiles
    qc_arr[job.start : job.start + n] = qc
    done[job.chunk] = True  # last: the chunk is trusted from here on
    return {"chunk": job.chunk, "tiles": n, "peak_rss": peak_rss()}


def peak_rss() -> int:
    """Peak resident memory of this process in bytes, since it started (0 if unknown).

    On Linux this is ``VmHWM`` of the process's own address space: unlike ``ru_maxrss``,
    it does not inherit the high-water mark of the parent that forked it, which would
    make every spawned worker look as large as the driver.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# -- driver side ------------------------------------------------------------------------


def _stage_params(config: TilingConfig, slide: Slide, mpp_override: float | None) -> dict[str, Any]:
    return {
        "config": dataclasses.asdict(config),
        "mpp_override": mpp_override,
        "slide_mpp": [slide.mpp.x, slide.mpp.y],
    }


def _reader(config: TilingConfig, slide: Slide, choice: LevelChoice) -> str:
    if config.backend == "openslide":
        return "openslide"
    return tile_backend(slide, choice.level)


def _slide_meta(slide: Slide, source: dict[str, Any], slide_id: str) -> dict[str, Any]:
    info = slide.info().as_dict()
    info.pop("path")
    return st.new_store_meta(slide_id, source, info)


def _write_layout(group: Any, grid: TileGrid, mask: TissueMask, config: TilingConfig) -> None:
    """(Re)create the tissue and tiles arrays; pixels start empty, done all False."""
    # new tiles void every later stage's outputs too
    for name in st.STAGE_GROUPS:
        st.remove_member(group, name)
    m = group.create_array(st.TISSUE_MASK, data=mask.mask.astype(np.uint8), chunks=(1024, 1024))
    m.attrs.update(
        {
            "method": "otsu-saturation",
            "threshold": mask.threshold,
            "downsample": mask.downsample,
            "mpp": mask.mpp,
            "tissue_fraction": mask.fraction,
        }
    )
    n, k, s = len(grid), config.chunk_tiles, config.tile_size
    coords = group.create_array(st.TILES_COORDS, data=grid.coords, chunks=(min(n, 65536), 2))
    coords.attrs.update(
        {"frame": "level-0 top-left (x, y), pixels", "footprint_l0": grid.footprint}
    )
    codec = CODECS[config.codec]
    serializer, compressors = codec.zarr_codecs(config.level, config.chroma_subsampling)
    pixels = group.create_array(
        st.TILES_PIXELS,
        shape=(n, s, s, 3),
        dtype="uint8",
        chunks=(k, s, s, 3),
        serializer=serializer,
        compressors=compressors,
        fill_value=255,
    )
    pixels.attrs.update(
        {
            "codec": config.codec,
            "quality": config.level,
            "chroma_subsampling": None if codec.lossless else config.chroma_subsampling,
            "lossless": codec.lossless,
            "tile_size": s,
            "tile_mpp": grid.tile_mpp,
            "target_mpp": config.target_mpp,
            "level": grid.choice.level,
            "level_downsample": grid.choice.level_downsample,
            "scale": grid.choice.scale,
        }
    )
    qc = group.create_array(
        st.TILES_QC, shape=(n, len(QC_COLUMNS)), dtype="float32", chunks=(k, len(QC_COLUMNS))
    )
    qc.attrs["columns"] = list(QC_COLUMNS)
    group.create_array(
        st.TILES_DONE, shape=(math.ceil(n / k),), dtype="bool", chunks=(1,), fill_value=False
    )


def _resumable(group: Any, phash: str, config: TilingConfig) -> bool:
    """True if an interrupted run with the same params left a complete layout to resume."""
    pending = st.read_meta(group).get("pending", {}).get(STAGE)
    if not pending or not pending.get("run_id"):
        return False
    keys = (st.TISSUE_MASK, st.TILES_COORDS, st.TILES_PIXELS, st.TILES_QC, st.TILES_DONE)
    if not all(k in group for k in keys):
        return False
    n, s, k = group[st.TILES_COORDS].shape[0], config.tile_size, config.chunk_tiles
    return (
        group[st.TILES_PIXELS].shape == (n, s, s, 3)
        and group[st.TILES_PIXELS].chunks == (k, s, s, 3)
        and group[st.TILES_DONE].shape == (math.ceil(n / k),)
    )


def _existing_store(
    path: Path, source: dict[str, Any], phash: str, config: TilingConfig, overwrite: bool
) -> tuple[Any, str]:
    """The store at ``path`` and what to do with it: "complete", "resume" or "fresh".

    Returns (None, "fresh") when there is no store (or it was removed for overwrite). A
    folder that wsi did not make (no wsi marker) is never touched: StoreError.
    """
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return None, "fresh"
    if not st.is_wsi_store(path):
        raise st.foreign_store_error(path)
    try:
        group = st.open_store(path, mode="r+")
        meta = st.read_meta(group)
    except StoreError:
        if not overwrite:
            raise
        st.remove_store(path)  # unreadable, but wsi's: --overwrite makes it again
        return None, "fresh"
    old = meta.get("source", {})
    if old.get("fingerprint") != source["fingerprint"]:
        if not overwrite:
            raise StoreError(
                f"{path}: the store was made from another file ({old.get('path')}) with "
                f"the same name as {source['path']}. Use another --out, or --overwrite."
            )
        st.remove_store(path)
        return None, "fresh"
    state = st.stage_state(group, STAGE, phash, overwrite=overwrite, where=str(path))
    if state == "resume" and not _resumable(group, phash, config):
        state = "fresh"
    return group, state


def _tasks_per_machine(client: Any) -> int:
    """The most tasks a cluster runs at once on one machine (its workers' threads there)."""
    if client is None:
        return 1
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except TypeError:  # distributed before the n_workers argument lists every worker
        workers = client.scheduler_info().get("workers", {})
    per_host: dict[str, int] = {}
    for info in workers.values():
        host = str(info.get("host", ""))
        per_host[host] = per_host.get(host, 0) + int(info.get("nthreads", 1))
    return max(per_host.values(), default=1)


def _run_jobs(
    jobs: list[ChunkJob], client: Any, update: Callable[[int], None]
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    if client is None:
        for job in jobs:
            results.append(tile_chunk(job))
            update(results[-1]["tiles"])
        return results
    from distributed import as_completed

    futures = client.map(
        tile_chunk,
        jobs,
        pure=False,
        key=[f"tile-{Path(j.store_path).stem}-{j.chunk}-{os.urandom(4).hex()}" for j in jobs],
    )
    try:
        for fut in as_completed(futures):
            res = fut.result()
            results.append(res)
            update(res["tiles"])
    except BaseException:
        client.cancel(futures)
        raise
    return results


def tile_slide(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TilingConfig | None = None,
    *,
    mpp: float | None = None,
    client: Any = None,
    overwrite: bool = False,
    progress: bool | None = None,
    slide_id: str | None = None,
    reading: ReadOptions | None = None,
) -> Path:
    """Tile one slide into ``<out_dir>/<slide_id>.zarr`` and return the store path.

    Detects tissue on a low-resolution image (``config.tissue``), lays a grid of square
    tiles of ``config.tile_size`` pixels at ``config.target_mpp`` micrometres per pixel
    over the slide (only tiles wholly inside it, row-major), keeps those whose tissue
    fraction is at least ``config.min_tissue``, and writes their pixels and QC to the
    store. The store holds:

    - ``tissue/mask``: uint8 (h, w), one pixel per ``downsample`` level-0 pixels (attrs
      ``downsample``, ``mpp`` in µm/px, ``threshold``, ``tissue_fraction``);
    - ``tiles/coords``: int32 (N, 2), level-0 ``(x, y)`` in pixels of each tile's top-left
      corner (attr ``footprint_l0``: the tile side in level-0 pixels);
    - ``tiles/pixels``: uint8 (N, S, S, 3) RGB, S = ``tile_size``, at ``tile_mpp`` µm/px
      (the attr; within 2 % of ``target_mpp``), JPEG or zstd per ``config.codec``;
    - ``tiles/qc``: float32 (N, 3), columns ``blur``, ``pen``, ``background``
      (``wsi.qc``); row i of every array is tile i.

    Re-running a complete slide with the same parameters returns at once; an interrupted
    run resumes from ``tiles/done`` (chunks already written are kept). New tiles delete
    the store's later stages (features, predictions, heatmaps).

    Args:
        path: the slide file (anything ``wsi.open_slide`` reads).
        out_dir: folder of slide stores; created if missing.
        config: tile size (pixels), target resolution (µm/px), stride, tissue threshold,
            codec and reader; None: ``TilingConfig()`` (256 px at 0.5 µm/px, JPEG 90).
        mpp: level-0 resolution in micrometres per pixel that overrides the slide's own
            (for slides that state none); part of the stage's parameters.
        client: a ``dask.distributed.Client``: one task per chunk of
            ``config.chunk_tiles`` tiles on its workers, each reading the slide itself.
            None runs the chunks one after another in this process.
        overwrite: redo tiles made with other parameters, and replace a store made from
            another file of the same name; otherwise both are refused.
        progress: True shows a progress bar, False logs every 10 %, None shows a bar when
            stderr is a terminal.
        slide_id: names the store and is what reports show (e.g. a manifest's
            pseudonymous id); None (or empty): the file name without its extension
            (``s1.svs`` -> ``s1``, ``s1.ome.tiff`` -> ``s1``).
        reading: how tasks read (``ReadOptions``: strips or tile by tile, reader threads,
            strip size); None: ``ReadOptions()``. The tiles are the same either way.

    Returns:
        The store folder, ``Path(out_dir) / f"{slide_id}.zarr"``.

    Raises:
        SlideNotFoundError: ``path`` does not exist.
        SlideOpenError: ``path`` is not a readable slide.
        MppError: the slide states no plausible resolution and ``mpp`` is not given (or
            ``mpp`` is implausible); raised before anything is written.
        NoTissueError: no tile holds ``config.min_tissue`` tissue (``wsi.tiling``; also a
            ``ValueError``).
        StoreError: ``<out_dir>/<slide_id>.zarr`` exists but is not a slide store, or was
            made from another file and ``overwrite`` is False.
        StageConflictError: the store's tiles were made with other parameters and
            ``overwrite`` is False.
        ConfigError: ``slide_id`` cannot name a folder (``/``, ``\\``, control
            characters, a leading ``.``).
        SlideReadError: a tile's data is corrupt (chunks written before it are kept).

    Example::

        store = wsi.tile_slide("slides/s1.svs", "stores")   # -> Path("stores/s1.zarr")

        config = wsi.TilingConfig(tile_size=224, target_mpp=0.5, min_tissue=0.25)
        wsi.tile_slide("slides/s2.tiff", "stores", config, mpp=0.25, slide_id="case_017")

        from distributed import Client
        with Client(n_workers=4, threads_per_worker=1) as client:
            wsi.tile_slide("slides/s3.ndpi", "stores", client=client, progress=False)
    """
    config = config or TilingConfig()
    out = Path(out_dir)
    slide_path = Path(path)
    sid = st.check_slide_id(slide_id) if slide_id is not None else st.slide_id_for(slide_path)
    store_path = st.store_path(out, sid)
    with st.store_lock(store_path):  # one writer per store; a second is refused
        return _tile_locked(
            slide_path, store_path, sid, config, mpp, client, overwrite, progress, reading
        )


def _tile_locked(
    slide_path: Path,
    store_path: Path,
    sid: str,
    config: TilingConfig,
    mpp: float | None,
    client: Any,
    overwrite: bool,
    progress: bool | None,
    reading: ReadOptions | None,
) -> Path:
    with open_slide(slide_path, mpp=mpp, backend="openslide") as slide:
        _ = slide.mpp  # no resolution: stop here, before anything is written
        source = st.source_record(slide_path)
        params = _stage_params(config, slide, mpp)
        phash = params_hash(params)
        group, state = _existing_store(store_path, source, phash, config, overwrite)
        if state == "complete":
            log.info("%s: tiles already complete (%s), nothing to do", store_path, phash)
            return store_path
        if state == "fresh":
            mask = detect_tissue(slide, config.tissue)
            grid = make_grid(slide, mask, config)
            if len(grid) == 0:
                raise NoTissueError(
                    f"{slide_path}: no tile has {config.min_tissue:.0%} tissue "
                    f"(tissue covers {mask.fraction:.1%} of the slide at threshold "
                    f"{mask.threshold:.3f}). Check the slide, or lower tiling.min_tissue / "
                    "tiling.tissue.min_saturation."
                )
            # forget any earlier run first (new tiles void every later stage too), then lay
            # out, and only then mark the run pending: a kill at any point leaves nothing
            # that a later run would resume wrongly
            if group is None:
                group = st.create_store(store_path, _slide_meta(slide, source, sid))
            else:
                st.write_meta(group, _slide_meta(slide, source, sid))
            choice = grid.choice
            reader = _reader(config, slide, choice)
            _write_layout(group, grid, mask, config)
            # libvips decodes corrupt JPEG tile data to garbage without an error, at
            # least up to libvips 8.18 (fail_on does not reach tiffload's JPEG tiles)
            group[st.TILES_PIXELS].attrs.update(
                {"reader": reader, "verifies_data": reader == "openslide"}
            )
            run_id = st.begin_stage(group, STAGE, params, phash)
        else:
            attrs = group[st.TILES_PIXELS].attrs
            choice = LevelChoice(
                int(attrs["level"]), float(attrs["level_downsample"]), float(attrs["scale"])
            )
            reader = str(attrs["reader"])
            run_id = str(st.read_meta(group)["pending"][STAGE]["run_id"])
            log.info("%s: resuming an interrupted run", store_path)
    if reader == "pyvips":
        log.warning(
            "%s: pyvips does not verify tile data; use --backend openslide to detect "
            "corrupt slides",
            slide_path,
        )
    resuming = state == "resume"
    coords = np.asarray(group[st.TILES_COORDS][:])
    done = np.asarray(group[st.TILES_DONE][:])
    k = config.chunk_tiles
    tasks = _tasks_per_machine(client)
    jobs = [
        ChunkJob(
            str(slide_path.resolve()),
            mpp,
            reader,
            str(store_path.resolve()),
            c,
            c * k,
            coords[c * k : (c + 1) * k],
            config.tile_size,
            choice,
            run_id,
            reading or ReadOptions(),
            tasks,
        )
        for c in range(len(done))
        if not done[c]
    ]
    update, close = progress_reporter(len(coords), sid, progress, unit="tile")
    update(len(coords) - sum(len(j.coords) for j in jobs))
    t0 = time.perf_counter()
    try:
        results = _run_jobs(jobs, client, update)
    except OSError as err:
        if err.errno != errno.ENOSPC or isinstance(err, WsiError):
            raise
        written = int(np.asarray(group[st.TILES_DONE][:]).sum())
        raise OutputFullError.of(
            store_path.parent, written, len(done), "chunks of tiles", err
        ) from err
    finally:
        close()
    seconds = time.perf_counter() - t0
    counts = {
        "tiles": int(len(coords)),
        "chunks": int(len(done)),
        "chunks_written_this_run": len(results),
        "resumed": resuming,
        "tiles_per_s_this_run": round(sum(r["tiles"] for r in results) / seconds, 1)
        if results and seconds > 0
        else None,
        "peak_worker_rss_mb": round(max((r["peak_rss"] for r in results), default=0) / 2**20, 1),
    }
    st.complete_stage(group, STAGE, counts)
    log.info("%s: %d tiles in %.1f s", store_path, len(coords), seconds)
    return store_path
