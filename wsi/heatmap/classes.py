"""What a heatmap shows beyond one layer: a layer per class, and a caption per task.

For heads with one attention branch per class (CLAM-MB), ``predict_store`` writes the
fold-mean normalised attention of every class, ``predictions/<model>/attention_classes``
(N, C), and every class's tile evidence, ``evidence_classes`` (N, C); the main heat layer
is the decided class's (the one ``attention_mean`` and ``evidence`` hold).
:func:`class_layers` reads them as :class:`ClassLayers`: one ``TileScores`` and one
``HeatGrid`` per class, scaled as the options' ``normalise`` asks (the same scale as the
main layer: with "fixed" every class on the model's evidence scale). Per-class layers
exist with ``source="evidence"`` (where the prediction has evidence; else the attention's,
as the main layer falls back) and ``"attention"``; with ``"attention_raw"`` there are none.

:func:`caption` says what the attention means for the prediction's task: for survival
"where the risk comes from", for regression where the predicted value comes from, for
classes which class is shown. A binary prediction has no caption (its heatmap is as it
always was).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st
from wsi.heatmap.grid import (
    HeatGrid,
    TileScores,
    evidence_labels,
    evidence_scale_of,
    heat_grid,
    rank_scores,
    shown_source,
    tile_scores,
)

__all__ = [
    "ClassLayers",
    "NO_CLASSES",
    "class_layers",
    "caption",
    "class_caption",
    "class_slugs",
    "TASK_CAPTIONS",
]

log = logging.getLogger(__name__)

#: what the attention of a task with one output value means (legend and title text)
TASK_CAPTIONS = {
    "survival": "where the risk comes from: tiles the model weighted most in its risk score",
    "regression": (
        "where the predicted value comes from: tiles the model weighted most in its predicted value"
    ),
}


@dataclass(frozen=True)
class ClassLayers:
    """One heat layer per class (in the model's class order); empty when the prediction
    has no per-class attention. ``scores[k]`` and ``grids[k]`` are of ``classes[k]``;
    ``shown`` is the class of the main layer (the predicted class)."""

    classes: tuple[str, ...] = ()
    scores: tuple[TileScores, ...] = ()
    grids: tuple[HeatGrid, ...] = ()
    shown: str = ""
    measure: str = "attention"  #: what the layers are: "evidence" or "attention"

    def __bool__(self) -> bool:
        return bool(self.classes)

    def captions(self) -> list[str]:
        """The caption of each class's layer (:func:`class_caption`)."""
        return [class_caption(c) for c in self.classes]


#: no per-class layers
NO_CLASSES = ClassLayers()


def _prediction_attrs(group: Any, model: str) -> dict[str, Any]:
    stage = st.prediction_keys(model).stage
    return dict(group[stage].attrs) if stage in group else {}


def _class_names(attrs: dict[str, Any], count: int) -> tuple[str, ...]:
    """The class names of a prediction, in the model's order (the keys of its
    ``class_probabilities``); ``class 0`` ... when they are missing or do not match."""
    names = [str(c) for c in (attrs.get("class_probabilities") or {})]
    if len(names) != count:
        log.warning(
            "prediction %s: %d class names for %d attention branches; numbering them",
            attrs.get("model"),
            len(names),
            count,
        )
        names = [f"class {k}" for k in range(count)]
    return tuple(names)


def class_layers(
    store: str | os.PathLike[str], model: str, *, source: str, normalise: str
) -> ClassLayers:
    """The per-class layers of ``predictions/<model>`` in a store: one ``TileScores``
    and one ``HeatGrid`` per class, ``normalise`` ("fixed": evidence on the model's scale,
    as the main layer; "rank": percentiles within the slide, per class; "raw": as
    stored). ``NO_CLASSES`` without ``attention_classes`` or with ``source``
    "attention_raw". Reads the store (the prediction must be complete and current, as for
    ``tile_scores``); writes nothing."""
    main = tile_scores(store, model, source=source, normalise=normalise)  # checks it all
    group = st.open_store(Path(store))
    keys = st.prediction_keys(model)
    if keys.attention_classes not in group:
        return NO_CLASSES
    source, normalise = shown_source(group, model, source, normalise)
    if source == "evidence" and keys.evidence_classes not in group:
        source, normalise = "attention", ("rank" if normalise == "fixed" else normalise)
    if source == "attention_raw":
        log.info("%s: no per-class layers with source %r", store, source)
        return NO_CLASSES
    key = keys.evidence_classes if source == "evidence" else keys.attention_classes
    per_class = np.asarray(group[key][:], dtype=np.float64)
    if per_class.ndim != 2 or per_class.shape[0] != len(main.coords_l0):
        log.warning("%s: %s has shape %s: per-class layers left out", store, key, per_class.shape)
        return NO_CLASSES
    attrs = _prediction_attrs(group, model)
    names = _class_names(attrs, per_class.shape[1])
    scale = evidence_scale_of(attrs, per_class.ravel()) if source == "evidence" else None
    scores = []
    for k, name in enumerate(names):
        raw = per_class[:, k]
        values = rank_scores(raw) if normalise == "rank" else raw
        vmin = vmax = None
        if scale is not None:
            label, bar = evidence_labels(model, name, attrs, normalise, scale)
            if normalise == "fixed":
                vmin, vmax = 0.0, scale[0]
        else:
            what = "percentile" if normalise == "rank" else "raw"
            label, bar = f"{model} attention of {name} ({what})", f"attention, {what}"
        scores.append(
            TileScores(
                main.coords_l0,
                main.footprint_l0,
                values.astype(np.float32),
                main.slide_size_l0,
                label,
                vmin,
                vmax,
                bar,
            )
        )
    shown = str(attrs.get("predicted_class") or attrs.get("decision") or "")
    grids = tuple(heat_grid(s) for s in scores)
    return ClassLayers(names, tuple(scores), grids, shown, source)


def class_caption(name: str) -> str:
    """The caption of the layer of class ``name``."""
    return f"class shown: {name}"


def caption(store: str | os.PathLike[str], model: str) -> str:
    """What the main heat layer of ``predictions/<model>`` shows, for its task: survival
    and regression say where the risk (the predicted value) comes from, classes which
    class is shown (the predicted one); "" for binary (and predictions without a task)."""
    attrs = _prediction_attrs(st.open_store(Path(store)), model)
    kind = str(attrs.get("task") or "binary")
    if kind in TASK_CAPTIONS:
        return TASK_CAPTIONS[kind]
    if kind != "binary" and attrs.get("class_probabilities"):
        shown = attrs.get("predicted_class") or attrs.get("decision")
        return f"{class_caption(str(shown))} (the predicted class)"
    return ""


def class_slugs(classes: tuple[str, ...] | list[str]) -> list[str]:
    """File-name-safe names of ``classes`` (letters, digits, ``.``, ``_``, ``-``), unique
    (a number is added where two classes would share one)."""
    out: list[str] = []
    for k, name in enumerate(classes):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or f"class{k}"
        if slug in out:
            slug = f"{slug}_{k}"
        out.append(slug)
    return out
