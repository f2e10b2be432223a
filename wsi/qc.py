"""Per-tile quality measures, computed from pixels already in memory.

Columns of ``tiles/qc`` (float32), in order: ``blur`` (variance of the Laplacian of
the green channel at half the tile resolution; low = blurred), ``pen`` (fraction of pen-ink
pixels), ``background`` (fraction of near-white pixels). Later stages drop or flag tiles with these.
"""

from __future__ import annotations

import numpy as np

__all__ = ["QC_COLUMNS", "tile_qc", "hsv", "pen_mask", "background_mask"]

QC_COLUMNS = ("blur", "pen", "background")

# Hue ranges of common marker inks, degrees. H&E lies between about 260 and 345 and is
# rarely as saturated as red ink (S >= 0.6).
_RED = ((330.0, 360.0), (0.0, 15.0))
_GREEN = ((60.0, 180.0),)
_BLUE = ((185.0, 245.0),)
_RED_MIN_S, _GREEN_MIN_S, _BLUE_MIN_S = 0.6, 0.2, 0.3
_BLACK_MAX_V = 0.2
_WHITE_MAX_S, _WHITE_MIN_V = 0.1, 0.8


_HSV_BLOCK = 1 << 20  # pixels per block: bounds the float temporaries to a few MB


def hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of an RGB uint8 array.

    Works block by block along the first axis, so a large image costs its three float32
    outputs and a few MB of temporaries.
    """
    shape = rgb.shape[:-1]
    h, s, v = (np.empty(shape, np.float32) for _ in range(3))
    per_row = max(1, int(np.prod(shape[1:], dtype=np.int64)))
    step = max(1, _HSV_BLOCK // per_row)
    for i in range(0, shape[0] if shape else 1, step):
        h[i : i + step], s[i : i + step], v[i : i + step] = _hsv_block(rgb[i : i + step])
    return h, s, v


def _hsv_block(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc = np.maximum(np.maximum(r, g), b)
    minc = np.minimum(np.minimum(r, g), b)
    delta = maxc - minc
    v = maxc / np.float32(255.0)
    s = np.where(maxc > 0, delta / np.maximum(maxc, np.float32(1e-6)), np.float32(0.0))
    d = np.maximum(delta, np.float32(1e-6))
    h = np.where(
        maxc == r, (g - b) / d % 6.0, np.where(maxc == g, (b - r) / d + 2.0, (r - g) / d + 4.0)
    )
    h = np.where(delta > 0, h * np.float32(60.0), np.float32(0.0))
    return h, s, v


def _in(h: np.ndarray, ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
    out = np.zeros(h.shape, dtype=bool)
    for lo, hi in ranges:
        out |= (h >= lo) & (h <= hi)
    return out


def pen_mask(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pixels of blue, green, red or black marker ink."""
    return (
        (_in(h, _RED) & (s >= _RED_MIN_S))
        | (_in(h, _GREEN) & (s >= _GREEN_MIN_S) & (v > _BLACK_MAX_V))
        | (_in(h, _BLUE) & (s >= _BLUE_MIN_S) & (v > _BLACK_MAX_V))
        | (v <= _BLACK_MAX_V)
    )


def background_mask(s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Near-white (glass) pixels."""
    return (s < _WHITE_MAX_S) & (v > _WHITE_MIN_V)


def tile_qc(tiles: np.ndarray) -> np.ndarray:
    """QC measures of a batch of RGB uint8 tiles (n, h, w, 3) -> float32 (n, len(QC_COLUMNS)).

    Colour fractions are computed on every eighth pixel of every eighth row (1,024
    samples of a 256 px tile); blur on every
    second pixel of the green channel (the Laplacian at twice the tile's pixel size), so
    QC costs a small fraction of reading and encoding the tile.
    """
    if tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"expected tiles of shape (n, h, w, 3), got {tiles.shape}")
    n = tiles.shape[0]
    out = np.empty((n, len(QC_COLUMNS)), dtype=np.float32)
    if n == 0:
        return out
    h, s, v = hsv(tiles[:, ::8, ::8])
    out[:, 1] = pen_mask(h, s, v).mean(axis=(1, 2))
    out[:, 2] = background_mask(s, v).mean(axis=(1, 2))
    # green channel: in H&E it carries most of the contrast, and int16 keeps this cheap
    g = tiles[:, ::2, ::2, 1].astype(np.int16)
    lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
    out[:, 0] = lap.reshape(n, -1).astype(np.float32).var(axis=1)
    return out
