"""Benchmark heatmaps of a large slide: time and peak memory, against a dense baseline.

Makes a synthetic slide (default 100,000 x 100,000 px at 0.25 mpp), lays 256-px tiles at
0.5 mpp (512 level-0 px) over its tissue mask, and gives them smooth random scores (the
heatmap stage's cost does not depend on where scores come from). Then, each in a fresh
process so peak memory (VmHWM) is its own:

- ours: the tile grid, a 2048-px render, top regions, the QuPath GeoJSON, the pyramidal
  TIFF at downsample 16 and the PNG overlay (which reads the slide's thumbnail);
- baseline: what CLAM-style code does at a visualisation level: a dense float32 array at
  downsample 16 (one value per output pixel), filled tile by tile with the same scores
  and overlap counts, then coloured.

    python tools/bench_heatmap.py
    python tools/bench_heatmap.py --size 40000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _peak_mb() -> float:
    from wsi.tiling import peak_rss

    return peak_rss() / 2**20


def _scores(slide: Path) -> Any:
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    from wsi.heatmap import TileScores
    from wsi.slide import open_slide

    with open_slide(slide) as s:
        w0, h0 = s.dimensions
    mask = np.asarray(Image.open(slide.with_name(f"{slide.stem}_mask.png"))) > 0
    foot = 512
    nx, ny = w0 // foot, h0 // foot
    my = np.minimum(
        ((np.arange(ny) + 0.5) * foot * mask.shape[0] / h0).astype(int), mask.shape[0] - 1
    )
    mx = np.minimum(
        ((np.arange(nx) + 0.5) * foot * mask.shape[1] / w0).astype(int), mask.shape[1] - 1
    )
    keep = mask[np.ix_(my, mx)]
    iy, ix = np.nonzero(keep)
    field = gaussian_filter(np.random.default_rng(0).random((ny, nx)), 6)
    coords = np.stack([ix * foot, iy * foot], axis=1)
    return TileScores(coords, float(foot), field[iy, ix].astype(np.float32), (w0, h0), "bench")


def _ours(slide: str, out: str, queue: Any) -> None:
    from wsi.heatmap import HeatmapOptions, heat_grid, top_regions
    from wsi.heatmap.exports import overlay_png, pyramid_tiff, qupath_geojson

    ts = _scores(Path(slide))
    base = _peak_mb()
    opts = HeatmapOptions(normalise="raw")
    times = {}
    t0 = time.perf_counter()
    grid = heat_grid(ts)
    heat = grid.render(max(ts.slide_size_l0) / 2048)
    regions = top_regions(grid)
    times["grid + render 2048 px + regions"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    qupath_geojson(ts, regions, Path(out) / "bench.geojson")
    times["geojson"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pyramid_tiff(grid, opts, 0.25, Path(out) / "bench_heatmap.tiff")
    times["pyramidal tiff (ds 16)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    overlay_png(slide, grid, opts, Path(out) / "bench.png", "bench")
    times["png overlay (incl. thumbnail read)"] = time.perf_counter() - t0
    queue.put(
        {
            "tiles": len(ts.scores),
            "grid": grid.values.shape,
            "render": heat.shape,
            "times": times,
            "peak_mb": _peak_mb(),
            "before_mb": base,
        }
    )


def _baseline(slide: str, out: str, queue: Any) -> None:
    from wsi.heatmap import colorize

    ts = _scores(Path(slide))
    base = _peak_mb()
    d = 16.0
    t0 = time.perf_counter()
    w0, h0 = ts.slide_size_l0
    h, w = int(np.ceil(h0 / d)), int(np.ceil(w0 / d))
    total = np.zeros((h, w), dtype=np.float32)
    count = np.zeros((h, w), dtype=np.uint16)
    f = int(round(ts.footprint_l0 / d))
    for (x, y), s in zip((ts.coords_l0 / d).astype(int), ts.scores, strict=True):
        total[y : y + f, x : x + f] += s
        count[y : y + f, x : x + f] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        heat = np.where(count > 0, total / count, np.nan)
    colorize(heat)
    seconds = time.perf_counter() - t0
    queue.put({"shape": (h, w), "seconds": seconds, "peak_mb": _peak_mb(), "before_mb": base})


def _run(target: Any, slide: Path, out: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(str(slide), str(out), queue))
    proc.start()
    result = queue.get()
    proc.join()
    return dict(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--out", default="bench_out/heatmap")
    args = parser.parse_args(argv)
    from wsi.synthetic import make_synthetic_slide

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slide = out / f"bench_{args.size}.tiff"
    if not slide.exists():
        t0 = time.perf_counter()
        make_synthetic_slide(slide, width=args.size, height=args.size, mpp=0.25, seed=11)
        print(f"made {slide} in {time.perf_counter() - t0:.0f} s")
    ours = _run(_ours, slide, out)
    base = _run(_baseline, slide, out)
    print(
        f"slide {args.size} x {args.size} px, {ours['tiles']} tiles of 512 level-0 px; "
        f"grid {ours['grid']}"
    )
    for name, sec in ours["times"].items():
        print(f"  {name}: {sec:.2f} s")
    total = sum(ours["times"].values())
    full_gb = args.size * args.size * 4 / 2**30
    print(
        f"baseline (dense float32 heat array at downsample 16, {base['shape']}): "
        f"{base['seconds']:.2f} s, peak {base['peak_mb']:.0f} MB (process before: "
        f"{base['before_mb']:.0f} MB); at full resolution it would be {full_gb:.0f} GiB "
        "(arithmetic, not allocated)"
    )
    print(
        f"heatmap: all exports {total:.1f} s, peak {ours['peak_mb']:.0f} MB (process before: "
        f"{ours['before_mb']:.0f} MB); grid + render alone "
        f"{ours['times']['grid + render 2048 px + regions']:.2f} s vs baseline "
        f"{base['seconds']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
