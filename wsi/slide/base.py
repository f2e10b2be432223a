"""The Slide interface shared by every reader backend.

Coordinates are always level-0 pixels, top-left origin: ``location`` is ``(x, y)``
and sizes are ``(w, h)``. Resolution is in micrometres per pixel (mpp). Pixels come
back as RGB ``uint8`` arrays of shape ``(h, w, 3)`` with transparent areas composited
on white.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from wsi.errors import MppError, SlideReadError
from wsi.slide.mpp import MPP_FIX_HINT, Mpp

__all__ = ["Slide", "SlideInfo", "LevelChoice", "resize_rgb"]

#: Relative tolerance under which a level counts as being *at* the target resolution
#: (read as is, no resampling): 0.499 mpp serves a 0.5 mpp request.
MPP_TOLERANCE = 0.02


@dataclass(frozen=True)
class LevelChoice:
    """The pyramid level to read for a target downsample, and the residual scale.

    ``scale`` is how many level pixels make one output pixel (>= 1 means shrink;
    exactly 1.0 means the level is used as is).
    """

    level: int
    level_downsample: float
    scale: float


@dataclass(frozen=True)
class SlideInfo:
    """Metadata of a slide, safe to print or store (no label/macro pixels)."""

    path: str
    backend: str
    vendor: str | None
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: Mpp | None
    objective_power: float | None
    associated_images: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: sizes as [w, h] lists in pixels, mpp as {x, y, source}."""
        return {
            "path": self.path,
            "backend": self.backend,
            "vendor": self.vendor,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": None
            if self.mpp is None
            else {"x": self.mpp.x, "y": self.mpp.y, "source": self.mpp.source},
            "objective_power": self.objective_power,
            "associated_images": list(self.associated_images),
        }


def resize_rgb(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 array to ``size`` = (w, h) with area averaging (Pillow BOX)."""
    from PIL import Image

    h, w = pixels.shape[:2]
    if (w, h) == tuple(size):
        return pixels
    img = Image.fromarray(pixels)
    return np.asarray(img.resize(size, Image.Resampling.BOX))


class Slide(ABC):
    """A whole-slide image opened for reading. Use ``wsi.open_slide`` to get one.

    Subclasses implement ``_read_level`` and the metadata attributes; everything that
    involves resolution is implemented once, here. In Jupyter a slide shows its
    thumbnail and metadata (``_repr_html_``).

    Example::

        with wsi.open_slide("s1.svs") as slide:
            slide.dimensions                                     # level-0 (w, h) px
            patch = slide.read_region((1000, 2000), (256, 256), mpp=0.5)
    """

    backend: str = "abstract"

    def __init__(self, path: Path, mpp: Mpp | None, mpp_error: MppError | None = None) -> None:
        self.path = path
        self._mpp = mpp
        self._mpp_error = mpp_error

    # -- metadata (backends set these) ------------------------------------------------
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    vendor: str | None
    objective_power: float | None
    associated_images: tuple[str, ...]

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 size (w, h) in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels (level 0 is the full resolution)."""
        return len(self.level_dimensions)

    @property
    def has_mpp(self) -> bool:
        """Whether the level-0 resolution (mpp) is known: stated or given as an override."""
        return self._mpp is not None

    @property
    def mpp(self) -> Mpp:
        """Level-0 resolution; raises MppError (naming the file and the fix) if unknown."""
        if self._mpp is None:
            if self._mpp_error is not None:
                raise self._mpp_error
            raise MppError(f"{self.path}: the slide states no resolution (mpp). {MPP_FIX_HINT}")
        return self._mpp

    def info(self) -> SlideInfo:
        """The slide's metadata (no label or macro pixels); ``mpp`` None if unknown."""
        return SlideInfo(
            path=str(self.path),
            backend=self.backend,
            vendor=self.vendor,
            level_dimensions=self.level_dimensions,
            level_downsamples=self.level_downsamples,
            mpp=self._mpp,
            objective_power=self.objective_power,
            associated_images=self.associated_images,
        )

    # -- reading ---------------------------------------------------------------------
    @abstractmethod
    def _read_level(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """RGB uint8 (h, w, 3) of ``size`` level pixels whose top-left is ``location`` (level 0)."""

    def read_level_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``size`` = (w, h) pixels of ``level`` at level-0 ``location`` = (x, y)."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path}: level {level} out of range 0..{self.level_count - 1}")
        w, h = size
        if w <= 0 or h <= 0:
            raise ValueError(f"size must be positive, got {size}")
        return self._read_level((int(location[0]), int(location[1])), level, (int(w), int(h)))

    def exact_region_reads(self, level: int) -> bool:
        """Whether pixels cut from a read of ``level`` at a whole-pixel offset are exactly
        the pixels of reading just that part (what ``wsi.tiling`` needs to cut tiles from
        strips). False unless a backend knows its reads are plain copies of decoded pixels.
        """
        return False

    def choose_level(self, downsample: float) -> LevelChoice:
        """Best level at or finer than ``downsample`` (level-0 pixels per output pixel)."""
        if downsample <= 0:
            raise ValueError(f"downsample must be positive, got {downsample}")
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1.0 + MPP_TOLERANCE) and ds >= self.level_downsamples[best]:
                best = i
        level_ds = self.level_downsamples[best]
        scale = downsample / level_ds
        if abs(scale - 1.0) <= MPP_TOLERANCE:
            scale = 1.0
        return LevelChoice(best, level_ds, scale)

    def downsample_for_mpp(self, mpp: float) -> float:
        """Level-0 pixels per output pixel at resolution ``mpp`` (micrometres per pixel)."""
        if mpp <= 0:
            raise ValueError(f"mpp must be positive, got {mpp}")
        return mpp / self.mpp.mean

    def read_region(
        self,
        location: tuple[int, int],
        size: tuple[int, int],
        *,
        mpp: float | None = None,
        level: int | None = None,
    ) -> np.ndarray:
        """Read a region whose top-left is level-0 ``location`` = (x, y).

        Give exactly one of ``mpp`` (``size`` is in output pixels at that resolution,
        read from the best level at or finer and resized) or ``level`` (``size`` is in
        pixels of that level). Returns RGB uint8 of shape (h, w, 3).
        """
        if (mpp is None) == (level is None):
            raise ValueError("give exactly one of mpp= or level=")
        if level is not None:
            return self.read_level_region(location, level, size)
        assert mpp is not None
        choice = self.choose_level(self.downsample_for_mpp(mpp))
        return self.read_scaled(location, size, choice)

    def read_scaled(
        self, location: tuple[int, int], size: tuple[int, int], choice: LevelChoice
    ) -> np.ndarray:
        """Read ``size`` output pixels at ``choice`` (from ``choose_level``)."""
        w, h = size
        if choice.scale == 1.0:
            return self.read_level_region(location, choice.level, (w, h))
        src = (max(1, round(w * choice.scale)), max(1, round(h * choice.scale)))
        return resize_rgb(self.read_level_region(location, choice.level, src), (w, h))

    def read_downsampled(self, downsample: float, block: int = 1024) -> np.ndarray:
        """The whole slide at ``downsample`` level-0 pixels per pixel, read block by block.

        Memory is bounded by the output plus one block: no level is read whole.
        """
        w0, h0 = self.dimensions
        out_w, out_h = max(1, math.ceil(w0 / downsample)), max(1, math.ceil(h0 / downsample))
        choice = self.choose_level(downsample)
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for oy in range(0, out_h, block):
            for ox in range(0, out_w, block):
                bw, bh = min(block, out_w - ox), min(block, out_h - oy)
                x0, y0 = round(ox * downsample), round(oy * downsample)
                # clip the last block to the slide so no padding is read or stretched
                sw = min(w0 - x0, round(bw * downsample))
                sh = min(h0 - y0, round(bh * downsample))
                lw = max(1, round(sw / choice.level_downsample))
                lh = max(1, round(sh / choice.level_downsample))
                region = self.read_level_region((x0, y0), choice.level, (lw, lh))
                out[oy : oy + bh, ox : ox + bw] = resize_rgb(region, (bw, bh))
        return out

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """An RGB thumbnail whose longer side is at most ``max_size`` pixels."""
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        w0, h0 = self.dimensions
        return self.read_downsampled(max(1.0, max(w0, h0) / max_size))

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the file handle."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, dimensions={self.dimensions})"

    def _repr_html_(self) -> str:
        """HTML for Jupyter: the main image's thumbnail and allow-listed metadata.

        The thumbnail (longer side 384 px, an embedded JPEG ``data:`` URI) comes from the
        main image only (``thumbnail``), never the label or macro image. The table holds
        the file's name (not its path), backend, vendor, level-0 size (w x h px), levels,
        mpp and its source (or "unknown") and objective power. Every string is escaped.
        """
        import base64
        import html
        import io

        from PIL import Image

        from wsi.errors import WsiError

        name = self.path.name
        try:
            buf = io.BytesIO()
            Image.fromarray(self.thumbnail(384)).save(buf, format="JPEG", quality=85)
            src = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            picture = f'<img src="{src}" alt="{html.escape(name)}" style="max-width:384px">'
        except WsiError as err:  # shown in the view: the metadata still helps
            detail = str(err).replace(str(self.path), name)  # the name only, never the path
            picture = f"<p>No thumbnail: {html.escape(detail)}</p>"
        mpp = self._mpp
        if mpp is None:
            mpp_text = "unknown"
        elif abs(mpp.x - mpp.y) < 1e-9:
            mpp_text = f"{mpp.x:.4g} µm/px ({mpp.source})"
        else:
            mpp_text = f"{mpp.x:.4g} × {mpp.y:.4g} µm/px ({mpp.source})"
        w, h = self.dimensions
        downsamples = ", ".join(f"{d:g}" for d in self.level_downsamples)
        power = self.objective_power
        rows = [
            ("File", name),
            ("Backend", self.backend),
            ("Vendor", self.vendor or "unknown"),
            ("Level-0 size", f"{w:,} × {h:,} px"),
            ("Levels", f"{self.level_count} (downsamples {downsamples})"),
            ("Resolution", mpp_text),
            ("Objective", "unknown" if power is None else f"{power:g}×"),
        ]
        cell = 'style="padding:2px 8px;text-align:left;border-bottom:1px solid #ddd"'
        table = "".join(
            f"<tr><th {cell}>{html.escape(k)}</th><td {cell}>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        return (
            '<div class="wsi-slide" style="display:flex;gap:16px;align-items:flex-start;'
            f'font-family:sans-serif"><div>{picture}</div>'
            f'<table style="border-collapse:collapse;font-size:13px">{table}</table></div>'
        )


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 (non-premultiplied) to RGB with transparent areas on white."""
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.float32)[..., None] / 255.0
    rgb = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def read_error(
    path: Path,
    location: tuple[int, int],
    level: int,
    region: tuple[int, int, int, int],
    err: BaseException,
) -> SlideReadError:
    """The error of a failed read: the file, the level and the region read.

    ``region`` is ``(x, y, w, h)`` in pixels of ``level``; ``location`` its level-0 origin.
    """
    detail = " ".join(str(err).split())
    x, y, w, h = region
    return SlideReadError(
        f"{path}: cannot read level {level}, region x={x}, y={y}, w={w}, h={h} "
        f"(pixels of level {level}; level-0 origin {location}): {detail}. "
        "The file is probably truncated or corrupt; re-copy or re-export it from the scanner."
    )
