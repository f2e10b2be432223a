"""Site-shift check (wsi.mil.shift): thresholds from the training slides' leave-one-out
values flag about alpha of in-site slides and most shifted ones; the batch test; and what
happens with too few slides."""

from __future__ import annotations

import numpy as np
import pytest

from wsi.mil.reference import build_reference
from wsi.mil.shift import MEASURES, check_batch, check_slide, fit_shift, slide_measures

D = 16


def _site(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[dict, dict]:
    """n slides: bags of tiles around a per-slide centre, and stain vectors; ``shift``
    moves the embeddings and the stain of every slide."""
    bags, stains = {}, {}
    for i in range(n):
        centre = rng.normal(0, 0.3, D) + shift
        bags[f"s{i:03d}"] = (centre + rng.normal(0, 1, (60, D))).astype(np.float32)
        stains[f"s{i:03d}"] = list(rng.normal(0, 1, 8) + 3 * shift)
    return bags, stains


def test_in_site_slides_rarely_flagged_and_shifted_ones_mostly() -> None:
    rng = np.random.default_rng(0)
    bags, stains = _site(rng, 80)
    ref = build_reference(bags, max_tiles=1000)
    card, centre = fit_shift(list(bags), stains, bags, ref, alpha=0.05)
    assert all(card["measures"][m]["threshold"] is not None for m in MEASURES)
    new_bags, new_stains = _site(rng, 120)
    shifted_bags, shifted_stains = _site(rng, 30, shift=1.0)

    def status(b: dict, s: dict) -> list[str]:
        return [
            check_slide(card, slide_measures(card, b[k], s[k], ref, centre))["status"]
            for k in b
        ]

    in_site = status(new_bags, new_stains)
    assert in_site.count("failed") / len(in_site) <= 0.10  # nominal 5%, 120 slides
    shifted = status(shifted_bags, shifted_stains)
    assert shifted.count("failed") / len(shifted) >= 0.9
    checks = [
        check_slide(card, slide_measures(card, b, shifted_stains[k], ref, centre))
        for k, b in shifted_bags.items()
    ]
    batch = check_batch(card, checks[:10])
    assert batch["status"] == "differs" and batch["differs"]
    same = [
        check_slide(card, slide_measures(card, new_bags[k], new_stains[k], ref, centre))
        for k in list(new_bags)[:30]
    ]
    assert check_batch(card, same)["status"] == "similar"


def test_too_few_training_slides_are_not_checked_with_the_reason() -> None:
    rng = np.random.default_rng(1)
    bags, stains = _site(rng, 12)
    ref = build_reference(bags, max_tiles=500)
    card, centre = fit_shift(list(bags), stains, bags, ref, alpha=0.05)
    note = card["measures"]["stain"]["note"]
    assert card["measures"]["stain"]["threshold"] is None and "12 training slides" in note
    got = check_slide(card, slide_measures(card, bags["s000"], stains["s000"], ref, centre))
    assert got["status"] == "not checked" and "too few" in got["note"]
    assert check_slide(None, {})["status"] == "not checked"
    assert check_batch(card, [got] * 3)["status"] == "not checked"


def test_a_failed_stain_estimate_is_not_checked_for_stain_only() -> None:
    rng = np.random.default_rng(2)
    bags, stains = _site(rng, 80)
    ref = build_reference(bags, max_tiles=1000)
    card, centre = fit_shift(list(bags), stains, bags, ref)
    values = slide_measures(card, bags["s001"], None, ref, centre)
    got = check_slide(card, values, "the stain estimate failed (near-white)")
    assert got["measures"]["stain"]["note"].endswith("(near-white)")
    assert got["status"] in ("passed", "failed")  # the embedding measures still count


@pytest.mark.parametrize("n", [0, 2])
def test_fit_with_no_stain_statistics(n: int) -> None:
    rng = np.random.default_rng(3)
    bags, stains = _site(rng, 40)
    stains = {k: (v if i < n else None) for i, (k, v) in enumerate(stains.items())}
    ref = build_reference(bags, max_tiles=1000)
    card, _ = fit_shift(list(bags), stains, bags, ref)
    assert card["measures"]["stain"]["threshold"] is None
    assert "needs 3" in card["measures"]["stain"]["note"]
