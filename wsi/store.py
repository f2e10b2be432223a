"""The per-slide Zarr v3 store: keys, provenance and stage completion.

Layout (see DESIGN.md)::

    <out>/<slide_id>.zarr/
      attrs["wsi"]   schema, source, slide metadata, versions, stages, pending
      tissue/mask    uint8 mask; attrs: method, threshold, downsample, mpp
      tiles/coords   int32 (N, 2) level-0 top-left (x, y)
      tiles/pixels   uint8 (N, S, S, 3), chunks of k tiles
      tiles/qc       float32 (N, q); attrs: columns
      tiles/done     bool, one chunk per pixel chunk: which chunks are written
      features/<encoder>/embeddings  float (N, D); attrs: encoder, weights sha256, preprocessing
      features/<encoder>/done        bool per embeddings chunk
      predictions/<model>/attention       float32 (N, folds) raw head scores per fold
      predictions/<model>/attention_mean  float32 (N,) fold-mean normalised attention;
                                          group attrs: decision, probability, ...
      heatmaps/<model>/grid   float32 (rows, cols) heat grid; attrs: origin_l0, cell_l0,
                              label; group attrs: options, regions, files (and, when
                              per-class layers exist, classes, class_files; caption)
      heatmaps/<model>/grid_classes  float32 (C, rows, cols): one heat grid per class, in
                              the order of the group attrs' classes (only for predictions
                              with attention_classes); attrs: classes, labels

A stage is complete only when ``attrs["wsi"]["stages"][name]`` exists; it is written
last. ``pending`` holds the params hash of a stage in progress, so a killed run resumes.
This module is the only one that spells a key or a stage name; :func:`stage_state` is
the one rule for "done, resume or redo"; :func:`stale_reason` / :func:`current_entry`
the one rule for "made from inputs redone since"; :func:`new_store_meta` the one builder
of a store's ``wsi`` attrs, :func:`create_store` the one way a store comes to exist (with
wsi's marker), :func:`remove_store` the one way one goes, and :func:`store_lock` the one
writer's lock. See docs/data-safety.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from wsi._lock import holding, lock_file
from wsi.errors import ConfigError, StageConflictError, StaleStageError, StoreError
from wsi.slide.dicom import dicom_files, dicom_folder

__all__ = [
    "SCHEMA_VERSION",
    "ATTRS_KEY",
    "TISSUE",
    "TILES",
    "COORDS",
    "PREDICTIONS",
    "HEATMAPS",
    "STAGE_GROUPS",
    "TISSUE_MASK",
    "TILES_COORDS",
    "TILES_PIXELS",
    "TILES_QC",
    "TILES_DONE",
    "FEATURES",
    "features_keys",
    "feature_views_key",
    "PredictionKeys",
    "prediction_keys",
    "HeatmapKeys",
    "heatmap_keys",
    "models_with",
    "params_hash",
    "stage_state",
    "NeverMix",
    "new_store_meta",
    "slide_id_for",
    "check_slide_id",
    "same_source",
    "store_path",
    "is_store",
    "is_wsi_store",
    "foreign_store_error",
    "create_store",
    "remove_store",
    "remove_member",
    "store_lock",
    "current_entry",
    "stale_reason",
    "source_record",
    "open_store",
    "read_meta",
    "write_meta",
    "stage_entry",
    "begin_stage",
    "complete_stage",
    "package_versions",
    "now_iso",
]

SCHEMA_VERSION = 1
ATTRS_KEY = "wsi"

TISSUE = "tissue"  #: group of the tissue mask
TILES = "tiles"  #: the tile stage and its group
COORDS = "coords"  #: stage of a features-only store's coords (imported from h5)
FEATURES = "features"  #: group of one subgroup per encoder name
PREDICTIONS = "predictions"  #: group of one subgroup per model name
HEATMAPS = "heatmaps"  #: group of one subgroup per model name
#: every group a stage writes; new tiles void all of them
STAGE_GROUPS = (TISSUE, TILES, FEATURES, PREDICTIONS, HEATMAPS)

TISSUE_MASK = f"{TISSUE}/mask"
TILES_COORDS = f"{TILES}/coords"
TILES_PIXELS = f"{TILES}/pixels"
TILES_QC = f"{TILES}/qc"
TILES_DONE = f"{TILES}/done"


def _member(kind: str, name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise StoreError(f"{kind} name {name!r} cannot name a store group")
    return name


def features_keys(encoder: str) -> tuple[str, str, str]:
    """(stage name, embeddings key, done key) of the features of ``encoder``.

    ``features/<encoder>/embeddings`` is (N, D), row i the tile at ``tiles/coords[i]``;
    ``features/<encoder>/done`` is bool per embeddings chunk.
    """
    group = f"{FEATURES}/{_member('encoder', encoder)}"
    return group, f"{group}/embeddings", f"{group}/done"


def feature_views_key(encoder: str) -> str:
    """``features/<encoder>/views``: (N, V, D) embeddings of V stain-jittered views of each
    tile (training-time stain augmentation), written with the embeddings, same batches."""
    return f"{features_keys(encoder)[0]}/views"


class PredictionKeys(NamedTuple):
    """Keys of ``predictions/<model>``: the stage (and group), per-fold raw attention
    (N, folds), the fold-mean normalised attention (N,) and, for heads with one attention
    branch per class, the fold-mean normalised attention of every class (N, C).

    ``evidence``: float32 (N,), each tile's contribution to the calibrated slide score of
    the shown class (calibrated log-odds per tile), fold mean; only from heads that give
    contributions (``wsi.mil.evidence``). ``evidence_classes``: float32 (N, C), the same for
    every class, beside ``attention_classes``."""

    stage: str
    attention: str
    attention_mean: str
    attention_classes: str
    evidence: str
    evidence_classes: str


def prediction_keys(model: str) -> PredictionKeys:
    """The keys of the predictions of the model named ``model``."""
    group = f"{PREDICTIONS}/{_member('model', model)}"
    return PredictionKeys(
        group,
        f"{group}/attention",
        f"{group}/attention_mean",
        f"{group}/attention_classes",
        f"{group}/evidence",
        f"{group}/evidence_classes",
    )


class HeatmapKeys(NamedTuple):
    """Keys of ``heatmaps/<model>``: the stage (and group), the heat grid (rows, cols) and,
    for predictions with per-class attention, one grid per class (C, rows, cols)."""

    stage: str
    grid: str
    classes: str


def heatmap_keys(model: str) -> HeatmapKeys:
    """The keys of the heatmap of the model named ``model``."""
    group = f"{HEATMAPS}/{_member('model', model)}"
    return HeatmapKeys(group, f"{group}/grid", f"{group}/grid_classes")


def models_with(group: Any, kind: str = PREDICTIONS) -> list[str]:
    """Names of the models with a complete and current ``predictions/<model>`` (or
    ``heatmaps/<model>`` with ``kind=HEATMAPS``) in a store, sorted; stale ones (see
    :func:`stale_reason`) are left out."""
    prefix = f"{kind}/"
    meta = read_meta(group)
    return sorted(
        name[len(prefix) :]
        for name in meta.get("stages") or {}
        if name.startswith(prefix) and name in group and not stale_reason(group, name, meta)
    )


def params_hash(params: dict[str, Any]) -> str:
    """A stable short hash (16 hex digits) of JSON-able parameters: a stage's identity."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


_FINGERPRINT_BYTES = 1 << 20


def slide_id_for(path: str | os.PathLike[str]) -> str:
    """The store name of a slide: its file name without the extension; of a DICOM slide
    (a folder of ``.dcm`` files, or one of them), the folder's name."""
    folder = dicom_folder(path)
    if folder is not None:
        return Path(os.path.abspath(folder)).name
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def check_slide_id(slide_id: str) -> str:
    """``slide_id`` if it can name a store folder; ConfigError saying why otherwise."""
    bad = [c for c in slide_id if c in "/\\\0" or ord(c) < 32]
    if not slide_id.strip() or bad or slide_id.startswith("."):
        raise ConfigError(
            f"slide id {slide_id!r} cannot name a store: it must be non-empty, not start "
            "with '.', and hold no '/', '\\' or control characters"
        )
    return slide_id


def same_source(meta: dict[str, Any], path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` is the one a store was tiled from: the fingerprint
    (size and sha256 of the first and last MiB) in the store's ``wsi`` attrs ``meta``."""
    try:
        return bool(source_record(path)["fingerprint"] == meta.get("source", {}).get("fingerprint"))
    except OSError:
        return False


def store_path(out_dir: str | os.PathLike[str], slide_id: str) -> Path:
    """Where the store of ``slide_id`` lives in ``out_dir``: ``<out_dir>/<slide_id>.zarr``."""
    return Path(out_dir) / f"{slide_id}.zarr"


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a zarr group (a store, or what is left of one), as opposed to
    nothing or a folder that is not zarr's."""
    return (Path(path) / "zarr.json").exists()


def is_wsi_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zarr group that wsi made: its ``zarr.json`` carries wsi's
    marker (the ``wsi`` attrs with a schema version) from the moment it exists (see
    :func:`create_store`). Only such folders are ever removed or overwritten."""
    try:
        doc = json.loads((Path(path) / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    meta = attrs.get(ATTRS_KEY) if isinstance(attrs, dict) else None
    return isinstance(meta, dict) and "schema_version" in meta


def foreign_store_error(path: str | os.PathLike[str]) -> StoreError:
    what = "a Zarr group" if is_store(path) else "a folder"
    return StoreError(
        f"{path}: holds {what} that wsi did not make (no wsi marker in its zarr.json); wsi "
        "never deletes or overwrites it, not even with --overwrite. Move it away or choose "
        "another --out."
    )


def create_store(path: str | os.PathLike[str], meta: dict[str, Any]) -> Any:
    """A new store at ``path`` carrying ``meta`` (see :func:`new_store_meta`) from its first
    moment, returned open for writing.

    The group is made in a hidden sibling and renamed into place, so a killed process
    leaves either no store or one with wsi's marker, never an unmarked group. Refuses
    (StoreError) when ``path`` exists and is not empty. Call it holding the store's lock
    (:func:`store_lock`): leftovers of earlier killed creations are removed here.
    """
    import shutil
    import uuid

    import zarr

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for old in final.parent.glob(f".{final.name}.new-*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.new-{uuid.uuid4().hex[:8]}")
    try:
        group = zarr.open_group(str(tmp), mode="w")
        write_meta(group, meta)
        os.rename(tmp, final)  # also replaces an empty folder; refuses a non-empty one
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():
            raise (
                foreign_store_error(final)
                if not is_wsi_store(final)
                else StoreError(
                    f"{final}: a store appeared while this one was made ({err}). Re-run."
                )
            ) from err
        raise StoreError(f"{final}: cannot create the store ({err}).") from err
    return open_store(final, mode="r+")


def remove_store(path: str | os.PathLike[str]) -> None:
    """Delete the store at ``path``, only if wsi made it (:func:`is_wsi_store`); a folder
    without wsi's marker raises StoreError and is left alone."""
    import shutil

    p = Path(path)
    if not p.exists():
        return
    if not is_wsi_store(p):
        raise foreign_store_error(p)
    shutil.rmtree(p)


def remove_member(group: Any, name: str) -> None:
    """Remove ``name`` (a stage's group or array) from a store, whatever state a killed or
    concurrent writer left it in (a folder without zarr metadata, half an array): the
    repair that ``--overwrite`` runs before a stage is laid out again."""
    import shutil

    target = Path(str(group.store.root)) / str(group.path) / name
    try:
        if name in group:
            del group[name]
    except (KeyError, OSError, ValueError):
        pass
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)


def store_lock(path: str | os.PathLike[str], *, wait: float | None = None) -> Any:
    """The writer's lock of the store at ``path`` (a context manager; see ``wsi._lock``).

    Every stage that writes a store holds it: a second writer is refused with a message
    naming the holder, or waits ``wait`` seconds (None: ``WSI_LOCK_WAIT``, default 0).
    """
    p = Path(path)
    return holding(lock_file(p.parent, p.name), f"store {p}", wait=wait)


def source_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Path, size, mtime and a fingerprint (sha256 of size, first and last MiB).

    A DICOM slide (a folder of ``.dcm`` files, or one of them) is recorded as its folder:
    the total size and latest mtime of its ``.dcm`` files, and a fingerprint of each
    file's name, size, first and last MiB.
    """
    p = Path(path).resolve()
    folder = dicom_folder(p)
    if folder is None:
        st = p.stat()
        digest = hashlib.sha256()
        _fingerprint(digest, p, st.st_size)
        size, mtime = st.st_size, st.st_mtime
    else:
        p, digest, size, mtime = folder, hashlib.sha256(), 0, 0.0
        for f in dicom_files(folder):
            st = f.stat()
            digest.update(f.name.encode() + b"\0")
            _fingerprint(digest, f, st.st_size)
            size, mtime = size + st.st_size, max(mtime, st.st_mtime)
    return {
        "path": str(p),
        "size": size,
        "mtime": mtime,
        "fingerprint": digest.hexdigest()[:32],
    }


def _fingerprint(digest: Any, path: Path, size: int) -> None:
    """Feed ``size`` and the first and last MiB of the file at ``path`` to ``digest``."""
    digest.update(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            f.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            digest.update(f.read(_FINGERPRINT_BYTES))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in (
        "wsi",
        "zarr",
        "numpy",
        "openslide-python",
        "openslide-bin",
        "pyvips",
        "dask",
        "torch",
        "timm",
        "safetensors",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def open_store(path: str | os.PathLike[str], mode: str = "r") -> Any:
    """Open a slide store as a zarr Group (``mode`` "r" for readers, "a" for stages)."""
    import zarr

    from wsi.codecs import register

    register()
    p = Path(path)
    if mode in ("r", "r+") and not is_store(p):
        raise StoreError(f"{p}: not a slide store (no zarr.json). Run `wsi tile` first.")
    try:
        return zarr.open_group(str(p), mode=mode)  # type: ignore[arg-type]
    except (OSError, ValueError) as err:
        raise StoreError(f"{p}: cannot open the store ({err}). Delete it and re-run.") from err


def read_meta(group: Any) -> dict[str, Any]:
    meta = dict(group.attrs.get(ATTRS_KEY) or {})
    version = meta.get("schema_version")
    if meta and version != SCHEMA_VERSION:
        raise StoreError(
            f"{group.store}: store schema {version}, this wsi reads {SCHEMA_VERSION}. "
            "Re-run the stage with --overwrite."
        )
    return meta


def new_store_meta(
    slide_id: str, source: dict[str, Any], slide: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``wsi`` attrs of a new store: schema version, slide id, source record (see
    :func:`source_record`, or what a features-only store came from), slide metadata
    (levels, mpp, vendor; empty for a features-only store), package versions, and no
    complete or pending stage."""
    return {
        "schema_version": SCHEMA_VERSION,
        "slide_id": slide_id,
        "source": source,
        "slide": slide or {},
        "versions": package_versions(),
        "stages": {},
        "pending": {},
    }


def write_meta(group: Any, meta: dict[str, Any]) -> None:
    group.attrs[ATTRS_KEY] = meta


def stage_entry(group: Any, stage: str) -> dict[str, Any] | None:
    """The completion record of ``stage``, or None if it is not complete."""
    entry = read_meta(group).get("stages", {}).get(stage)
    return dict(entry) if entry else None


class NeverMix(NamedTuple):
    """A stage parameter whose records are never mixed (see :func:`stage_state`)."""

    key: str  #: key in the stage's params, e.g. "weights_sha256"
    value: Any  #: the value this run has
    noun: str  #: what it is, for the message: "weights"
    fix: str  #: the other way out than --overwrite


def stage_state(
    group: Any,
    stage: str,
    phash: str,
    *,
    overwrite: bool = False,
    where: str = "",
    never_mix: NeverMix | None = None,
) -> str:
    """The one rule of a stage re-run: ``"complete"``, ``"resume"`` or ``"fresh"``.

    ``"complete"``: the stage's record has params hash ``phash`` (nothing to do).
    ``"resume"``: a run with ``phash`` was interrupted (its ``pending`` record); the
    stage may keep the chunks it finished. ``"fresh"``: nothing to keep.

    A complete stage with other params is refused (``StageConflictError`` naming
    ``where``) unless ``overwrite``. ``never_mix`` adds the rule for what is never mixed:
    a complete or interrupted record whose ``params[never_mix.key]`` differs is refused
    too, even to resume (features of other weights).
    """
    meta = read_meta(group)
    entry = meta.get("stages", {}).get(stage)
    pending = meta.get("pending", {}).get(stage)
    if entry and entry.get("params_hash") == phash:
        if _data_of(stage) in group:
            return "complete"
        if not overwrite:
            raise StoreError(
                f"{where}: {stage} is recorded as complete but its data is missing (the "
                "store was changed by another program). Pass --overwrite to make it again."
            )
        return "fresh"
    if not overwrite:
        for record, how in ((entry, "made"), (pending, "partly made (an interrupted run)")):
            if not record:
                continue
            old = record.get("params", {}).get(never_mix.key) if never_mix else None
            if never_mix is not None and old != never_mix.value:
                raise StageConflictError(
                    f"{where}: {stage} were {how} with other {never_mix.noun} "
                    f"({str(old)[:12]}, now {str(never_mix.value)[:12]}); "
                    f"{stage.split('/')[0]} of different {never_mix.noun} are never mixed. "
                    f"Pass --overwrite to replace them, or {never_mix.fix}."
                )
            if record is entry:
                raise StageConflictError(
                    f"{where}: {stage} exists with other parameters "
                    f"({entry.get('params_hash')}, now {phash}). Pass --overwrite "
                    "(overwrite=True) to redo it."
                )
    if pending and pending.get("params_hash") == phash:
        return "resume"
    return "fresh"


#: what each kind of stage is made from (for messages) and the command that redoes it;
#: tiles and coords are made from the slide file (or an h5 file) and have no entry
_MADE_FROM = {
    FEATURES: ("tiles", "wsi embed"),
    PREDICTIONS: ("features", "wsi predict"),
    HEATMAPS: ("prediction", "wsi heatmap"),
}


def _data_of(stage: str) -> str:
    """The group or array whose presence a complete ``stage`` implies."""
    return TILES_COORDS if stage == COORDS else stage


def _kind(stage: str) -> str:
    return stage.split("/", 1)[0]


def _made_from(record: dict[str, Any], stage: str) -> dict[str, Any] | None:
    """The ``{"stage", "run_id"}`` a stage record was made from; features written before
    ``made_from`` was recorded name their tiles run in their params."""
    made = record.get("made_from")
    if made:
        return dict(made)
    tiles = (record.get("params") or {}).get("tiles")
    if _kind(stage) == FEATURES and isinstance(tiles, dict) and tiles.get("run_id"):
        return {"stage": tiles.get("stage", TILES), "run_id": tiles["run_id"]}
    return None


def stale_reason(group: Any, stage: str, meta: dict[str, Any] | None = None) -> str | None:
    """Why the complete ``stage`` no longer matches what it was made from, or None.

    The one dependency rule: features are made from the tiles (or imported coords) run
    they record, a prediction from the features run, a heatmap from the prediction run
    (each record's ``made_from``: the upstream stage and its ``run_id``). A stage whose
    upstream was redone, removed or is itself stale is stale; so is one that records no
    upstream although its kind has one (written by an older wsi).
    """
    meta = read_meta(group) if meta is None else meta
    stages = meta.get("stages", {})
    entry = stages.get(stage)
    if not entry or _kind(stage) not in _MADE_FROM:
        return None
    noun = _MADE_FROM[_kind(stage)][0]
    made = _made_from(entry, stage)
    if made is None:
        return f"it was made by an older wsi that did not record which {noun} it came from"
    up = stages.get(made["stage"])
    if up is None:
        return f"the {noun} it was made from ({made['stage']}) are no longer complete"
    if up.get("run_id") != made.get("run_id"):
        return f"it was made from other {noun} ({made['stage']} was redone since)"
    deeper = stale_reason(group, made["stage"], meta)
    return f"{made['stage']} is stale: {deeper}" if deeper else None


def current_entry(group: Any, stage: str, where: str = "") -> dict[str, Any]:
    """The completion record of ``stage`` when it can be trusted; raises otherwise.

    StoreError when the stage is not complete (or its arrays are missing: an inconsistent
    store, repaired by re-running the stage with --overwrite); StaleStageError when it
    was made from inputs that have been redone since (:func:`stale_reason`). Readers of a
    stage's output (heatmaps, viewer, reports, notebook, training) go through here.
    """
    where = where or str(group.store)
    redo = _MADE_FROM.get(_kind(stage), ("", f"wsi {_kind(stage)}"))[1]
    meta = read_meta(group)
    entry = meta.get("stages", {}).get(stage)
    if not entry:
        raise StoreError(f"{where}: {stage} is not complete. Run `{redo}` first.")
    if _data_of(stage) not in group:
        raise StoreError(
            f"{where}: {stage} is recorded as complete but its data is missing (the store "
            f"was changed by another program). Re-run `{redo} --overwrite` to repair it."
        )
    reason = stale_reason(group, stage, meta)
    if reason:
        raise StaleStageError(f"{where}: {stage} is stale: {reason}. Re-run `{redo}`.")
    return dict(entry)


def _downstream(meta: dict[str, Any], stage: str) -> list[str]:
    """Every stage (complete or pending) made from ``stage``, directly or not."""
    found: list[str] = []
    todo = [stage]
    while todo:
        up = todo.pop()
        for table in ("stages", "pending"):
            for name, record in (meta.get(table) or {}).items():
                made = _made_from(record, name) if record else None
                if made and made["stage"] == up and name not in found and name != stage:
                    found.append(name)
                    todo.append(name)
    return found


def begin_stage(
    group: Any,
    stage: str,
    params: dict[str, Any],
    phash: str,
    *,
    made_from: str | None = None,
) -> str:
    """Mark ``stage`` as in progress with ``params``; drops its completion record, and
    removes every stage made from it (records and data): they would be stale.

    ``made_from`` names the complete stage this one is made from (features: the tiles or
    coords; a prediction: the features; a heatmap: the prediction); its run id is
    recorded so that a later redo of it makes this stage stale (:func:`stale_reason`).
    Returns a fresh run id that names this run of the stage.
    """
    import uuid

    meta = read_meta(group)
    record: dict[str, Any] = {"params": params, "params_hash": phash}
    if made_from is not None:
        up = meta.get("stages", {}).get(made_from)
        if not up:
            raise StoreError(f"{group.store}: {stage} cannot be made: {made_from} is not complete.")
        record["made_from"] = {"stage": made_from, "run_id": up.get("run_id")}
    for name in _downstream(meta, stage):
        meta.get("stages", {}).pop(name, None)
        meta.get("pending", {}).pop(name, None)
        remove_member(group, name)
    meta.setdefault("stages", {}).pop(stage, None)
    run_id = uuid.uuid4().hex
    meta.setdefault("pending", {})[stage] = {**record, "run_id": run_id, "started": now_iso()}
    write_meta(group, meta)
    return run_id


def complete_stage(group: Any, stage: str, counts: dict[str, Any]) -> dict[str, Any]:
    """Write the completion record of ``stage`` (last write of the stage)."""
    meta = read_meta(group)
    pending = meta.get("pending", {}).pop(stage, None)
    if pending is None:
        raise StoreError(f"{group.store}: stage {stage!r} was never started")
    entry = {**pending, "finished": now_iso(), "seconds": None, "counts": counts}
    try:
        started = datetime.fromisoformat(pending["started"]).timestamp()
        entry["seconds"] = round(time.time() - started, 1)
    except (KeyError, ValueError):
        pass
    meta.setdefault("stages", {})[stage] = entry
    write_meta(group, meta)
    return entry
