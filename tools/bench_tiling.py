"""Benchmark the tile stage against the raw read limit measured in the same run.

On one slide (--slide PATH; default a realistic synthetic slide: 40,000 px square, 240 px
JPEG tiles at 0.2527 mpp like an Aperio 40x scan, made once in --out, --size for another
side) it measures, for each worker count (default 1 and 2):

  raw read   the same tiles' pixels, produced the fastest way this machine knows with no
             QC, encoding or writing: ``wsi.tiling.read_tiles`` (the stage's own strips and
             reader threads) with OpenSlide and, where libvips gives OpenSlide's pixels, with
             libvips, in that many spawned processes, each reading its share of the chunks;
             the faster reader is the raw read limit;
  tile stage ``wsi.tile_slide`` on a fresh LocalCluster with that many workers, reading by
             region (now) and, for the baseline of the same run, tile by tile (before;
             --no-baseline skips it);

and the peak RSS of each worker process. Prints a table, the targets, and last
``tile stage: N tiles/s = P% of raw read rate (R tiles/s)`` for the most workers.

    python tools/bench_tiling.py [--slide PATH | --size 40000] [--workers 1 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from wsi.codecs import CODECS, SUBSAMPLING  # noqa: E402
from wsi.config import TilingConfig  # noqa: E402
from wsi.slide import BACKENDS  # noqa: E402
from wsi.tiling import ReadOptions  # noqa: E402

#: the realistic default: an Aperio-like 40x scan (240 px JPEG tiles, 0.2527 µm/px)
REAL_TILE, REAL_MPP = 240, 0.2527


def _raw_read(
    args: tuple[str, str, list[np.ndarray], int, Any, ReadOptions],
) -> tuple[int, float, float]:
    """Read the given chunks with one backend in this (spawned) process, nothing else.

    Returns (tiles, wall seconds, CPU seconds of this process's threads)."""
    from wsi.slide import open_slide
    from wsi.tiling import read_tiles

    path, backend, chunks, size, choice, reading = args
    with open_slide(path, backend=backend) as slide:
        read_tiles(slide, chunks[0][:4], size, choice, reading)  # warm: handle, imports
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(len(read_tiles(slide, c, size, choice, reading)) for c in chunks)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n, seconds, cpu


def raw_rate(
    path: Path,
    backend: str,
    chunks: list[np.ndarray],
    size: int,
    choice: Any,
    reading: ReadOptions,
    procs: int,
) -> tuple[float, float]:
    """(tiles/s, CPU ms per tile) of ``procs`` spawned processes reading their shares."""
    shares = [chunks[i::procs] for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        results = pool.map(
            _raw_read, [(str(path), backend, s, size, choice, reading) for s in shares]
        )
    n = sum(r[0] for r in results)
    # the slowest process bounds the wall time of the parallel read
    return n / max(r[1] for r in results), 1000 * sum(r[2] for r in results) / n


def stage_run(
    path: Path,
    warmup: Path,
    out: Path,
    workers: int,
    cfg: TilingConfig,
    reading: ReadOptions,
    mpp: float | None = None,
) -> tuple[float, int, float, list[int], float]:
    """Tile the slide on a fresh LocalCluster.

    Returns (tiles/s, tiles, seconds, peak RSS of each worker, CPU ms per tile of the
    workers and the driver together: on a machine shared with other jobs this moves far
    less than the wall-clock rate).

    A small slide is tiled first, so one-off imports (scipy, scikit-image, zarr codecs) in
    the driver and the workers are not counted: in a batch they are paid once per process,
    just as the raw-read processes open the slide before their clock starts.
    """
    from pipelines.cluster import dask_client
    from wsi import store as st
    from wsi.tiling import peak_rss, tile_slide

    if out.exists():
        shutil.rmtree(out)
    with dask_client(workers=workers) as client:
        tile_slide(warmup, out / "warmup", cfg, client=client, progress=False, reading=reading)
        cpu0 = sum(client.run(time.process_time).values()) + time.process_time()
        t0 = time.perf_counter()
        store = tile_slide(path, out, cfg, mpp=mpp, client=client, progress=False, reading=reading)
        seconds = time.perf_counter() - t0
        cpu = sum(client.run(time.process_time).values()) + time.process_time() - cpu0
        peaks = list(client.run(peak_rss).values())
    n = st.stage_entry(st.open_store(store), st.TILES)["counts"]["tiles"]
    shutil.rmtree(out)
    return n / seconds, n, seconds, peaks, 1000 * cpu / n


def default_slide(out: Path, size: int) -> Path:
    """The realistic synthetic slide of side ``size`` in ``out``, made once."""
    from wsi.synthetic import make_synthetic_slide

    path = out / f"realistic_{size}_t{REAL_TILE}_mpp{REAL_MPP}.tiff"
    if not path.exists():
        t0 = time.perf_counter()
        make_synthetic_slide(
            path, width=size, height=size, mpp=REAL_MPP, seed=0, tile_size=REAL_TILE
        )
        print(f"made {path.name} ({size} x {size} px) in {time.perf_counter() - t0:.0f} s")
    return path


def raw_readers(slide_path: Path, level: int) -> list[str]:
    """OpenSlide, plus libvips where it gives OpenSlide's pixels at ``level``."""
    from wsi.slide import open_slide, tile_backend

    with open_slide(slide_path) as slide:
        return ["openslide"] + (["pyvips"] if tile_backend(slide, level) == "pyvips" else [])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slide", type=Path, help="slide to measure (default: realistic synthetic)")
    ap.add_argument("--size", type=int, default=40_000, help="side of the default slide, px")
    ap.add_argument("--mpp", type=float, help="level-0 mpp override for a --slide without one")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "bench_out")
    ap.add_argument("--codec", default="jpeg", choices=list(CODECS))
    ap.add_argument("--chroma-subsampling", default="444", choices=list(SUBSAMPLING))
    ap.add_argument(
        "--backend",
        default="openslide",
        choices=list(BACKENDS),
        help="tile stage reader (default openslide, the default reader)",
    )
    ap.add_argument("--threads", type=int, help="reader threads per task (default: auto)")
    ap.add_argument("--max-region-px", type=int, default=ReadOptions().max_region_px)
    ap.add_argument("--no-baseline", action="store_true", help="skip the tile-by-tile stage")
    args = ap.parse_args()

    from wsi.grid import make_grid
    from wsi.slide import open_slide
    from wsi.synthetic import make_synthetic_slide
    from wsi.tissue import detect_tissue

    args.out.mkdir(parents=True, exist_ok=True)
    slide_path = args.slide or default_slide(args.out, args.size)
    warmup = args.out / "warmup_4000.tiff"
    if not warmup.exists():
        make_synthetic_slide(warmup, width=4000, height=4000, mpp=0.25, seed=1)
    cfg = TilingConfig(
        codec=args.codec, chroma_subsampling=args.chroma_subsampling, backend=args.backend
    )
    with open_slide(slide_path, mpp=args.mpp) as slide:
        grid = make_grid(slide, detect_tissue(slide, cfg.tissue), cfg)
        w0, h0 = slide.dimensions
        props = getattr(slide, "properties", {})
        level_tiles = props.get(f"openslide.level[{grid.choice.level}].tile-width", "?")
    chunks = [grid.coords[i : i + cfg.chunk_tiles] for i in range(0, len(grid), cfg.chunk_tiles)]
    readers = raw_readers(slide_path, grid.choice.level)
    print(
        f"slide {slide_path.name}: {w0} x {h0} px, {len(grid)} tiles of {cfg.tile_size} px at "
        f"{cfg.target_mpp} mpp from level {grid.choice.level} (downsample "
        f"{grid.choice.level_downsample:g}, scale {grid.choice.scale:g}, source tiles "
        f"{level_tiles} px); stage reader {cfg.backend}, codec {cfg.codec} q{cfg.level}"
        + (f" {cfg.chroma_subsampling}" if cfg.codec == "jpeg" else "")
    )

    rows = []
    for w in args.workers:
        from wsi.tiling import reader_threads

        now = ReadOptions(threads=args.threads, max_region_px=args.max_region_px)
        # the threads each of w single-threaded workers gets, as the stage resolves them
        resolved = ReadOptions(
            threads=args.threads or reader_threads(w), max_region_px=now.max_region_px
        )
        raws = {
            b: raw_rate(slide_path, b, chunks, cfg.tile_size, grid.choice, resolved, w)
            for b in readers
        }
        best = max(raws, key=lambda b: raws[b][0])
        before = None
        if not args.no_baseline:
            old = ReadOptions(by_region=False, threads=1)
            before = stage_run(slide_path, warmup, args.out / f"stores_{w}", w, cfg, old, args.mpp)
        rate, n, seconds, peaks, cpu = stage_run(
            slide_path, warmup, args.out / f"stores_{w}", w, cfg, now, args.mpp
        )
        rows.append((w, {b: r[0] for b, r in raws.items()}, best, rate, peaks, before, cpu))
        print(
            f"{w} worker(s), {resolved.threads} reader thread(s) each: raw read "
            + ", ".join(f"{b} {r:.0f} tiles/s ({c:.2f} CPU ms/tile)" for b, (r, c) in raws.items())
            + f"; tile stage {rate:.0f} tiles/s ({n} tiles in {seconds:.1f} s, {cpu:.2f} CPU "
            "ms/tile)"
            + (
                ""
                if before is None
                else f", tile by tile {before[0]:.0f} tiles/s ({before[4]:.2f} CPU ms/tile)"
            )
            + "; peak RSS per worker "
            + ", ".join(f"{p / 2**20:.0f} MB" for p in peaks)
        )

    print()
    print(
        "| workers | raw read (fastest) | tile stage before (tile by tile) | tile stage now "
        "(by region) | now / raw | peak RSS per worker now (before) |"
    )
    print("|---|---|---|---|---|---|")
    for w, raws, best, rate, peaks, before, _ in rows:
        old_rate = "-" if before is None else f"{before[0]:.0f} tiles/s"
        old_rss = "" if before is None else f" ({max(before[3]) / 2**20:.0f} MB)"
        print(
            f"| {w} | {raws[best]:.0f} tiles/s ({best}) | {old_rate} | {rate:.0f} tiles/s | "
            f"{rate / raws[best]:.0%} | {max(peaks) / 2**20:.0f} MB{old_rss} |"
        )
    by_w = {r[0]: r for r in rows}
    print()
    print("targets: stage >= 50% of raw read; 2 workers >= 1.7x one; peak RSS per worker < 1 GB")
    if 1 in by_w and 2 in by_w:
        line = f"scaling: 2 workers = {by_w[2][3] / by_w[1][3]:.2f}x one worker"
        if by_w[1][5] is not None and by_w[2][5] is not None:
            line += f" (tile by tile before: {by_w[2][5][0] / by_w[1][5][0]:.2f}x)"
        print(line)
    print(f"peak RSS per worker: {max(max(r[4]) for r in rows) / 2**20:.0f} MB")
    w, raws, best, rate, _, before, _ = rows[-1]
    own = raws.get(cfg.backend)
    if own:
        print(f"against its own reader ({cfg.backend}, {own:.0f} tiles/s): {rate / own:.0%}")
    if before is not None:
        print(
            f"before (tile by tile): {before[0]:.0f} tiles/s = {before[0] / raws[best]:.0%} of raw"
        )
    print(
        f"tile stage: {rate:.0f} tiles/s = {rate / raws[best]:.0%} of raw read rate "
        f"({raws[best]:.0f} tiles/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
