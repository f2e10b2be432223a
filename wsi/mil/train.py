"""Train a MIL head on embedded stores: patient-level folds, early stopping, calibration,
an operating point for a target sensitivity, and a model card per fold and per model.

Output folder::

    <out>/splits.csv            the patient-level parts, to repeat the run exactly
    <out>/model.json            model card: encoder + weights, head, data, metrics, operating point,
                                tile evidence scale (``evidence``)
    <out>/metrics.json          per fold, pooled out-of-fold validation, held-out test
    <out>/roc.png, reliability.png
    <out>/reference.safetensors  training tiles for the out-of-distribution check
    <out>/fold_<k>/model.safetensors, card.json, train_log.csv

A training writes into ``.<name>.training-<pid>`` beside ``<out>`` (started from a copy
of ``<out>``), and swaps it into place only when the model is complete: until then the
model already in ``<out>`` stays loadable, and a killed training leaves it as it was. A
finished fold (its ``card.json`` written last, with the same config hash) is kept when a
killed run is started again: the next training takes over the folder the killed one left.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import glob
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from wsi._files import atomic_path, sha256_file, write_json
from wsi._lock import holding, lock_file
from wsi.errors import ConfigError
from wsi.mil import metrics as m
from wsi.mil.calibration import expit, fit_calibration, log_odds
from wsi.mil.data import (
    BagSource,
    LabelTable,
    SlideLabel,
    check_stores,
    read_labels,
    stain_preprocessing,
)
from wsi.mil.evaluate import evaluate, plot_reliability, plot_roc
from wsi.mil.reference import build_reference, save_reference
from wsi.mil.shift import ESTIMATE_FAILED, fit_shift, slide_stain
from wsi.mil.splits import Splits, make_splits, read_splits, write_splits
from wsi.mil.tasks import KINDS, Task
from wsi.progress import Progress
from wsi.store import params_hash, store_path

__all__ = ["TrainConfig", "train_model", "FoldModel"]

log = logging.getLogger(__name__)

#: the model folder's copy of the stain normalisation target its features were made with
STAIN_TARGET_FILE = "stain_target.json"

#: what a bag is: the tiles of one slide, or of all the slides of one patient
LEVELS = ("slide", "patient")

INTENDED_USE = (
    "Research software that assists a pathologist; it never replaces one. A negative call "
    "does not rule out disease: the operating point favours sensitivity."
)


@dataclass(frozen=True)
class TrainConfig:
    """How a MIL head is trained and its operating point chosen (see ``wsi.mil.train``).

    Section ``train`` of a config file maps onto it one to one. Fields:

    - ``model``: the head, a name of ``wsi.mil.heads.HEADS`` as written there:
      ``"abmil"`` (default), ``"clam_sb"``, ``"clam_mb"``, ``"transmil"``, ``"additive"``,
      ``"mean"``, ``"max"``.
    - ``folds``: patient-level, label-stratified cross-validation folds (at least 2,
      checked when the splits are made); one model per fold. Ignored when labels.csv has
      a ``split`` column (one fixed fold).
    - ``test_fraction``: fraction of the patients of each class held out as a test part
      (0 <= f < 0.9, at least one patient per class when above 0); 0: no test part.
      Also ignored with a ``split`` column (its ``test`` rows are the test part).
    - ``epochs``: most passes over the training bags per fold (>= 1); one bag per
      optimiser step, in a random order.
    - ``patience``: epochs without a lower validation loss before a fold stops (>= 1); the
      weights of the lowest validation loss are kept.
    - ``min_epochs``: a fold never stops early before this many epochs (CLAM's
      ``stop_epoch``; capped at ``epochs``). Attention MIL on small lesions often sits at
      chance for several epochs before it finds them: with patience alone, 3 of 5 folds
      of the benchmark's default cohort stopped at chance (validation AUROC 0.25-0.56)
      while the other two reached 1.00.
    - ``lr``, ``weight_decay``: AdamW learning rate and weight decay.
    - ``seed``: the splits, and per fold k (as ``seed + k``) the weight initialisation,
      the bag order and the tile subsampling; also the out-of-distribution reference.
    - ``target_sensitivity``: the operating point, in (0, 1]: the threshold on the pooled
      out-of-fold validation slides' calibrated log-odds whose sensitivity is at least
      this, with the highest specificity.
    - ``instance_weight``: CLAM heads only: the loss is ``(1 - w) * bag loss + w *
      instance clustering loss``.
    - ``max_train_tiles``: in training only, a bag of more tiles is randomly subsampled to
      this many tiles at each step (validation and prediction use every tile); None: all.
    - ``stain_augment``: train on stain-jittered views (``wsi embed --stain-views N``): each
      epoch, each tile as stored or as one of its views at random (validation, calibration
      and prediction use the tiles as stored).
    - ``hparams``: keyword arguments of the head (e.g. ``{"hidden": 256, "attn_dim": 128,
      "dropout": 0.25}`` for ``abmil``); an unknown one is a ``ConfigError`` when the
      head is built.
    - ``task``: the task kind (``wsi.mil.tasks.KINDS``: ``binary``, ``multiclass``,
      ``ordinal``, ``survival``, ``regression``); None: guessed from labels.csv's columns
      (a file fitting two kinds is refused until this is set).
    - ``classes``: multiclass / ordinal: the class names, in order for ordinal grades;
      None: the labels found (ordinal: ordered by their trailing number).
    - ``ordinal``: the classes are ordered grades (quadratic-weighted kappa is reported).
    - ``negative_class``: the benign class of a multiclass / ordinal task: the screening
      decision "not this class" gets the operating point; None: a label named
      ``normal``, ``benign``, ``negative`` ... if there is exactly one, else no screening.
    - ``time_unit``: survival: the unit of ``time`` (days, weeks, months, years); required.
    - ``horizons``: survival: times (in ``time_unit``) of the time-dependent AUROC and the
      calibration; None: the quartiles of the training event times.
    - ``survival_bins``: survival: time bins of the discrete-time hazard (event-time
      quantiles of the training patients).
    - ``level``: ``"slide"`` (default): one bag per slide, metrics per slide; ``"patient"``:
      one bag per patient (the tiles of all its slides, attention across them), for labels
      given per patient; metrics per patient.

    Raises ``ConfigError`` when ``target_sensitivity`` is outside (0, 1] or ``epochs`` or
    ``patience`` is below 1; ``train_model`` refuses an unknown ``model``.

    Example::

        config = wsi.TrainConfig(model="clam_sb", folds=5, test_fraction=0.2, epochs=30,
                                 max_train_tiles=8000, hparams={"dropout": 0.25})
    """

    model: str = "abmil"  #: head name (``wsi.mil.heads.HEADS``)
    folds: int = 5  #: patient-level cross-validation folds
    test_fraction: float = 0.0  #: patients held out for testing (0: none)
    epochs: int = 50  #: at most
    patience: int = 8  #: epochs without a better validation loss before stopping
    min_epochs: int = 20  #: no early stop before this many epochs (capped at epochs)
    lr: float = 2e-4
    weight_decay: float = 1e-4
    seed: int = 0
    target_sensitivity: float = 0.95  #: operating point: sensitivity on validation data
    instance_weight: float = 0.3  #: CLAM: weight of the instance clustering loss
    max_train_tiles: int | None = None  #: subsample larger bags while training; None: all
    #: stain augmentation: every epoch each training tile is drawn as stored or as one of
    #: its HED-jittered views (the stores need ``wsi embed --stain-views N``)
    stain_augment: bool = False
    hparams: dict[str, Any] = field(default_factory=dict)  #: head hyper-parameters
    task: str | None = None  #: binary, multiclass, ordinal, survival, regression; None: guess
    classes: tuple[str, ...] | None = None  #: multiclass / ordinal class names (in order)
    ordinal: bool = False  #: the classes are ordered grades
    negative_class: str | None = None  #: benign class: screening "not this class"
    time_unit: str | None = None  #: survival: unit of the time column
    horizons: tuple[float, ...] | None = None  #: survival: times of time-dependent metrics
    survival_bins: int = 4  #: survival: time bins of the discrete-time hazard
    level: str = "slide"  #: "slide": a bag per slide; "patient": a bag per patient

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"level = {self.level!r}: use one of {', '.join(LEVELS)}")
        if self.task is not None and self.task not in KINDS:
            raise ConfigError(f"task = {self.task!r}: use one of {', '.join(KINDS)}")
        if not 2 <= self.survival_bins <= 20:
            raise ConfigError(f"survival_bins = {self.survival_bins}: must be in 2..20")
        if not 0 < self.target_sensitivity <= 1:
            raise ConfigError(f"target_sensitivity = {self.target_sensitivity}: must be in (0, 1]")
        if self.epochs < 1 or self.patience < 1:
            raise ConfigError("epochs and patience must be at least 1")
        if (
            isinstance(self.min_epochs, bool)
            or not isinstance(self.min_epochs, int)
            or (self.min_epochs < 0)
        ):
            raise ConfigError(f"min_epochs = {self.min_epochs!r}: must be a whole number >= 0")


@dataclass
class FoldModel:
    """A trained fold: its head, temperature (1 while training; every fold then gets the one
    temperature calibrated on the pooled out-of-fold logits) and the logits it gave its
    validation slides."""

    k: int
    module: Any
    temperature: float
    val_ids: list[str]
    val_logits: np.ndarray


def _stain_view(bags: Any, unit: str, rng: np.random.Generator) -> np.ndarray:
    """Stain augmentation: each tile as stored or as one of its HED-jittered views, drawn
    anew every epoch."""
    bag, views = bags[unit], bags.views(unit)
    pick = rng.integers(0, views.shape[1] + 1, len(bag))  # 0: the tile as stored
    out = bag.copy()
    jittered = pick > 0
    out[jittered] = views[np.flatnonzero(jittered), pick[jittered] - 1]
    return out


def _torch_bag(bag: np.ndarray, limit: int | None, rng: np.random.Generator) -> Any:
    import torch

    if limit is not None and len(bag) > limit:
        bag = bag[np.sort(rng.choice(len(bag), limit, replace=False))]
    return torch.from_numpy(bag)


class _PatientBags:
    """Patient-level bags: the tiles of all the slides of a patient, one after another."""

    def __init__(self, bags: BagSource, slides_of: dict[str, list[str]]) -> None:
        self.bags = bags
        self.slides_of = slides_of

    def __getitem__(self, patient_id: str) -> np.ndarray:
        return np.concatenate([self.bags[s] for s in self.slides_of[patient_id]])

    def views(self, patient_id: str) -> np.ndarray:
        return np.concatenate([self.bags.views(s) for s in self.slides_of[patient_id]])


@dataclass(frozen=True)
class _Units:
    """What the model is trained and evaluated on: slides, or patients (``level``).

    ``rows[unit]`` is the unit's label row (a patient's: its first slide's, with
    ``slide_id`` set to the patient id); ``of(slide ids)`` the units of those slides in
    order of first appearance."""

    level: str
    rows: dict[str, SlideLabel]
    unit_of: dict[str, str]  #: slide id -> unit id

    @classmethod
    def of(cls, table: LabelTable, level: str) -> _Units:
        if level == "slide":
            return cls(level, {r.slide_id: r for r in table.rows},
                       {r.slide_id: r.slide_id for r in table.rows})  # fmt: skip
        rows: dict[str, SlideLabel] = {}
        for r in table.rows:
            first = rows.setdefault(r.patient_id, dataclasses.replace(r, slide_id=r.patient_id))
            if r.target != first.target:
                raise ConfigError(
                    f"{table.path}: level: patient, but patient {r.patient_id}'s slides have "
                    f"different targets ({first.target} and {r.target}). A patient-level "
                    "model needs one target per patient: give every slide of a patient the "
                    "same one, or train with level: slide."
                )
        return cls(level, rows, {r.slide_id: r.patient_id for r in table.rows})

    def ids(self, slide_ids: list[str]) -> list[str]:
        return list(dict.fromkeys(self.unit_of[s] for s in slide_ids))

    def bags(self, bags: BagSource) -> Any:
        if self.level == "slide":
            return bags
        slides_of: dict[str, list[str]] = {}
        for sid, pid in self.unit_of.items():
            slides_of.setdefault(pid, []).append(sid)
        return _PatientBags(bags, slides_of)


def _evidence_values(module: Any, bags: Any, ids: list[str], kind: str) -> list[np.ndarray]:
    """Each slide's |tile evidence| at temperature 1 (``wsi.mil.evidence.evidence_values``);
    [] for a head without contributions."""
    import torch

    from wsi.mil.evidence import evidence_values

    if not getattr(module, "gives_contributions", False):
        return []
    module.eval()
    out = []
    with torch.inference_mode():
        for i, s in enumerate(ids):
            c = module(torch.from_numpy(bags[s])).contributions
            out.append(evidence_values(kind, c.double().numpy(), seed=i))
    return out


def _logits(module: Any, bags: Any, ids: list[str]) -> np.ndarray:
    import torch

    module.eval()
    with torch.inference_mode():
        return np.stack([module(torch.from_numpy(bags[s])).logits.float().numpy() for s in ids])


def _train_fold(
    k: int,
    train_ids: list[str],
    val_ids: list[str],
    rows: dict[str, SlideLabel],
    task: Task,
    bags: Any,
    in_dim: int,
    config: TrainConfig,
    folder: Path,
) -> FoldModel:
    import torch

    from wsi.mil.heads import build_head
    from wsi.mil.outcomes import progress_metric

    torch.manual_seed(config.seed + k)
    rng = np.random.default_rng(config.seed + k)
    module = build_head(config.model, in_dim, task.n_outputs, **config.hparams)
    opt = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    weight = task.class_weights([rows[s] for s in train_ids])
    ones = np.ones_like(weight)
    val_rows = [rows[s] for s in val_ids]
    best, best_state, wait = float("inf"), copy.deepcopy(module.state_dict()), 0
    log_rows: list[dict[str, Any]] = []
    bar = Progress(config.epochs, f"fold {k}", None, unit="epoch")
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        module.train()
        total = 0.0
        for i in rng.permutation(len(train_ids)):
            row = rows[train_ids[i]]
            label = row.y if task.has_classes else None  # CLAM's instance loss needs a class
            sid = row.slide_id
            bag = _stain_view(bags, sid, rng) if config.stain_augment else bags[sid]
            out = module(_torch_bag(bag, config.max_train_tiles, rng), label=label)
            # one bag per step: a weighted mean would divide the class weight out again
            loss = task.loss(out.logits, row, weight)
            if out.instance_loss is not None:
                loss = (
                    1 - config.instance_weight
                ) * loss + config.instance_weight * out.instance_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        val_logits = _logits(module, bags, val_ids)
        with torch.no_grad():
            t_logits = torch.from_numpy(val_logits)
            val_loss = float(
                np.mean([float(task.loss(t_logits[j], r, ones)) for j, r in enumerate(val_rows)])
            )
        val_score = progress_metric(task, val_rows, val_logits)
        log_rows.append(
            {
                "epoch": epoch,
                "train_loss": round(total / len(train_ids), 6),
                "val_loss": round(val_loss, 6),
                _SCORE_NAME[task.kind]: round(val_score, 6),
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        bar.update(1)
        bar.stage(f"train {total / len(train_ids):.4f} val {val_loss:.4f} score {val_score:.3f}")
        log.debug("fold %d epoch %d: %s", k, epoch, log_rows[-1])
        if val_loss < best - 1e-6:
            best, best_state, wait = val_loss, copy.deepcopy(module.state_dict()), 0
        else:
            wait += 1
            if wait >= config.patience and epoch + 1 >= min(config.min_epochs, config.epochs):
                break
    bar.close()
    module.load_state_dict(best_state)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "train_log.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(log_rows[0]))
        writer.writeheader()
        writer.writerows(log_rows)
    val_logits = _logits(module, bags, val_ids)
    # every task: one temperature on the pooled out-of-fold logits, once all folds are done
    return FoldModel(k, module, 1.0, val_ids, val_logits)


#: the column of train_log.csv that follows a fold's validation (``progress_metric``)
_SCORE_NAME = {"binary": "val_auroc", "multiclass": "val_macro_auroc",
               "ordinal": "val_macro_auroc", "survival": "val_c_index",
               "regression": "val_pearson_r"}  # fmt: skip


def _save_fold(fold: FoldModel, folder: Path, card: dict[str, Any]) -> None:
    """Weights (temp file, then renamed), then the card with their sha256, written last."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in fold.module.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    card["weights_sha256"] = sha256_file(folder / "model.safetensors")
    write_json(folder / "card.json", card)  # last: the fold is done


def _kept_card(path: Path, chash: str) -> dict[str, Any] | None:
    """The card of a finished fold trained on exactly this run's inputs, else None."""
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) and card.get("config_hash") == chash else None


def load_fold(folder: Path, card: dict[str, Any], in_dim: int, n_outputs: int = 2) -> Any:
    """The head of a saved fold, weights checked against its card and loaded strictly.

    Raises ConfigError naming the file: missing, or changed since training (its sha256
    is not the card's, or it is not a safetensors file of the head the card describes).
    Training writes the weights only after removing the card, so a killed run leaves no
    card that disagrees with its weights: a mismatch means the file was changed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from wsi.mil.heads import build_head

    path = folder / "model.safetensors"
    changed = f"{path}: weights do not match the model card: the file was changed"
    fix = "Restore the model folder from a copy, or train again into this folder."
    if not path.exists():
        raise ConfigError(
            f"{path}: missing, though {folder / 'card.json'} describes it (deleted or moved). "
            + fix
        )
    sha = sha256_file(path)
    if sha != card.get("weights_sha256"):
        raise ConfigError(
            f"{changed} (sha256 {sha[:12]}, the card says "
            f"{str(card.get('weights_sha256'))[:12]}). {fix}"
        )
    module = build_head(card["head"]["name"], in_dim, n_outputs, **card["head"]["hparams"])
    try:
        module.load_state_dict(load_file(str(path)), strict=True)
    except (SafetensorError, RuntimeError, ValueError, OSError) as err:
        detail = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"{changed} (it is not a safetensors file of the {card['head']['name']} head "
            f"the card describes: {detail}). {fix}"
        ) from err
    return module.eval()


def _splits(table: LabelTable, out: Path, config: TrainConfig, given: Path | None) -> Splits:
    """The given splits.csv (copied into ``out``), the one ``out`` already has, or new ones.

    Splits that contradict the config (another number of folds, a test part or none) are
    refused rather than silently used.
    """
    import shutil

    if given is not None and not given.exists():
        raise ConfigError(f"{given}: splits file not found (--splits).")
    path = given or (out / "splits.csv")
    if not path.exists():
        splits = make_splits(table, config.folds, config.test_fraction, config.seed)
        write_splits(splits, table, out / "splits.csv")
        return splits
    splits = read_splits(path, table)
    if not table.has_split and (
        splits.folds != config.folds or bool(splits.test) != (config.test_fraction > 0)
    ):
        raise ConfigError(
            f"{path}: {splits.folds} folds and {len(splits.test)} test slides, but the run "
            f"asks for {config.folds} folds and test fraction {config.test_fraction}. Train "
            "into a new folder, or ask for what the splits hold."
        )
    if given is not None and given.resolve() != (out / "splits.csv").resolve():
        shutil.copyfile(given, out / "splits.csv")
    log.info("using the splits in %s", path)
    return splits


def _counts(table: LabelTable, ids: list[str]) -> dict[str, Any]:
    """Slides and patients of ``ids``, with the task's counts: positive slides (binary),
    slides per class, or patients with an event (survival)."""
    rows = [r for r in table.rows if r.slide_id in set(ids)]
    counts: dict[str, Any] = {"slides": len(rows), "patients": len({r.patient_id for r in rows})}
    task = table.task
    if task.kind == "binary":
        counts["positive_slides"] = sum(r.y for r in rows)
    elif task.has_classes:
        counts["slides_per_class"] = {c: sum(r.y == i for r in rows)
                                      for i, c in enumerate(task.classes)}  # fmt: skip
    elif task.kind == "survival":
        counts["patients_with_event"] = len({r.patient_id for r in rows if r.event})
    return counts


def train_model(
    stores_dir: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    encoder: str = "efficientnet_lite0",
    positive: str | None = None,
    splits: str | os.PathLike[str] | None = None,
) -> Path:
    """Train ``config.model`` on the ``encoder`` features of the labelled stores; returns
    the model folder (with ``model.json``, the model card).

    Every slide of labels.csv must have a store ``<stores_dir>/<slide_id>.zarr`` with
    complete, non-empty ``encoder`` features, all of one set of weights; this is checked
    before any training. Splits are by patient. Each fold's head is trained with a
    class-weighted cross-entropy and stops early on its validation loss. One temperature,
    fitted on the pooled out-of-fold validation slides (never below 1 without evidence:
    ``wsi.mil.calibration.fit_calibration``), calibrates every fold; the operating point is
    chosen on the same slides for ``config.target_sensitivity``, and the conformal sets and
    the site-shift thresholds are set on them too. For heads that give per-tile
    contributions, the model card's ``evidence`` record holds the scale of tile evidence
    (``wsi.mil.evidence.evidence_scale``: the 99th percentile of |evidence| over the
    out-of-fold tiles, in calibrated log-odds per tile), which heatmaps colour by so the
    scale means the same on every slide. Without a
    test part the validation figures are optimistic (a warning is logged).

    The folder gets ``splits.csv``, ``model.json``, ``metrics.json``, ``roc.png``,
    ``reliability.png``, ``reference.safetensors`` (a sample of the tiles of every slide
    outside the test part, for the reports' out-of-distribution flag) and ``fold_<k>/``
    with ``model.safetensors``, ``card.json`` and ``train_log.csv``. A fold finished by an
    earlier run on exactly the same inputs (config, encoder, weights, features, labels,
    splits) is kept, so a killed run resumes.

    Args:
        stores_dir: folder of slide stores, one ``<slide_id>.zarr`` per labelled slide.
        labels: labels.csv: columns ``slide_id``, ``patient_id``, ``label`` (two classes)
            and optionally ``group`` (per-group metrics) and ``split``
            (``train``/``val``/``test``: a fixed split instead of folds).
        out_dir: the model folder (created). Its name is the model's name, under which
            ``predict_store`` writes ``predictions/<name>`` into stores.
        config: the head and training settings; None: ``TrainConfig()``.
        encoder: whose features to train on (``features/<encoder>`` in the stores).
        positive: the label value of the positive (tumour) class; None: the one label
            among ``1``, ``tumor``, ``tumour``, ``positive``, ``malignant``, ``cancer``,
            ``true``, ``yes`` (case-insensitive).
        splits: a ``splits.csv`` (``slide_id``, ``part``) to reuse, copied into
            ``out_dir``; None: ``out_dir``'s own ``splits.csv`` if there is one, else new
            splits from ``config.folds``, ``config.test_fraction`` and ``config.seed``.

    Returns:
        ``Path(out_dir)``.

    Raises:
        ConfigError: ``config.model`` is not a head name, or ``config.hparams`` has a key
            the head does not take; labels.csv is missing, not a CSV, lacks a column, has
            empty cells, duplicate slides, not exactly two labels, a patient with two
            labels, or no recognisable positive class; ``splits`` is missing, or the splits
            disagree with ``config.folds`` / ``config.test_fraction``; a class has fewer
            patients outside the test part than folds; ``folds`` < 2 or ``test_fraction``
            outside [0, 0.9).
        StoreError: a labelled slide has no store, no complete ``encoder`` features or no
            tiles, or the stores' features come from different weights.

    Example::

        config = wsi.TrainConfig(model="abmil", folds=5, test_fraction=0.2, seed=0)
        folder = wsi.train_model("stores", "labels.csv", "models/abmil", config,
                                 encoder="efficientnet_lite0", positive="tumor")
        card = json.loads((folder / "model.json").read_text())
        card["operating_point"]["threshold"]      # probability at which a slide is called
    """
    from wsi.mil.heads import HEADS

    config = config or TrainConfig()
    if config.model not in HEADS:
        import difflib

        close = difflib.get_close_matches(config.model, list(HEADS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {config.model!r}.{hint} Known: {', '.join(HEADS)}")
    table = read_labels(
        labels,
        positive,
        kind=config.task,
        classes=config.classes,
        ordinal=config.ordinal,
        negative_class=config.negative_class,
        time_unit=config.time_unit,
        horizons=config.horizons,
    )
    log.info("task: %s", table.task.describe())
    _Units.of(table, config.level)  # level: patient needs one outcome per patient
    weights_sha, features_id = check_stores(table, stores_dir, encoder)
    final = Path(out_dir)
    # one training per model folder: a second is refused naming the first (or waits)
    with holding(lock_file(final.parent, final.name), f"model folder {final}"):
        _restore_interrupted_swap(final)
        _check_model_folder(final)
        out = _work_folder(final)
        try:
            _train_into(out, final, table, config, stores_dir, encoder, weights_sha,
                        features_id, Path(splits) if splits else None)  # fmt: skip
            _swap_in(out, final)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
    log.info("model written to %s", final)
    return final


#: what a training writes into a model folder; a folder holding anything else is not one
_MODEL_FILES = ("model.json", "metrics.json", "splits.csv", "roc.png", "reliability.png",
                "confusion.png", "km.png", "scatter.png",
                "reference.safetensors", "reference.json")  # fmt: skip


def _check_model_folder(final: Path) -> None:
    """Refuse to train into (and so replace) a folder that is not a wsi model: training
    swaps the whole folder, and wsi never deletes what it did not make."""
    if not final.exists():
        return
    if not final.is_dir():
        raise ConfigError(f"{final}: a file, not a model folder. Choose another --out.")
    names = {p.name for p in final.iterdir()}
    ours = {n for n in names if n in _MODEL_FILES or n.startswith("fold_") or n.startswith(".")}
    if names - ours:
        raise ConfigError(
            f"{final}: holds files that are not part of a wsi model "
            f"({', '.join(sorted(names - ours)[:5])}). Training replaces the whole folder, "
            "and wsi never deletes what it did not make: choose another --out (a new or "
            "empty folder, or an earlier model's)."
        )


def _restore_interrupted_swap(final: Path) -> None:
    """A training killed between the two renames of ``_swap_in`` left the old model as
    ``.<name>.old-<pid>`` and nothing at ``final``: put it back."""
    if final.exists():
        return
    olds = sorted(final.parent.glob(f".{glob.escape(final.name)}.old-*"),
                  key=lambda p: p.stat().st_mtime_ns)  # fmt: skip
    if olds and (olds[-1] / "model.json").exists():
        os.replace(olds[-1], final)
        log.warning("%s: restored the model a killed training had moved aside", final)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _work_folder(final: Path) -> Path:
    """The folder a training writes into, ``.<name>.training-<pid>`` beside ``final``: the
    one a killed training left (its finished folds are kept), else a copy of ``final``'s
    model (its folds are kept where nothing changed), else a new one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.parent / f".{final.name}.training-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    stale = []
    for p in final.parent.glob(f".{glob.escape(final.name)}.training-*"):
        pid = p.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            stale.append(p)
    stale.sort(key=lambda p: p.stat().st_mtime_ns)
    if stale:
        os.replace(stale.pop(), work)
        log.info("taking over the folder of a killed training of %s", final)
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
    elif final.is_dir():
        shutil.copytree(final, work, symlinks=True)
    else:
        work.mkdir()
    return work


def _swap_in(work: Path, final: Path) -> None:
    """``work`` becomes ``final``; the model there before is removed."""
    if not final.exists():
        os.replace(work, final)
        return
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(work, final)
    shutil.rmtree(old, ignore_errors=True)


def _train_into(
    out: Path,
    final: Path,
    table: LabelTable,
    config: TrainConfig,
    stores_dir: str | os.PathLike[str],
    encoder: str,
    weights_sha: str,
    features_id: Any,
    splits: Path | None,
) -> None:
    """The training itself, into the work folder ``out`` (see ``_work_folder``)."""
    parts = _splits(table, out, config, splits)
    slide_bags = BagSource(stores_dir, encoder)
    in_dim = int(slide_bags[table.rows[0].slide_id].shape[1])
    units = _Units.of(table, config.level)
    rows, bags = units.rows, units.bags(slide_bags)
    # survival time bins, regression target scale: from the patients outside the test part
    task = table.task.fitted(
        [r for r in table.rows if parts.part[r.slide_id] != "test"], config.survival_bins
    )
    # everything a fold's weights depend on: a kept fold must have been trained on exactly this
    chash = params_hash(
        {
            "schema": 2,
            "config": dataclasses.asdict(config),
            "encoder": encoder,
            "weights": weights_sha,
            "features": features_id,
            "labels": {r.slide_id: [r.y, r.time, r.event, r.target] for r in table.rows},
            "task": task.as_card(),
            "splits": parts.part,
        }
    )
    if not parts.test:
        log.warning(
            "no held-out test part: the validation figures are those the operating point "
            "and calibration were fitted on (optimistic). Use --test-fraction for a test part."
        )
    stain = stain_preprocessing(table, stores_dir, encoder)
    run = _TrainingRun(out, table, task, units, parts, config, encoder, weights_sha, final.name,
                       stain)  # fmt: skip
    scores = _FoldScores()
    test_ids = units.ids(parts.test)
    t_start = time.perf_counter()
    for k in range(parts.folds):
        train_slides, val_slides = parts.fold(k)
        train_ids, val_ids = units.ids(train_slides), units.ids(val_slides)
        folder = out / f"fold_{k}"
        card_path = folder / "card.json"
        card = _kept_card(card_path, chash)
        module = None
        if card is not None:
            try:
                module = load_fold(folder, card, in_dim, task.n_outputs)
                log.info("fold %d already trained, kept", k)
            except ConfigError as err:
                log.warning("fold %d retrained: %s", k, err)
        if card is not None and module is not None:
            fold = FoldModel(
                k, module, card["temperature"], val_ids, _logits(module, bags, val_ids)
            )
        else:
            # the old record must not outlive its weights: a crash below leaves no card
            card_path.unlink(missing_ok=True)
            (out / "model.json").unlink(missing_ok=True)
            t0 = time.perf_counter()
            fold = _train_fold(k, train_ids, val_ids, rows, task, bags, in_dim, config, folder)
            card = {
                "fold": k,
                "config_hash": chash,
                "encoder": {"name": encoder, "weights_sha256": weights_sha},
                "head": {"name": config.model, "hparams": dict(fold.module.hparams)},
                "in_dim": in_dim,
                "n_outputs": task.n_outputs,
                "temperature": fold.temperature,
                "train": _counts(table, train_slides),
                "val": _counts(table, val_slides),
                **_fold_record(task, fold, [rows[s] for s in val_ids], config),
                "train_seconds": round(time.perf_counter() - t0, 1),
            }
            _save_fold(fold, folder, card)
        scores.folds.append(card)
        scores.oof_ids += val_ids
        scores.oof_logits.append(fold.val_logits)
        scores.oof_evidence += _evidence_values(fold.module, bags, val_ids, task.kind)
        if test_ids:
            scores.test_logits.append(_logits(fold.module, bags, test_ids))
    # what "seen in training" means for the report's out-of-distribution flag
    held_out = set(parts.test)
    seen = {r.slide_id: slide_bags[r.slide_id] for r in table.rows if r.slide_id not in held_out}
    reference = build_reference(seen, seed=config.seed)
    # the site-shift reference: the same slides' stain statistics and embeddings
    stains, missing = {}, {}
    for sid in seen:
        stains[sid], why = slide_stain(store_path(stores_dir, sid))
        if why:
            missing[sid] = why
    if missing:
        first = next(iter(missing))
        log.warning("%d training slide(s) give no stain statistics for the shift reference "
                    "(%s: %s)", len(missing), first, missing[first])  # fmt: skip
    failures = sum(why.startswith(ESTIMATE_FAILED) for why in missing.values())
    shift, centre = fit_shift(list(seen), stains, seen, reference, stain_failures=failures)
    reference = dataclasses.replace(reference, centre=centre)
    save_reference(reference, out)
    _finish(run, scores, {**reference.summary(), "shift": shift}, time.perf_counter() - t_start)


def _fold_record(
    task: Task, fold: FoldModel, val_rows: list[SlideLabel], config: TrainConfig
) -> dict[str, Any]:
    """What a fold's card says of its validation slides (uncalibrated: calibration is
    fitted on all folds' pooled slides): binary models a threshold of their own, for the
    record; other tasks the progress metric."""
    if task.kind != "binary":
        from wsi.mil.outcomes import progress_metric

        return {"val_metrics": {"score": progress_metric(task, val_rows, fold.val_logits)}}
    val_y = [r.y for r in val_rows]
    s_cal = log_odds(fold.val_logits, fold.temperature)
    threshold = m.threshold_for_sensitivity(val_y, s_cal, config.target_sensitivity)
    return {
        "threshold_log_odds": threshold,
        "youden_threshold_log_odds": m.youden_threshold(val_y, s_cal),
        "val_metrics": evaluate(val_y, s_cal, threshold, p_raw=expit(log_odds(fold.val_logits))),
    }


@dataclass(frozen=True)
class _TrainingRun:
    """What a model is trained from and where it goes."""

    out: Path  #: the model folder
    table: LabelTable
    task: Task  #: the table's task, fitted on the patients outside the test part
    units: _Units  #: slides or patients (``config.level``)
    parts: Splits
    config: TrainConfig
    encoder: str
    weights_sha: str  #: sha256 of the encoder weights the features come from
    name: str  #: the model's name: that of the folder it is swapped into
    #: the features' stain normalisation (method, target checksum, target); None: none
    stain: dict[str, Any] | None = None


@dataclass
class _FoldScores:
    """What the folds give, collected fold by fold: their cards, their out-of-fold
    validation logits (in ``oof_ids`` order) and, with a test part, each fold's logits of
    the test slides (``parts.test`` order)."""

    folds: list[dict[str, Any]] = field(default_factory=list)
    oof_ids: list[str] = field(default_factory=list)
    oof_logits: list[np.ndarray] = field(default_factory=list)
    test_logits: list[np.ndarray] = field(default_factory=list)
    #: per out-of-fold slide, |tile evidence| at T = 1 (heads with contributions only)
    oof_evidence: list[np.ndarray] = field(default_factory=list)


def _binary_summary(run: _TrainingRun, scores: _FoldScores) -> tuple[dict, dict]:
    """Binary: pooled validation, the operating point, test metrics and plots (each fold's
    own temperature); the metrics and the model card's task-specific fields."""
    out, config = run.out, run.config
    folds, oof_ids, test_ids = scores.folds, scores.oof_ids, run.units.ids(run.parts.test)
    oof_logits = np.concatenate(scores.oof_logits)
    y = {u: r.y for u, r in run.units.rows.items()}
    group = {u: r.group for u, r in run.units.rows.items()}
    oof_y = np.array([y[s] for s in oof_ids])
    calibration = fit_calibration(oof_logits, oof_y)
    temp = calibration["temperature"]
    oof_cal = log_odds(oof_logits, temp)
    # no test part: no test logits
    test_cal = [log_odds(z, temp) for z in scores.test_logits]
    test_raw = [log_odds(z) for z in scores.test_logits]

    threshold = m.threshold_for_sensitivity(oof_y, oof_cal, config.target_sensitivity)
    youden = m.youden_threshold(oof_y, oof_cal)
    metrics: dict[str, Any] = {
        "operating_point": {
            "threshold_log_odds": threshold,
            "threshold": float(expit(threshold)),
            "target_sensitivity": config.target_sensitivity,
            "chosen_on": "pooled out-of-fold validation slides (calibrated log-odds)",
            "youden_threshold_log_odds": youden,
        },
        "validation_note": "in-sample for the operating point and the temperature "
        "(both fitted on these slides): optimistic; the test part is not",
        "validation_pooled": evaluate(
            oof_y,
            oof_cal,
            threshold,
            p_raw=expit(log_odds(oof_logits)),
            youden=youden,
            groups=[group[s] for s in oof_ids],
        ),
        "folds": [{"fold": c["fold"], **c["val_metrics"]} for c in folds],
    }
    curves = {"validation (out of fold)": (oof_y, oof_cal)}
    if test_ids:
        test_y = np.array([y[s] for s in test_ids])
        # the fold ensemble: mean calibrated log-odds; spread of the folds' probabilities
        s_test, s_test_raw = np.mean(test_cal, axis=0), np.mean(test_raw, axis=0)
        metrics["test"] = evaluate(
            test_y,
            s_test,
            threshold,
            p_raw=expit(s_test_raw),
            youden=youden,
            groups=[group[s] for s in test_ids],
        )
        metrics["test"]["probability_std_mean"] = float(expit(test_cal).std(axis=0).mean())
        curves["test (fold ensemble)"] = (test_y, s_test)
        plot_reliability(test_y, expit(s_test_raw), expit(s_test), out / "reliability.png")
    else:
        plot_reliability(
            oof_y, expit(log_odds(oof_logits)), expit(oof_cal), out / "reliability.png"
        )
    plot_roc(curves, out / "roc.png", threshold)
    summary = ("auroc", "auroc_ci95", "at_threshold")
    card = {
        "operating_point": metrics["operating_point"],
        "temperature": temp,
        "calibration": {
            **calibration,
            "ece_validation_uncalibrated": metrics["validation_pooled"].get("ece_uncalibrated"),
            "ece_validation_calibrated": metrics["validation_pooled"].get("ece_calibrated"),
            "ece_validation_calibrated_ci95": metrics["validation_pooled"].get(
                "ece_calibrated_ci95"
            ),
            "ece_n": metrics["validation_pooled"].get("ece_n"),
        },
        "metrics": {
            "validation_pooled": {k: metrics["validation_pooled"][k] for k in summary},
            "test": {k: metrics["test"][k] for k in summary} if test_ids else None,
        },
    }
    return metrics, card


def _finish(
    run: _TrainingRun, scores: _FoldScores, reference: dict[str, Any], seconds: float
) -> Path:
    """The task's metrics, calibration, operating point and plots; the model card."""
    import hashlib

    from wsi.mil.outcomes import conformal_coverage, fit_conformal, summarise
    from wsi.store import package_versions

    out, table, config, task = run.out, run.table, run.config, run.task
    folds, test_ids = scores.folds, run.units.ids(run.parts.test)
    if task.kind == "binary":
        metrics, fields = _binary_summary(run, scores)
        for c in folds:  # one temperature for all folds, fitted on their pooled logits
            c["temperature"] = fields["temperature"]
    else:
        metrics, fields = summarise(
            task,
            config.target_sensitivity,
            run.units.rows,
            scores.oof_ids,
            np.concatenate(scores.oof_logits),
            test_ids,
            scores.test_logits,
            out,
        )
        metrics["folds"] = [{"fold": c["fold"], **c["val_metrics"]} for c in folds]
        for c in folds:  # one temperature for all folds, fitted on their pooled logits
            c["temperature"] = fields["temperature"]
            c.setdefault("threshold_log_odds", None)
    # conformal sets on the same pooled out-of-fold predictions, checked on the test part
    temperature = float(fields.get("temperature", 1.0))
    conformal = fit_conformal(
        task, run.units.rows, scores.oof_ids, np.concatenate(scores.oof_logits), temperature
    )
    covered = conformal_coverage(
        task, conformal, run.units.rows, test_ids, scores.test_logits, temperature
    )
    if covered is not None:
        metrics["test"]["conformal"] = covered
    shift = reference.pop("shift", None)
    # the colour scale of tile evidence: the same on every slide (wsi.mil.evidence)
    from wsi.mil.evidence import evidence_scale

    evidence = evidence_scale(task.kind, scores.oof_evidence, temperature)
    write_json(out / "metrics.json", metrics)
    # the model id covers the fold weights and everything that turns their scores into a
    # call: temperatures, thresholds, the operating point, the task and the OOD reference
    digest = hashlib.sha256()
    for c in folds:
        digest.update((out / f"fold_{c['fold']}" / "model.safetensors").read_bytes())
    decision = {
        "folds": [(c["fold"], c["temperature"], c["threshold_log_odds"]) for c in folds],
        "operating_point": fields["operating_point"],
        "task": task.as_card(),
        "risk_groups": fields.get("risk_groups"),
        "reference": reference,
        "conformal": conformal,
        "shift": shift,
        "stain": run.stain,
        "evidence": evidence,
    }
    digest.update(json.dumps(decision, sort_keys=True, default=str).encode())
    all_ids = [r.slide_id for r in table.rows]
    card = {
        "name": run.name,
        "model_id": digest.hexdigest()[:16],
        "intended_use": INTENDED_USE,
        "task": task.as_card(),
        "encoder": {
            "name": run.encoder,
            "weights_sha256": run.weights_sha,
            "stain_normalisation": run.stain,
        },
        "head": folds[0]["head"],
        "in_dim": folds[0]["in_dim"],
        "n_outputs": task.n_outputs,
        "training": dataclasses.asdict(config),
        "data": {
            "labels": table.path.name,
            "all": _counts(table, all_ids),
            "test": _counts(table, run.parts.test) if test_ids else None,
            "split": "by patient; splits.csv",
            "level": config.level,
        },
        "folds": [
            {
                "fold": c["fold"],
                "dir": f"fold_{c['fold']}",
                "temperature": c["temperature"],
                "threshold_log_odds": c["threshold_log_odds"],
            }
            for c in folds
        ],
        "operating_point": fields["operating_point"],
        "calibration": fields["calibration"],
        "metrics": fields["metrics"],
        "reference": reference,
        "conformal": conformal,
        "shift": shift,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": round(seconds, 1),
        "versions": package_versions(),
    }
    if evidence is not None:
        card["evidence"] = evidence
    if "risk_groups" in fields:
        card["risk_groups"] = fields["risk_groups"]
    if run.stain and run.stain.get("target"):  # to embed new slides the same way
        from wsi.stain import normaliser_from_target, save_target

        stored = {"schema_version": 1, **run.stain["target"]}
        save_target(normaliser_from_target(stored), out / STAIN_TARGET_FILE)
    write_json(out / "model.json", card)
    log.info("model %s (%s) written", out, task.describe())
    return out
