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
                              label; group attrs: options, regions, files

A stage is complete only when ``attrs["wsi"]["stages"][name]`` exists; it is written
last. ``pending`` holds the params hash of a stage in progress, so a killed run resumes.
This module is the only one that spells a key or a stage name; :func:`stage_state` is
the one rule for "done, resume or redo"; :func:`new_store_meta` the one builder of a
store's ``wsi`` attrs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from wsi.errors import ConfigError, StageConflictError, StoreError

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


class PredictionKeys(NamedTuple):
    """Keys of ``predictions/<model>``: the stage (and group), per-fold raw attention
    (N, folds) and the fold-mean normalised attention (N,)."""

    stage: str
    attention: str
    attention_mean: str


def prediction_keys(model: str) -> PredictionKeys:
    """The keys of the predictions of the model named ``model``."""
    group = f"{PREDICTIONS}/{_member('model', model)}"
    return PredictionKeys(group, f"{group}/attention", f"{group}/attention_mean")


class HeatmapKeys(NamedTuple):
    """Keys of ``heatmaps/<model>``: the stage (and group) and the heat grid."""

    stage: str
    grid: str


def heatmap_keys(model: str) -> HeatmapKeys:
    """The keys of the heatmap of the model named ``model``."""
    group = f"{HEATMAPS}/{_member('model', model)}"
    return HeatmapKeys(group, f"{group}/grid")


def models_with(group: Any, kind: str = PREDICTIONS) -> list[str]:
    """Names of the models with a complete ``predictions/<model>`` (or ``heatmaps/<model>``
    with ``kind=HEATMAPS``) in a store, sorted."""
    prefix = f"{kind}/"
    return sorted(
        name[len(prefix) :]
        for name in read_meta(group).get("stages") or {}
        if name.startswith(prefix) and name in group
    )


def params_hash(params: dict[str, Any]) -> str:
    """A stable short hash (16 hex digits) of JSON-able parameters: a stage's identity."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


_FINGERPRINT_BYTES = 1 << 20


def slide_id_for(path: str | os.PathLike[str]) -> str:
    """The store name of a slide: its file name without the extension."""
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


def source_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Path, size, mtime and a fingerprint (sha256 of size, first and last MiB)."""
    p = Path(path).resolve()
    st = p.stat()
    digest = hashlib.sha256(str(st.st_size).encode())
    with open(p, "rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        if st.st_size > _FINGERPRINT_BYTES:
            f.seek(max(_FINGERPRINT_BYTES, st.st_size - _FINGERPRINT_BYTES))
            digest.update(f.read(_FINGERPRINT_BYTES))
    return {
        "path": str(p),
        "size": st.st_size,
        "mtime": st.st_mtime,
        "fingerprint": digest.hexdigest()[:32],
    }


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
        return "complete"
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


def begin_stage(group: Any, stage: str, params: dict[str, Any], phash: str) -> str:
    """Mark ``stage`` as in progress with ``params``; drops any completion record.

    Returns a fresh run id that names this layout of the stage's arrays.
    """
    import uuid

    meta = read_meta(group)
    meta.setdefault("stages", {}).pop(stage, None)
    run_id = uuid.uuid4().hex
    meta.setdefault("pending", {})[stage] = {
        "params": params,
        "params_hash": phash,
        "run_id": run_id,
        "started": now_iso(),
    }
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
