"""The out-of-distribution reference: tiles like the training tiles are rarely far; tiles
of another kind are nearly all far."""

from __future__ import annotations

import numpy as np
import pytest

from wsi.errors import ConfigError
from wsi.mil.reference import build_reference, far_fraction, load_reference, save_reference


def _bags(rng: np.random.Generator, centre: np.ndarray, n_slides: int) -> dict[str, np.ndarray]:
    return {
        f"s{i}": (centre + rng.normal(0, 1.0, (300, len(centre)))).astype(np.float32)
        for i in range(n_slides)
    }


def test_far_fraction_separates_seen_from_unseen(tmp_path):
    rng = np.random.default_rng(0)
    d = 32
    seen, unseen = np.zeros(d), np.full(d, 3.0)
    ref = build_reference(_bags(rng, seen, 6), max_tiles=1200, quantile=0.99)
    assert len(ref.vectors) == 1200 and len(np.unique(ref.slide_index)) == 6
    same, dist = far_fraction(_bags(rng, seen, 1)["s0"], ref)
    other, _ = far_fraction(_bags(rng, unseen, 1)["s0"], ref)
    assert same < 0.05 and other > 0.9
    assert dist.shape == (300,) and np.all(dist >= 0)
    save_reference(ref, tmp_path)
    again = load_reference(tmp_path)
    assert again is not None and again.far_distance == pytest.approx(ref.far_distance)
    assert far_fraction(_bags(rng, unseen, 1)["s0"], again)[0] > 0.9


def test_reference_needs_two_slides_and_survives_damage(tmp_path):
    with pytest.raises(ConfigError, match="two slides"):
        build_reference({"a": np.zeros((5, 4), np.float32)})
    assert load_reference(tmp_path) is None  # models saved without one
    (tmp_path / "reference.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="damaged"):
        load_reference(tmp_path)
