"""How far a slide's tiles lie from the tiles a model was trained on (out-of-distribution flag).

At training time a sample of tile embeddings from the training slides is kept beside the
model (``reference.safetensors``). For a new slide, each (sampled) tile's nearest reference
neighbour is found by Euclidean distance after standardising every feature with the
reference's mean and standard deviation (so both direction and size count). A tile is
"far" when that distance exceeds the ``quantile`` of the same distance measured between
reference tiles of *different* training slides, so about ``1 - quantile`` of the tiles of a
slide like the training slides are far by chance. A slide whose far fraction is much higher
holds tissue, stain or artefacts the model has not seen.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi._files import atomic_path
from wsi.errors import ConfigError

__all__ = ["Reference", "build_reference", "load_reference", "far_fraction", "REFERENCE_FILE"]

REFERENCE_FILE = "reference.safetensors"
_QUERY_TILES = 4096  #: tiles of a query slide compared (evenly spaced sample)
_BLOCK = 1024


@dataclass(frozen=True)
class Reference:
    """Sampled training embeddings (unit vectors after centring) and the "far" distance."""

    vectors: np.ndarray  #: (M, D) float32, standardised with ``mean`` and ``std``
    slide_index: np.ndarray  #: (M,) int32, which training slide each row came from
    mean: np.ndarray  #: (D,) float32
    std: np.ndarray  #: (D,) float32, floored so near-constant features do not dominate
    far_distance: float  #: distance (in standard deviations) above which a tile is far
    quantile: float
    #: (D,) the training slides' mean standardised embedding (site-shift check); None in
    #: references saved before it existed
    centre: np.ndarray | None = None

    @property
    def slides(self) -> int:
        """Number of training slides the sample was taken from."""
        return int(len(np.unique(self.slide_index)))

    def summary(self) -> dict[str, Any]:
        return {
            "file": REFERENCE_FILE,
            "tiles": int(len(self.vectors)),
            "slides": int(len(np.unique(self.slide_index))),
            "far_distance": self.far_distance,
            "quantile": self.quantile,
            "distance": "Euclidean on standardised features; nearest reference tile",
        }


def _standard(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.asarray((np.asarray(x, np.float32) - mean) / std, np.float32)


def _nearest(
    q: np.ndarray,
    ref: np.ndarray,
    exclude: np.ndarray | None = None,
    q_slide: np.ndarray | None = None,
) -> np.ndarray:
    """Euclidean distance of each row of ``q`` to its nearest row of ``ref`` (blockwise);
    with ``exclude``/``q_slide`` rows of the query's own slide are skipped."""
    out = np.empty(len(q), np.float32)
    r2 = (ref.astype(np.float64) ** 2).sum(axis=1)
    for i in range(0, len(q), _BLOCK):
        block = q[i : i + _BLOCK].astype(np.float64)
        d2 = (
            (block**2).sum(axis=1)[:, None] + r2[None, :] - 2.0 * (block @ ref.T.astype(np.float64))
        )
        if exclude is not None and q_slide is not None:
            d2[q_slide[i : i + _BLOCK, None] == exclude[None, :]] = np.inf
        out[i : i + _BLOCK] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def build_reference(
    bags: dict[str, np.ndarray], max_tiles: int = 4096, quantile: float = 0.99, seed: int = 0
) -> Reference:
    """A reference sample of at most ``max_tiles`` tiles, taken evenly over the slides.

    ``bags`` maps slide id to its (N, D) embeddings. Needs two slides or more (the "far"
    distance is measured between slides).
    """
    ids = [s for s in sorted(bags) if len(bags[s])]
    if len(ids) < 2:
        raise ConfigError("an out-of-distribution reference needs tiles of two slides or more")
    rng = np.random.default_rng(seed)
    per = max(1, max_tiles // len(ids))
    rows, index = [], []
    for k, sid in enumerate(ids):
        bag = bags[sid]
        take = np.sort(rng.choice(len(bag), size=min(per, len(bag)), replace=False))
        rows.append(np.asarray(bag[take], np.float32))
        index.append(np.full(len(take), k, np.int32))
    raw = np.concatenate(rows)
    slide_index = np.concatenate(index)
    mean = raw.mean(axis=0).astype(np.float32)
    sd = raw.std(axis=0)
    std = np.maximum(sd, 0.1 * float(np.median(sd)) + 1e-6).astype(np.float32)
    vectors = _standard(raw, mean, std)
    between = _nearest(vectors, vectors, exclude=slide_index, q_slide=slide_index)
    far = float(np.quantile(between, quantile))
    return Reference(vectors, slide_index, mean, std, far, quantile)


def save_reference(ref: Reference, folder: Path) -> Path:
    from safetensors.numpy import save_file

    path = folder / REFERENCE_FILE
    with atomic_path(path) as tmp:
        arrays = {
            "vectors": ref.vectors.astype(np.float16),
            "slide_index": ref.slide_index,
            "mean": ref.mean,
            "std": ref.std,
        }
        if ref.centre is not None:
            arrays["centre"] = np.asarray(ref.centre, np.float32)
        save_file(
            arrays,
            str(tmp),
            metadata={"far_distance": repr(ref.far_distance), "quantile": repr(ref.quantile)},
        )
    return path


def load_reference(folder: str | os.PathLike[str]) -> Reference | None:
    """The model folder's reference, or None where the model was saved without one."""
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / REFERENCE_FILE
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            data = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
        return Reference(
            data["vectors"].astype(np.float32),
            data["slide_index"],
            data["mean"],
            data["std"],
            float(json.loads(meta["far_distance"])),
            float(json.loads(meta["quantile"])),
            data.get("centre"),
        )
    except (KeyError, ValueError, OSError, SafetensorError) as err:
        raise ConfigError(
            f"{path}: damaged out-of-distribution reference ({err}). Retrain the model, or "
            "delete the file to report without the out-of-distribution check."
        ) from err


def far_fraction(
    features: np.ndarray, ref: Reference, exclude: int | None = None
) -> tuple[float, np.ndarray]:
    """Share of a slide's tiles farther from every reference tile than ``ref.far_distance``,
    and the nearest-neighbour distances of the tiles compared (an even sample of at most
    4096 tiles). ``exclude``: a training slide's index in the reference, whose own
    reference tiles are then left out (what that slide would look like unseen)."""
    n = len(features)
    if n == 0:
        return 0.0, np.zeros(0, np.float32)
    take = np.unique(np.linspace(0, n - 1, min(n, _QUERY_TILES)).astype(np.int64))
    q = _standard(np.asarray(features)[take], ref.mean, ref.std)
    if exclude is None:
        d = _nearest(q, ref.vectors)
    else:
        d = _nearest(q, ref.vectors, ref.slide_index, np.full(len(q), exclude, np.int32))
    return float((d > ref.far_distance).mean()), d
