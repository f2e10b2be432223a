"""Benchmark the tile stage against the raw read limit measured in the same run.

On a synthetic slide (40k x 40k px at 0.25 mpp by default; --size for bigger) it
measures, for 1 and 2 worker processes:
  raw read   the same tiles read by the fastest reader alone (no QC, no encode, no write),
             one process per worker, each reading its share;
  tile stage ``wsi.tile_slide`` on a LocalCluster with that many workers;
and the peak RSS of each worker process. Prints a table, the targets, and as its last
line ``tile stage: N tiles/s = P% of raw read rate (R tiles/s)`` for 2 workers.

    python tools/bench_tiling.py [--size 40000] [--workers 1 2] [--out bench_out]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from wsi.codecs import CODECS, SUBSAMPLING  # noqa: E402
from wsi.config import TilingConfig  # noqa: E402
from wsi.slide import BACKENDS  # noqa: E402


def _raw_read(
    args: tuple[str, str, np.ndarray, int, tuple[int, float, float]],
) -> tuple[int, float, int]:
    """Read the given tiles with one backend in this (spawned) process, nothing else."""
    from wsi.slide import open_slide
    from wsi.slide.base import LevelChoice
    from wsi.tiling import peak_rss

    path, backend, coords, size, (level, level_ds, scale) = args
    choice = LevelChoice(level, level_ds, scale)
    with open_slide(path, backend=backend) as slide:
        slide.read_scaled((int(coords[0][0]), int(coords[0][1])), (size, size), choice)  # warm
        t0 = time.perf_counter()
        for x, y in coords:
            slide.read_scaled((int(x), int(y)), (size, size), choice)
        seconds = time.perf_counter() - t0
    return len(coords), seconds, peak_rss()


def raw_rate(
    path: Path,
    backend: str,
    coords: np.ndarray,
    size: int,
    choice: tuple[int, float, float],
    procs: int,
) -> float:
    shares = np.array_split(coords, procs)
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs) as pool:
        results = pool.map(_raw_read, [(str(path), backend, s, size, choice) for s in shares])
    # the slowest process bounds the wall time of the parallel read
    return sum(n for n, _, _ in results) / max(sec for _, sec, _ in results)


def stage_run(
    path: Path, warmup: Path, out: Path, workers: int, cfg: TilingConfig
) -> tuple[float, int, float, list[int]]:
    """Tile the slide on a fresh LocalCluster; returns (tiles/s, tiles, seconds, worker peak RSS).

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
        tile_slide(warmup, out / "warmup", cfg, client=client, progress=False)
        t0 = time.perf_counter()
        store = tile_slide(path, out, cfg, client=client, progress=False)
        seconds = time.perf_counter() - t0
        peaks = list(client.run(peak_rss).values())
    n = st.stage_entry(st.open_store(store), st.TILES)["counts"]["tiles"]
    return n / seconds, n, seconds, peaks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=40_000, help="slide side, level-0 pixels")
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "bench_out")
    ap.add_argument("--codec", default="jpeg", choices=list(CODECS))
    ap.add_argument("--chroma-subsampling", default="444", choices=list(SUBSAMPLING))
    ap.add_argument(
        "--backend",
        default="pyvips",
        choices=list(BACKENDS),
        help="tile stage reader (default pyvips, the fast path)",
    )
    args = ap.parse_args()

    from wsi.grid import make_grid
    from wsi.slide import open_slide
    from wsi.synthetic import make_synthetic_slide
    from wsi.tissue import detect_tissue

    args.out.mkdir(parents=True, exist_ok=True)
    slide_path = args.out / f"synthetic_{args.size}.tiff"
    if not slide_path.exists():
        t0 = time.perf_counter()
        make_synthetic_slide(slide_path, width=args.size, height=args.size, mpp=args.mpp, seed=0)
        took = time.perf_counter() - t0
        print(f"made {slide_path.name} ({args.size} x {args.size} px) in {took:.0f} s")
    warmup = args.out / "warmup_4000.tiff"
    if not warmup.exists():
        make_synthetic_slide(warmup, width=4000, height=4000, mpp=args.mpp, seed=1)
    cfg = TilingConfig(
        codec=args.codec, chroma_subsampling=args.chroma_subsampling, backend=args.backend
    )
    with open_slide(slide_path) as slide:
        grid = make_grid(slide, detect_tissue(slide, cfg.tissue), cfg)
    choice = (grid.choice.level, grid.choice.level_downsample, grid.choice.scale)
    print(
        f"slide {args.size} x {args.size} px at {args.mpp} mpp: {len(grid)} tiles of "
        f"{cfg.tile_size} px at {cfg.target_mpp} mpp, read from level {grid.choice.level}; "
        f"stage reader {cfg.backend}, codec {cfg.codec} q{cfg.level}"
        + (f" {cfg.chroma_subsampling}" if cfg.codec == "jpeg" else "")
    )

    rows = []
    for w in args.workers:
        raws = {b: raw_rate(slide_path, b, grid.coords, cfg.tile_size, choice, w) for b in BACKENDS}
        best = max(raws, key=lambda b: raws[b])
        rate, n, seconds, peaks = stage_run(slide_path, warmup, args.out / f"stores_{w}", w, cfg)
        rows.append((w, raws, best, rate, n, seconds, peaks))
        print(
            f"{w} worker(s): raw read openslide {raws['openslide']:.0f} tiles/s, pyvips "
            f"{raws['pyvips']:.0f} tiles/s; tile stage {rate:.0f} tiles/s ({n} tiles in "
            f"{seconds:.1f} s), peak RSS per worker "
            + ", ".join(f"{p / 2**20:.0f} MB" for p in peaks)
        )

    print()
    print("| workers | raw read (fastest) | tile stage | stage / raw | peak RSS per worker |")
    print("|---|---|---|---|---|")
    for w, raws, best, rate, _, _, peaks in rows:
        print(
            f"| {w} | {raws[best]:.0f} tiles/s ({best}) | {rate:.0f} tiles/s | "
            f"{rate / raws[best]:.0%} | {max(peaks) / 2**20:.0f} MB |"
        )
    by_w = {r[0]: r for r in rows}
    print()
    print("targets: stage >= 50% of raw read; 2 workers >= 1.7x one; peak RSS per worker < 1 GB")
    if 1 in by_w and 2 in by_w:
        print(f"scaling: 2 workers = {by_w[2][3] / by_w[1][3]:.2f}x one worker")
    print(f"peak RSS per worker: {max(max(r[6]) for r in rows) / 2**20:.0f} MB")
    w, raws, best, rate, _, _, _ = rows[-1]
    own = raws[cfg.backend]
    print(f"against its own reader ({cfg.backend}, {own:.0f} tiles/s): {rate / own:.0%}")
    print(
        f"tile stage: {rate:.0f} tiles/s = {rate / raws[best]:.0%} of raw read rate "
        f"({raws[best]:.0f} tiles/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
