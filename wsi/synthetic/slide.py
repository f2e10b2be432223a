"""Streaming generator of synthetic H&E-like whole-slide images.

The slide is written as a pyramidal, tiled, JPEG-compressed BigTIFF that
OpenSlide opens with the ``generic-tiff`` vendor driver.  Nothing at full
resolution is ever held in memory: the image is a lazy libvips pipeline built
from a handful of small in-memory pieces

* a low-resolution tissue mask (one mask pixel covers ``mask_downsample`` x
  ``mask_downsample`` level-0 pixels), made in numpy and upscaled lazily
  (:mod:`wsi.synthetic.masks`);
* a few "super-tiles" of H&E texture (a seeded random mosaic of crops of real
  H&E images, or of a procedural H&E-like texture when no images are
  available), repeated lazily across the slide, and picked per mosaic cell by
  a small selector map so that the texture does not repeat with a short
  period (:mod:`wsi.synthetic.textures`);
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

from wsi._files import atomic_path
from wsi.synthetic.masks import SLIDE_LAYOUT, tissue_fraction, tissue_mask, upscale_mask
from wsi.synthetic.textures import (
    default_tile_source_dir,
    load_sources,
    repeat_to,
    texture_layer,
    vips_from_numpy,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pyvips

__all__ = [
    "MAX_MASK_PIXELS",
    "MAX_SIDE",
    "SyntheticSlide",
    "make_synthetic_slide",
    "mask_path_for",
    "save_mask_png",
    "save_slide_tiff",
    "slide_image",
]

logger = logging.getLogger(__name__)

#: Largest accepted slide side, in level-0 pixels.
MAX_SIDE = 200_000

#: Largest accepted tissue mask, in mask pixels (keeps the numpy part small).
MAX_MASK_PIXELS = 64_000_000

#: Side of the repeated background-noise tile, in level-0 pixels.
_BG_TILE = 512
#: Mean RGB of the glass background.
_BG_RGB = (240.0, 238.0, 240.0)
#: Standard deviation of the per-pixel background noise, in 8-bit grey levels.
_BG_NOISE_SIGMA = 1.5


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


@dataclass(frozen=True)
class _SlideArgs:
    """The checked arguments of :func:`make_synthetic_slide` (units as there)."""

    width: int
    height: int
    mpp: float
    seed: int
    tile_size: int
    quality: int
    mask_downsample: int


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
) -> _SlideArgs:
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
    return _SlideArgs(w, h, mpp_f, s, ts, q, ds)


# --------------------------------------------------------------------------- #
# lazy pyvips pipeline and files
# --------------------------------------------------------------------------- #


def slide_image(
    mask: np.ndarray,
    width: int,
    height: int,
    ds: int,
    sources: list[np.ndarray],
    rng: np.random.Generator,
) -> pyvips.Image:
    """The lazy ``width`` x ``height`` level-0 RGB image: tissue texture inside the mask,
    glass outside.

    ``mask`` is the uint8 0/255 tissue mask, ``ds`` level-0 pixels per mask pixel;
    ``sources`` the texture sources; ``rng`` draws the texture mosaics and the glass
    noise.
    """
    import numpy as np

    texture = texture_layer(rng, sources, width, height)

    # Background: near-white glass with slight noise.
    bg_np = rng.normal(0.0, _BG_NOISE_SIGMA, size=(_BG_TILE, _BG_TILE, 3)) + np.array(_BG_RGB)
    bg_np = np.clip(np.rint(bg_np), 0, 255).astype(np.uint8)
    background = repeat_to(vips_from_numpy(bg_np), width, height)

    cond = upscale_mask(vips_from_numpy(mask), ds, width, height)
    out = cond.ifthenelse(texture, background)
    return out.copy(interpretation="srgb")


def save_slide_tiff(
    image: pyvips.Image, path: Path, *, mpp: float, quality: int, tile: int
) -> None:
    """Write ``image`` as a tiled pyramidal JPEG TIFF with ``mpp`` in its resolution tags.

    Writes ``path`` directly; callers that a killed process must not leave half a
    file for write through :func:`wsi._files.atomic_path`.
    """
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


def save_mask_png(mask: np.ndarray, path: Path) -> None:
    """Write a uint8 mask as a greyscale PNG (zlib level 6) at ``path`` (directly)."""
    vips_from_numpy(mask).pngsave(str(path), compression=6)


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
    a = _check_args(width, height, mpp, seed, tile_size, quality, mask_downsample)
    import numpy as np

    w, h, ds = a.width, a.height, a.mask_downsample
    out_path = Path(path)
    mask_path = mask_path_for(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tile_dir = Path(tile_source_dir) if tile_source_dir is not None else default_tile_source_dir()

    t0 = time.monotonic()
    layout_ss, texture_ss, pipeline_ss = np.random.SeedSequence(a.seed).spawn(3)
    mask_h, mask_w = -(-h // ds), -(-w // ds)
    mask = tissue_mask(np.random.default_rng(layout_ss), mask_h, mask_w, SLIDE_LAYOUT)
    fraction = tissue_fraction(mask, w, h, ds)
    sources, origin = load_sources(tile_dir, np.random.default_rng(texture_ss))
    logger.info(
        "synthetic slide %s: %dx%d px, mpp %.4g, tissue %.1f%%, texture: %s",
        out_path,
        w,
        h,
        a.mpp,
        100 * fraction,
        origin,
    )
    image = slide_image(mask, w, h, ds, sources, np.random.default_rng(pipeline_ss))

    # Both files go to temporary names; the mask is renamed once the slide is complete,
    # then the slide: no half-written slide or mask is ever left under its final name.
    with atomic_path(out_path) as tmp_slide:
        with atomic_path(mask_path) as tmp_mask:
            save_mask_png(mask, tmp_mask)
            _attach_progress(image, out_path.name)
            save_slide_tiff(image, tmp_slide, mpp=a.mpp, quality=a.quality, tile=a.tile_size)
    logger.info("wrote %s in %.1fs", out_path, time.monotonic() - t0)
    return SyntheticSlide(
        path=out_path,
        mask_path=mask_path,
        width=w,
        height=h,
        mpp=a.mpp,
        mask_downsample=ds,
        tissue_fraction=fraction,
    )
