"""Streaming generator of synthetic H&E-like whole-slide images.

The slide is written as a pyramidal, tiled, JPEG-compressed BigTIFF that
OpenSlide opens with the ``generic-tiff`` vendor driver.  Nothing at full
resolution is ever held in memory: the image is a lazy libvips pipeline built
from a handful of small in-memory pieces

* a low-resolution tissue mask (one mask pixel covers ``mask_downsample`` x
  ``mask_downsample`` level-0 pixels), made in numpy and upscaled lazily;
* a few "super-tiles" of H&E texture (a seeded random mosaic of crops of real
  H&E images, or of a procedural H&E-like texture when no images are
  available), repeated lazily across the slide, and picked per mosaic cell by
  a small selector map so that the texture does not repeat with a short
  period;
* a small tile of near-white background noise, repeated lazily.

libvips renders the pipeline strip by strip while ``tiffsave`` writes the
pyramid, so peak memory is bounded by a few strips of the slide's width.

Units used throughout: sizes and coordinates are in level-0 pixels;
``mpp`` is micrometres per level-0 pixel.

``pyvips`` and ``numpy`` are imported lazily so that importing this module is
cheap.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pyvips

__all__ = [
    "MAX_SIDE",
    "SyntheticSlide",
    "default_tile_source_dir",
    "make_synthetic_slide",
]

logger = logging.getLogger(__name__)

#: Largest accepted slide side, in level-0 pixels.
MAX_SIDE = 200_000

#: Largest accepted tissue mask, in mask pixels (keeps the numpy part small).
MAX_MASK_PIXELS = 64_000_000

#: Side of one mosaic cell of the texture, in level-0 pixels.
_CELL = 384
#: Number of cells along each side of one texture super-tile.
_GRID = 8
#: Side of the repeated background-noise tile, in level-0 pixels.
_BG_TILE = 512
#: Mean RGB of the glass background.
_BG_RGB = (240.0, 238.0, 240.0)
#: Standard deviation of the per-pixel background noise, in 8-bit grey levels.
_BG_NOISE_SIGMA = 1.5
#: Longest side of the coarse grid on which the tissue layout is designed.
_LAYOUT_GRID = 512
#: Side of the procedural fallback texture, in pixels.
_PROCEDURAL_SIDE = 1024

#: Source images used from the default tile folder (glob patterns, relative).
_HE_PATTERNS = (
    "histoqc_template*.png",
    "tiatoolbox_target_image.png",
    "histolab/*level0*.png",
    "histolab/tcga-lung-rgb.png",
)
#: Name fragments of images that are never used as texture sources.
_EXCLUDED_NAME_PARTS = ("skimage_ihc", "no-tissue", "almost-white")
#: Image suffixes accepted when a folder matches none of ``_HE_PATTERNS``.
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: Sources whose mean HSV saturation is below this are mostly glass: skipped.
_MIN_SOURCE_SATURATION = 0.10


@dataclass(frozen=True)
class SyntheticSlide:
    """Description of a generated synthetic slide.

    Attributes:
        path: The pyramidal TIFF file.
        mask_path: The tissue mask PNG (uint8, 0 = background, 255 = tissue);
            one mask pixel covers ``mask_downsample`` x ``mask_downsample``
            level-0 pixels, its size is ``ceil(width / mask_downsample)`` x
            ``ceil(height / mask_downsample)``.
        width: Slide width in level-0 pixels.
        height: Slide height in level-0 pixels.
        mpp: Micrometres per level-0 pixel (both axes).
        mask_downsample: Level-0 pixels per mask pixel along each axis.
        tissue_fraction: Fraction of the slide's level-0 area that is tissue
            according to the mask, in [0, 1].
    """

    path: Path
    mask_path: Path
    width: int
    height: int
    mpp: float
    mask_downsample: int
    tissue_fraction: float


def default_tile_source_dir() -> Path:
    """Return the default folder of real H&E tiles (``<repo>/../shared/data/tiles``)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "tiles"


def mask_path_for(path: str | os.PathLike[str]) -> Path:
    """Return the tissue-mask path that belongs beside slide ``path`` (``<stem>_mask.png``)."""
    p = Path(path)
    return p.with_name(f"{p.stem}_mask.png")


# --------------------------------------------------------------------------- #
# argument checking
# --------------------------------------------------------------------------- #


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _check_args(
    width: Any,
    height: Any,
    mpp: Any,
    seed: Any,
    tile_size: Any,
    quality: Any,
    mask_downsample: Any,
) -> tuple[int, int, float, int, int, int, int]:
    w = _as_int("width", width)
    h = _as_int("height", height)
    for name, v in (("width", w), ("height", h)):
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
        if v > MAX_SIDE:
            raise ValueError(f"{name} must be at most {MAX_SIDE} pixels, got {v}")
    try:
        if isinstance(mpp, (str, bytes, bool)):
            raise TypeError(type(mpp).__name__)
        mpp_f = float(mpp)
    except (TypeError, ValueError):
        raise ValueError(f"mpp must be a number of micrometres per pixel, got {mpp!r}") from None
    if not math.isfinite(mpp_f) or mpp_f <= 0:
        raise ValueError(f"mpp must be a positive finite number, got {mpp!r}")
    s = _as_int("seed", seed)
    if s < 0:
        raise ValueError(f"seed must be non-negative, got {s}")
    ts = _as_int("tile_size", tile_size)
    if ts <= 0 or ts % 16 != 0 or ts > 4096:
        raise ValueError(f"tile_size must be a positive multiple of 16 up to 4096, got {ts}")
    q = _as_int("quality", quality)
    if not 1 <= q <= 100:
        raise ValueError(f"quality must be in 1..100, got {q}")
    ds = _as_int("mask_downsample", mask_downsample)
    if ds <= 0:
        raise ValueError(f"mask_downsample must be positive, got {ds}")
    if math.ceil(w / ds) * math.ceil(h / ds) > MAX_MASK_PIXELS:
        raise ValueError(
            f"mask_downsample={ds} is too small for a {w}x{h} slide: the mask would exceed "
            f"{MAX_MASK_PIXELS} pixels"
        )
    return w, h, mpp_f, s, ts, q, ds


# --------------------------------------------------------------------------- #
# numpy helpers (small images only)
# --------------------------------------------------------------------------- #


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise (periodic), normalised to zero mean, unit std.

    ``sigma`` is in pixels of ``shape``; the result is float32.
    """
    import numpy as np

    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    kernel = np.exp(-2.0 * (math.pi**2) * (sigma**2) * (fx**2 + fy**2))
    out = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=shape)
    out -= out.mean()
    std = float(out.std())
    if std > 0:
        out /= std
    return out.astype(np.float32)


def _resize_bilinear_rows(
    src: np.ndarray, out_h: int, out_w: int, row0: int, row1: int
) -> np.ndarray:
    """Rows ``row0:row1`` of ``src`` (2-D float) resized bilinearly to ``out_h`` x ``out_w``.

    Uses pixel-centre alignment, edges clamped.
    """
    import numpy as np

    gh, gw = src.shape
    ys = np.clip((np.arange(row0, row1) + 0.5) * gh / out_h - 0.5, 0, gh - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * gw / out_w - 0.5, 0, gw - 1)
    y0 = np.floor(ys).astype(np.intp)
    x0 = np.floor(xs).astype(np.intp)
    y1 = np.minimum(y0 + 1, gh - 1)
    x1 = np.minimum(x0 + 1, gw - 1)
    wy = (ys - y0).astype(np.float32)[:, None]
    wx = (xs - x0).astype(np.float32)[None, :]
    top = src[y0][:, x0] * (1 - wx) + src[y0][:, x1] * wx
    bot = src[y1][:, x0] * (1 - wx) + src[y1][:, x1] * wx
    out: np.ndarray = top * (1 - wy) + bot * wy
    return out


def _make_tissue_mask(rng: np.random.Generator, mask_h: int, mask_w: int) -> np.ndarray:
    """Seeded random tissue layout as a ``mask_h`` x ``mask_w`` uint8 array (0 / 255).

    A few elliptical blobs with ragged, noisy outlines and a few holes, kept
    away from the slide border, thresholded so that roughly 30-60 % of the
    area is tissue.  The layout is designed on a coarse grid (longest side at
    most ``_LAYOUT_GRID``) and upsampled bilinearly before thresholding.
    """
    import numpy as np

    scale = min(1.0, _LAYOUT_GRID / max(mask_h, mask_w))
    gh = max(1, round(mask_h * scale))
    gw = max(1, round(mask_w * scale))
    side = float(max(gh, gw))
    # Coordinates in units of the longest side, so blobs are round on the slide.
    yy = ((np.arange(gh, dtype=np.float32) + 0.5) / side)[:, None]
    xx = ((np.arange(gw, dtype=np.float32) + 0.5) / side)[None, :]
    hy, wx = gh / side, gw / side

    field = np.zeros((gh, gw), dtype=np.float32)
    n_blobs = int(rng.integers(2, 6))
    for _ in range(n_blobs):
        cy = rng.uniform(0.2, 0.8) * hy
        cx = rng.uniform(0.2, 0.8) * wx
        a = rng.uniform(0.10, 0.30) * max(hy, wx) * 0.8
        b = a * rng.uniform(0.4, 1.0)
        theta = rng.uniform(0, math.pi)
        c, s = math.cos(theta), math.sin(theta)
        dy, dx = yy - cy, xx - cx
        u = (dx * c + dy * s) / a
        v = (-dx * s + dy * c) / b
        field = np.maximum(field, np.exp(-0.5 * (u * u + v * v) ** 1.5))
    # Holes: small negative bumps.
    for _ in range(int(rng.integers(1, 5))):
        cy = rng.uniform(0.15, 0.85) * hy
        cx = rng.uniform(0.15, 0.85) * wx
        r = rng.uniform(0.02, 0.05) * max(hy, wx)
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (r * r)
        field -= 0.8 * np.exp(-0.5 * d2)
    # Ragged outlines: medium- and fine-scale smooth noise.
    field += 0.20 * _smooth_noise(rng, (gh, gw), sigma=max(0.6, 0.04 * side))
    field += 0.08 * _smooth_noise(rng, (gh, gw), sigma=max(0.5, 0.012 * side))
    # Keep tissue away from the slide border.
    margin = 0.05
    ey = np.clip(np.minimum(yy, hy - yy) / (margin * max(hy, 1e-6) + 1e-6), 0, 1)
    ex = np.clip(np.minimum(xx, wx - xx) / (margin * max(wx, 1e-6) + 1e-6), 0, 1)
    field = field * (ey * ex) - (1.0 - ey * ex)

    target = float(rng.uniform(0.35, 0.55))
    threshold = float(np.quantile(field, 1.0 - target))

    return threshold_field(field, threshold, mask_h, mask_w)


def threshold_field(field: np.ndarray, threshold: float, mask_h: int, mask_w: int) -> np.ndarray:
    """uint8 mask (mask_h, mask_w), 255 where ``field`` (resized bilinearly when its shape
    differs) exceeds ``threshold``; built in row blocks of about 4 Mpx."""
    import numpy as np

    gh, gw = field.shape
    mask = np.empty((mask_h, mask_w), dtype=np.uint8)
    chunk = max(1, 4_000_000 // max(mask_w, 1))
    for r0 in range(0, mask_h, chunk):
        r1 = min(mask_h, r0 + chunk)
        if (gh, gw) == (mask_h, mask_w):
            rows = field[r0:r1]
        else:
            rows = _resize_bilinear_rows(field, mask_h, mask_w, r0, r1)
        mask[r0:r1] = np.where(rows > threshold, 255, 0).astype(np.uint8)
    return mask


def _tissue_fraction(mask: np.ndarray, width: int, height: int, ds: int) -> float:
    """Tissue fraction of the level-0 area, weighting partial edge mask pixels by coverage."""
    import numpy as np

    tissue = mask > 0
    mh, mw = tissue.shape
    wx_last = (width - (mw - 1) * ds) / ds
    wy_last = (height - (mh - 1) * ds) / ds
    rows = tissue.sum(axis=1, dtype=np.float64) - tissue[:, -1] * (1.0 - wx_last)
    rows[-1] *= wy_last
    return float(rows.sum() * ds * ds / (width * height))


def _mean_saturation(rgb: np.ndarray) -> float:
    import numpy as np

    f = rgb.astype(np.float32)
    mx = f.max(axis=-1)
    mn = f.min(axis=-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    return float(sat.mean())


def _procedural_he(rng: np.random.Generator, side: int = _PROCEDURAL_SIDE) -> np.ndarray:
    """A seeded procedural H&E-like RGB uint8 texture of ``side`` x ``side`` pixels.

    Pink eosin stroma with fibre-like streaks and a few pale gaps, and purple
    haematoxylin "nuclei" (small soft-edged ellipses) in clusters.
    """
    import numpy as np

    shape = (side, side)
    low = _smooth_noise(rng, shape, sigma=side / 20)
    mid = _smooth_noise(rng, shape, sigma=side / 90)
    # Anisotropic "fibres": noise smoothed more along x than y, then rotated by 90 deg randomly.
    fib = _smooth_noise(rng, shape, sigma=2.0)
    fib = 0.5 * (fib + np.roll(fib, 3, axis=1)) + 0.5 * np.roll(fib, -3, axis=1)
    if rng.random() < 0.5:
        fib = fib.T.copy()
    eosin = np.array([232.0, 160.0, 196.0], dtype=np.float32)
    img: np.ndarray = np.empty((side, side, 3), dtype=np.float32)
    shade = (10.0 * low + 6.0 * mid + 5.0 * fib)[..., None]
    img[:] = eosin
    img += shade * np.array([0.4, 1.0, 0.7], dtype=np.float32)
    # Pale gaps (lumina / fat).
    gaps = np.clip((mid + 0.6 * low - 1.6) * 2.0, 0.0, 1.0)[..., None]
    img = img * (1.0 - gaps) + np.array([246.0, 234.0, 242.0], dtype=np.float32) * gaps

    # Nuclei, denser where the low-frequency field is high.
    density = np.clip(0.35 + 0.35 * low, 0.05, 1.0)
    n_target = int(side * side / 1400)
    cand = rng.integers(0, side, size=(n_target * 3, 2))
    keep = rng.random(len(cand)) < density[cand[:, 0], cand[:, 1]]
    centres = cand[keep][:n_target]
    for cy, cx in centres:
        ra = rng.uniform(5.0, 11.0)
        rb = ra * rng.uniform(0.55, 1.0)
        th = rng.uniform(0, math.pi)
        dark = rng.uniform(0.7, 1.15)
        col = np.array([95.0, 55.0, 150.0], dtype=np.float32) * dark + rng.normal(0, 6, 3)
        r = int(math.ceil(ra)) + 2
        y0, y1 = max(0, cy - r), min(side, cy + r + 1)
        x0, x1 = max(0, cx - r), min(side, cx + r + 1)
        gy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        gx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        c, s = math.cos(th), math.sin(th)
        u = (gx * c + gy * s) / ra
        v = (-gx * s + gy * c) / rb
        d = np.sqrt(u * u + v * v)
        alpha = np.clip((1.0 - d) * rb + 0.5, 0.0, 1.0)[..., None] * 0.9
        patch = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = patch * (1.0 - alpha) + col * alpha
    img += rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- #
# texture sources
# --------------------------------------------------------------------------- #


def _list_sources(tile_dir: Path) -> list[Path]:
    """H&E source images in ``tile_dir`` (see ``_HE_PATTERNS``), sorted, exclusions removed."""
    found: set[Path] = set()
    for pattern in _HE_PATTERNS:
        found.update(p for p in tile_dir.glob(pattern) if p.is_file())
    if not found:
        found.update(
            p for p in tile_dir.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
        )
    return sorted(p for p in found if not any(part in p.name for part in _EXCLUDED_NAME_PARTS))


def _load_rgb(path: Path) -> np.ndarray | None:
    """Load an image as an RGB uint8 array (alpha flattened onto white); None if unreadable."""
    import numpy as np
    import pyvips

    try:
        im = pyvips.Image.new_from_file(str(path), access="sequential")
        if im.hasalpha():
            im = im.flatten(background=[255.0] * (im.bands - 1))
        if im.bands < 3:
            im = im.colourspace("srgb") if im.interpretation != "b-w" else im.bandjoin([im, im])
        im = im.extract_band(0, n=3).cast("uchar")
        arr = np.asarray(im.numpy(), dtype=np.uint8)
    except pyvips.Error as exc:
        logger.warning("skipping unreadable texture source %s: %s", path, exc)
        return None
    return np.ascontiguousarray(arr.reshape(im.height, im.width, 3))


def _load_sources(tile_dir: Path | None, rng: np.random.Generator) -> tuple[list[np.ndarray], str]:
    """Texture source images and a description of where they came from.

    Falls back to one procedural H&E-like texture when ``tile_dir`` is missing
    or holds no usable H&E image.
    """
    sources: list[np.ndarray] = []
    if tile_dir is not None and tile_dir.is_dir():
        for path in _list_sources(tile_dir):
            arr = _load_rgb(path)
            if arr is None or min(arr.shape[:2]) < 32:
                continue
            if _mean_saturation(arr) < _MIN_SOURCE_SATURATION:
                logger.debug("skipping mostly-background texture source %s", path)
                continue
            sources.append(arr)
    if sources:
        return sources, f"{len(sources)} H&E images from {tile_dir}"
    logger.info("no H&E tiles found in %s; using a procedural texture", tile_dir)
    return [_procedural_he(rng)], "procedural H&E-like texture"


def _mosaic(rng: np.random.Generator, sources: list[np.ndarray]) -> np.ndarray:
    """A ``_GRID*_CELL``-square RGB uint8 super-tile: random crops of the sources.

    Each cell is a random ``_CELL``-square crop of a random source, rotated by
    a random multiple of 90 degrees and randomly mirrored.
    """
    import numpy as np

    side = _GRID * _CELL
    out = np.empty((side, side, 3), dtype=np.uint8)
    for gy in range(_GRID):
        for gx in range(_GRID):
            src = sources[int(rng.integers(len(sources)))]
            h, w = src.shape[:2]
            if h < _CELL or w < _CELL:
                src = np.pad(
                    src,
                    ((0, max(0, _CELL - h)), (0, max(0, _CELL - w)), (0, 0)),
                    mode="reflect" if min(h, w) > 1 else "edge",
                )
                h, w = src.shape[:2]
            y = int(rng.integers(0, h - _CELL + 1))
            x = int(rng.integers(0, w - _CELL + 1))
            cell = np.rot90(src[y : y + _CELL, x : x + _CELL], k=int(rng.integers(4)))
            if rng.random() < 0.5:
                cell = cell[:, ::-1]
            out[gy * _CELL : (gy + 1) * _CELL, gx * _CELL : (gx + 1) * _CELL] = cell
    return out


# --------------------------------------------------------------------------- #
# lazy pyvips pipeline
# --------------------------------------------------------------------------- #


def _vips_from_numpy(arr: np.ndarray) -> pyvips.Image:
    """Wrap a small contiguous numpy array as a pyvips image (keeps a reference to it)."""
    import numpy as np
    import pyvips

    arr = np.ascontiguousarray(arr)
    height, width = arr.shape[:2]
    bands = 1 if arr.ndim == 2 else arr.shape[2]
    fmt = {np.dtype(np.uint8): "uchar", np.dtype(np.float32): "float"}[arr.dtype]
    return pyvips.Image.new_from_memory(arr.data, width, height, bands, fmt)


def _repeat_to(tile: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """Lazily repeat ``tile`` to cover ``width`` x ``height`` level-0 pixels."""
    across = -(-width // tile.width)
    down = -(-height // tile.height)
    return tile.replicate(across, down).crop(0, 0, width, height)


def _build_pipeline(
    mask: np.ndarray,
    width: int,
    height: int,
    ds: int,
    sources: list[np.ndarray],
    rng: np.random.Generator,
) -> pyvips.Image:
    """The lazy full-resolution RGB image: tissue texture inside the mask, glass outside."""
    import numpy as np

    # Texture: two independent mosaics, picked per cell by a small selector
    # map, so that the texture never repeats with a short period.
    tex_a = _repeat_to(_vips_from_numpy(_mosaic(rng, sources)), width, height)
    tex_b = _repeat_to(_vips_from_numpy(_mosaic(rng, sources)), width, height)
    sel_np = np.where(rng.random((-(-height // _CELL), -(-width // _CELL))) < 0.5, 255, 0).astype(
        np.uint8
    )
    selector = _vips_from_numpy(sel_np).zoom(_CELL, _CELL).crop(0, 0, width, height)
    texture = selector.ifthenelse(tex_a, tex_b)

    # Background: near-white glass with slight noise.
    bg_np = rng.normal(0.0, _BG_NOISE_SIGMA, size=(_BG_TILE, _BG_TILE, 3)) + np.array(_BG_RGB)
    bg_np = np.clip(np.rint(bg_np), 0, 255).astype(np.uint8)
    background = _repeat_to(_vips_from_numpy(bg_np), width, height)

    cond = _upscale_mask(_vips_from_numpy(mask), ds, width, height)
    out = cond.ifthenelse(texture, background)
    return out.copy(interpretation="srgb")


def _upscale_mask(mask_img: pyvips.Image, ds: int, width: int, height: int) -> pyvips.Image:
    """Lazily upscale the 0/255 mask to ``width`` x ``height`` level-0 pixels (uchar 0/255).

    The mask is upscaled bilinearly by a small factor ``k`` (the largest divisor
    of ``ds`` up to 8) and thresholded, which rounds the outlines, then enlarged
    by ``ds / k`` with nearest-neighbour ``zoom`` (cheap).  Outlines thus have
    ``ds / k``-pixel steps rather than ``ds``-pixel ones, for a fraction of the
    cost of a full bilinear upscale.
    """
    k = max(d for d in range(1, min(ds, 8) + 1) if ds % d == 0)
    if k == 1 and ds > 1:
        k = ds  # prime-ish downsample: one full bilinear upscale (slower, still lazy)
    cond = mask_img.resize(k, kernel="linear") > 127 if k > 1 else mask_img > 127
    if ds // k > 1:
        cond = cond.zoom(ds // k, ds // k)
    if cond.width < width or cond.height < height:
        cond = cond.embed(0, 0, max(width, cond.width), max(height, cond.height), extend="copy")
    return cond.crop(0, 0, width, height)


def save_slide_tiff(
    image: pyvips.Image, path: Path, *, mpp: float, quality: int, tile: int
) -> None:
    """Write ``image`` as a tiled pyramidal JPEG TIFF with ``mpp`` in its resolution tags."""
    px_per_mm = 1000.0 / mpp  # libvips resolution is in pixels per millimetre
    image.tiffsave(
        str(path),
        tile=True,
        pyramid=True,
        compression="jpeg",
        Q=quality,
        tile_width=tile,
        tile_height=tile,
        bigtiff=True,
        xres=px_per_mm,
        yres=px_per_mm,
        resunit="cm",
    )


def _attach_progress(image: pyvips.Image, label: str) -> None:
    """Log libvips evaluation progress of ``image`` every 10 %."""
    state = {"next": 10}

    def on_eval(_img: pyvips.Image, progress: Any) -> None:
        percent = int(progress.percent)
        if percent >= state["next"]:
            logger.info("%s: %d%% (%ds elapsed)", label, percent, int(progress.run))
            state["next"] = (percent // 10 + 1) * 10

    try:
        image.set_progress(True)
        image.signal_connect("eval", on_eval)
    except (AttributeError, TypeError) as exc:  # older pyvips without signals
        logger.debug("progress reporting unavailable: %s", exc)


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


def make_synthetic_slide(
    path: str | os.PathLike[str],
    *,
    width: int,
    height: int,
    mpp: float = 0.25,
    seed: int = 0,
    tile_source_dir: str | os.PathLike[str] | None = None,
    tile_size: int = 256,
    quality: int = 85,
    mask_downsample: int = 64,
) -> SyntheticSlide:
    """Write a synthetic H&E-like pyramidal TIFF slide by streaming, plus its tissue mask.

    Args:
        path: Output TIFF path (parent folders are created).  The tissue mask
            is written beside it as ``<stem>_mask.png``.
        width: Slide width in level-0 pixels, 1..``MAX_SIDE``.
        height: Slide height in level-0 pixels, 1..``MAX_SIDE``.
        mpp: Micrometres per level-0 pixel (both axes), > 0.  Stored as TIFF
            resolution so that OpenSlide reports ``openslide.mpp-x/y == mpp``.
        seed: Non-negative seed; the same seed and arguments give the same slide.
        tile_source_dir: Folder of real H&E images used as texture (default
            ``<repo>/../shared/data/tiles``).  When it does not exist or holds
            no usable H&E image, a procedural texture is used instead.
        tile_size: TIFF tile side in pixels (multiple of 16).
        quality: JPEG quality, 1..100.
        mask_downsample: Level-0 pixels per mask pixel along each axis.

    Returns:
        A :class:`SyntheticSlide` describing the written files.

    Raises:
        ValueError: On a non-positive or too large size, ``mpp <= 0``, a
            non-integer where an integer is expected, or another invalid
            argument; the message names the argument.
    """
    w, h, mpp_f, s, ts, q, ds = _check_args(
        width, height, mpp, seed, tile_size, quality, mask_downsample
    )
    import numpy as np

    out_path = Path(path)
    mask_path = mask_path_for(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tile_dir = Path(tile_source_dir) if tile_source_dir is not None else default_tile_source_dir()

    t0 = time.monotonic()
    layout_ss, texture_ss, pipeline_ss = np.random.SeedSequence(s).spawn(3)
    mask_h, mask_w = -(-h // ds), -(-w // ds)
    mask = _make_tissue_mask(np.random.default_rng(layout_ss), mask_h, mask_w)
    fraction = _tissue_fraction(mask, w, h, ds)
    sources, origin = _load_sources(tile_dir, np.random.default_rng(texture_ss))
    logger.info(
        "synthetic slide %s: %dx%d px, mpp %.4g, tissue %.1f%%, texture: %s",
        out_path,
        w,
        h,
        mpp_f,
        100 * fraction,
        origin,
    )
    image = _build_pipeline(mask, w, h, ds, sources, np.random.default_rng(pipeline_ss))

    # Write to temporary names then rename, so no half-written slide is left behind.
    tmp_mask = mask_path.with_name(f".{mask_path.stem}.{os.getpid()}.partial.png")
    tmp_slide = out_path.with_name(f".{out_path.stem}.{os.getpid()}.partial.tiff")
    try:
        _vips_from_numpy(mask).pngsave(str(tmp_mask), compression=6)
        _attach_progress(image, out_path.name)
        save_slide_tiff(image, tmp_slide, mpp=mpp_f, quality=q, tile=ts)
        os.replace(tmp_mask, mask_path)
        os.replace(tmp_slide, out_path)
    finally:
        for tmp in (tmp_mask, tmp_slide):
            tmp.unlink(missing_ok=True)
    logger.info("wrote %s in %.1fs", out_path, time.monotonic() - t0)
    return SyntheticSlide(
        path=out_path,
        mask_path=mask_path,
        width=w,
        height=h,
        mpp=mpp_f,
        mask_downsample=ds,
        tissue_fraction=fraction,
    )
