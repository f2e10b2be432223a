"""Measure ``wsi tile`` against LazySlide's tile reading on the same slide, side by side.

On one slide (--slide PATH; default the realistic synthetic slide of tools/bench_tiling.py:
40,000 px square, 240 px JPEG tiles at 0.2527 mpp, made once in --out, --size for another
side) it runs, alternating, --repeats times each and keeps the best:

  wsi tile   ``wsi tile SLIDE --out DIR --workers W`` as a whole command (this checkout's
             venv): startup, cluster, tissue detection, reading, QC, encoding and writing
             the store; tiles/s = tiles in the store / wall seconds of the command;
  LazySlide  in ONE process of another Python that has lazyslide (--lazyslide-python):
             ``open_wsi(SLIDE, store=None)``, ``zs.pp.find_tissues(wsi)``,
             ``zs.pp.tile_tissues(wsi, 256, mpp=0.5)``, then every tile's pixels through
             ``wsi.ds.tile_images()`` (a TileImagesDataset, indexed one by one), writing
             nothing; timed: the reading loop alone, and open + tissue + tiling + reading.

Prints tiles/s of both, their tile counts and the ratio ``wsi tile (W workers) / LazySlide
(1 process)``.

    python tools/bench_lazyslide.py --lazyslide-python /tmp/lsenv/bin/python \
        [--slide PATH | --size 40000] [--workers 2] [--repeats 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_tiling import default_slide  # noqa: E402

#: run by the LazySlide Python: prints one JSON line with the counts and timings
LAZYSLIDE_SCRIPT = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
t0 = time.perf_counter()
import lazyslide as zs
from wsidata import open_wsi
t1 = time.perf_counter()
wsi = open_wsi(sys.argv[1], store=None)
zs.pp.find_tissues(wsi)
zs.pp.tile_tissues(wsi, 256, mpp=0.5)
ds = wsi.ds.tile_images()
t2 = time.perf_counter()
n = 0
for i in range(len(ds)):
    n += ds[i]["image"].shape[0] == 256
t3 = time.perf_counter()
print(json.dumps({
    "tiles": len(ds), "full": n, "import_s": t1 - t0, "prep_s": t2 - t1,
    "read_s": t3 - t2, "total_s": t3 - t1, "reader": type(wsi.reader).__name__,
    "version": zs.__version__,
}))
"""


def run_wsi_tile(slide: Path, out: Path, workers: int) -> tuple[int, float]:
    """(tiles, wall seconds) of ``wsi tile`` as a whole command into a fresh folder."""
    from wsi import store as st

    dest = Path(tempfile.mkdtemp(prefix="wsi_tile_", dir=out))
    try:
        cmd = [str(REPO / ".venv/bin/wsi"), "tile", str(slide), "--out", str(dest)]
        cmd += ["--workers", str(workers)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - t0
        (store,) = dest.glob("*.zarr")
        n = st.stage_entry(st.open_store(store), st.TILES)["counts"]["tiles"]
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return n, seconds


def run_lazyslide(python: str, slide: Path) -> dict:
    """LazySlide's counts and timings, in one fresh process of ``python``."""
    t0 = time.perf_counter()
    res = subprocess.run(
        [python, "-c", LAZYSLIDE_SCRIPT, str(slide)],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    if res.returncode:
        sys.exit(f"LazySlide run failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lazyslide-python", required=True, help="a Python with lazyslide")
    ap.add_argument("--slide", type=Path, help="slide to measure (default: realistic synthetic)")
    ap.add_argument("--size", type=int, default=40_000, help="side of the default slide, px")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out", help="slide and scratch")
    ap.add_argument("--workers", type=int, default=2, help="wsi tile --workers (default 2)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, best kept")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    slide = (args.slide or default_slide(args.out, args.size)).resolve()
    print(f"slide {slide}")
    ours: list[tuple[int, float]] = []
    theirs: list[dict] = []
    for r in range(args.repeats):
        ours.append(run_wsi_tile(slide, args.out, args.workers))
        n, s = ours[-1]
        print(f"run {r + 1} wsi tile ({args.workers} w): {n} tiles in {s:.1f} s = {n / s:.0f}/s")
        theirs.append(run_lazyslide(args.lazyslide_python, slide))
        t = theirs[-1]
        print(
            f"run {r + 1} LazySlide: {t['tiles']} tiles, read {t['read_s']:.1f} s = "
            f"{t['tiles'] / t['read_s']:.0f}/s; open+tissue+tiles {t['prep_s']:.1f} s; "
            f"imports {t['import_s']:.1f} s; process {t['process_s']:.1f} s"
        )

    n_ours, s_ours = min(ours, key=lambda x: x[1] / x[0])
    best = min(theirs, key=lambda t: t["read_s"] / t["tiles"])
    best_total = min(theirs, key=lambda t: t["total_s"] / t["tiles"])
    best_proc = min(theirs, key=lambda t: t["process_s"] / t["tiles"])
    rate_ours = n_ours / s_ours
    rate_read = best["tiles"] / best["read_s"]
    rate_total = best_total["tiles"] / best_total["total_s"]
    rate_proc = best_proc["tiles"] / best_proc["process_s"]
    n_ls = best["tiles"]
    print()
    print(
        f"LazySlide {best['version']} ({best['reader']}), 256 px at 0.5 mpp, best of {args.repeats}"
    )
    print(f"wsi tile, {args.workers} workers, whole command: {rate_ours:.0f} tiles/s ({n_ours})")
    print(f"LazySlide reading loop, 1 process: {rate_read:.0f} tiles/s ({n_ls})")
    print(f"LazySlide open+tissue+tiles+read: {rate_total:.0f} tiles/s")
    print(f"LazySlide whole process (+imports): {rate_proc:.0f} tiles/s")
    print(
        f"tile counts: wsi {n_ours}, LazySlide {n_ls} "
        f"({n_ls - n_ours:+d}, {n_ls / n_ours - 1:+.0%})"
    )
    print(
        f"ratio wsi tile ({args.workers} w) / LazySlide read (1 proc): {rate_ours / rate_read:.2f}x"
    )
    print(f"ratio vs LazySlide open+tissue+tiles+read: {rate_ours / rate_total:.2f}x")
    print("target: >= 3x LazySlide's reading loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
