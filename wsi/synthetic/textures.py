"""Texture sources of synthetic slides: noise fields, procedural and real H&E, mosaics.

Everything here is small: arrays of at most a few thousand pixels a side, built in
numpy, plus the two lazy libvips operations that spread them over a whole slide
(:func:`repeat_to`, :func:`texture_layer`) without ever holding the slide in memory.

Texture sources are RGB uint8 arrays ``(height, width, 3)``; the slide's texture is
a random mosaic of ``CELL``-square crops of them (:func:`mosaic`).  Where no real H&E
image is available, :func:`procedural_he` (and :func:`procedural_lesion` for lesions)
draws a seeded H&E-like texture instead.  Every random draw comes from the
``numpy.random.Generator`` passed in: the same generator state gives the same pixels.

``numpy`` and ``pyvips`` are imported inside the functions, so importing this module
is cheap.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pyvips

__all__ = [
    "CELL",
    "GRID",
    "PROCEDURAL_SIDE",
    "default_tile_source_dir",
    "load_rgb",
    "load_sources",
    "mosaic",
    "procedural_he",
    "procedural_lesion",
    "repeat_to",
    "smooth_noise",
    "texture_layer",
    "tinted",
    "vips_from_numpy",
]

logger = logging.getLogger(__name__)

#: Side of one mosaic cell of the texture, in level-0 pixels.
CELL = 384
#: Number of cells along each side of one texture super-tile.
GRID = 8
#: Side of the procedural fallback texture, in pixels.
PROCEDURAL_SIDE = 1024

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


def default_tile_source_dir() -> Path:
    """Return the default folder of real H&E tiles (``<repo>/../shared/data/tiles``)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "tiles"


# --------------------------------------------------------------------------- #
# noise and procedural textures (numpy)
# --------------------------------------------------------------------------- #


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise (periodic), normalised to zero mean, unit std.

    ``shape`` is (rows, columns); ``sigma`` is in pixels of ``shape``; the result is
    float32.
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


def mean_saturation(rgb: np.ndarray) -> float:
    """Mean HSV saturation, in [0, 1], of an ``(..., 3)`` RGB array."""
    import numpy as np

    f = rgb.astype(np.float32)
    mx = f.max(axis=-1)
    mn = f.min(axis=-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    return float(sat.mean())


def procedural_he(rng: np.random.Generator, side: int = PROCEDURAL_SIDE) -> np.ndarray:
    """A seeded procedural H&E-like RGB uint8 texture of ``side`` x ``side`` pixels.

    Pink eosin stroma with fibre-like streaks and a few pale gaps, and purple
    haematoxylin "nuclei" (small soft-edged ellipses) in clusters.
    """
    import numpy as np

    shape = (side, side)
    low = smooth_noise(rng, shape, sigma=side / 20)
    mid = smooth_noise(rng, shape, sigma=side / 90)
    # Anisotropic "fibres": noise smoothed more along x than y, then rotated by 90 deg randomly.
    fib = smooth_noise(rng, shape, sigma=2.0)
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


def procedural_lesion(
    rng: np.random.Generator,
    tint: tuple[float, float, float] = (80.0, 45.0, 130.0),
    weight: float = 0.5,
) -> np.ndarray:
    """Fallback lesion texture: a procedural H&E texture pushed towards ``tint`` (RGB,
    by default haematoxylin purple) with ``weight`` in [0, 1] (0: the background's
    colours, 1: the tint alone).

    Used only when no lesion source image is available; darker and bluer than the
    procedural background, with the nuclei texture kept.  RGB uint8,
    ``PROCEDURAL_SIDE`` pixels square.
    """
    import numpy as np

    base = procedural_he(rng).astype(np.float32)
    mod = smooth_noise(rng, base.shape[:2], sigma=6.0)[..., None]
    purple = np.array(tint, dtype=np.float32)
    out = (1.0 - weight) * base + weight * purple + 12.0 * mod
    return np.clip(out, 0, 255).astype(np.uint8)


def tinted(rgb: np.ndarray, tint: tuple[float, float, float], weight: float) -> np.ndarray:
    """``rgb`` (uint8) pushed towards the RGB ``tint`` with ``weight`` in [0, 1]; uint8."""
    import numpy as np

    out = (1.0 - weight) * rgb.astype(np.float32) + weight * np.array(tint, dtype=np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- #
# real H&E images
# --------------------------------------------------------------------------- #


def load_rgb(path: Path) -> np.ndarray | None:
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


def load_sources(tile_dir: Path | None, rng: np.random.Generator) -> tuple[list[np.ndarray], str]:
    """Texture source images of a synthetic slide and a description of where they came from.

    The H&E images of ``tile_dir`` (mostly-glass and tiny images skipped); one
    :func:`procedural_he` texture drawn from ``rng`` when ``tile_dir`` is missing or
    holds no usable H&E image.
    """
    sources: list[np.ndarray] = []
    if tile_dir is not None and tile_dir.is_dir():
        for path in _list_sources(tile_dir):
            arr = load_rgb(path)
            if arr is None or min(arr.shape[:2]) < 32:
                continue
            if mean_saturation(arr) < _MIN_SOURCE_SATURATION:
                logger.debug("skipping mostly-background texture source %s", path)
                continue
            sources.append(arr)
    if sources:
        return sources, f"{len(sources)} H&E images from {tile_dir}"
    logger.info("no H&E tiles found in %s; using a procedural texture", tile_dir)
    return [procedural_he(rng)], "procedural H&E-like texture"


# --------------------------------------------------------------------------- #
# mosaics and lazy layers
# --------------------------------------------------------------------------- #


def mosaic(rng: np.random.Generator, sources: list[np.ndarray]) -> np.ndarray:
    """A ``GRID*CELL``-square RGB uint8 super-tile: random crops of the sources.

    Each cell is a random ``CELL``-square crop of a random source, rotated by
    a random multiple of 90 degrees and randomly mirrored.
    """
    import numpy as np

    side = GRID * CELL
    out = np.empty((side, side, 3), dtype=np.uint8)
    for gy in range(GRID):
        for gx in range(GRID):
            src = sources[int(rng.integers(len(sources)))]
            h, w = src.shape[:2]
            if h < CELL or w < CELL:
                src = np.pad(
                    src,
                    ((0, max(0, CELL - h)), (0, max(0, CELL - w)), (0, 0)),
                    mode="reflect" if min(h, w) > 1 else "edge",
                )
                h, w = src.shape[:2]
            y = int(rng.integers(0, h - CELL + 1))
            x = int(rng.integers(0, w - CELL + 1))
            cell = np.rot90(src[y : y + CELL, x : x + CELL], k=int(rng.integers(4)))
            if rng.random() < 0.5:
                cell = cell[:, ::-1]
            out[gy * CELL : (gy + 1) * CELL, gx * CELL : (gx + 1) * CELL] = cell
    return out


def vips_from_numpy(arr: np.ndarray) -> pyvips.Image:
    """Wrap a small uint8 or float32 numpy array (2-D, or 3-D with bands last) as a
    pyvips image (which keeps a reference to the array)."""
    import numpy as np
    import pyvips

    arr = np.ascontiguousarray(arr)
    height, width = arr.shape[:2]
    bands = 1 if arr.ndim == 2 else arr.shape[2]
    fmt = {np.dtype(np.uint8): "uchar", np.dtype(np.float32): "float"}[arr.dtype]
    return pyvips.Image.new_from_memory(arr.data, width, height, bands, fmt)


def repeat_to(tile: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """Lazily repeat ``tile`` to cover ``width`` x ``height`` level-0 pixels."""
    across = -(-width // tile.width)
    down = -(-height // tile.height)
    return tile.replicate(across, down).crop(0, 0, width, height)


def texture_layer(
    rng: np.random.Generator, sources: list[np.ndarray], width: int, height: int
) -> pyvips.Image:
    """Lazy ``width`` x ``height`` level-0 RGB texture that never repeats with a short period.

    Two independent mosaics of ``sources``, each repeated over the slide, picked per
    ``CELL``-square cell by a random selector map.
    """
    import numpy as np

    tex_a = repeat_to(vips_from_numpy(mosaic(rng, sources)), width, height)
    tex_b = repeat_to(vips_from_numpy(mosaic(rng, sources)), width, height)
    sel = np.where(rng.random((-(-height // CELL), -(-width // CELL))) < 0.5, 255, 0)
    selector = vips_from_numpy(sel.astype(np.uint8)).zoom(CELL, CELL).crop(0, 0, width, height)
    return selector.ifthenelse(tex_a, tex_b)
