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

A stage is complete only when ``attrs["wsi"]["stages"][name]`` exists; it is written
last. ``pending`` holds the params hash of a stage in progress, so a killed run resumes.
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wsi.errors import ConfigError, StoreError

__all__ = [
    "SCHEMA_VERSION",
    "ATTRS_KEY",
    "TISSUE_MASK",
    "TILES_COORDS",
    "TILES_PIXELS",
    "TILES_QC",
    "TILES_DONE",
    "FEATURES",
    "features_keys",
    "slide_id_for",
    "check_slide_id",
    "same_source",
    "store_path_for",
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

TISSUE_MASK = "tissue/mask"
TILES_COORDS = "tiles/coords"
TILES_PIXELS = "tiles/pixels"
TILES_QC = "tiles/qc"
TILES_DONE = "tiles/done"
FEATURES = "features"  #: group of one subgroup per encoder name


def features_keys(encoder: str) -> tuple[str, str, str]:
    """(stage name, embeddings key, done key) of the features of ``encoder``.

    ``features/<encoder>/embeddings`` is (N, D), row i the tile at ``tiles/coords[i]``;
    ``features/<encoder>/done`` is bool per embeddings chunk.
    """
    if not encoder or "/" in encoder or encoder.startswith("."):
        raise StoreError(f"encoder name {encoder!r} cannot name a store group")
    group = f"{FEATURES}/{encoder}"
    return group, f"{group}/embeddings", f"{group}/done"


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


def store_path_for(slide_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    return Path(out_dir) / f"{slide_id_for(slide_path)}.zarr"


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
    if mode in ("r", "r+") and not (p / "zarr.json").exists():
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


def write_meta(group: Any, meta: dict[str, Any]) -> None:
    group.attrs[ATTRS_KEY] = meta


def stage_entry(group: Any, stage: str) -> dict[str, Any] | None:
    """The completion record of ``stage``, or None if it is not complete."""
    entry = read_meta(group).get("stages", {}).get(stage)
    return dict(entry) if entry else None


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
