"""What a report says, gathered from a slide store and a model folder.

Only allow-listed facts leave the store: the slide id, scanner vendor, level-0 size,
mpp (and where it came from), objective power, tissue area and tile counts. The slide's
path, its label and macro images and every other property stay out. Images are the main
image's thumbnail (or, where the slide file is gone, a mosaic of the stored tiles) and
tiles from ``tiles/pixels``; a features-only store (``wsi import-h5``) has no pixels, so
its picture is the tiles' places and its evidence tiles are positions only.

What the model says is read per task by ``wsi.reports.calls``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st
from wsi.errors import StoreError
from wsi.reports.calls import ClassCall, Parts, RiskCall, Screening, ValueCall, read_parts
from wsi.reports.options import ReportOptions

__all__ = ["SlideFacts", "Finding", "TileImage", "Flag", "gather", "thumbnail_of", "tissue_mm2"]

log = logging.getLogger(__name__)

#: Standardised distance below which a tile is one of the reference's own (float16 copy).
SEEN_DISTANCE = 0.05


@dataclass(frozen=True)
class Flag:
    """A plain-language warning. ``kind`` is "uncertain", "ood" or "quality"."""

    kind: str
    title: str
    detail: str


@dataclass(frozen=True)
class TileImage:
    """One tile shown as evidence: its pixels, level-0 box and score (its evidence for the
    shown class where the prediction has tile evidence, else its attention)."""

    index: int
    pixels: np.ndarray | None  #: (S, S, 3) uint8 at the tiling resolution; None: not stored
    box_l0: tuple[int, int, int, int]  #: x0, y0, x1, y1, level-0 px
    #: the tile's score: evidence (calibrated log-odds per tile) or normalised mean attention
    attention: float
    percentile: float  #: share of the slide's tiles with a lower score, 0..100
    #: the tile's evidence for the shown class (calibrated log-odds), None without evidence
    evidence: float | None = None


@dataclass(frozen=True)
class SlideFacts:
    """The allow-listed description of a slide."""

    slide_id: str
    vendor: str | None
    size_l0: tuple[int, int]
    mpp: float | None
    mpp_source: str | None
    objective_power: float | None
    tissue_mm2: float | None
    tiles: int
    tile_size: int
    tile_mpp: float | None
    thumbnail: np.ndarray  #: RGB, longer side <= 1024 px
    #: "slide", "tiles" (a mosaic of the stored tiles) or "coords" (a features-only store:
    #: the tiles' places, grey; ``size_l0`` is then the extent of its tiles)
    thumbnail_source: str
    tissue_mask: np.ndarray | None
    qc: dict[str, float] = field(default_factory=dict)  #: fraction of tiles blurred / inked
    #: the tile reader ("openslide", "pyvips") and whether it detects corrupt tile data
    reader: str | None = None
    verifies_data: bool | None = None


@dataclass(frozen=True)
class Finding:
    """The model's call on a slide and how sure it is: the parts its task has
    (``wsi.reports.calls``) and the out-of-distribution check."""

    model: str
    kind: str  #: the model's task kind (binary, multiclass, ordinal, survival, regression)
    decision: str
    parts: Parts
    far_fraction: float | None  #: share of tiles far from the training tiles; None: no reference
    far_expected: float | None  #: the share expected by chance (1 - reference quantile)
    ood_note: str | None = None  #: why the out-of-distribution check was not made
    seen_fraction: float | None = None  #: share of tiles that are training-sample tiles
    attention_of: str | None = None  #: the class whose attention branch is shown, if one
    #: the class (or output) the tile evidence is for; None: the prediction has no tile
    #: evidence, and tiles are picked by attention
    evidence_for: str | None = None
    patient_slides: tuple[str, ...] = ()  #: a patient-level call: the patient's slides
    attention_share: float | None = None  #: this slide's share of the patient's attention
    #: the call shown: the decision, or "uncertain" where a flag is up on a negative call
    call: str | None = None
    #: the prediction's trust section: conformal set, shift check, flags (None: predicted
    #: before they existed)
    trust: dict[str, Any] | None = None

    @property
    def screening(self) -> Screening | None:
        return self.parts.screening

    @property
    def classes(self) -> ClassCall | None:
        return self.parts.classes

    @property
    def risk(self) -> RiskCall | None:
        return self.parts.risk

    @property
    def value(self) -> ValueCall | None:
        return self.parts.value

    @property
    def positive(self) -> bool | None:
        """The screening call (None: the task has no screening)."""
        return None if self.screening is None else self.screening.positive


def tissue_mm2(group: Any) -> float | None:
    """Tissue area of a store in mm² (tissue mask pixels x mask mpp²); None without a mask."""
    if st.TISSUE_MASK not in group:
        return None
    arr = group[st.TISSUE_MASK]
    mpp = arr.attrs.get("mpp")
    if not mpp:
        return None
    return float(np.count_nonzero(arr[:]) * float(mpp) ** 2 / 1e6)


def _qc(group: Any, options: ReportOptions) -> dict[str, float]:
    """Fraction of tiles that are blurred, carry pen ink, or are mostly background."""
    if st.TILES_QC not in group or group[st.TILES_QC].shape[0] == 0:
        return {}
    from wsi.qc import QC_COLUMNS

    qc = np.asarray(group[st.TILES_QC][:])
    col = {name: qc[:, i] for i, name in enumerate(QC_COLUMNS)}
    return {
        "blurred": float((col["blur"] < options.blur_variance).mean()),
        "pen": float((col["pen"] > 0.05).mean()),
        "background": float((col["background"] > 0.5).mean()),
    }


def _verifies_data(pixels_attrs: dict[str, Any]) -> bool | None:
    """Whether the tile reader detected corrupt data; stores before the attr: by reader."""
    if "verifies_data" in pixels_attrs:
        return bool(pixels_attrs["verifies_data"])
    reader = pixels_attrs.get("reader")
    return None if reader is None else reader == "openslide"


def _scale(size_l0: tuple[int, int], max_px: int) -> tuple[float, int, int]:
    ds = max(size_l0) / max_px
    return ds, max(1, round(size_l0[0] / ds)), max(1, round(size_l0[1] / ds))


def _mosaic(group: Any, size_l0: tuple[int, int], max_px: int) -> np.ndarray:
    """The stored tiles pasted at their places: a thumbnail without the slide file."""
    coords = np.asarray(group[st.TILES_COORDS][:])
    pixels = group[st.TILES_PIXELS]
    foot = float(group[st.TILES_COORDS].attrs.get("footprint_l0") or pixels.shape[1])
    ds, w, h = _scale(size_l0, max_px)
    canvas = np.full((h, w, 3), 255, np.uint8)
    side = max(1, round(foot / ds))
    from wsi.slide.base import resize_rgb

    step = pixels.chunks[0]
    for start in range(0, len(coords), step):
        block = np.asarray(pixels[start : start + step])
        for (x, y), tile in zip(coords[start : start + step], block, strict=False):
            cx, cy = int(x / ds), int(y / ds)
            small = resize_rgb(tile, (side, side))[: h - cy, : w - cx]
            canvas[cy : cy + small.shape[0], cx : cx + small.shape[1]] = small
    return canvas


def _places(group: Any, size_l0: tuple[int, int], max_px: int) -> np.ndarray:
    """A features-only store's picture: its tiles' places in grey on white."""
    coords = np.asarray(group[st.TILES_COORDS][:])
    ds, w, h = _scale(size_l0, max_px)
    canvas = np.full((h, w, 3), 255, np.uint8)
    side = max(1, round(_footprint(group) / ds))
    for x, y in coords:
        cx, cy = int(x / ds), int(y / ds)
        canvas[cy : cy + side, cx : cx + side] = 215
    return canvas


def _footprint(group: Any) -> float:
    """A tile's side in level-0 px."""
    attrs = group[st.TILES_COORDS].attrs
    if attrs.get("footprint_l0"):
        return float(attrs["footprint_l0"])
    return float(group[st.TILES_PIXELS].shape[1]) if st.TILES_PIXELS in group else 1.0


def _extent(group: Any) -> tuple[int, int]:
    """Level-0 extent of a store's tiles (a features-only store has no slide size)."""
    coords = np.asarray(group[st.TILES_COORDS][:])
    if not len(coords):
        return 1, 1
    foot = _footprint(group)
    return int(coords[:, 0].max() + foot), int(coords[:, 1].max() + foot)


def thumbnail_of(
    group: Any, meta: dict[str, Any], size_l0: tuple[int, int], max_px: int = 1024
) -> tuple[Any, str]:
    """RGB thumbnail of a store's slide (longer side ``max_px``) and where it came from:
    "slide" (the main image, when the file at its recorded path is the file it was tiled
    from: same fingerprint), "tiles" (a mosaic of the stored tiles) or "coords" (a
    features-only store: the tiles' places). Never a label or macro image."""
    from wsi.errors import WsiError
    from wsi.slide import open_slide

    path = meta.get("source", {}).get("path")
    if path and Path(path).exists() and not st.same_source(meta, path):
        log.warning("%s: not the file the store was tiled from; thumbnail from tiles", path)
        path = None
    if path and Path(path).exists():
        try:
            with open_slide(path) as slide:
                if slide.dimensions == size_l0:
                    return slide.thumbnail(max_px), "slide"
                log.warning("%s: not the size the store was tiled from; using tiles", path)
        except WsiError as err:
            log.warning("thumbnail from the stored tiles: %s", err)
    if st.TILES_PIXELS not in group:
        return _places(group, size_l0, max_px), "coords"
    return _mosaic(group, size_l0, max_px), "tiles"


def _tiles(
    group: Any, order: np.ndarray, att: np.ndarray, k: int, evidence: bool = False
) -> list[TileImage]:
    """The first ``k`` tiles of ``order`` with their score ``att`` (evidence when
    ``evidence``, else attention) and its percentile within the slide."""
    coords = np.asarray(group[st.TILES_COORDS][:])
    foot = int(round(float(group[st.TILES_COORDS].attrs.get("footprint_l0") or 0)))
    pixels = group[st.TILES_PIXELS] if st.TILES_PIXELS in group else None
    ranks = np.argsort(np.argsort(att, kind="stable"), kind="stable")
    out = []
    for i in order[:k]:
        x, y = (int(v) for v in coords[i])
        out.append(
            TileImage(
                int(i),
                None if pixels is None else np.asarray(pixels[int(i)]),
                (x, y, x + foot, y + foot),
                float(att[i]),
                100.0 * float(ranks[i]) / max(1, len(att) - 1),
                float(att[i]) if evidence else None,
            )
        )
    return out


def gather(
    store: str | os.PathLike[str], model: Any, options: ReportOptions
) -> tuple[SlideFacts, Finding, list[TileImage], list[TileImage]]:
    """Facts, finding, and the tiles with the most and least evidence for the shown class
    (where the prediction has tile evidence; else the most and least attended) of one
    store (its heat grid is ``wsi.heatmap.stored_grid``'s).

    ``model`` is a loaded ``wsi.mil.predict.TrainedModel`` whose prediction is in the store
    (``wsi predict``); StoreError otherwise.
    """
    from wsi.embed import features_of
    from wsi.mil.reference import far_fraction, load_reference

    path = Path(store)
    group = st.open_store(path)
    meta = st.read_meta(group)
    stage = st.prediction_keys(model.name).stage
    if st.stage_entry(group, stage) is None:
        raise StoreError(
            f"{path}: no prediction of model {model.name!r}. Run `wsi predict {path} "
            f"--model {model.folder}` first (or `wsi run`)."
        )
    st.current_entry(group, stage, str(path))  # made from features redone since: refuse
    pred = dict(group[stage].attrs)
    if pred.get("model_id") != model.card["model_id"]:
        raise StoreError(
            f"{path}: its {stage} comes from another model with this name "
            f"({pred.get('model_id')}, now {model.card['model_id']}). "
            "Run `wsi predict --overwrite` with this model."
        )
    slide = meta.get("slide", {})
    dims = slide.get("level_dimensions")
    size_l0 = (int(dims[0][0]), int(dims[0][1])) if dims else _extent(group)
    mpp = slide.get("mpp") or {}
    pixels_attrs = dict(group[st.TILES_PIXELS].attrs) if st.TILES_PIXELS in group else {}
    thumb, thumb_source = thumbnail_of(group, meta, size_l0)
    mask = np.asarray(group[st.TISSUE_MASK][:]) > 0 if st.TISSUE_MASK in group else None
    facts = SlideFacts(
        slide_id=str(meta.get("slide_id") or path.name.removesuffix(".zarr")),
        vendor=slide.get("vendor"),
        size_l0=size_l0,
        mpp=(float(mpp["x"]) + float(mpp["y"])) / 2 if mpp.get("x") else None,
        mpp_source=mpp.get("source"),
        objective_power=slide.get("objective_power"),
        tissue_mm2=tissue_mm2(group),
        tiles=int(group[st.TILES_COORDS].shape[0]) if st.TILES_COORDS in group else 0,
        tile_size=int(pixels_attrs.get("tile_size") or 0),
        tile_mpp=pixels_attrs.get("tile_mpp"),
        thumbnail=thumb,
        thumbnail_source=thumb_source,
        tissue_mask=mask,
        qc=_qc(group, options),
        reader=pixels_attrs.get("reader"),
        verifies_data=_verifies_data(pixels_attrs),
    )
    reference = load_reference(model.folder)
    far = seen = note = None
    if reference is None:
        note = "not checked: the model was saved without a reference of training tiles"
    elif len(reference.vectors) < options.ood_min_tiles or (
        reference.slides < options.ood_min_slides
    ):
        note = (
            f"not checked: the model's reference holds {len(reference.vectors)} tiles of "
            f"{reference.slides} slides, too few to say what is unusual (needs "
            f"{options.ood_min_tiles} tiles of {options.ood_min_slides} slides or more)"
        )
    else:
        far, dist = far_fraction(features_of(path, model.card["encoder"]["name"]), reference)
        # a tile at (almost) zero distance is one of the reference's own training tiles
        seen = float((dist < SEEN_DISTANCE).mean()) if len(dist) else 0.0
    keys = st.prediction_keys(model.name)
    parts = read_parts(pred, model.card)
    finding = Finding(
        model=model.name,
        kind=parts.kind,
        decision=str(pred["decision"]),
        parts=parts,
        far_fraction=far,
        far_expected=None if far is None or reference is None else 1.0 - reference.quantile,
        ood_note=note,
        seen_fraction=seen,
        # predict shows the called class's branch of a head with one per class (clam_mb)
        attention_of=str(pred["decision"]) if keys.attention_classes in group else None,
        patient_slides=tuple(pred.get("patient_slides") or ()),
        attention_share=pred.get("attention_share"),
        call=pred.get("call"),
        trust=pred.get("trust"),
        evidence_for=(
            str((pred.get("evidence") or {}).get("shown") or pred["decision"])
            if keys.evidence in group
            else None
        ),
    )
    # "why": the tiles with the most evidence for the shown class, else the most attended
    has_evidence = keys.evidence in group
    att = np.asarray(group[keys.evidence if has_evidence else keys.attention_mean][:], np.float64)
    order = np.argsort(-att, kind="stable")
    top = _tiles(group, order, att, options.top_k, has_evidence)
    shown = {t.index for t in top}
    rest = np.array([i for i in order[::-1] if int(i) not in shown], dtype=np.int64)
    least = _tiles(group, rest, att, options.least_k, has_evidence) if options.least_k else []
    return facts, finding, top, least


def flags(facts: SlideFacts, finding: Finding, options: ReportOptions) -> list[Flag]:
    """The plain warnings of a report, most important first."""
    out: list[Flag] = _trust_flags(finding)
    why = finding.parts.uncertain(options)
    if why:
        detail = "; ".join(why)
        out.append(Flag("uncertain", "Uncertain case", detail[:1].upper() + detail[1:] + "."))
    if finding.far_fraction is not None and finding.far_fraction > options.ood_fraction:
        out.append(
            Flag(
                "ood",
                "Out of distribution",
                f"{finding.far_fraction:.0%} of the tiles lie farther from every training "
                f"tile than {1 - (finding.far_expected or 0):.0%} of training tiles lie "
                "from the tiles of other training slides. The tissue, stain, scanner or "
                "artefacts may differ from what the model was trained on.",
            )
        )
    if finding.seen_fraction is not None and finding.seen_fraction > 0.2:
        out.append(
            Flag(
                "ood",
                "Slide was in the training data",
                f"{finding.seen_fraction:.0%} of its tiles are tiles the model was trained "
                "on: this slide (or a copy) was used to train the model, so the call is not "
                "an independent opinion.",
            )
        )
    if (facts.tissue_mm2 is not None and facts.tissue_mm2 < options.min_tissue_mm2) or (
        facts.tiles < options.min_tiles
    ):
        area = "unknown" if facts.tissue_mm2 is None else f"{facts.tissue_mm2:.2f} mm²"
        out.append(
            Flag(
                "quality",
                "Little tissue",
                f"{facts.tiles} tiles, tissue area {area}: too little to trust a slide-level call.",
            )
        )
    if facts.qc.get("blurred", 0.0) > options.blur_fraction:
        out.append(
            Flag("quality", "Blur", f"{facts.qc['blurred']:.0%} of the tiles are out of focus.")
        )
    if facts.qc.get("pen", 0.0) > options.pen_fraction:
        out.append(
            Flag("quality", "Pen marks", f"{facts.qc['pen']:.0%} of the tiles carry marker ink.")
        )
    if facts.mpp_source == "override":
        out.append(
            Flag(
                "quality",
                "Resolution set by hand",
                "The resolution (mpp) was given by the user, not read from the slide. "
                "Tile sizes and areas are only as right as that value.",
            )
        )
    elif facts.mpp is None:
        out.append(Flag("quality", "Resolution unknown", "No mpp: areas cannot be given."))
    return out


_MEASURE_WORDS = {
    "stain": "stain and colour statistics (Macenko stain vectors, optical density)",
    "embedding_far": "share of tiles unlike every training tile",
    "embedding_centroid": "the slide's mean embedding",
}


def measure_words(name: str) -> str:
    """A site-shift measure in words."""
    return _MEASURE_WORDS.get(name, name)


def _trust_flags(finding: Finding) -> list[Flag]:
    """Flags of the prediction's conformal set and site-shift check."""
    trust = finding.trust or {}
    out: list[Flag] = []
    conformal = trust.get("conformal") or {}
    rate = f"{conformal.get('alpha', 0.05):.0%}"
    if conformal.get("status") == "uncertain":
        labels = " or ".join(conformal.get("set") or [])
        out.append(
            Flag(
                "uncertain",
                "Uncertain: refer",
                f"The conformal prediction set holds {labels}: at a {rate} error rate the "
                "model cannot tell which. Review the slide; do not read the call as a "
                "clean result.",
            )
        )
    elif conformal.get("status") == "atypical":
        out.append(
            Flag(
                "ood",
                "Atypical slide",
                f"The conformal prediction set is empty: at a {rate} error rate the slide "
                "conforms to none of the classes the model was trained on.",
            )
        )
    shift = trust.get("shift") or {}
    if shift.get("status") == "failed":
        parts = []
        for name in shift.get("failed") or []:
            m = (shift.get("measures") or {}).get(name) or {}
            if m.get("value") is None or m.get("threshold") is None:
                # no value: the measure failed for a reason it states (a stain that
                # could not be estimated as H&E)
                why = str(m.get("note") or "no value").removeprefix("failed: ")
                parts.append(f"{measure_words(name)} ({why})")
                continue
            parts.append(
                f"{measure_words(name)} ({m['value']:.3g}, in-site slides up to "
                f"{m['threshold']:.3g})"
            )
        out.append(
            Flag(
                "ood",
                "Site shift",
                "This slide differs from the training slides in " + "; ".join(parts) + ". "
                "Its stain, scanner or tissue may be unlike what the model was validated "
                "on: its probabilities may not hold.",
            )
        )
    return out
