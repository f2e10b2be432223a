"""Site-shift check (wsi.mil.shift): thresholds from the training slides' leave-one-out
values flag about alpha of in-site slides and most shifted ones; the batch test; and what
happens with too few slides."""

from __future__ import annotations

import numpy as np
import pytest

from wsi.mil.reference import build_reference
from wsi.mil.shift import (
    ESTIMATE_FAILED,
    MEASURES,
    check_batch,
    check_slide,
    fit_shift,
    slide_measures,
)

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
            check_slide(card, slide_measures(card, b[k], s[k], ref, centre))["status"] for k in b
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


def test_a_failed_stain_estimate_flags_where_training_stains_were_estimated() -> None:
    """A slide whose stain cannot be estimated as H&E (a strong stain shift gives that, as
    does a near-white sample) fails ``stain``, saying why, when the training slides'
    stains were estimated; where failures were common in training it is "not checked"."""
    rng = np.random.default_rng(2)
    bags, stains = _site(rng, 80)
    ref = build_reference(bags, max_tiles=1000)
    why = ESTIMATE_FAILED + " (implausible stain vectors)"
    card, centre = fit_shift(list(bags), stains, bags, ref)
    values = slide_measures(card, bags["s001"], None, ref, centre)
    got = check_slide(card, values, why)
    assert got["status"] == "failed" and "stain" in got["failed"]
    assert "implausible stain vectors" in got["measures"]["stain"]["note"]
    # 20 of 80 training slides failed too: a failure says nothing, the stain is unchecked
    card, centre = fit_shift(list(bags), stains, bags, ref, stain_failures=20)
    got = check_slide(card, slide_measures(card, bags["s001"], None, ref, centre), why)
    assert "stain" not in got["failed"]
    assert got["measures"]["stain"]["note"].startswith("not checked: " + ESTIMATE_FAILED)
    # no stored pixels is never a failure
    card, centre = fit_shift(list(bags), stains, bags, ref)
    got = check_slide(card, values, "the store keeps no tile pixels")
    assert "stain" not in got["failed"]
    assert got["measures"]["stain"]["note"] == "not checked: the store keeps no tile pixels"


@pytest.mark.parametrize("n", [0, 2])
def test_fit_with_no_stain_statistics(n: int) -> None:
    rng = np.random.default_rng(3)
    bags, stains = _site(rng, 40)
    stains = {k: (v if i < n else None) for i, (k, v) in enumerate(stains.items())}
    ref = build_reference(bags, max_tiles=1000)
    card, _ = fit_shift(list(bags), stains, bags, ref)
    assert card["measures"]["stain"]["threshold"] is None
    assert "needs 3" in card["measures"]["stain"]["note"]


def test_the_report_flag_of_a_stain_that_could_not_be_estimated() -> None:
    """A failed ``stain`` measure without a value (the estimate failed) is a "Site shift"
    flag giving the estimator's reason, not a formatting error."""
    from wsi.reports.calls import Parts
    from wsi.reports.facts import Finding, _trust_flags

    rng = np.random.default_rng(4)
    bags, stains = _site(rng, 80)
    ref = build_reference(bags, max_tiles=1000)
    card, centre = fit_shift(list(bags), stains, bags, ref)
    why = ESTIMATE_FAILED + " (implausible stain vectors)"
    check = check_slide(card, slide_measures(card, bags["s001"], None, ref, centre), why)
    finding = Finding("m", "binary", "normal", Parts("binary"), None, None,
                      trust={"conformal": None, "shift": check, "flags": []})  # fmt: skip
    flags = _trust_flags(finding)
    assert [f.title for f in flags] == ["Site shift"]
    assert "implausible stain vectors" in flags[0].detail
