"""H&E stain statistics, stain normalisation and HED stain augmentation of RGB tiles.

Images are RGB, one ``(H, W, 3)`` or a batch ``(n, H, W, 3)``, uint8 (``macenko`` and
``stain_statistics`` also take float RGB in 0..255 and ignore non-finite pixels).

Optical density (OD) of a channel is ``-ln((I + 1) / io)`` with ``io`` = 240 the light
that reaches the sensor through glass, and a pixel is *tissue* when its OD is at least
``beta`` = 0.15 in all three channels: the conventions of Macenko's reference code and of
torchstain, which the tests compare this module with.

- :func:`macenko` estimates the unit OD vectors of haematoxylin and eosin (Macenko et al.
  2009); :func:`stain_statistics` summarises a sample of a slide's tiles as a vector named
  by :data:`STAIN_FEATURES`, to detect a shift between sites.
- :class:`Normaliser` (``"macenko"``, ``"reinhard"`` in :data:`NORMALISERS`) maps tiles
  onto the stain of a target, before embedding; targets are stored as JSON.
- :func:`hed_jitter` and :func:`hed_shift` change the stain in scikit-image's HED space
  (augmentation after Tellez et al. 2018; simulating another lab's staining).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wsi._files import read_json, write_json
from wsi.errors import ConfigError

__all__ = [
    "STAIN_FEATURES",
    "HE_REFERENCE",
    "MAX_CONC_REFERENCE",
    "StainEstimate",
    "macenko",
    "stain_statistics",
    "Normaliser",
    "MacenkoNormaliser",
    "ReinhardNormaliser",
    "NORMALISERS",
    "fit_normaliser",
    "normaliser_from_target",
    "save_target",
    "load_target",
    "hed_jitter",
    "hed_shift",
]


def _frozen(values: Any) -> np.ndarray:
    a = np.array(values, dtype=np.float64)
    a.setflags(write=False)
    return a


#: Reference H&E OD vectors (columns: haematoxylin, eosin; rows: R, G, B), torchstain's.
HE_REFERENCE = _frozen([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
#: Reference 99th-percentile concentrations of haematoxylin and eosin, torchstain's.
MAX_CONC_REFERENCE = _frozen([1.9705, 1.0308])

#: Names of the :func:`stain_statistics` vector: the H and E unit OD vectors, their
#: 99th-percentile concentrations, the median and 95th percentile of tissue OD per
#: channel, and the mean RGB of tissue pixels as fractions of 255.
STAIN_FEATURES: tuple[str, ...] = (
    *(f"{s}_od_{c}" for s in ("h", "e") for c in "rgb"),
    "h_max_conc",
    "e_max_conc",
    *(f"od_{c}_p{p}" for p in (50, 95) for c in "rgb"),
    *(f"rgb_{c}_mean" for c in "rgb"),
)

_MAX_STAT_PIXELS = 200_000  # stain_statistics: at most this many pixels, evenly strided
_MAX_FIT_PIXELS = 4_000_000  # a normalisation target: at most this many pixels
_MIN_ANGLE_DEG = 8.0  # H and E closer than this: one dominant colour, not two stains
_MIN_COMPONENT = 0.02  # each OD component of a stain vector: stains absorb in R, G and B
_MIN_RED_MARGIN = 0.1  # haematoxylin absorbs red more than eosin by at least this
_TARGET_SCHEMA = 1


@dataclass(frozen=True, eq=False)
class StainEstimate:
    """Macenko stain vectors of an image; when ``ok`` is False they are the references
    (:data:`HE_REFERENCE`, :data:`MAX_CONC_REFERENCE`) and ``reason`` says why."""

    he: np.ndarray  #: (3, 2) unit OD vectors, rows R, G, B; column 0 haematoxylin, 1 eosin
    max_conc: np.ndarray  #: (2,) 99th-percentile concentrations of H and E, all pixels
    ok: bool
    reason: str  #: "" when ok


def _failed(reason: str) -> StainEstimate:
    return StainEstimate(HE_REFERENCE, MAX_CONC_REFERENCE, False, reason)


def _rgb(rgb: Any, *, uint8: bool) -> np.ndarray:
    x = np.asarray(rgb)
    if x.ndim not in (3, 4) or x.shape[-1] != 3:
        raise ValueError(f"expected RGB of shape (H, W, 3) or (n, H, W, 3), got {x.shape}")
    if uint8 and x.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB, got {x.dtype}")
    return x


def _od(pixels: np.ndarray, io: float) -> np.ndarray:
    """(N, 3) pixels in 0..255 -> (N, 3) float64 optical density (NaN below -1)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return -np.log((pixels.astype(np.float64) + 1.0) / io)


def _finite_od(pixels: np.ndarray, io: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) pixels -> OD and pixels of those whose three values are finite."""
    od = _od(pixels, io)
    if pixels.dtype == np.uint8:
        return od, pixels
    finite = np.isfinite(od).all(axis=1)
    return od[finite], pixels[finite]


def _strided(x: np.ndarray, limit: int) -> np.ndarray:
    """(N, 3) pixels of ``x``, every k-th one so that at most ``limit`` remain."""
    flat = x.reshape(-1, 3)
    return flat[:: max(1, math.ceil(len(flat) / limit))]


def _estimate(
    od: np.ndarray, *, alpha: float, beta: float, min_pixels: int
) -> tuple[StainEstimate, np.ndarray | None]:
    """Macenko on (N, 3) OD of finite pixels -> the estimate and the (2, N) concentrations
    (None when the estimate failed)."""
    if len(od) == 0:
        return _failed("no finite pixels"), None
    tissue = od[(od >= beta).all(axis=1)]
    if len(tissue) < min_pixels:
        near_white = float((od < beta).all(axis=1).mean())
        kind = (
            "near-white"
            if near_white >= 0.5
            else "no pixel absorbs in all three channels: a saturated colour, e.g. pen ink"
        )
        return _failed(
            f"too few tissue pixels ({kind}): {len(tissue)} of {len(od)} have OD >= {beta} "
            f"in R, G and B, fewer than min_pixels={min_pixels}"
        ), None
    with np.errstate(all="ignore"):
        cov = np.cov(tissue.T)
        if not np.isfinite(cov).all():
            return _failed("non-finite optical densities"), None
        try:
            _, vecs = np.linalg.eigh(cov)
        except np.linalg.LinAlgError as err:
            return _failed(f"stain plane not found ({err})"), None
        plane = vecs[:, 1:3]  # the two axes of largest variance, largest last
        proj = tissue @ plane
        if proj[:, 1].sum() < 0:  # angles then lie in (0, pi) and never wrap around
            plane, proj = plane * [1.0, -1.0], proj * [1.0, -1.0]
        phi = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
        v_lo = plane @ np.array([math.cos(lo), math.sin(lo)])
        v_hi = plane @ np.array([math.cos(hi), math.sin(hi)])
        # haematoxylin is the vector that absorbs more red (torchstain's order)
        he = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], axis=1)
        conc = np.linalg.pinv(he) @ od.T
        max_conc = np.percentile(conc, 99, axis=1)
    reason = _implausible(he, max_conc)
    if reason:
        return _failed(reason), None
    return StainEstimate(_frozen(he), _frozen(max_conc), True, ""), conc


def _implausible(he: np.ndarray, max_conc: np.ndarray) -> str:
    if not (np.isfinite(he).all() and np.isfinite(max_conc).all()):
        return "non-finite stain vectors"
    angle = math.degrees(math.acos(float(np.clip(he[:, 0] @ he[:, 1], -1.0, 1.0))))
    if angle < _MIN_ANGLE_DEG:
        return (
            "degenerate stain plane (one dominant colour, e.g. pen mark): the two stain "
            f"vectors are {angle:.1f} degrees apart, fewer than {_MIN_ANGLE_DEG:g}"
        )
    h, e = he[:, 0], he[:, 1]
    if he.min() < _MIN_COMPONENT:
        return (
            "implausible stain vectors (not H&E: a stain absorbs almost nothing in one "
            f"channel): H {np.round(h, 3).tolist()}, E {np.round(e, 3).tolist()}"
        )
    if h[0] - e[0] < _MIN_RED_MARGIN or int(np.argmax(e)) != 1:
        return (
            "implausible stain vectors (not H&E: haematoxylin should absorb red more than "
            f"eosin, eosin most in green): H {np.round(h, 3).tolist()}, "
            f"E {np.round(e, 3).tolist()}"
        )
    if max_conc.min() <= 0:
        return f"no stain concentration: 99th percentiles {np.round(max_conc, 4).tolist()}"
    return ""


def macenko(
    rgb: Any,
    *,
    io: float = 240.0,
    alpha: float = 1.0,
    beta: float = 0.15,
    min_pixels: int = 500,
) -> StainEstimate:
    """Haematoxylin and eosin OD vectors of an image, or of all pixels of a batch pooled
    (uint8, or float RGB in 0..255 whose non-finite pixels are ignored).

    Macenko et al. 2009 as torchstain implements it: the plane of the two largest
    principal axes of tissue OD, the stain vectors at the ``alpha`` and ``100 - alpha``
    percentiles of angle in that plane, and the 99th percentile of each stain's
    concentration over *all* pixels (background included). Never raises on pixels:
    near-white, single-colour (pen ink, black) and implausible estimates give
    ``ok=False``, a reason and the reference vectors.
    """
    od, _ = _finite_od(_rgb(rgb, uint8=False).reshape(-1, 3), io)
    return _estimate(od, alpha=alpha, beta=beta, min_pixels=min_pixels)[0]


def stain_statistics(
    tiles: Any, *, io: float = 240.0, beta: float = 0.15
) -> tuple[np.ndarray, StainEstimate]:
    """The float32 vector named by :data:`STAIN_FEATURES` of a sample of a slide's tiles.

    At most 200,000 pixels of ``tiles`` (n, S, S, 3), evenly strided, are pooled. The
    Macenko entries (first eight) are NaN when the estimate fails (the returned
    :class:`StainEstimate` says why), the tissue entries when there is no tissue pixel.
    """
    od, px = _finite_od(_strided(_rgb(tiles, uint8=False), _MAX_STAT_PIXELS), io)
    est, _ = _estimate(od, alpha=1.0, beta=beta, min_pixels=500)
    out = np.full(len(STAIN_FEATURES), np.nan, dtype=np.float32)
    if est.ok:
        out[:8] = np.concatenate([est.he[:, 0], est.he[:, 1], est.max_conc])
    tissue = (od >= beta).all(axis=1)
    if tissue.any():
        out[8:14] = np.percentile(od[tissue], [50, 95], axis=0).ravel()
        out[14:] = px[tissue].mean(axis=0) / 255.0
    return out, est


def _canonical(target: Mapping[str, Any]) -> str:
    return json.dumps(target, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _floats(target: Mapping[str, Any], key: str, shape: tuple[int, ...], method: str) -> Any:
    try:
        a = np.array(target[key], dtype=np.float64)
    except KeyError:
        raise ConfigError(f"{method} target: missing {key!r}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{method} target: {key!r} is not numbers ({err})") from err
    if a.shape != shape or not np.isfinite(a).all():
        raise ConfigError(f"{method} target: {key!r} must be finite numbers of shape {shape}")
    return a.tolist()


def _tissue_check(tiles: np.ndarray, io: float, beta: float, min_pixels: int) -> None:
    od = _od(_strided(tiles, _MAX_STAT_PIXELS), io)
    n = int((od >= beta).all(axis=1).sum())
    if n < min_pixels:
        raise ConfigError(
            f"normalisation target has no tissue: {n} of the {len(od)} sampled pixels have "
            f"optical density >= {beta} in R, G and B (need {min_pixels}); fit the target "
            "on H&E tissue tiles, not background or pen"
        )


class Normaliser(ABC):
    """Maps images onto the stain of a target. ``target`` is JSON-serialisable; build one
    with :func:`fit_normaliser`, :func:`normaliser_from_target` or :func:`load_target`."""

    method: ClassVar[str]
    _keys: ClassVar[frozenset[str]]

    def __init__(self, target: Mapping[str, Any]) -> None:
        extra = set(target) - self._keys
        if extra:
            raise ConfigError(
                f"{self.method} target: unknown keys {sorted(extra)}; expected {sorted(self._keys)}"
            )
        self._target = self._validate(target)

    @property
    def target(self) -> dict[str, Any]:
        """A copy of the target's parameters (JSON values)."""
        return dict(json.loads(_canonical(self._target)))

    @classmethod
    @abstractmethod
    def fit(cls, tiles: Any) -> Normaliser:
        """The normaliser whose target is ``tiles`` (uint8 RGB, pooled)."""

    @classmethod
    @abstractmethod
    def _validate(cls, target: Mapping[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def apply_with_status(self, rgb: Any) -> tuple[np.ndarray, bool, str]:
        """(normalised uint8 of the same shape, ok, reason): ``ok`` is False when an
        image (of a batch: any image, and ``reason`` names them) was returned unchanged."""

    def apply(self, rgb: Any) -> np.ndarray:
        """``rgb`` (uint8, each image of a batch on its own) in the target's stain; images
        that cannot be normalised are returned unchanged (see :meth:`apply_with_status`)."""
        return self.apply_with_status(rgb)[0]

    def identity(self) -> dict[str, str]:
        """Method and sha256 of the canonical JSON of the target: part of the identity of
        the features made from normalised tiles."""
        digest = hashlib.sha256(_canonical(self._target).encode()).hexdigest()
        return {"method": self.method, "target_sha256": digest}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target})"


def _to_uint8(x: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(x * scale), 0, 255).astype(np.uint8)


# CIELAB as scikit-image's rgb2lab and lab2rgb compute it (sRGB, D65, 2 degree observer;
# torchstain's numpy code is the same), in float32 with a table for the sRGB curve:
# several times faster on batches of tiles.
_XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_LINEAR_LUT = np.where(
    (v := np.arange(256) / 255.0) > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92
).astype(np.float32)
_LN_1E6 = math.log(1e6)
# scikit-image's rgb_from_hed (Ruifrok and Johnston 2001: rows H, E, DAB) and its inverse
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_HED_OD_LUT = (-np.log(np.maximum(np.arange(256) / 255.0, 1e-6))).astype(np.float32)


def _rgb2lab(x: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 CIELAB (..., 3), L in 0..100."""
    xyz = _LINEAR_LUT[x] @ (_XYZ_FROM_RGB / _WHITE_D65[:, None]).T.astype(np.float32)
    # xyz >= 0 here; a float32 power is several times faster than np.cbrt
    f = np.where(xyz > 0.008856, xyz ** np.float32(1 / 3), xyz * np.float32(7.787) + 16 / 116)
    out = np.empty_like(f)
    out[..., 0] = 116 * f[..., 1] - 16
    out[..., 1] = 500 * (f[..., 0] - f[..., 1])
    out[..., 2] = 200 * (f[..., 1] - f[..., 2])
    return out


def _lab2rgb(lab: np.ndarray) -> np.ndarray:
    """float32 CIELAB (..., 3) -> uint8 RGB, out-of-gamut colours clipped (as skimage)."""
    f = np.empty_like(lab)
    f[..., 1] = (lab[..., 0] + 16) / 116
    f[..., 0] = f[..., 1] + lab[..., 1] / 500
    f[..., 2] = np.maximum(f[..., 1] - lab[..., 2] / 200, 0)  # skimage: Z < 0 -> 0
    xyz = np.where(f > 0.2068966, f**3, (f - np.float32(16 / 116)) / np.float32(7.787))
    rgb_from_xyz = np.linalg.inv(_XYZ_FROM_RGB) * _WHITE_D65
    lin = xyz @ rgb_from_xyz.T.astype(np.float32)
    np.clip(lin, 0, 1, out=lin)  # skimage clips after the curve: the same values
    srgb = np.where(lin > 0.0031308, 1.055 * lin ** np.float32(1 / 2.4) - 0.055, lin * 12.92)
    return _to_uint8(srgb, 255.0)


class MacenkoNormaliser(Normaliser):
    """Macenko normalisation: each image's own H and E concentrations, rescaled so their
    99th percentiles match the target's, re-expressed with the target's stain vectors.
    An image whose own estimate fails is returned unchanged."""

    method = "macenko"
    _keys = frozenset({"he", "max_conc", "io", "alpha", "beta"})

    @classmethod
    def fit(
        cls, tiles: Any, *, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15
    ) -> MacenkoNormaliser:
        x = _rgb(tiles, uint8=True)
        _tissue_check(x, io, beta, 500)
        est = macenko(_strided(x, _MAX_FIT_PIXELS)[None], io=io, alpha=alpha, beta=beta)
        if not est.ok:
            raise ConfigError(f"normalisation target has no usable H&E stain: {est.reason}")
        return cls(
            {
                "he": est.he.tolist(),
                "max_conc": est.max_conc.tolist(),
                "io": io,
                "alpha": alpha,
                "beta": beta,
            }
        )

    @classmethod
    def _validate(cls, target: Mapping[str, Any]) -> dict[str, Any]:
        t = {
            "he": _floats(target, "he", (3, 2), cls.method),
            "max_conc": _floats(target, "max_conc", (2,), cls.method),
            **{k: _floats(target, k, (), cls.method) for k in ("io", "alpha", "beta")},
        }
        if min(t["max_conc"]) <= 0 or t["io"] <= 0 or not 0 <= t["alpha"] < 50:
            raise ConfigError(
                f"macenko target: need max_conc > 0, io > 0 and 0 <= alpha < 50, got {t}"
            )
        return t

    def apply_with_status(self, rgb: Any) -> tuple[np.ndarray, bool, str]:
        x = _rgb(rgb, uint8=True)
        batch = x.reshape((-1, *x.shape[-3:]))
        out = np.empty_like(batch)
        failures = []
        for i, image in enumerate(batch):
            out[i], reason = self._one(image)
            if reason:
                failures.append(f"image {i}: {reason}" if x.ndim == 4 else reason)
        return out.reshape(x.shape), not failures, "; ".join(failures)

    def _one(self, image: np.ndarray) -> tuple[np.ndarray, str]:
        t = self._target
        od = _od(image.reshape(-1, 3), t["io"])
        est, conc = _estimate(od, alpha=t["alpha"], beta=t["beta"], min_pixels=500)
        if conc is None:
            return image, est.reason
        conc *= (np.asarray(t["max_conc"]) / est.max_conc)[:, None]
        out = t["io"] * np.exp(-(np.asarray(t["he"]) @ conc))
        return _to_uint8(out.T.reshape(image.shape), 1.0), ""


class ReinhardNormaliser(Normaliser):
    """Reinhard et al. 2001: per-channel mean and standard deviation in CIELAB
    (scikit-image's D65 conversion, which torchstain's numpy code reproduces) matched to
    the target's, over all pixels of an image. A uniform image is returned unchanged."""

    method = "reinhard"
    _keys = frozenset({"mean", "std"})

    @classmethod
    def fit(cls, tiles: Any) -> ReinhardNormaliser:
        x = _rgb(tiles, uint8=True)
        _tissue_check(x, 240.0, 0.15, 500)
        lab = _rgb2lab(_strided(x, _MAX_FIT_PIXELS)).astype(np.float64)
        return cls({"mean": lab.mean(axis=0).tolist(), "std": lab.std(axis=0).tolist()})

    @classmethod
    def _validate(cls, target: Mapping[str, Any]) -> dict[str, Any]:
        t = {k: _floats(target, k, (3,), cls.method) for k in ("mean", "std")}
        if min(t["std"]) <= 0:
            raise ConfigError(f"reinhard target: std must be > 0, got {t['std']}")
        return t

    def apply_with_status(self, rgb: Any) -> tuple[np.ndarray, bool, str]:
        x = _rgb(rgb, uint8=True)
        batch = x.reshape((-1, *x.shape[-3:]))
        lab = _rgb2lab(batch)
        mean = lab.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
        std = lab.std(axis=(1, 2), keepdims=True, dtype=np.float64)
        flat = (std < 1e-6).any(axis=(1, 2, 3))
        gain = np.asarray(self._target["std"]) / np.where(std < 1e-6, 1.0, std)
        offset = np.asarray(self._target["mean"]) - mean * gain
        lab *= gain.astype(np.float32)
        lab += offset.astype(np.float32)
        out = _lab2rgb(lab)
        out[flat] = batch[flat]
        failures = [
            f"image {i}: uniform image" if x.ndim == 4 else "uniform image"
            for i in np.flatnonzero(flat)
        ]
        return out.reshape(x.shape), not failures, "; ".join(failures)


#: Stain normalisation methods by name.
NORMALISERS: dict[str, type[Normaliser]] = {
    MacenkoNormaliser.method: MacenkoNormaliser,
    ReinhardNormaliser.method: ReinhardNormaliser,
}


def _cls(method: Any) -> type[Normaliser]:
    try:
        return NORMALISERS[method]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown stain normalisation method {method!r}; choose one of {', '.join(NORMALISERS)}"
        ) from None


def fit_normaliser(method: str, tiles: Any) -> Normaliser:
    """A ``method`` normaliser (a key of :data:`NORMALISERS`) fitted on target ``tiles``
    (uint8 RGB, pooled). ``ConfigError`` when the tiles hold no (H&E) tissue."""
    return _cls(method).fit(tiles)


def normaliser_from_target(stored: Mapping[str, Any]) -> Normaliser:
    """The normaliser of a stored target ``{"method": ..., "target": {...}}`` (what
    :func:`save_target` writes). ``ConfigError`` for an unknown or malformed one."""
    if not isinstance(stored, Mapping) or not isinstance(stored.get("target"), Mapping):
        raise ConfigError(
            'a stain normalisation target must be {"method": ..., "target": {...}}, '
            f"got {type(stored).__name__}"
        )
    version = stored.get("schema_version", _TARGET_SCHEMA)
    if version != _TARGET_SCHEMA:
        raise ConfigError(
            f"stain normalisation target has schema_version {version!r}; this wsi reads "
            f"{_TARGET_SCHEMA}"
        )
    return _cls(stored.get("method"))(stored["target"])


def save_target(normaliser: Normaliser, path: str | os.PathLike[str]) -> Path:
    """Write ``normaliser``'s target to ``path`` as JSON (atomically); returns ``path``."""
    stored = {
        "schema_version": _TARGET_SCHEMA,
        "method": normaliser.method,
        "target": normaliser.target,
    }
    return write_json(path, stored)


def load_target(path: str | os.PathLike[str]) -> Normaliser:
    """The normaliser stored at ``path`` by :func:`save_target`; ``ConfigError`` naming
    the file when it is missing, unreadable or not a valid target."""
    fix = (
        "re-create it with `wsi stain-target STORES... --method macenko --out FILE` "
        "(or save_target(fit_normaliser(method, tiles), path))"
    )
    try:
        stored = read_json(path)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: stain normalisation target not found; {fix}") from err
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{path}: not a readable stain normalisation target ({err}); {fix}"
        ) from err
    try:
        return normaliser_from_target(stored)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}; {fix}") from err


def _hed_scaled(x: np.ndarray, scale: np.ndarray, shift: Any = 0.0) -> np.ndarray:
    """uint8 RGB with scikit-image's HED concentrations (``rgb2hed``) times ``scale`` plus
    ``shift``, back through ``hed2rgb``. Unlike ``rgb2hed`` the negative concentrations of
    colours outside the H, E, D cone are kept, so scale 1 and shift 0 give ``x`` back
    (``rgb2hed`` clips them to 0, which changes some real H&E pixels by up to 74 levels)."""
    od = _HED_OD_LUT[x]  # natural OD: skimage's normalised values times ln(1e6)
    hed = od @ _HED_FROM_RGB.astype(np.float32)
    hed = hed * scale.astype(np.float32) + np.float32(_LN_1E6) * np.asarray(shift, np.float32)
    rgb = np.exp(-(hed @ _RGB_FROM_HED.astype(np.float32)))
    return _to_uint8(rgb, 255.0)


def hed_jitter(
    rgb: Any, rng: np.random.Generator, *, sigma: float = 0.05, bias: float = 0.05
) -> np.ndarray:
    """HED stain augmentation (Tellez et al. 2018): per image, each of scikit-image's H,
    E and D channels (``rgb2hed``: OD / ln(1e6)) is scaled by ``1 + U(-sigma, sigma)``
    and shifted by ``U(-bias, bias)``. uint8 in, uint8 of the same shape out; the same
    ``rng`` state gives the same result.

    In these units a bias of 0.05 is an OD shift of about 0.7, a strong change (a mean
    20 to 75 grey levels on real H&E tiles, glass turning tinted); with ``sigma`` 0.05,
    ``bias`` 0.01 changes them by about 5 to 20 and ``bias`` 0 by 3 or less."""
    x = _rgb(rgb, uint8=True)
    n = x.shape[0] if x.ndim == 4 else 1
    shape = (n, 1, 1, 3) if x.ndim == 4 else (1, 1, 3)
    scale = rng.uniform(1.0 - sigma, 1.0 + sigma, size=shape)
    shift = rng.uniform(-bias, bias, size=shape)
    return _hed_scaled(x, scale, shift)


def hed_shift(rgb: Any, h: float = 1.0, e: float = 1.0, d: float = 1.0) -> np.ndarray:
    """``rgb`` (uint8) with scikit-image's H, E and D concentrations multiplied by ``h``,
    ``e`` and ``d``: a deterministic change of staining (another lab, in tests)."""
    return _hed_scaled(_rgb(rgb, uint8=True), np.array([h, e, d]))
