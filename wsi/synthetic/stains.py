"""Stain shifts of synthetic slides: scale haematoxylin, eosin and DAB in HED space.

A second hospital stains more or less strongly than the first.  :func:`shift_stains`
imitates that on an RGB uint8 image: it converts each pixel to optical density,
``OD = -ln((I + 1) / 256)`` per channel (0 for a white 255), splits the OD into the
haematoxylin, eosin and DAB amounts of scikit-image's HED colour space (Ruifrok and
Johnston's stain vectors, ``skimage.color.hed_from_rgb``), multiplies each amount by
its factor, and converts back.  The whole map is one 3 x 3 matrix in OD space, so:

* white stays white: a 255 channel has OD 0, and a zero OD vector scales to zero;
  near-white pixels move by a few grey levels (grey 245 becomes (241, 239, 243) at
  factors (1.5, 0.5, 1));
* factors ``(1, 1, 1)`` give the identity (callers skip the call then, keeping
  the bytes of unshifted cohorts);
* unlike ``rgb2hed`` followed by ``hed2rgb``, nothing is clipped in HED space, so
  only the stain amounts change (RGB is clipped to 0..255 at the end).

The cohort generator applies it to its small texture source images (a few hundred
to a thousand pixels a side) before they are tiled over a slide, so the slide's
tissue and lesions carry the shift at no cost per slide pixel; the glass is not
stained and is left as it is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from wsi.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

__all__ = ["NO_STAIN_SHIFT", "check_stain_shift", "shift_stains"]

#: Factors that leave an image as it is: (haematoxylin, eosin, DAB).
NO_STAIN_SHIFT = (1.0, 1.0, 1.0)


def check_stain_shift(value: Any) -> tuple[float, float, float]:
    """``value`` as three positive finite factors (haematoxylin, eosin, DAB);
    :class:`ConfigError` naming ``stain_shift`` otherwise."""
    how = "three positive factors (haematoxylin, eosin, DAB), e.g. (1.5, 0.5, 1.0)"
    if isinstance(value, (str, bytes)):
        raise ConfigError(f"stain_shift must be {how}; got {value!r}")
    try:
        items = list(value)
        factors = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"stain_shift must be {how}; got {value!r}") from None
    if (
        len(factors) != 3
        or any(isinstance(v, (bool, str, bytes)) for v in items)
        or not all(math.isfinite(v) and v > 0 for v in factors)
    ):
        raise ConfigError(f"stain_shift must be {how}; got {value!r}")
    return factors[0], factors[1], factors[2]


def shift_stains(rgb: np.ndarray, factors: tuple[float, float, float]) -> np.ndarray:
    """``rgb`` (uint8, ``(..., 3)``) with its haematoxylin, eosin and DAB optical
    densities multiplied by ``factors`` (see the module doc); uint8, same shape."""
    import numpy as np
    from skimage.color import hed_from_rgb, rgb_from_hed

    # row vectors: hed = od @ hed_from_rgb, od = hed @ rgb_from_hed
    matrix = (hed_from_rgb @ np.diag(np.asarray(factors, dtype=np.float64)) @ rgb_from_hed).astype(
        np.float32
    )
    od = -np.log((rgb.reshape(-1, 3).astype(np.float32) + 1.0) / 256.0)
    out = 256.0 * np.exp(-(od @ matrix)) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(rgb.shape)
