"""Features as CLAM / TRIDENT h5 files: export a store's features, import theirs.

One h5 file per slide, the layout both CLAM (``extract_features_fp.py``) and TRIDENT
(``extract_patch_features``) write and their MIL code reads::

    <slide_id>.h5
      coords    int64 (N, 2), level-0 top-left (x, y) of each tile, pixels
                attrs: patch_size, patch_level (CLAM); patch_size_level0,
                level0_magnification, target_magnification, overlap, name (TRIDENT)
      features  float32 (N, D), row i the tile at coords[i]
      attrs     our provenance: producer, encoder, architecture, weights_sha256,
                feature_dim, preprocessing (JSON), tile_mpp, wsi_version

Only tile geometry and encoder identity are written: never the source slide's path, nor
its label or macro image.

Importing reads that layout (CLAM's ``features`` may also be (1, N, D)) into
``features/<encoder>/`` of a store: rows are matched to the store's tiles by their
coordinates, or, with no store yet, a features-only store is made (see
:func:`import_h5`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st
from wsi._files import atomic_path, sha256_file
from wsi.errors import H5FormatError, H5NotFoundError, StoreError
from wsi.store import params_hash

__all__ = [
    "H5FormatError",
    "H5NotFoundError",
    "H5Features",
    "COORDS_STAGE",
    "export_h5",
    "import_h5",
    "read_h5",
]

log = logging.getLogger(__name__)

#: Stage of a features-only store's ``tiles/coords`` (no pixels, so no "tiles" stage).
COORDS_STAGE = st.COORDS

#: Attributes of the h5 ``coords`` dataset that describe the tile geometry.
GEOMETRY_ATTRS = (
    "patch_size",
    "patch_level",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "overlap",
)

_IMPORT_CHUNK_ROWS = 1024


# -- export -----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON / h5 friendly Python scalar from a numpy scalar (others unchanged)."""
    return value.item() if isinstance(value, np.generic) else value


def _magnification(objective_power: Any, mpp_x: float | None) -> int | float | None:
    """Objective power of level 0, or ``round(10 / mpp_x)`` when the slide does not say."""
    if objective_power is not None:
        power = float(objective_power)
        return int(power) if power.is_integer() else power
    if mpp_x:
        return int(round(10.0 / mpp_x))
    return None


def _tile_geometry(group: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The h5 ``coords`` attrs (and ``tile_mpp``) of a store's tiles.

    ``patch_size`` is the tile side in pixels of the pyramid level read (``patch_level``),
    as CLAM reads it; with tiles read at a level without further scaling (``scale`` 1,
    the usual case) it equals the stored tile size, TRIDENT's ``patch_size`` at
    ``target_magnification``. ``patch_size_level0`` is the footprint in level-0 pixels.
    ``overlap`` is in pixels at the target magnification, as TRIDENT counts it:
    ``tile_size - stride`` (0 for the default stride).
    """
    if st.stage_entry(group, st.TILES) is None:  # a features-only store: keep what it has
        attrs = dict(group[st.TILES_COORDS].attrs)
        return {k: _plain(attrs[k]) for k in GEOMETRY_ATTRS if attrs.get(k) is not None}
    pix = dict(group[st.TILES_PIXELS].attrs)
    tile_size = int(pix["tile_size"])
    level_ds = float(pix["level_downsample"])
    footprint = dict(group[st.TILES_COORDS].attrs).get("footprint_l0")
    if footprint is None:
        footprint = tile_size * level_ds * float(pix["scale"])
    footprint = float(footprint)
    tile_mpp = float(pix["tile_mpp"])
    config = st.stage_entry(group, st.TILES) or {}
    stride = config.get("params", {}).get("config", {}).get("stride")
    slide = meta.get("slide") or {}
    mpp = slide.get("mpp") or {}
    geometry: dict[str, Any] = {
        "patch_size": int(round(footprint / level_ds)),
        "patch_level": int(pix["level"]),
        "patch_size_level0": int(round(footprint)),
        "level0_magnification": _magnification(slide.get("objective_power"), mpp.get("x")),
        "target_magnification": int(round(10.0 / tile_mpp)),
        "overlap": 0 if stride is None else int(tile_size - int(stride)),
        "tile_mpp": tile_mpp,
    }
    return {k: v for k, v in geometry.items() if v is not None}


def _provenance(emb_attrs: dict[str, Any], encoder: str, d: int) -> dict[str, Any]:
    """Root attrs of an exported file: who made the features, with which weights."""
    from wsi._version import __version__

    prov: dict[str, Any] = {
        "producer": "wsi",
        "wsi_version": __version__,
        "encoder": encoder,
        "feature_dim": int(d),
    }
    for key in ("architecture", "weights_sha256", "imported_from"):
        if emb_attrs.get(key) is not None:
            prov[key] = str(emb_attrs[key])
    if emb_attrs.get("preprocessing") is not None:
        prov["preprocessing"] = json.dumps(emb_attrs["preprocessing"], sort_keys=True)
    return prov


def export_h5(store: str | os.PathLike[str], encoder: str, out_dir: str | os.PathLike[str]) -> Path:
    """Write the complete ``encoder`` features of ``store`` to ``<out_dir>/<slide_id>.h5``.

    ``coords`` are ``tiles/coords`` as int64 level-0 top-left (x, y) pixels and
    ``features`` the embeddings as float32, in the store's tile order; see the module
    docstring for the attributes. The file is written as a hidden temporary file beside
    it (``wsi._files.atomic_path``) and then renamed, so a crash never leaves a partial
    file under the final name; an existing file of that name is replaced. StoreError if
    the features are not complete.
    """
    import h5py

    from wsi.embed import features_of

    path = Path(store)
    feats = features_of(path, encoder).astype(np.float32, copy=False)
    group = st.open_store(path, mode="r")
    meta = st.read_meta(group)
    coords = np.asarray(group[st.TILES_COORDS][:]).astype(np.int64)
    if coords.shape[0] != feats.shape[0]:
        raise StoreError(
            f"{path}: {feats.shape[0]} feature rows for {coords.shape[0]} tiles. Re-run "
            f"`wsi embed {path} --encoder {encoder} --overwrite`."
        )
    _, emb_key, _ = st.features_keys(encoder)
    emb_attrs = dict(group[emb_key].attrs)
    geometry = _tile_geometry(group, meta)
    tile_mpp = geometry.pop("tile_mpp", None)
    slide_id = str(meta.get("slide_id") or path.stem)
    provenance = _provenance(emb_attrs, encoder, feats.shape[1])
    if tile_mpp is not None:
        provenance["tile_mpp"] = float(tile_mpp)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{slide_id}.h5"
    with atomic_path(final) as tmp, h5py.File(tmp, "w") as f:
        dset = f.create_dataset("coords", data=coords)
        dset.attrs.update({**geometry, "name": slide_id})
        f.create_dataset("features", data=feats)
        f.attrs.update(provenance)
    log.info("%s: %s features of %d tiles -> %s", path, encoder, len(coords), final)
    return final


# -- reading an h5 file -----------------------------------------------------------------


@dataclass(frozen=True)
class H5Features:
    """The checked contents of one features h5 file.

    ``coords`` int32 (N, 2) level-0 top-left (x, y), pixels, unique; ``features``
    float32 (N, D), finite; ``geometry`` the ``coords`` attrs of :data:`GEOMETRY_ATTRS`
    found; ``weights_sha256`` from the root attrs (files we exported), else None;
    ``fingerprint`` sha256 of the whole file, 32 hex digits.
    """

    path: Path
    coords: np.ndarray
    features: np.ndarray
    fingerprint: str
    weights_sha256: str | None = None
    geometry: dict[str, Any] = field(default_factory=dict)


def _dataset(f: Any, name: str, path: Path) -> np.ndarray:
    import h5py

    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        have = sorted(f.keys())
        raise H5FormatError(
            f"{path}: no `{name}` dataset (datasets: {have or 'none'}). A features file needs "
            "`features` (N, D) and `coords` (N, 2) in the same file, as CLAM and TRIDENT write."
        )
    return np.asarray(obj[()])


def _check_features(raw: np.ndarray, path: Path) -> np.ndarray:
    """float32 (N, D) from (N, D) or CLAM's (1, N, D); H5FormatError otherwise."""
    arr = raw[0] if raw.ndim == 3 and raw.shape[0] == 1 else raw
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise H5FormatError(
            f"{path}: `features` has shape {raw.shape}; expected (N, D) or (1, N, D)."
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise H5FormatError(f"{path}: `features` has dtype {arr.dtype}; expected real numbers.")
    feats = arr.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(feats)))
    if bad:
        raise H5FormatError(
            f"{path}: `features` has {bad} non-finite value(s) (NaN or inf), or values too large "
            "for float32. Re-extract the features of this slide."
        )
    return feats


def _check_coords(raw: np.ndarray, path: Path) -> np.ndarray:
    """int32 (N, 2) unique level-0 (x, y) from (N, 2) or (1, N, 2); H5FormatError otherwise."""
    arr = raw[0] if raw.ndim == 3 and raw.shape[0] == 1 else raw
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise H5FormatError(f"{path}: `coords` has shape {raw.shape}; expected (N, 2) of (x, y).")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise H5FormatError(f"{path}: `coords` has dtype {arr.dtype}; expected integers.")
    if np.issubdtype(arr.dtype, np.floating) and not (
        np.isfinite(arr).all() and (arr == np.round(arr)).all()
    ):
        raise H5FormatError(f"{path}: `coords` are not whole level-0 pixel positions.")
    info = np.iinfo(np.int32)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise H5FormatError(f"{path}: `coords` do not fit level-0 pixel positions (int32).")
    coords = arr.astype(np.int32)
    n_unique = len(np.unique(_coord_keys(coords)))
    if n_unique != len(coords):
        raise H5FormatError(
            f"{path}: `coords` has {len(coords) - n_unique} repeated (x, y); each row must be "
            "one tile."
        )
    return coords


def _geometry_attrs(attrs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in GEOMETRY_ATTRS:
        value = _plain(attrs.get(key))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def read_h5(h5_path: str | os.PathLike[str]) -> H5Features:
    """Read and check a features h5 file (ours, CLAM's or TRIDENT's); see :class:`H5Features`.

    H5NotFoundError if it is missing; H5FormatError if it is not HDF5, lacks ``features``
    or ``coords``, their row counts differ, or features are not finite.
    """
    import h5py

    path = Path(h5_path)
    if not path.is_file():
        raise H5NotFoundError(f"{path}: no such file. Check the path.")
    if not h5py.is_hdf5(path):
        raise H5FormatError(
            f"{path}: not an HDF5 file. Give the .h5 features file that CLAM or TRIDENT wrote."
        )
    try:
        with h5py.File(path, "r") as f:
            raw_feats = _dataset(f, "features", path)
            raw_coords = _dataset(f, "coords", path)
            geometry = _geometry_attrs(f["coords"].attrs)
            sha = _plain(f.attrs.get("weights_sha256"))
    except OSError as err:
        raise H5FormatError(f"{path}: cannot read the HDF5 file ({err}). Is it complete?") from err
    feats = _check_features(raw_feats, path)
    coords = _check_coords(raw_coords, path)
    if len(feats) != len(coords):
        raise H5FormatError(
            f"{path}: {len(feats)} feature rows but {len(coords)} coords; each row of `features` "
            "must be the tile of the same row of `coords`."
        )
    if len(coords) == 0:
        raise H5FormatError(f"{path}: no tiles (0 rows); nothing to import.")
    if isinstance(sha, bytes):
        sha = sha.decode()
    return H5Features(
        path=path,
        coords=coords,
        features=feats,
        fingerprint=sha256_file(path)[:32],
        weights_sha256=str(sha) if sha else None,
        geometry=geometry,
    )


# -- import -----------------------------------------------------------------------------


def _coord_keys(coords: np.ndarray) -> np.ndarray:
    """One int64 per (x, y) row, equal only for equal rows (int32 inputs)."""
    c = coords.astype(np.int64)
    return (c[:, 0] << 32) + (c[:, 1] & 0xFFFFFFFF)


def _rows_in_store(h5: H5Features, store_coords: np.ndarray, store: Path) -> np.ndarray:
    """For each h5 row, the index of the store tile at the same coords; StoreError if any misses.

    The h5 coords must be exactly the store's tiles, in any order.
    """
    keys = _coord_keys(store_coords)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    want = _coord_keys(h5.coords)
    pos = np.clip(np.searchsorted(sorted_keys, want), 0, len(sorted_keys) - 1)
    hit = sorted_keys[pos] == want
    missing = int(np.count_nonzero(~hit))
    fix = (
        "The features were made on another tile grid: import them into another --out (a "
        "features-only store), or tile the slide with the grid they were made on."
    )
    if missing:
        raise StoreError(
            f"{h5.path}: {missing} of its {len(want)} coords do not match a tile of {store} "
            f"({len(keys)} tiles). {fix}"
        )
    if len(want) != len(keys):
        raise StoreError(
            f"{h5.path}: {len(want)} rows for the {len(keys)} tiles of {store}; every tile "
            f"needs one row. {fix}"
        )
    return np.asarray(order[pos])


def _fresh_store_meta(h5: H5Features, slide_id: str) -> dict[str, Any]:
    return st.new_store_meta(slide_id, {"h5": h5.path.name, "fingerprint": h5.fingerprint})


def _create_coords_store(path: Path, h5: H5Features) -> Any:
    """A features-only store at ``path`` with ``tiles/coords`` from ``h5`` (stage "coords")."""
    group = st.create_store(path, _fresh_store_meta(h5, path.stem))
    n = len(h5.coords)
    coords = group.create_array(
        st.TILES_COORDS, shape=(n, 2), dtype="int32", chunks=(min(n, 65536), 2)
    )
    attrs: dict[str, Any] = {"frame": "level-0 top-left (x, y), pixels", "source": "h5"}
    attrs.update(h5.geometry)
    if "patch_size_level0" in h5.geometry:
        attrs["footprint_l0"] = float(h5.geometry["patch_size_level0"])
    elif h5.geometry.get("patch_level") == 0 and "patch_size" in h5.geometry:
        # CLAM's h5: a patch read at level 0 covers patch_size level-0 pixels
        attrs["footprint_l0"] = float(h5.geometry["patch_size"])
    coords.attrs.update(attrs)
    params = {"h5": h5.path.name, "fingerprint": h5.fingerprint, "tiles": n}
    st.begin_stage(group, COORDS_STAGE, params, params_hash(params))
    coords[:] = h5.coords
    st.complete_stage(group, COORDS_STAGE, {"tiles": n})
    return group


def _coords_identity(group: Any) -> dict[str, Any] | None:
    """Stage name, params hash and run id of the store's complete tile coords, or None."""
    for stage in (st.TILES, COORDS_STAGE):
        entry = st.stage_entry(group, stage)
        if entry is not None:
            return {"stage": stage, "params_hash": entry["params_hash"], "run_id": entry["run_id"]}
    return None


def _target_store(path: Path, h5: H5Features) -> tuple[Any, bool]:
    """(group, created) for importing ``h5`` at ``path``: the existing store, or a new one.

    An existing store must have complete tiles (or coords). A store left by an import that
    was killed before its coords were complete is made again.
    """
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        if not st.is_wsi_store(path):
            raise st.foreign_store_error(path)
        group = st.open_store(path, mode="r+")
        meta = st.read_meta(group)
        if _coords_identity(group) is not None:
            return group, False
        pending = meta.get("pending", {})
        if meta and (set(pending) - {COORDS_STAGE} or meta.get("slide")):
            raise StoreError(
                f"{path}: its tiles are not complete, so {h5.path.name} cannot be matched to "
                "them. Finish `wsi tile` on its slide first, or import into another --out."
            )
        st.remove_store(path)  # an interrupted features-only store: nothing in it is trusted
    return _create_coords_store(path, h5), True


def _write_features(
    group: Any, encoder: str, feats: np.ndarray, params: dict[str, Any], phash: str
) -> None:
    """Layout, then begin_stage, rows and done flags per chunk, then complete_stage."""
    stage, emb_key, done_key = st.features_keys(encoder)
    n, d = feats.shape
    rows = min(n, _IMPORT_CHUNK_ROWS)
    st.remove_member(group, stage)
    emb = group.create_array(emb_key, shape=(n, d), dtype="float32", chunks=(rows, d), fill_value=0)
    done = group.create_array(
        done_key, shape=(math.ceil(n / rows),), dtype="bool", chunks=(1,), fill_value=False
    )
    emb.attrs.update(
        {
            **params,
            "name": encoder,
            "dtype": "float32",
            "rows": "tile i of tiles/coords",
            "versions": st.package_versions(),
        }
    )
    st.begin_stage(group, stage, params, phash, made_from=params["tiles"]["stage"])
    for c in range(done.shape[0]):
        emb[c * rows : (c + 1) * rows] = feats[c * rows : (c + 1) * rows]
        done[c] = True  # last: this chunk is trusted from here on
    st.complete_stage(group, stage, {"tiles": int(n), "feature_dim": int(d), "imported": True})


def import_h5(
    h5_path: str | os.PathLike[str],
    encoder: str,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Import the features of an h5 file into ``<out_dir>/<stem>.zarr`` as ``encoder``.

    The file is ours (:func:`export_h5`), CLAM's or TRIDENT's: ``features`` (N, D) or
    (1, N, D) and ``coords`` (N, 2) level-0 top-left (x, y), in the same file.

    - The store exists with complete tiles: the h5 coords must be exactly its tiles (any
      order; rows are put in the store's tile order), else StoreError saying how many
      coords did not match.
    - No store there: a *features-only* store is made: ``attrs["wsi"]`` with
      ``source`` = {"h5": file name, "fingerprint": sha256 of the file, 32 hex} and
      ``slide`` = {}, and ``tiles/coords`` (int32, attrs patch_size / patch_level ... as
      the h5 gave them) under a complete stage ``"coords"``. There is no ``"tiles"``
      stage, since there are no pixels: ``wsi embed`` refuses such a store.

    The features go to ``features/<encoder>/embeddings`` (float32) with stage params
    {"encoder", "weights_sha256" (root attr of the file, else None), "imported_from" (file
    name), "feature_dim", "fingerprint", "tiles" (identity of the coords)}. The same params
    again is a no-op; other weights or params of that encoder are refused
    (StageConflictError) unless ``overwrite``. The file is checked in full before anything
    is written, and the stage record is written last. Returns the store path.
    """
    h5 = read_h5(h5_path)
    stage, _, _ = st.features_keys(encoder)  # a bad name fails before anything is written
    path = st.store_path(out_dir, h5.path.stem)
    with st.store_lock(path):  # one writer per store; a second is refused
        return _import_locked(h5, encoder, path, overwrite)


def _import_locked(h5: H5Features, encoder: str, path: Path, overwrite: bool) -> Path:
    stage, _, _ = st.features_keys(encoder)
    group, created = _target_store(path, h5)
    store_coords = np.asarray(group[st.TILES_COORDS][:])
    order = _rows_in_store(h5, store_coords, path)
    feats = np.empty_like(h5.features)
    feats[order] = h5.features
    params = {
        "encoder": encoder,
        "weights_sha256": h5.weights_sha256,
        "imported_from": h5.path.name,
        "feature_dim": int(feats.shape[1]),
        "fingerprint": h5.fingerprint,
        "tiles": _coords_identity(group),
    }
    phash = params_hash(params)
    never_mix = st.NeverMix(
        "weights_sha256", h5.weights_sha256, "weights", "import under another --encoder name"
    )
    if "complete" == st.stage_state(
        group, stage, phash, overwrite=overwrite, where=str(path), never_mix=never_mix
    ):
        log.info("%s: %s already imported from %s, nothing to do", path, stage, h5.path.name)
        return path
    _write_features(group, encoder, feats, params, phash)
    log.info(
        "%s: %s <- %s (%d tiles%s)",
        path,
        stage,
        h5.path.name,
        len(feats),
        ", new features-only store" if created else "",
    )
    return path
