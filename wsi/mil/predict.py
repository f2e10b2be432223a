"""Predict slides with a trained model: ``predictions/<model>/`` in each store.

Every fold model scores the slide. Binary: their calibrated positive-class log-odds are
averaged (the prediction, and its probability) and the standard deviation of the folds'
probabilities is reported (the uncertainty); the decision compares the log-odds with the
model's operating point. Other tasks write what :func:`wsi.mil.outcomes.prediction_fields`
says (class probabilities and the screening decision; a risk, its group and a survival
curve; a value and its spread across folds).

    predictions/<model>/attention        float32 (N, F): raw attention of each fold's head
    predictions/<model>/attention_mean   float32 (N,): per-fold softmax over tiles, averaged
    predictions/<model>/attention_classes  float32 (N, C): the same per class (heads with
                        one attention branch per class, e.g. clam_mb, only)
    predictions/<model>/evidence  float32 (N,): each tile's contribution to the calibrated
                        slide score of the shown class (binary: the positive class's
                        log-odds; classes: the decided class), fold mean; heads that give
                        contributions only (abmil, clam_sb, clam_mb, additive, mean; see
                        wsi.mil.evidence)
    predictions/<model>/evidence_classes  float32 (N, C): the same for every class, beside
                        attention_classes
    attrs of the group: probability, log_odds, probability_std, fold_probabilities,
                        decision, positive, threshold (and in log-odds),
                        target_sensitivity, model, model_id, encoder, weights_sha256,
                        tiles, evidence (what predict_store returns)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st
from wsi.errors import ConfigError, StoreError
from wsi.mil.calibration import expit, log_odds
from wsi.mil.tasks import Task
from wsi.store import params_hash

__all__ = ["TrainedModel", "load_model", "predict_store", "predict_patient"]

log = logging.getLogger(__name__)


class TrainedModel:
    """A trained model as ``load_model`` reads it: the fold heads and the model card.

    Attributes:
        folder: the model folder, as given to ``load_model``.
        card: ``model.json`` as a dict: ``name``, ``model_id`` (16 hex digits of the
            fold weights' sha256), ``task`` (``positive`` / ``negative`` class names),
            ``encoder`` (``name``, ``weights_sha256``), ``head`` (``name``, ``hparams``),
            ``in_dim`` (feature dimension D), ``folds`` (per fold: ``dir``,
            ``temperature``, ``threshold_log_odds``), ``operating_point``
            (``threshold`` as a probability, ``threshold_log_odds``,
            ``target_sensitivity``), ``metrics``, ``training`` (the ``TrainConfig``).
        heads: one torch module per fold, in eval mode on the CPU, in the card's fold
            order; each maps a bag (N, D) float32 to logits and raw attention.

    ``name`` is ``card["name"]``: the folder's name when it was trained (renaming the
    folder later does not change it). Stores hold its prediction in
    ``predictions/<name>``.

    Example::

        model = wsi.load_model("models/abmil")
        model.name, len(model.heads), model.card["operating_point"]["threshold"]
    """

    def __init__(self, folder: Path, card: dict[str, Any], heads: list[Any]) -> None:
        self.folder = folder
        self.card = card
        self.heads = heads
        self.task = Task.from_card(card["task"])

    @property
    def name(self) -> str:
        """The model's name (``card["name"]``), which names ``predictions/<name>``."""
        return str(self.card["name"])

    @property
    def reference(self) -> Any:
        """The training tiles' reference (``wsi.mil.reference``), None where none was saved;
        read once."""
        if not hasattr(self, "_reference"):
            from wsi.mil.reference import load_reference

            self._reference = load_reference(self.folder)
        return self._reference


def slide_shift(model: TrainedModel, store: Path, feats: np.ndarray) -> dict[str, Any]:
    """The site-shift check of one slide against the model's training slides."""
    from wsi.mil.shift import check_slide, slide_measures, slide_stain

    card = model.card.get("shift")
    if not card:
        return check_slide(None, {})
    stain, why = slide_stain(store)
    ref = model.reference
    values = slide_measures(card, feats, stain, ref, None if ref is None else ref.centre)
    return check_slide(card, values, why)


def _merge_shift(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """A patient's shift check: failed where any of its slides failed."""
    failed = [c for c in checks if c["status"] == "failed"]
    if failed:
        names = sorted({n for c in failed for n in c["failed"]})
        return {**failed[0], "failed": names, "slides_failed": len(failed)}
    passed = [c for c in checks if c["status"] == "passed"]
    return passed[0] if passed else checks[0]


def load_model(folder: str | os.PathLike[str]) -> TrainedModel:
    """Load a model folder written by ``wsi.train_model`` (``wsi train``).

    Every fold's weights are checked against the sha256 in its ``card.json`` and loaded
    strictly, on the CPU.

    Args:
        folder: the model folder, the one with ``model.json``.

    Returns:
        The ``TrainedModel``: its fold heads and card.

    Raises:
        ConfigError: ``folder`` has no ``model.json``; or the folder is incomplete or
            damaged (unreadable JSON, a missing fold folder or key, a fold's
            ``model.safetensors`` missing): train it again; or a fold's weights were
            changed after training (their sha256 is not the card's, or they are not a
            safetensors file of the card's head): "weights do not match the model card:
            the file was changed", naming the file.

    Example::

        model = wsi.load_model("models/abmil")
        wsi.predict_store("stores/s1.zarr", model)
    """
    from wsi.mil.train import load_fold

    path = Path(folder)
    card_path = path / "model.json"
    if not card_path.exists():
        raise ConfigError(f"{path}: no model.json; is this a folder written by `wsi train`?")
    try:
        card = json.loads(card_path.read_text())
        heads = []
        for fold in card["folds"]:
            fold_dir = path / fold["dir"]
            fold_card = json.loads((fold_dir / "card.json").read_text())
            n_out = int(card.get("n_outputs", 2))  # models before tasks: two classes
            heads.append(load_fold(fold_dir, fold_card, int(card["in_dim"]), n_out))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(
            f"{path}: the model folder is incomplete or damaged ({type(err).__name__}: {err}). "
            "Train it again."
        ) from err
    return TrainedModel(path, card, heads)


def _attention_vector(att: Any, n: int, positive: int = 1) -> np.ndarray:
    """One raw score per tile: multi-branch heads give the positive class's branch."""
    a = att.float().numpy()
    if a.ndim == 2:
        a = a[:, positive] if a.shape[1] > positive else a[:, 0]
    return np.asarray(a.reshape(n), dtype=np.float32)


def _normalised(a: np.ndarray, weights: bool) -> np.ndarray:
    """Attention that sums to 1 over tiles: softmax of raw scores, or (TransMIL, whose
    class-token attention is already a Nystrom-approximated weight) clipped at 0."""
    if weights:
        w = np.clip(a, 0, None)
        return w / w.sum() if w.sum() > 0 else np.full_like(a, 1.0 / len(a))
    e = np.exp(a - a.max())
    return np.asarray(e / e.sum())


def predict_store(
    store: str | os.PathLike[str], model: TrainedModel, *, overwrite: bool = False
) -> dict[str, Any]:
    """Score one store with every fold of ``model``; write and return the prediction.

    Each fold head scores the store's features (every tile); the folds' calibrated
    positive-class log-odds are averaged, and the slide is called positive when that mean
    is at least the model's operating point (``threshold_log_odds``). Writes, in the store:

    - ``predictions/<model.name>/attention``: float32 (N, F), each fold's raw attention
      per tile (F folds; multi-branch heads: the positive class's branch);
    - ``predictions/<model.name>/attention_mean``: float32 (N,), each fold's attention
      normalised over the tiles (softmax; TransMIL: clipped at 0), averaged; sums to 1;
    - ``predictions/<model.name>/evidence``: float32 (N,), for heads that give per-tile
      contributions (``head.gives_contributions``): each tile's contribution to the
      calibrated slide score of the shown class, on an absolute scale (binary:
      ``(c_pos - c_neg) / T``, a share of the calibrated log-odds; see
      ``wsi.mil.evidence``), averaged over the folds. Summed over the tiles it is the
      fold-mean calibrated score less the classifier-bias terms. Heads with one attention
      branch per class also get ``evidence_classes`` (N, C), every class's;
    - the returned dict as that group's attrs.

    Row i belongs to the tile at ``tiles/coords[i]`` (level-0 ``(x, y)``, pixels). A
    complete prediction of the same model on the same features is not recomputed: its
    stored attrs are returned.

    Args:
        store: a slide store with complete features of the model's encoder
            (``model.card["encoder"]["name"]``), made with the weights it was trained on.
        model: a loaded model (``wsi.load_model``), not a folder path.
        overwrite: replace a ``predictions/<model.name>`` made by another model of the
            same name or from other features.

    Returns:
        A dict: ``model`` (name), ``model_id``, ``encoder``, ``weights_sha256`` (of the
        encoder weights), ``probability`` (calibrated, 0..1: the sigmoid of
        ``log_odds``), ``probability_std`` (standard deviation of the folds'
        probabilities), ``fold_probabilities`` (list, fold order), ``log_odds`` (mean of
        the folds' calibrated log-odds), ``decision`` (the class name:
        ``model.card["task"]["positive"]`` or ``["negative"]``), ``positive`` (bool),
        ``threshold`` (operating point as a probability), ``threshold_log_odds``,
        ``target_sensitivity``, ``tiles`` (N); ``evidence``: None for heads without
        contributions, else a dict of ``shown`` (the class, or output, the evidence is
        for), ``unit``, ``scale`` (the model's evidence scale from its card, None for a
        model trained without one), ``scale_from`` and ``sum`` (the evidence summed over
        the tiles).

    Raises:
        StoreError: ``store`` is not a slide store; it has no complete features of the
            model's encoder, or they come from other weights than the model was trained
            on, or it holds no tiles; or ``predictions/<model.name>`` exists with other
            parameters (another model of this name, or features embedded again) and
            ``overwrite`` is False.

    Example::

        model = wsi.load_model("models/abmil")
        result = wsi.predict_store("stores/s1.zarr", model)
        result["decision"], round(result["probability"], 3), result["probability_std"]
    """
    path = Path(store)
    st.open_store(path, mode="r")  # not a store: say so before taking its lock
    with st.store_lock(path):  # one writer per store; a second is refused
        return _predict_locked(path, model, overwrite)


@dataclass
class _Input:
    """One store's features, checked against the model, and its current prediction."""

    path: Path
    group: Any
    feats: np.ndarray
    sha: str
    features_hash: str  #: params hash of its features stage


def _read_input(path: Path, model: TrainedModel) -> _Input:
    from wsi.embed import features_of

    encoder = model.card["encoder"]["name"]
    group = st.open_store(path, mode="r+")
    _, emb_key, _ = st.features_keys(encoder)
    feats = features_of(path, encoder)  # raises if the features are missing
    sha = group[emb_key].attrs.get("weights_sha256")
    if sha != model.card["encoder"]["weights_sha256"]:
        raise StoreError(
            f"{path}: its {encoder!r} features come from other weights (sha256 "
            f"{str(sha)[:12]}) than the model was trained on "
            f"({model.card['encoder']['weights_sha256'][:12]}). Re-embed the store with the "
            "model's encoder weights."
        )
    _check_stain(path, group, model)
    if len(feats) == 0:
        raise StoreError(f"{path}: the store holds no tiles; there is nothing to predict.")
    features = st.stage_entry(group, st.features_keys(encoder)[0]) or {}
    return _Input(path, group, feats, str(sha), str(features.get("params_hash")))


def _check_stain(path: Path, group: Any, model: TrainedModel) -> None:
    """Features of other stain preprocessing than the model's are refused, never mixed."""
    from wsi.embed import stain_normalisation_of
    from wsi.mil.train import STAIN_TARGET_FILE

    encoder = model.card["encoder"]["name"]
    have = stain_normalisation_of(group, encoder)
    want = model.card["encoder"].get("stain_normalisation")
    want_id = {k: want[k] for k in ("method", "target_sha256")} if want else None
    if have != want_id:

        def words(x: dict[str, Any] | None) -> str:
            return (
                "no stain normalisation"
                if not x
                else (f"{x['method']} normalisation (target {x['target_sha256'][:12]})")
            )

        fix = (
            f"Re-embed the store with `wsi embed --encoder {encoder} --stain-target "
            f"{model.folder / STAIN_TARGET_FILE} --overwrite`."
            if want
            else f"Re-embed the store with `wsi embed --encoder {encoder} --overwrite` "
            "(without --stain-target)."
        )
        raise StoreError(
            f"{path}: its {encoder!r} features were made with {words(have)}, the model "
            f"was trained on features made with {words(want_id)}. {fix}"
        )


def _current(item: _Input, model: TrainedModel, phash: str, overwrite: bool) -> Any:
    """The stored prediction when it was made by this model from these features; None
    when there is none to keep; a StoreError when another model's would be replaced."""
    stage = st.prediction_keys(model.name).stage
    entry = st.stage_entry(item.group, stage)
    if entry and st.stale_reason(item.group, stage):
        return None  # made from features redone since: redo it, nothing to keep
    if entry and entry["params_hash"] == phash and stage in item.group:
        if _gives_evidence(model) and st.prediction_keys(model.name).evidence not in item.group:
            log.info("%s: %s made before tile evidence was stored: redone", item.path, stage)
            return None
        return dict(item.group[stage].attrs)
    if entry and not overwrite:
        raise StoreError(
            f"{item.path}: {stage} exists from another model with this name. Pass --overwrite."
        )
    return None


def _predict_locked(path: Path, model: TrainedModel, overwrite: bool) -> dict[str, Any]:
    item = _read_input(path, model)
    phash = params_hash(
        {"model_id": model.card["model_id"], "features": item.features_hash, "sha": item.sha}
    )
    kept = _current(item, model, phash, overwrite)
    if kept is not None:
        return dict(kept)
    result, tiles = _score(model, item.feats, item.sha)
    _add_trust(model, result, slide_shift(model, path, item.feats))
    _write(item, model, phash, result, tiles)
    return result


def _add_trust(model: TrainedModel, result: dict[str, Any], shift: dict[str, Any]) -> None:
    """The conformal set, the shift check, the flags and the call shown (``call``)."""
    from wsi.mil.outcomes import trust_fields

    trust = trust_fields(model.task, model.card, result, shift)
    result["call"] = trust.pop("call")
    result["trust"] = trust


@dataclass
class _Tiles:
    """What a prediction stores per tile (rows in tile order)."""

    raw_att: np.ndarray  #: (N, F) raw attention per fold
    norm_att: np.ndarray  #: (N,) fold mean of the normalised attention
    per_class: np.ndarray | None = None  #: (N, C) the same per class (a branch per class)
    evidence: np.ndarray | None = None  #: (N,) evidence of the shown class, fold mean
    evidence_classes: np.ndarray | None = None  #: (N, C) every class's evidence

    def part(self, start: int, end: int) -> _Tiles:
        """The rows of tiles ``start:end`` (one slide of a patient's bag)."""

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[start:end]

        return _Tiles(self.raw_att[start:end], self.norm_att[start:end],
                      cut(self.per_class), cut(self.evidence),
                      cut(self.evidence_classes))  # fmt: skip


def _gives_evidence(model: TrainedModel) -> bool:
    return all(bool(getattr(h, "gives_contributions", False)) for h in model.heads)


def _temperatures(model: TrainedModel) -> list[float]:
    """Each fold's calibration temperature: binary models keep one per fold (all the
    pooled one since tasks), other tasks one in ``calibration``."""
    if model.task.kind == "binary":
        return [float(f["temperature"]) for f in model.card["folds"]]
    t = float(model.card.get("calibration", {}).get("temperature", 1.0))
    return [t] * len(model.heads)


def _evidence(
    model: TrainedModel, contributions: list[np.ndarray], shown: int, per_class: bool
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Fold-mean tile evidence of the shown output (N,), every class's (N, C) when
    ``per_class``, and the record of it for the prediction's attrs."""
    from wsi.mil.evidence import UNIT_CLASSES, UNIT_VALUE, class_evidence, tile_evidence

    kind = model.task.kind
    temps = _temperatures(model)
    ev = np.mean(
        [tile_evidence(kind, c, t, shown) for c, t in zip(contributions, temps, strict=True)],
        axis=0,
    )
    classes = None
    if per_class and model.task.has_classes:
        classes = np.mean(
            [class_evidence(c, t) for c, t in zip(contributions, temps, strict=True)], axis=0
        )
    card = model.card.get("evidence") or {}
    names = model.task.classes if model.task.has_classes else None
    other = "higher risk" if kind == "survival" else "a higher value"
    record = {
        "shown": names[shown] if names else other,
        "unit": card.get("unit") or (UNIT_CLASSES if names else UNIT_VALUE),
        "scale": card.get("scale"),
        "scale_from": card.get("from") if card else None,
        "sum": float(ev.sum()),
    }
    return ev, classes, record


def _score(model: TrainedModel, feats: np.ndarray, sha: str) -> tuple[dict[str, Any], _Tiles]:
    """Every fold head on one bag: the result and what is stored per tile (attention raw
    per fold, its normalised fold mean, per class where the head has a branch per class;
    the tile evidence where the heads give contributions)."""
    import torch

    bag = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    logits, atts, contributions = [], [], []
    with torch.inference_mode():
        for head in model.heads:
            out = head(bag)
            logits.append(out.logits.float().numpy())
            atts.append(out.attention.float().numpy())
            if out.contributions is not None:
                contributions.append(out.contributions.double().numpy())
    fold_logits = np.stack(logits)  # (F, C)
    result = {
        "model": model.name,
        "model_id": model.card["model_id"],
        "encoder": model.card["encoder"]["name"],
        "weights_sha256": sha,
        "task": model.task.kind,
        **_task_fields(model, fold_logits),
        "tiles": len(bag),
    }
    # the attention shown: the positive class's branch (binary), the called class's
    # (classes), the one branch of survival and regression heads
    task = model.task
    branch = 1 if task.kind == "binary" else 0
    if task.has_classes and task.kind != "binary":
        branch = task.classes.index(str(result["decision"]))
    transmil = model.card["head"]["name"] == "transmil"
    raw_att = np.stack(
        [_attention_vector(torch.from_numpy(a), len(bag), branch) for a in atts], axis=1
    )
    norm_att = np.mean([_normalised(a, weights=transmil) for a in raw_att.T], axis=0)
    tiles = _Tiles(raw_att, norm_att)
    if atts[0].ndim == 2 and atts[0].shape[1] > 1:  # one branch per class
        tiles.per_class = np.mean(
            [[_normalised(a[:, c], weights=transmil) for c in range(a.shape[1])] for a in atts],
            axis=0,
        ).T
    result["evidence"] = None
    if contributions and len(contributions) == len(model.heads):
        tiles.evidence, tiles.evidence_classes, result["evidence"] = _evidence(
            model, contributions, branch, tiles.per_class is not None
        )
    return result, tiles


def _write(
    item: _Input, model: TrainedModel, phash: str, result: dict[str, Any], tiles: _Tiles
) -> None:
    group, keys = item.group, st.prediction_keys(model.name)
    encoder = model.card["encoder"]["name"]
    st.begin_stage(
        group,
        keys.stage,
        {"model_id": model.card["model_id"]},
        phash,
        made_from=st.features_keys(encoder)[0],
    )
    st.remove_member(group, keys.stage)
    pred = group.create_group(keys.stage)
    group.create_array(keys.attention, data=tiles.raw_att.astype(np.float32))
    group.create_array(keys.attention_mean, data=tiles.norm_att.astype(np.float32))
    if tiles.per_class is not None:
        group.create_array(keys.attention_classes, data=tiles.per_class.astype(np.float32))
    if tiles.evidence is not None:
        group.create_array(keys.evidence, data=tiles.evidence.astype(np.float32))
    if tiles.evidence_classes is not None:
        group.create_array(keys.evidence_classes, data=tiles.evidence_classes.astype(np.float32))
    pred.attrs.update(result)
    st.complete_stage(
        group, keys.stage, {"tiles": len(tiles.raw_att), "decision": result["decision"]}
    )
    log.info("%s: %s -> %s", item.path, model.name, result["decision"])


def predict_patient(
    stores: Sequence[str | os.PathLike[str]], model: TrainedModel, *, overwrite: bool = False
) -> dict[str, Any]:
    """Score one patient's slides as one bag (a model trained with ``level: patient``).

    The tiles of all ``stores`` form one bag, in the order given; every fold head scores
    it, and the patient's result is written into each store's ``predictions/<model>``
    with ``patient_slides`` (the slide ids, in bag order) and ``attention_share`` (the
    slide's share of the patient's attention). Each store's ``attention_mean`` is its
    part of the patient's attention renormalised to sum to 1 over its own tiles, so each
    slide's heatmap shows where in that slide the evidence is. The tile ``evidence`` is on
    an absolute scale and is stored as it is (each slide holds its tiles' part; their sum
    over all the patient's slides is the result's ``evidence["sum"]``).

    Returns the patient's result (what every store holds, without ``attention_share``).
    Raises StoreError as ``predict_store`` does, naming the store.
    """
    from contextlib import ExitStack

    paths = [Path(s) for s in stores]
    if not paths:
        raise ConfigError("predict_patient: no stores given.")
    for path in paths:
        st.open_store(path, mode="r")  # not a store: say so before taking locks
    with ExitStack() as locks:
        for path in sorted(set(paths), key=str):  # one order: two patients never deadlock
            locks.enter_context(st.store_lock(path))
        items = [_read_input(p, model) for p in paths]
        identity = [[p.name, i.features_hash, i.sha] for p, i in zip(paths, items, strict=True)]
        phash = params_hash({"model_id": model.card["model_id"], "patient": identity})
        kept = [_current(i, model, phash, overwrite) for i in items]
        if all(k is not None for k in kept):
            result = dict(kept[0])
            result.pop("attention_share", None)
            return result
        feats = np.concatenate([i.feats for i in items])
        result, tiles = _score(model, feats, items[0].sha)
        checks = [slide_shift(model, i.path, i.feats) for i in items]
        _add_trust(model, result, _merge_shift(checks))
        result["patient_slides"] = [p.name.removesuffix(".zarr") for p in paths]
        start = 0
        for item in items:
            end = start + len(item.feats)
            part = tiles.part(start, end)
            share = float(part.norm_att.sum())
            if share > 0:
                part.norm_att = part.norm_att / share
            _write(item, model, phash, {**result, "attention_share": share}, part)
            start = end
    return result


def _task_fields(model: TrainedModel, fold_logits: np.ndarray) -> dict[str, Any]:
    """What the prediction says: binary models their calibrated log-odds, probability and
    decision at the operating point; other tasks ``outcomes.prediction_fields``."""
    from wsi.mil.outcomes import prediction_fields

    if model.task.kind != "binary":
        return prediction_fields(model.task, model.card, fold_logits)
    temps = [fold["temperature"] for fold in model.card["folds"]]
    scores = [float(log_odds(z[None], t)[0]) for z, t in zip(fold_logits, temps, strict=True)]
    score = float(np.mean(scores))  # the fold ensemble's calibrated log-odds
    probs = [float(v) for v in expit(scores)]
    op = model.card["operating_point"]
    positive = score >= op["threshold_log_odds"]
    return {
        "probability": float(expit(score)),
        "probability_std": float(np.std(probs)),
        "fold_probabilities": probs,
        "decision": model.card["task"]["positive" if positive else "negative"],
        "positive": bool(positive),
        "log_odds": score,
        "threshold": op["threshold"],
        "threshold_log_odds": op["threshold_log_odds"],
        "target_sensitivity": op["target_sensitivity"],
    }
