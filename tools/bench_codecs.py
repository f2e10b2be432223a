#!/usr/bin/env python
"""Benchmark compression codecs for 256x256 RGB uint8 H&E tiles (single core).

Builds a tile set from the real H&E images and the real slide in the shared
data folder (``../shared/data`` relative to the repository root by default),
then measures for each candidate codec:

* compression ratio (total raw bytes / total compressed bytes),
* encode and decode throughput in tiles/s (median over repeats, one thread,
  process pinned to one CPU where the OS allows it),
* for lossy codecs: mean PSNR (dB) and mean / worst per-tile max abs error;
  lossless codecs are verified to round-trip exactly.

Prints a markdown table sorted by category and a recommendation line.

Usage::

    .venv/bin/python tools/bench_codecs.py [--tiles-dir DIR] [--repeats 5]
"""

from __future__ import annotations

import os

# Single thread for every library that might spawn a pool.  Must be set
# before numpy / codecs are imported.
for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLOSC_NTHREADS",
    "NUMEXPR_NUM_THREADS",
):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import glob  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TILES_DIR = REPO_ROOT.parent / "shared" / "data"
TILE = 256

# H&E images only (skimage_ihc is IHC; torchstain_* excluded per brief;
# histolab negatives -- no-tissue, red pen, almost white -- are not tissue).
PNG_PATTERNS = (
    "tiles/histoqc_template*.png",
    "tiles/tiatoolbox_target_image.png",
    "tiles/histolab/*level0*.png",
    "tiles/histolab/tcga-lung-rgb.png",
    "tiles/histolab/tissue-level2*.png",
)
SLIDE_PATTERNS = ("slides/*.svs",)


# --------------------------------------------------------------------------
# tile set
# --------------------------------------------------------------------------


def mean_saturation(tile: np.ndarray) -> float:
    """Mean HSV saturation in [0, 1] of an RGB uint8 tile."""
    t = tile.astype(np.float32)
    mx = t.max(axis=-1)
    mn = t.min(axis=-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0)
    return float(sat.mean())


def cut_tiles(img: np.ndarray, stride: int):
    h, w = img.shape[:2]
    for y in range(0, h - TILE + 1, stride):
        for x in range(0, w - TILE + 1, stride):
            yield np.ascontiguousarray(img[y : y + TILE, x : x + TILE, :3])


def load_tiles(
    data_dir: Path, stride: int, min_sat: float, max_tiles: int | None
) -> tuple[list[np.ndarray], list[str], dict[str, int]]:
    """Return (tiles, group label per tile: 'png' or 'slide', count per file)."""
    from PIL import Image

    tiles: list[np.ndarray] = []
    groups: list[str] = []
    counts: dict[str, int] = {}

    pngs: list[str] = []
    for pat in PNG_PATTERNS:
        pngs.extend(sorted(glob.glob(str(data_dir / pat))))
    for path in dict.fromkeys(pngs):  # dedupe, keep order
        img = np.asarray(Image.open(path).convert("RGB"))
        n = 0
        for t in cut_tiles(img, stride):
            if mean_saturation(t) >= min_sat:
                tiles.append(t)
                groups.append("png")
                n += 1
        counts[os.path.relpath(path, data_dir)] = n

    slides: list[str] = []
    for pat in SLIDE_PATTERNS:
        slides.extend(sorted(glob.glob(str(data_dir / pat))))
    if slides:
        try:
            import openslide
        except ImportError:  # pragma: no cover
            print("warning: openslide not importable, skipping slides", file=sys.stderr)
            slides = []
    for path in slides:
        slide = openslide.OpenSlide(path)
        w, h = slide.dimensions
        n = 0
        for y in range(0, h - TILE + 1, stride):
            for x in range(0, w - TILE + 1, stride):
                region = slide.read_region((x, y), 0, (TILE, TILE)).convert("RGB")
                t = np.ascontiguousarray(np.asarray(region))
                if mean_saturation(t) >= min_sat:
                    tiles.append(t)
                    groups.append("slide")
                    n += 1
        slide.close()
        counts[os.path.relpath(path, data_dir)] = n

    if max_tiles is not None and len(tiles) > max_tiles:
        idx = np.linspace(0, len(tiles) - 1, max_tiles).round().astype(int)
        tiles = [tiles[i] for i in idx]
        groups = [groups[i] for i in idx]
    return tiles, groups, counts


# --------------------------------------------------------------------------
# candidates
# --------------------------------------------------------------------------


@dataclass
class Candidate:
    category: str  # "lossless" or "lossy"
    name: str
    call: str  # human-readable encode call
    available: Callable[[], bool]
    make: Callable[[], tuple[Callable, Callable]]  # -> (encode, decode)
    note: str = ""


@dataclass
class Result:
    cand: Candidate
    status: str = "ok"
    ratio: float = float("nan")
    kib_per_tile: float = float("nan")
    enc_tps: float = float("nan")
    dec_tps: float = float("nan")
    psnr: float = float("nan")
    maxerr_mean: float = float("nan")
    maxerr_worst: int = 0
    exact: bool | None = None
    repeats: int = 0
    enc_runs: list[float] = field(default_factory=list)
    dec_runs: list[float] = field(default_factory=list)
    by_group: dict[str, tuple[float, float]] = field(default_factory=dict)  # group -> (ratio, psnr)
    timed_tiles: int = 0


def _ic_available(name: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            import imagecodecs

            return bool(getattr(imagecodecs, name).available)
        except Exception:
            return False

    return check


def _always() -> bool:
    return True


def _shape_decoder(raw_decode: Callable[[bytes], bytes]) -> Callable:
    shape = (TILE, TILE, 3)

    def dec(b):
        return np.frombuffer(raw_decode(b), dtype=np.uint8).reshape(shape)

    return dec


def build_candidates() -> list[Candidate]:
    cands: list[Candidate] = []

    def ic():
        import imagecodecs

        return imagecodecs

    # ---------------- lossless ----------------
    for lvl in (1, 3):

        def make_zstd(lvl=lvl):
            m = ic()
            return (
                lambda t: m.zstd_encode(t, level=lvl),
                _shape_decoder(m.zstd_decode),
            )

        cands.append(
            Candidate(
                "lossless",
                f"zstd-{lvl}",
                f"imagecodecs.zstd_encode(tile, level={lvl})",
                _ic_available("ZSTD"),
                make_zstd,
            )
        )

    def make_nc_zstd():
        import numcodecs

        codec = numcodecs.Zstd(level=1)
        return codec.encode, _shape_decoder(codec.decode)

    cands.append(
        Candidate(
            "lossless",
            "numcodecs Zstd-1",
            "numcodecs.Zstd(level=1)  # what zarr.codecs.ZstdCodec(level=1) runs",
            lambda: hasattr(__import__("numcodecs"), "Zstd"),
            make_nc_zstd,
        )
    )

    def make_blosc():
        import numcodecs
        from numcodecs import blosc

        blosc.use_threads = False
        blosc.set_nthreads(1)
        codec = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
        return codec.encode, _shape_decoder(codec.decode)

    def blosc_ok():
        try:
            import numcodecs

            return hasattr(numcodecs, "Blosc")
        except Exception:
            return False

    cands.append(
        Candidate(
            "lossless",
            "blosc-zstd-3 shuffle",
            "numcodecs.Blosc(cname='zstd', clevel=3, shuffle=Blosc.SHUFFLE)",
            blosc_ok,
            make_blosc,
        )
    )

    def make_png():
        m = ic()
        return (lambda t: m.png_encode(t, level=1)), m.png_decode

    cands.append(
        Candidate(
            "lossless",
            "PNG l1",
            "imagecodecs.png_encode(tile, level=1)",
            _ic_available("PNG"),
            make_png,
        )
    )

    def make_png_fast():
        m = ic()
        return (lambda t: m.png_encode(t, level=1, strategy=3, filter=16)), m.png_decode

    cands.append(
        Candidate(
            "lossless",
            "PNG l1 RLE+SUB",
            "imagecodecs.png_encode(tile, level=1, strategy=3, filter=16)",
            _ic_available("PNG"),
            make_png_fast,
        )
    )

    for method in (0, 4):

        def make_webp_ll(method=method):
            m = ic()
            return (
                lambda t: m.webp_encode(t, lossless=True, method=method, numthreads=1),
                m.webp_decode,
            )

        cands.append(
            Candidate(
                "lossless",
                f"WebP lossless m{method}",
                f"imagecodecs.webp_encode(tile, lossless=True, method={method}, numthreads=1)",
                _ic_available("WEBP"),
                make_webp_ll,
            )
        )

    for effort in (1, 2):

        def make_jxl_ll(effort=effort):
            m = ic()
            return (
                lambda t: m.jpegxl_encode(t, lossless=True, effort=effort, numthreads=1),
                lambda b: m.jpegxl_decode(b, numthreads=1),
            )

        cands.append(
            Candidate(
                "lossless",
                f"JPEG XL lossless e{effort}",
                f"imagecodecs.jpegxl_encode(tile, lossless=True, effort={effort}, numthreads=1)",
                _ic_available("JPEGXL"),
                make_jxl_ll,
            )
        )

    def make_jls():
        m = ic()
        return m.jpegls_encode, m.jpegls_decode

    cands.append(
        Candidate(
            "lossless",
            "JPEG-LS",
            "imagecodecs.jpegls_encode(tile)",
            _ic_available("JPEGLS"),
            make_jls,
        )
    )

    def make_lerc():
        m = ic()
        return (lambda t: m.lerc_encode(t, level=0.0)), m.lerc_decode

    cands.append(
        Candidate(
            "lossless",
            "LERC (maxZErr 0)",
            "imagecodecs.lerc_encode(tile, level=0.0)",
            _ic_available("LERC"),
            make_lerc,
        )
    )

    def make_lzw():
        m = ic()
        return (lambda t: m.lzw_encode(t.tobytes())), _shape_decoder(m.lzw_decode)

    cands.append(
        Candidate(
            "lossless",
            "LZW",
            "imagecodecs.lzw_encode(tile.tobytes())",
            _ic_available("LZW"),
            make_lzw,
        )
    )

    def make_qoi():
        m = ic()
        return m.qoi_encode, m.qoi_decode

    cands.append(
        Candidate("lossless", "QOI", "imagecodecs.qoi_encode(tile)", _ic_available("QOI"), make_qoi)
    )

    # ---------------- lossy ----------------
    def pil_jpeg(q: int, subsampling: int | None):
        def make():
            from PIL import Image

            kw = {"quality": q}
            if subsampling is not None:
                kw["subsampling"] = subsampling

            def enc(t):
                buf = io.BytesIO()
                Image.fromarray(t).save(buf, format="JPEG", **kw)
                return buf.getvalue()

            def dec(b):
                return np.asarray(Image.open(io.BytesIO(b)))

            return enc, dec

        return make

    for q in (80, 90, 95):
        cands.append(
            Candidate(
                "lossy",
                f"Pillow JPEG q{q} 4:2:0",
                f"Image.fromarray(tile).save(buf, 'JPEG', quality={q})",
                _always,
                pil_jpeg(q, None),
                note="Pillow default subsampling (4:2:0)",
            )
        )
    cands.append(
        Candidate(
            "lossy",
            "Pillow JPEG q90 4:4:4",
            "Image.fromarray(tile).save(buf, 'JPEG', quality=90, subsampling=0)",
            _always,
            pil_jpeg(90, 0),
        )
    )

    def ic_jpeg(q: int, subsampling: str | None):
        def make():
            m = ic()
            kw = {} if subsampling is None else {"subsampling": subsampling}
            return (lambda t: m.jpeg8_encode(t, level=q, **kw)), m.jpeg8_decode

        return make

    for q in (80, 90, 95):
        cands.append(
            Candidate(
                "lossy",
                f"imagecodecs JPEG q{q} 4:2:0",
                f"imagecodecs.jpeg8_encode(tile, level={q})",
                _ic_available("JPEG8"),
                ic_jpeg(q, None),
                note="libjpeg-turbo default subsampling (4:2:0)",
            )
        )
    for q in (80, 85, 90, 95):
        cands.append(
            Candidate(
                "lossy",
                f"imagecodecs JPEG q{q} 4:4:4",
                f"imagecodecs.jpeg8_encode(tile, level={q}, subsampling='444')",
                _ic_available("JPEG8"),
                ic_jpeg(q, "444"),
            )
        )

    def make_ic_jpeg_opt():
        m = ic()
        return (
            lambda t: m.jpeg8_encode(t, level=90, subsampling="444", optimize=True)
        ), m.jpeg8_decode

    cands.append(
        Candidate(
            "lossy",
            "imagecodecs JPEG q90 4:4:4 optimize",
            "imagecodecs.jpeg8_encode(tile, level=90, subsampling='444', optimize=True)",
            _ic_available("JPEG8"),
            make_ic_jpeg_opt,
            note="optimized Huffman tables",
        )
    )

    def make_webp90():
        m = ic()
        return (
            lambda t: m.webp_encode(t, level=90, lossless=False, numthreads=1),
            m.webp_decode,
        )

    cands.append(
        Candidate(
            "lossy",
            "WebP q90",
            "imagecodecs.webp_encode(tile, level=90, lossless=False, numthreads=1)",
            _ic_available("WEBP"),
            make_webp90,
            note="default method (4)",
        )
    )

    for effort in (1, 2, 3):

        def make_jxl(effort=effort):
            m = ic()
            return (
                lambda t: m.jpegxl_encode(t, distance=1.0, effort=effort, numthreads=1),
                lambda b: m.jpegxl_decode(b, numthreads=1),
            )

        cands.append(
            Candidate(
                "lossy",
                f"JPEG XL d1.0 e{effort}",
                f"imagecodecs.jpegxl_encode(tile, distance=1.0, effort={effort}, numthreads=1)",
                _ic_available("JPEGXL"),
                make_jxl,
                note="distance 1.0 == level=90 in imagecodecs",
            )
        )

    for speed in (8, 10):

        def make_avif(speed=speed):
            m = ic()
            return (
                lambda t: m.avif_encode(t, level=80, speed=speed, numthreads=1),
                lambda b: m.avif_decode(b, numthreads=1),
            )

        cands.append(
            Candidate(
                "lossy",
                f"AVIF q80 speed{speed}",
                f"imagecodecs.avif_encode(tile, level=80, speed={speed}, numthreads=1)",
                _ic_available("AVIF"),
                make_avif,
            )
        )
    return cands


# --------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------


def _time_pass(fn: Callable, items: list) -> tuple[float, list]:
    out = [None] * len(items)
    t0 = time.perf_counter()
    for i, it in enumerate(items):
        out[i] = fn(it)
    return time.perf_counter() - t0, out


@dataclass
class _Timing:
    enc: Callable
    dec: Callable
    sub_tiles: list  # evenly spaced subset used for the timed passes
    sub_encoded: list


def prepare(
    cand: Candidate, tiles: list[np.ndarray], groups: list[str], pass_s: float
) -> tuple[Result, _Timing | None]:
    """Warm-up pass over all tiles: quality metrics + choice of timing subset."""
    res = Result(cand)
    if not cand.available():
        res.status = "unavailable"
        return res, None
    try:
        enc, dec = cand.make()
        t_enc0, encoded = _time_pass(enc, tiles)
        encoded = [bytes(b) if not isinstance(b, bytes) else b for b in encoded]
        t_dec0, decoded = _time_pass(dec, encoded)
    except Exception as exc:  # codec present but failing on this input
        res.status = f"error: {type(exc).__name__}: {exc}"[:120]
        return res, None

    n = len(tiles)
    # Slow codecs are timed on an evenly spaced subset so that one timed
    # pass costs about pass_s seconds (never fewer than 16 tiles).
    per_tile = (t_enc0 + t_dec0) / n
    m = n if per_tile * n <= pass_s else max(16, int(pass_s / per_tile))
    idx = np.linspace(0, n - 1, m).round().astype(int)
    timing = _Timing(enc, dec, [tiles[i] for i in idx], [encoded[i] for i in idx])
    res.repeats = 0
    res.timed_tiles = m
    _quality(res, tiles, groups, encoded, decoded)
    return res, timing


def _quality(res: Result, tiles, groups, encoded, decoded) -> None:
    cand = res.cand
    n = len(tiles)
    raw = sum(t.nbytes for t in tiles)
    comp = sum(len(b) for b in encoded)
    res.ratio = raw / comp
    res.kib_per_tile = comp / n / 1024

    psnrs, maxerrs = [], []
    exact = True
    for t, d in zip(tiles, decoded, strict=True):
        d = np.asarray(d).reshape(t.shape)
        diff = np.abs(d.astype(np.int16) - t.astype(np.int16))
        me = int(diff.max())
        maxerrs.append(me)
        if me:
            exact = False
            mse = float(np.mean(diff.astype(np.float64) ** 2))
            psnrs.append(10.0 * np.log10(255.0**2 / mse))
        else:
            psnrs.append(float("inf"))
    res.exact = exact
    res.maxerr_mean = float(np.mean(maxerrs))
    res.maxerr_worst = int(max(maxerrs))
    finite = [p for p in psnrs if np.isfinite(p)]
    res.psnr = (
        float(np.mean(finite))
        if len(finite) == len(psnrs)
        else (float("inf") if not finite else float("nan"))
    )
    for g in sorted(set(groups)):
        sel = [i for i, gi in enumerate(groups) if gi == g]
        g_ratio = sum(tiles[i].nbytes for i in sel) / sum(len(encoded[i]) for i in sel)
        g_ps = [psnrs[i] for i in sel]
        g_psnr = float(np.mean(g_ps)) if all(np.isfinite(g_ps)) else float("inf")
        res.by_group[g] = (g_ratio, g_psnr)
    if cand.category == "lossless" and not exact:
        res.status = "NOT LOSSLESS"


def run_timing(pairs: list[tuple[Result, _Timing]], rounds: int) -> None:
    """Round-robin timing: every round times each codec once (encode then
    decode), so background load on a shared machine hits all codecs alike.
    Throughput = timed tiles / median pass time."""
    for _ in range(rounds):
        for res, tm in pairs:
            t, _ = _time_pass(tm.enc, tm.sub_tiles)
            res.enc_runs.append(t)
            t, _ = _time_pass(tm.dec, tm.sub_encoded)
            res.dec_runs.append(t)
            res.repeats += 1
    for res, tm in pairs:
        k = len(tm.sub_tiles)
        res.enc_tps = k / statistics.median(res.enc_runs)
        res.dec_tps = k / statistics.median(res.dec_runs)


def fmt(x: float, nd: int = 0) -> str:
    if x != x:  # nan
        return "-"
    if x == float("inf"):
        return "inf"
    return f"{x:,.{nd}f}"


def render_table(results: list[Result]) -> str:
    hdr = (
        "| category | codec | call | ratio | KiB/tile | encode tiles/s | decode tiles/s "
        "| PSNR dB | max abs err (mean / worst) | status |"
    )
    sep = "|" + "---|" * 10
    lines = [hdr, sep]
    order = {"lossless": 0, "lossy": 1}
    for r in sorted(results, key=lambda r: order[r.cand.category]):
        c = r.cand
        if r.status == "unavailable" or r.status.startswith("error"):
            lines.append(
                f"| {c.category} | {c.name} | `{c.call}` | - | - | - | - | - | - | {r.status} |"
            )
            continue
        if c.category == "lossless":
            psnr, err = (
                ("inf", "0 / 0")
                if r.exact
                else (fmt(r.psnr, 1), f"{r.maxerr_mean:.1f} / {r.maxerr_worst}")
            )
        else:
            psnr, err = fmt(r.psnr, 1), f"{r.maxerr_mean:.1f} / {r.maxerr_worst}"
        status = r.status if r.status != "ok" else ("ok" if c.category == "lossy" else "exact")
        lines.append(
            f"| {c.category} | {c.name} | `{c.call}` | {r.ratio:.2f} | {r.kib_per_tile:.1f} "
            f"| {fmt(r.enc_tps)} | {fmt(r.dec_tps)} | {psnr} | {err} | {status} |"
        )
    return "\n".join(lines)


def render_groups(results: list[Result], groups: list[str]) -> str:
    names = sorted(set(groups))
    n = {g: groups.count(g) for g in names}
    hdr = "| codec | " + " | ".join(f"{g} ({n[g]} tiles) ratio / PSNR" for g in names) + " |"
    lines = ["Per source group:", "", hdr, "|" + "---|" * (len(names) + 1)]
    for r in results:
        if r.status != "ok" and r.status != "NOT LOSSLESS":
            continue
        cells = []
        for g in names:
            ratio, psnr = r.by_group.get(g, (float("nan"), float("nan")))
            cells.append(f"{ratio:.2f} / {fmt(psnr, 1)}")
        lines.append(f"| {r.cand.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recommend(results: list[Result], min_enc: float) -> str:
    ok = [r for r in results if r.status == "ok"]
    lossy = [
        r for r in ok if r.cand.category == "lossy" and r.enc_tps >= min_enc and r.psnr >= 38.0
    ]
    lossless = [r for r in ok if r.cand.category == "lossless" and r.enc_tps >= min_enc]
    parts = []
    if lossy:
        # best ratio among codecs fast enough to keep up with slide reading,
        # ties (within 5 %) broken by decode speed
        best_ratio = max(r.ratio for r in lossy)
        near = [r for r in lossy if r.ratio >= 0.95 * best_ratio]
        best = max(near, key=lambda r: r.dec_tps)
        parts.append(
            f"lossy default: {best.cand.name} (`{best.cand.call}`; ratio {best.ratio:.1f}, "
            f"PSNR {best.psnr:.1f} dB, enc {best.enc_tps:,.0f}/s, dec {best.dec_tps:,.0f}/s)"
        )
    if lossless:
        best_ratio = max(r.ratio for r in lossless)
        near = [r for r in lossless if r.ratio >= 0.9 * best_ratio]
        best = max(near, key=lambda r: r.dec_tps)
        parts.append(
            f"lossless option: {best.cand.name} (`{best.cand.call}`; ratio {best.ratio:.2f}, "
            f"enc {best.enc_tps:,.0f}/s, dec {best.dec_tps:,.0f}/s)"
        )
    if not parts:
        return f"RECOMMENDATION: no candidate reaches {min_enc:,.0f} encoded tiles/s on one core"
    return f"RECOMMENDATION (>= {min_enc:,.0f} enc tiles/s/core, PSNR >= 38 dB): " + "; ".join(
        parts
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tiles-dir",
        type=Path,
        default=DEFAULT_TILES_DIR,
        help="shared data folder holding tiles/ and slides/ (default: %(default)s)",
    )
    ap.add_argument(
        "--stride", type=int, default=128, help="tile cutting stride in px (default 128)"
    )
    ap.add_argument(
        "--min-saturation", type=float, default=0.05, help="keep tiles with mean HSV S >= this"
    )
    ap.add_argument(
        "--max-tiles", type=int, default=None, help="subsample the tile set to this many"
    )
    ap.add_argument(
        "--repeats", type=int, default=7, help="round-robin timing rounds (median reported)"
    )
    ap.add_argument(
        "--pass-seconds",
        type=float,
        default=0.5,
        help="slow codecs are timed on a tile subset sized to about this many seconds per pass",
    )
    ap.add_argument(
        "--cpu", type=int, default=None, help="pin to this CPU (default: first allowed CPU)"
    )
    ap.add_argument(
        "--only", default=None, help="comma-separated substrings; bench only matching codecs"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument(
        "--min-encode", type=float, default=2000.0, help="encode tiles/s a default must reach"
    )
    args = ap.parse_args(argv)

    data_dir = args.tiles_dir.expanduser().resolve()
    if not data_dir.is_dir():
        ap.exit(
            2,
            f"error: tiles folder not found: {data_dir}\n"
            "Pass --tiles-dir pointing at the shared data folder (with tiles/ and slides/).\n",
        )

    if hasattr(os, "sched_setaffinity"):
        try:
            allowed = sorted(os.sched_getaffinity(0))
            cpu = args.cpu if args.cpu is not None else allowed[0]
            os.sched_setaffinity(0, {cpu})
        except OSError as exc:
            print(f"warning: could not pin CPU: {exc}", file=sys.stderr)

    tiles, groups, counts = load_tiles(data_dir, args.stride, args.min_saturation, args.max_tiles)
    if not tiles:
        ap.exit(2, f"error: no H&E tiles found under {data_dir}\n")

    import imagecodecs
    import numcodecs
    import PIL

    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"# Codec benchmark: {len(tiles)} tiles of {TILE}x{TILE}x3 uint8, single thread")
    print(
        f"python {platform.python_version()}, imagecodecs {imagecodecs.__version__}, "
        f"numcodecs {numcodecs.__version__}, Pillow {PIL.__version__}, "
        f"CPU affinity {affinity}, "
        f"os.cpu_count {os.cpu_count()}"
    )
    print(f"tile sources (stride {args.stride}, min mean saturation {args.min_saturation:.2f}):")
    for k, v in counts.items():
        print(f"  {k}: {v}")
    print(
        f"{args.repeats} round-robin timing rounds (encode+decode of every codec per round), "
        "throughput = tiles / median pass time\n"
    )

    cands = build_candidates()
    if args.only:
        keys = [k.strip().lower() for k in args.only.split(",") if k.strip()]
        cands = [c for c in cands if any(k in c.name.lower() for k in keys)]
    results = []
    pairs = []
    for c in cands:
        r, tm = prepare(c, tiles, groups, args.pass_seconds)
        results.append(r)
        if tm is not None:
            pairs.append((r, tm))
        print(f"  prepared {c.name:28s} {r.status}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    run_timing(pairs, args.repeats)
    print(f"  timing rounds done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    slow = [f"{r.cand.name} ({r.timed_tiles})" for r, _ in pairs if r.timed_tiles < len(tiles)]
    if slow:
        print("timed on an evenly spaced subset (tiles): " + ", ".join(slow) + "\n")
    print(render_table(results))
    print()
    print(render_groups(results, groups))
    print()
    print(recommend(results, args.min_encode))
    if args.json is not None:
        import json

        rows = []
        for r in results:
            rows.append(
                {
                    "category": r.cand.category,
                    "name": r.cand.name,
                    "call": r.cand.call,
                    "status": r.status,
                    "ratio": r.ratio,
                    "kib_per_tile": r.kib_per_tile,
                    "enc_tps": r.enc_tps,
                    "dec_tps": r.dec_tps,
                    "psnr": r.psnr,
                    "maxerr_mean": r.maxerr_mean,
                    "maxerr_worst": r.maxerr_worst,
                    "exact": r.exact,
                    "timed_tiles": r.timed_tiles,
                    "rounds": r.repeats,
                    "by_group": r.by_group,
                }
            )
        meta = {
            "n_tiles": len(tiles),
            "sources": counts,
            "stride": args.stride,
            "min_saturation": args.min_saturation,
            "rounds": args.repeats,
        }
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
