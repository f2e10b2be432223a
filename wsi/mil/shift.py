"""Site-shift check: is a slide (or a batch of slides) unlike the slides a model was trained on?

Three measures per slide, each compared with the same measure of the training slides,
computed for every training slide *leaving that slide out* of the reference (so they are
what an in-site slide the model has not seen looks like):

- ``stain``: the root-mean-square z-score of the slide's stain statistics
  (``wsi.stain.stain_statistics``: Macenko H and E vectors, 99th-percentile
  concentrations, optical-density percentiles and mean colour of a sample of its tiles)
  against the training slides' mean and standard deviation;
- ``embedding_far``: the share of the slide's tiles farther from every reference tile than
  the reference's "far" distance (``wsi.mil.reference``);
- ``embedding_centroid``: the distance of the slide's mean standardised embedding from the
  training slides' mean one, per feature (root mean square).

A slide fails a measure when its value exceeds the threshold set on the training slides'
leave-one-out values: their ``ceil((n + 1)(1 - a))``-th smallest, with ``a`` the false-flag
rate ``alpha`` shared over the flagging measures (``FLAGGING``, Bonferroni), so that an
in-site slide fails any of them at most about ``alpha`` of the time (split-conformal
argument); ``embedding_far`` is reported beside them (``advisory``). With too few
training slides for that quantile the measure is "not checked", with the reason.

A batch (``wsi run``, ``wsi evaluate``, a cohort report) is compared as a whole: per
measure, a one-sided Mann-Whitney U test of the batch's values against the training
slides' (are they larger?), Bonferroni over the flagging measures; the batch "differs" below
``batch_alpha``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st

__all__ = [
    "MEASURES",
    "FLAGGING",
    "DEFAULT_SHIFT_ALPHA",
    "slide_stain",
    "fit_shift",
    "slide_measures",
    "check_slide",
    "check_batch",
    "ESTIMATE_FAILED",
]

MEASURES = ("stain", "embedding_far", "embedding_centroid")
#: The measures that flag a slide (the false-flag rate is shared over these); the others
#: are reported beside them. ``embedding_far`` (the share of tiles unlike every training
#: tile) flagged 0 of 24 slides of a shifted site in the issue that asked for this check:
#: it sees tiles the training never had, not a site whose every tile moved a little.
FLAGGING = ("stain", "embedding_centroid")
#: Share of in-site slides that may be flagged (over all measures together).
DEFAULT_SHIFT_ALPHA = 0.05
#: Batch test level (over all measures together).
DEFAULT_BATCH_ALPHA = 0.01
#: Chunks of stored tiles read for the stain statistics (evenly spread over the slide).
STAIN_CHUNKS = 4
#: Fewest batch slides for the batch test.
MIN_BATCH = 5
#: How ``slide_stain`` says that the slide's stain could not be estimated as H&E at all.
#: Where the training slides' stains were (nearly) always estimated, that fails the
#: ``stain`` measure: a stain so unlike H&E is the strongest stain shift there is (a
#: haematoxylin x1.5, eosin x0.5 site gives it), never a silent "not checked".
ESTIMATE_FAILED = "the stain estimate failed"


def slide_stain(store: str | os.PathLike[str]) -> tuple[list[float] | None, str]:
    """The stain statistics of a store's tiles (a sample of ``STAIN_CHUNKS`` chunks evenly
    spread over the slide), or None and why not (no stored pixels; a failed estimate,
    for example a near-white or pen-marked sample: the check then says so)."""
    from wsi.stain import stain_statistics

    group = st.open_store(Path(store), mode="r")
    if st.TILES_PIXELS not in group:
        return None, "the store keeps no tile pixels"
    pixels = group[st.TILES_PIXELS]
    n = int(pixels.shape[0])
    if n == 0:
        return None, "the store holds no tiles"
    chunk = int(pixels.chunks[0])
    n_chunks = math.ceil(n / chunk)
    picks = np.unique(np.linspace(0, n_chunks - 1, min(STAIN_CHUNKS, n_chunks)).astype(int))
    tiles = np.concatenate([pixels[c * chunk : min(n, (c + 1) * chunk)] for c in picks])
    vec, estimate = stain_statistics(tiles)
    if not estimate.ok:
        return None, f"{ESTIMATE_FAILED} ({estimate.reason})"
    return [float(v) for v in vec], ""


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def _quantile_threshold(values: Sequence[float], a: float) -> tuple[float | None, str]:
    v = np.sort(np.asarray([x for x in values if x is not None], np.float64))
    n = len(v)
    k = math.ceil((n + 1) * (1.0 - a))
    if k > n:
        need = math.ceil(1.0 / a) - 1
        return None, f"not checked: {n} training slides, too few to set a threshold (needs {need})"
    return float(v[k - 1]), ""


def fit_shift(
    slide_ids: Sequence[str],
    stains: dict[str, list[float] | None],
    bags: dict[str, np.ndarray],
    reference: Any,
    alpha: float = DEFAULT_SHIFT_ALPHA,
    stain_failures: int = 0,
) -> tuple[dict[str, Any], np.ndarray]:
    """The shift reference of a model (a card section) and the training slides' mean
    embedding centre (stored with the reference), from the training slides' stain
    statistics and embeddings (``bags``) and the tile ``reference``. ``stain_failures``:
    training slides whose stain could not be estimated (``ESTIMATE_FAILED``); where they
    are at most the false-flag share, a new slide's failed estimate fails ``stain``."""
    from wsi.mil.reference import far_fraction

    ids = [s for s in slide_ids if len(bags.get(s, ()))]
    a = alpha / len(FLAGGING)
    # stain: leave-one-out z-scores
    with_stain = [s for s in ids if stains.get(s) is not None]
    values: dict[str, dict[str, float]] = {m: {} for m in MEASURES}
    stain_part: dict[str, Any] = {"slides": len(with_stain)}
    if len(with_stain) >= 3:
        mat = np.asarray([stains[s] for s in with_stain], np.float64)
        total, total2 = mat.sum(axis=0), (mat**2).sum(axis=0)
        for i, sid in enumerate(with_stain):
            k = len(mat) - 1
            mean = (total - mat[i]) / k
            var = np.maximum((total2 - mat[i] ** 2) / k - mean**2, 0.0)
            values["stain"][sid] = _rms((mat[i] - mean) / _floor_std(np.sqrt(var)))
        stain_part.update(mean=mat.mean(axis=0).tolist(), std=_floor_std(mat.std(axis=0)).tolist())
    # embeddings: far fraction without the slide's own reference tiles; centroid distance
    ref_ids = sorted(s for s in bags if len(bags[s]))
    index = {s: k for k, s in enumerate(ref_ids)}
    means = {s: _mean_standard(bags[s], reference) for s in ids}
    centre = np.mean([means[s] for s in ids], axis=0) if ids else np.zeros_like(reference.mean)
    for sid in ids:
        far, _ = far_fraction(bags[sid], reference, exclude=index.get(sid))
        values["embedding_far"][sid] = far
        loo = (centre * len(ids) - means[sid]) / max(len(ids) - 1, 1)
        values["embedding_centroid"][sid] = _rms(means[sid] - loo)
    measures: dict[str, Any] = {}
    for name in MEASURES:
        vals = list(values[name].values())
        threshold, note = _quantile_threshold(vals, a)
        if name == "stain" and "mean" not in stain_part:
            threshold, note = (
                None,
                (
                    f"not checked: stain statistics of {len(with_stain)} training slides "
                    "(needs 3 or more)"
                ),
            )
        measures[name] = {
            "threshold": threshold,
            "note": note,
            "flags": name in FLAGGING,
            "training_values": vals,
        }
    measures["stain"]["estimate_failures"] = int(stain_failures)
    measures["stain"]["failed_estimate_fails"] = bool(stain_failures <= a * max(len(ids), 1))
    card = {
        "method": "leave-one-out values of the training slides; threshold at their "
        "split-conformal quantile for a false-flag rate of alpha shared over the measures",
        "alpha": alpha,
        "batch_alpha": DEFAULT_BATCH_ALPHA,
        "slides": len(ids),
        "measures": measures,
        "stain": stain_part,
    }
    return card, np.asarray(centre, np.float32)


def _mean_standard(features: np.ndarray, reference: Any) -> np.ndarray:
    """The mean of a slide's embeddings standardised with the reference's mean and std."""
    x = (np.asarray(features, np.float32) - reference.mean) / reference.std
    return np.asarray(x.mean(axis=0), np.float64)


def _floor_std(sd: np.ndarray) -> np.ndarray:
    """Standard deviations floored so a near-constant statistic cannot dominate."""
    sd = np.asarray(sd, np.float64)
    return np.maximum(sd, 0.1 * float(np.median(sd)) + 1e-6)


def slide_measures(
    card: dict[str, Any],
    features: np.ndarray,
    stain: list[float] | None,
    reference: Any,
    centre: np.ndarray | None,
) -> dict[str, float | None]:
    """A new slide's value of each measure (None where it cannot be computed)."""
    from wsi.mil.reference import far_fraction

    out: dict[str, float | None] = dict.fromkeys(MEASURES)
    part = card.get("stain", {})
    if stain is not None and "mean" in part:
        z = (np.asarray(stain, np.float64) - np.asarray(part["mean"])) / np.asarray(part["std"])
        out["stain"] = _rms(z)
    if reference is not None and len(features):
        out["embedding_far"] = far_fraction(features, reference)[0]
        if centre is not None:
            out["embedding_centroid"] = _rms(_mean_standard(features, reference) - centre)
    return out


def check_slide(
    card: dict[str, Any] | None, values: dict[str, float | None], stain_note: str = ""
) -> dict[str, Any]:
    """The slide's shift check: ``status`` "passed", "failed" (``failed`` names the measures)
    or "not checked" (``note`` says why), with each measure's value and threshold."""
    if not card:
        return {
            "status": "not checked",
            "note": "the model was trained without a shift reference (train it again)",
            "failed": [],
            "measures": {},
        }
    measures: dict[str, Any] = {}
    failed, checked, notes = [], 0, []
    for name in MEASURES:
        ref = card["measures"].get(name, {})
        value, threshold = values.get(name), ref.get("threshold")
        entry: dict[str, Any] = {"value": value, "threshold": threshold}
        if threshold is None:
            entry["note"] = ref.get("note") or "not checked"
        elif (
            value is None
            and stain_note.startswith(ESTIMATE_FAILED)
            and name == "stain"
            and (ref.get("failed_estimate_fails", False))
        ):
            # unlike every training slide, whose stain was estimated: flag, say why
            entry["failed"] = True
            entry["note"] = (
                f"failed: {stain_note}; the stains of all but {ref.get('estimate_failures', 0)} "
                "training slides were estimated"
            )
            if ref.get("flags", True):
                checked += 1
                failed.append(name)
        elif value is None:
            entry["note"] = "not checked: " + (stain_note or "no value for this slide")
        else:
            entry["failed"] = bool(value > threshold)
            if ref.get("flags", True):
                checked += 1
                if entry["failed"]:
                    failed.append(name)
            else:
                entry["advisory"] = True  # reported, does not flag the slide
        if "note" in entry:
            notes.append(f"{name}: {entry['note']}")
        measures[name] = entry
    status = "failed" if failed else ("passed" if checked else "not checked")
    return {"status": status, "failed": failed, "measures": measures, "note": "; ".join(notes)}


def check_batch(card: dict[str, Any] | None, checks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The batch's shift test from its slides' checks (``check_slide`` results)."""
    from scipy.stats import mannwhitneyu

    if not card:
        return {"status": "not checked", "note": "the model has no shift reference", "tests": {}}
    if len(checks) < MIN_BATCH:
        return {
            "status": "not checked",
            "note": f"{len(checks)} slides: a batch test needs {MIN_BATCH} or more",
            "tests": {},
        }
    level = float(card.get("batch_alpha", DEFAULT_BATCH_ALPHA)) / len(FLAGGING)
    tests: dict[str, Any] = {}
    differs = []
    for name in FLAGGING:
        train = card["measures"].get(name, {}).get("training_values") or []
        batch = [c["measures"].get(name, {}).get("value") for c in checks]
        batch = [v for v in batch if v is not None]
        if len(train) < MIN_BATCH or len(batch) < MIN_BATCH:
            tests[name] = {"p_value": None, "note": "too few values to test"}
            continue
        p = float(mannwhitneyu(batch, train, alternative="greater").pvalue)
        tests[name] = {
            "p_value": p,
            "batch_median": float(np.median(batch)),
            "training_median": float(np.median(train)),
            "differs": p < level,
        }
        if p < level:
            differs.append(name)
    tested = [t for t in tests.values() if t.get("p_value") is not None]
    status = "differs" if differs else ("similar" if tested else "not checked")
    return {
        "status": status,
        "differs": differs,
        "level": level,
        "test": "one-sided Mann-Whitney U of the batch's slide values against the training "
        "slides' leave-one-out values, Bonferroni over the flagging measures",
        "flagged_slides": int(sum(c.get("status") == "failed" for c in checks)),
        "slides": len(checks),
        "tests": tests,
    }
