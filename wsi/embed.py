"""Embed the tiles of a slide store with frozen encoders: ``features/<encoder>/``.

Background threads read and decode tile chunks while the model runs, so the model does
not wait on I/O; with several encoders in one pass each batch is read and decoded once
and fed to each. Batches are aligned to fixed row ranges (batch ``b`` is rows
``b*B .. (b+1)*B``), so a resumed or repeated run feeds the model the very same batches
and, on a CPU, writes the same bytes. ``done[b]`` is written after batch ``b``'s rows;
the stage record last of all.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from wsi import store as st
from wsi.config import EmbedConfig
from wsi.errors import ConfigError, EmbeddingError, OutputFullError, StoreError, WsiError
from wsi.progress import progress_reporter
from wsi.store import params_hash

__all__ = [
    "embed_store",
    "views_of",
    "is_embedded",
    "EmbeddingError",
    "features_of",
    "fit_stain_target",
    "stain_normalisation_of",
]

log = logging.getLogger(__name__)


def _tiles_record(group: Any) -> dict[str, Any] | None:
    """Which tiles run features are made from, or None while the tiles are not complete."""
    entry = st.stage_entry(group, st.TILES)
    return (
        None
        if entry is None
        else {"params_hash": entry["params_hash"], "run_id": entry.get("run_id")}
    )


def _tiles_identity(group: Any, path: Path) -> dict[str, Any]:
    record = _tiles_record(group)
    if record is None:
        raise StoreError(
            f"{path}: the tiles stage is not complete. Run (or resume) `wsi tile` on its "
            "slide first."
        )
    return record


def _layout_fits(group: Any, keys: tuple[str, str, str], n: int, d: int, batch: int) -> bool:
    _, emb_key, done_key = keys
    if emb_key not in group or done_key not in group:
        return False
    emb, done = group[emb_key], group[done_key]
    return (
        emb.shape == (n, d) and emb.chunks == (batch, d) and done.shape == (math.ceil(n / batch),)
    )


def _write_layout(
    group: Any, keys: tuple[str, str, str], n: int, d: int, batch: int, dtype: str
) -> Any:
    name, emb_key, done_key = keys
    st.remove_member(group, name)  # also what a killed or concurrent writer left
    emb = group.create_array(emb_key, shape=(n, d), dtype=dtype, chunks=(batch, d), fill_value=0)
    group.create_array(
        done_key, shape=(math.ceil(n / batch),), dtype="bool", chunks=(1,), fill_value=False
    )
    return emb


def _prefetch(
    pixels: Any,
    batches: list[int],
    size: int,
    n: int,
    threads: int,
    ahead: int,
    pin: bool,
    normaliser: Any = None,
    failed: list[int] | None = None,
    read_log: list[int] | None = None,
) -> Generator[tuple[int, Any], None, None]:
    """Yield (b, uint8 tiles of batch b) in order, read by ``threads`` background threads
    (stain-normalised where a ``normaliser`` is given; batches with a tile it could not
    normalise, left as stored, are appended to ``failed``; every batch read and decoded
    to ``read_log``)."""

    def read(b: int) -> Any:
        import torch

        arr = np.asarray(pixels[b * size : min((b + 1) * size, n)])
        if read_log is not None:
            read_log.append(b)
        if normaliser is not None:
            arr, ok, _ = normaliser.apply_with_status(arr)
            if not ok and failed is not None:
                failed.append(b)
        tiles = torch.from_numpy(np.ascontiguousarray(arr))
        return tiles.pin_memory() if pin else tiles

    with ThreadPoolExecutor(threads, thread_name_prefix="wsi-embed-read") as pool:
        queue: deque[tuple[int, Future[Any]]] = deque()
        todo = iter(batches)
        try:
            for b in todo:
                queue.append((b, pool.submit(read, b)))
                if len(queue) >= ahead:
                    break
            while queue:
                b, fut = queue.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    queue.append((nxt, pool.submit(read, nxt)))
                yield b, fut.result()
        finally:
            for _, fut in queue:
                fut.cancel()


def features_of(store: str | os.PathLike[str], encoder: str) -> np.ndarray:
    """The complete features (N, D) of ``encoder`` in a store, row i the tile at
    ``tiles/coords[i]`` (level-0 ``(x, y)`` of its top-left corner, pixels).

    Args:
        store: a slide store folder (``<slide_id>.zarr``) or a ``wsi.SlideStore``.
        encoder: the encoder name the features were stored under (``features/<encoder>``),
            e.g. ``"efficientnet_lite0"``.

    Returns:
        A numpy array (N, D) in the stored dtype: float32, or float16 where
        ``EmbedConfig.dtype`` was ``"float16"``; D is the encoder's feature dimension
        (1280 for ``efficientnet_lite0``).

    Raises:
        StoreError: ``store`` is not a slide store, or holds no complete features of
            ``encoder`` (the message names the encoders present and the command to run),
            or ``encoder`` cannot name a store group (empty, ``/``, leading ``.``), or
            they cannot be read (repaired by re-embedding with ``overwrite``).
        StaleStageError: they were made from a tiles run that has been redone since.

    Example::

        x = wsi.features_of("stores/s1.zarr", "efficientnet_lite0")   # (N, 1280) float32
    """
    path = Path(store)
    group = st.open_store(path, mode="r")
    stage, emb_key, _ = st.features_keys(encoder)
    if st.stage_entry(group, stage) is None:
        have = sorted(group[st.FEATURES].group_keys()) if st.FEATURES in group else []
        raise StoreError(
            f"{path}: no complete features for encoder {encoder!r} (complete or partial: "
            f"{have or 'none'}). Run `wsi embed {path} --encoder {encoder}`."
        )
    st.current_entry(group, stage, str(path))  # stale or half-removed: say so
    try:
        return np.asarray(group[emb_key][:])
    except (KeyError, OSError, ValueError) as err:
        raise StoreError(
            f"{path}: the {encoder} features cannot be read ({type(err).__name__}: {err}). "
            f"Re-run `wsi embed {path} --encoder {encoder} --overwrite` to repair them."
        ) from err


def views_of(store: str | os.PathLike[str], encoder: str) -> np.ndarray | None:
    """The stain-jittered views (N, V, D) of a store's complete ``encoder`` features, or
    None where they were embedded without views."""
    path = Path(store)
    group = st.open_store(path, mode="r")
    key = st.feature_views_key(encoder)
    entry = st.stage_entry(group, st.features_keys(encoder)[0])
    if entry is None or key not in group:  # a new embedding removes the old views
        return None
    return np.asarray(group[key][:])


def _params(identity: dict[str, Any], config: EmbedConfig, tiles: dict[str, Any]) -> dict[str, Any]:
    params = {**identity, "dtype": config.dtype, "tiles": tiles}
    norm = stain_normaliser(config)
    if norm is not None:  # absent without one: features made before it keep their hash
        params["stain_normalisation"] = norm.identity()
    if config.stain_views:
        params["stain_views"] = {
            "views": config.stain_views,
            "hed_jitter": {"sigma": config.stain_jitter, "bias": VIEW_BIAS},
        }
    return params


#: HED bias of the stain-jittered views (optical density / ln(1e6)): kept small, the
#: scale does the work (0.05 tints even the glass)
VIEW_BIAS = 0.005


def _views(tiles: Any, b: int, config: EmbedConfig) -> list[Any]:
    """The stain-jittered views of batch ``b`` (uint8 tensors), the same on every run."""
    import torch

    from wsi.stain import hed_jitter

    arr = tiles.cpu().numpy()
    out = []
    for v in range(config.stain_views):
        rng = np.random.default_rng([b, v, 1234])
        jittered = hed_jitter(arr, rng, sigma=config.stain_jitter, bias=VIEW_BIAS)
        out.append(torch.from_numpy(jittered).to(tiles.device))
    return out


def stain_normaliser(config: EmbedConfig) -> Any:
    """The stain normaliser of ``config.stain_target`` (read once per file version), or
    None; ``ConfigError`` naming the file when it cannot be read."""
    if not config.stain_target:
        return None
    path = Path(config.stain_target)
    try:
        version = path.stat().st_mtime_ns
    except OSError:
        version = -1  # missing: load_target says so, naming the file
    return _load_target(str(path), version)


@lru_cache(maxsize=8)
def _load_target(path: str, version: int) -> Any:
    from wsi.stain import load_target

    return load_target(path)


def stain_normalisation_of(group: Any, encoder: str) -> dict[str, str] | None:
    """The stain normalisation (method, target checksum) a store's ``encoder`` features
    were made with; None: none (tiles embedded as stored)."""
    _, emb_key, _ = st.features_keys(encoder)
    found = group[emb_key].attrs.get("stain_normalisation") if emb_key in group else None
    return dict(found) if found else None


def fit_stain_target(
    stores: Sequence[str | os.PathLike[str]],
    method: str,
    out: str | os.PathLike[str],
    *,
    tiles_per_store: int = 64,
) -> Path:
    """Fit a stain normalisation target (``method``: ``"macenko"`` or ``"reinhard"``) on
    an even sample of ``tiles_per_store`` stored tiles of every store (the training
    slides), and write it to ``out`` (JSON). ``ConfigError`` where the stores give no
    tissue to fit on, naming them."""
    from wsi.stain import fit_normaliser, save_target

    samples = []
    for store in stores:
        group = st.open_store(Path(store), mode="r")
        if st.TILES_PIXELS not in group or group[st.TILES_PIXELS].shape[0] == 0:
            log.warning("%s: no stored tile pixels, left out of the stain target", store)
            continue
        pixels = group[st.TILES_PIXELS]
        n = int(pixels.shape[0])
        take = np.unique(np.linspace(0, n - 1, min(n, tiles_per_store)).astype(np.int64))
        samples.append(np.asarray(pixels.get_orthogonal_selection((take,))))
    if not samples:
        raise ConfigError(
            f"no stored tiles to fit a stain target on in {len(stores)} store(s) (first: "
            f"{stores[0] if stores else 'none'}): tile the training slides first"
        )
    norm = fit_normaliser(method, np.concatenate(samples))
    return save_target(norm, Path(out))


def is_embedded(store: str | os.PathLike[str], config: EmbedConfig | None = None) -> bool:
    """True if ``store`` holds complete features that ``embed_store(store, config)`` would
    keep as they are (of every encoder of ``config.names``).

    That is: the tiles stage is complete, and the features stage of each encoder is
    complete with the same encoder contract (architecture, feature dimension, input size
    and normalisation), the same weights (sha256 and file name), the same compute
    precision, the same stored ``dtype`` and the same tiles run. ``batch_size``,
    ``loader_threads`` and ``prefetch`` do not count; the device counts only through the
    precision ("auto" is bf16 on a CUDA GPU and fp32 on a CPU, so features made on a GPU
    with "auto" are not "embedded" for a CPU config). The weight file's checksum is
    computed (once per process and file) but no model is built, so a batch of finished
    stores costs no model loading.

    Args:
        store: a slide store folder (``<slide_id>.zarr``).
        config: the embedding config; None: ``EmbedConfig()``.

    Returns:
        True or False; also False where the tiles are not complete or no weight file of
        an encoder of the config is found on this machine.

    Raises:
        StoreError: ``store`` is not a slide store.
        UnknownEncoderError: an encoder is neither registered nor a timm name.
        ConfigError: ``config.device`` asks for CUDA where torch sees no GPU.

    Example::

        from wsi.embed import is_embedded

        cfg = wsi.EmbedConfig(encoder="efficientnet_lite0", device="cpu")
        todo = [s for s in sorted(Path("stores").glob("*.zarr")) if not is_embedded(s, cfg)]
    """
    config = config or EmbedConfig()
    path = Path(store)
    group = st.open_store(path, mode="r")
    tiles = _tiles_record(group)
    if tiles is None:
        return False
    return all(_has_features(group, tiles, config.for_encoder(n)) for n in config.names)


def _has_features(group: Any, tiles: dict[str, Any], config: EmbedConfig) -> bool:
    """Whether ``group`` holds the complete features of one-encoder ``config``."""
    from wsi.encoders.encoder import planned_identity

    identity = planned_identity(config.encoder, config.weights, config.device, config.precision)
    if identity is None:
        return False
    keys = st.features_keys(config.encoder)
    done = st.stage_entry(group, keys[0])
    if done is None or not all(key in group for key in keys):
        return False  # not made, or recorded but (partly) removed since: not embedded
    return bool(done["params_hash"] == params_hash(_params(identity, config, tiles)))


def embed_store(
    store: str | os.PathLike[str],
    config: EmbedConfig | None = None,
    *,
    encoder: Any = None,
    encoders: Sequence[Any] | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Path:
    """Embed every tile of ``store`` into ``features/<encoder>/embeddings``, for one
    encoder or several in one pass; returns the store.

    Writes ``features/<encoder>/embeddings``, (N, D) in ``config.dtype`` (float32 by
    default), row i the tile at ``tiles/coords[i]``, with the encoder's identity in its
    attrs (weights sha256, input contract, compute precision, device), and
    ``features/<encoder>/done`` (bool per batch). Batches are fixed row ranges, so an
    interrupted run resumes where it stopped and, on a CPU with the same thread count, a
    repeated run writes the same bytes. A complete stage with the same encoder, weights,
    precision, dtype and tiles is a no-op (see ``is_embedded``); features of other
    weights or parameters under the same encoder name are refused unless ``overwrite``.

    With several encoders (``config.encoders``, or ``encoders``) each tile batch is read
    and decoded once and fed to every encoder that still needs it: each encoder's group,
    ``done`` flags, attrs and stage record are those it would get alone (the same bytes
    on a CPU), an encoder whose features are complete is skipped, a half-done one
    resumes, and a batch every encoder has is not read. An encoder that gives non-finite
    features is dropped from the pass, the others finish, then its error is raised.

    Args:
        store: a slide store whose tiles stage is complete (``wsi.tile_slide``).
        config: encoder name(s), weight file(s), device, precision, batch size (tiles per
            forward pass), stored dtype and loader threads; None: ``EmbedConfig()``
            (``efficientnet_lite0`` with its packaged ImageNet weights, a GPU if there is
            one, 64 tiles per batch on a CPU and 256 on a GPU). Stain normalisation and
            views apply to every encoder of the pass.
        encoder: an already loaded ``Encoder`` (``wsi.load_encoder``), to embed many
            stores without reloading it. Its name, weights, device and precision are then
            used, and ``config``'s ``encoder``, ``encoders``, ``weights``, ``device`` and
            ``precision`` are ignored (its batch size, dtype, loader threads, prefetch and
            stain options still apply).
        encoders: several loaded encoders for one pass (as ``encoder``, which must then
            be None); their names must differ, and they must agree on the batch size.
        overwrite: replace features of the same encoder name made with other weights or
            other parameters.
        progress: True shows a progress bar, False logs every 10 %, None shows a bar when
            stderr is a terminal.

    Returns:
        ``Path(store)``: the store folder (the features are in
        ``features/<encoder>/embeddings`` inside it; read them with ``features_of``).

    Raises:
        StoreError: ``store`` is not a slide store, its tiles stage is not complete, or
            reading or computing stopped (an ``OSError``, ``ValueError`` or
            ``RuntimeError`` such as CUDA out of memory, chained as the cause); the
            batches done so far are kept and a re-run resumes.
        StageConflictError: features of an encoder name exist with other weights or
            other parameters and ``overwrite`` is False (nothing is written then).
        EmbeddingError: an encoder gave NaN or infinite features (``wsi.embed``; also an
            ``ArithmeticError``); below fp32 re-run with ``precision="fp32"``, at fp32
            check the weights file.
        UnknownEncoderError, WeightsNotFoundError, WeightsError, ConfigError: loading an
            encoder failed (see ``wsi.load_encoder``), or ``encoders`` repeat a name or
            need different batch sizes.

    Example::

        store = wsi.tile_slide("slides/s1.svs", "stores")
        wsi.embed_store(store, wsi.EmbedConfig(device="cpu"))
        wsi.features_of(store, "efficientnet_lite0").shape     # (N, 1280)

        cfg = wsi.EmbedConfig(encoder="uni", weights="weights/uni.bin", device="cuda")
        enc = wsi.load_encoder(cfg.encoder, weights=cfg.weights, device=cfg.device)
        for path in sorted(Path("stores").glob("*.zarr")):
            wsi.embed_store(path, cfg, encoder=enc, progress=False)

        two = wsi.EmbedConfig(encoders=("efficientnet_lite0", "resnet50_trunc"), device="cpu")
        wsi.embed_store(store, two)       # features/efficientnet_lite0 and resnet50_trunc
    """
    config = config or EmbedConfig()
    if encoder is not None and encoders is not None:
        raise ConfigError("embed_store: give `encoder` or `encoders`, not both")
    loaded = [encoder] if encoder is not None else None if encoders is None else list(encoders)
    path = Path(store)
    st.open_store(path, mode="r")  # not a store: say so before taking its lock
    with st.store_lock(path):  # one writer per store; a second is refused
        return _embed_locked(path, config, loaded, overwrite, progress)


@dataclass
class _Part:
    """One encoder's share of a pass: its stage, its arrays, the batches it still needs."""

    encoder: Any
    keys: tuple[str, str, str]  # stage, embeddings, done
    params: dict[str, Any]
    phash: str
    state: str  # "fresh" or "resume"
    todo: list[int] = field(default_factory=list)
    emb: Any = None
    done: Any = None
    views: Any = None
    error: WsiError | None = None


def _embed_locked(
    path: Path, config: EmbedConfig, loaded: list[Any] | None, overwrite: bool,
    progress: bool | None,
) -> Path:  # fmt: skip
    from wsi.encoders.encoder import load_encoder

    group = st.open_store(path, mode="r+")
    tiles_id = _tiles_identity(group, path)
    if loaded is None:  # load only what is not complete already
        loaded = []
        for name in config.names:
            one = config.for_encoder(name)
            if is_embedded(path, one):
                log.info("%s: features of %s already complete, nothing to do", path, name)
                continue
            loaded.append(load_encoder(name, weights=one.weights, device=one.device,
                                       precision=one.precision))  # fmt: skip
    if not loaded:
        return path
    batch = _pass_batch(loaded, config)
    pixels = group[st.TILES_PIXELS]
    n = int(pixels.shape[0])
    parts = []
    for enc in loaded:  # every conflict is raised before anything is written
        part = _plan_part(group, path, enc, config, tiles_id, overwrite)
        if part is not None:
            parts.append(part)
    for part in parts:
        _open_part(group, path, part, config, n, batch, tiles_id)
    if parts:
        _run_pass(path, config, parts, pixels, n, batch, progress)
    return path


def _pass_batch(encoders: list[Any], config: EmbedConfig) -> int:
    """The batch size every encoder of a pass shares; ConfigError where they differ."""
    names = [e.name for e in encoders]
    if len(set(names)) != len(names):
        raise ConfigError(f"one pass names an encoder twice ({', '.join(names)})")
    sizes = {config.batch_for(e.device.type) for e in encoders}
    if len(sizes) > 1:
        raise ConfigError(
            f"the encoders of one pass ({', '.join(names)}) are on different devices with "
            "different default batch sizes: give embed.batch_size (--batch-size)"
        )
    return sizes.pop()


def _plan_part(
    group: Any, path: Path, encoder: Any, config: EmbedConfig, tiles_id: dict[str, Any],
    overwrite: bool,
) -> _Part | None:  # fmt: skip
    """One encoder's part of the pass, or None where its features are complete; the
    stage rules (conflicts, never mixed weights) are checked here, nothing is written."""
    keys = st.features_keys(encoder.name)
    params = _params(encoder.identity(), config, tiles_id)
    phash = params_hash(params)
    never_mix = st.NeverMix(
        "weights_sha256",
        encoder.weights_sha256,
        "weights",
        "register the new weights under another name",
    )
    state = st.stage_state(
        group, keys[0], phash, overwrite=overwrite, where=str(path), never_mix=never_mix
    )
    if state == "complete":
        log.info("%s: %s already complete (%s), nothing to do", path, keys[0], phash)
        return None
    return _Part(encoder, keys, params, phash, state)


def _open_part(
    group: Any, path: Path, part: _Part, config: EmbedConfig, n: int, batch: int,
    tiles_id: dict[str, Any],
) -> None:  # fmt: skip
    """Make (fresh) or reopen (resume) one encoder's arrays; its batches still to do."""
    import torch

    encoder, keys = part.encoder, part.keys
    d = encoder.spec.feature_dim
    if part.state == "resume" and not _layout_fits(group, keys, n, d, batch):
        part.state = "fresh"  # another batch size: its rows are fine but its chunks are not
    if part.state == "fresh":
        emb = _write_layout(group, keys, n, d, batch, config.dtype)
        if config.stain_views:
            group.create_array(st.feature_views_key(encoder.name), shape=(n, config.stain_views, d),
                               dtype=config.dtype, chunks=(batch, config.stain_views, d),
                               fill_value=0)  # fmt: skip
        emb.attrs.update(
            {
                **part.params,
                "rows": "tile i of tiles/coords",
                "device": str(encoder.device),
                # CPU results are bit-identical for the same batches and thread count
                "torch_threads": torch.get_num_threads(),
                "versions": st.package_versions(),
            }
        )
        norm = stain_normaliser(config)
        if norm is not None:  # the target itself, so a model can carry it on
            emb.attrs["stain_target"] = {"method": norm.method, "target": norm.target}
        st.begin_stage(group, keys[0], part.params, part.phash,
                       made_from=tiles_id.get("stage", st.TILES))  # fmt: skip
    else:
        log.info("%s: resuming %s", path, keys[0])
    part.emb = group[keys[1]]
    part.done = group[keys[2]]
    part.views = group[st.feature_views_key(encoder.name)] if config.stain_views else None
    done = np.asarray(part.done[:])
    part.todo = [b for b in range(len(done)) if not done[b]]


class _SharedViews:
    """The stain-jittered views of one batch, made once for every encoder that needs them."""

    def __init__(self, tiles: Any, b: int, config: EmbedConfig) -> None:
        self.tiles, self.b, self.config = tiles, b, config
        self._views: list[Any] | None = None

    def get(self) -> list[Any]:
        if self._views is None:
            self._views = _views(self.tiles, self.b, self.config)
        return self._views


def _embed_batch(
    path: Path, part: _Part, b: int, tiles: Any, batch: int, config: EmbedConfig,
    views: _SharedViews,
) -> None:  # fmt: skip
    """One encoder on batch ``b``: its rows (and views), then its done flag."""
    import torch

    encoder = part.encoder
    feats = encoder(tiles)
    if not bool(torch.isfinite(feats).all()):
        fix = (
            "Re-run with --precision fp32."
            if encoder.precision != "fp32"
            else f"At fp32 this comes from the encoder's weights: check the weights "
            f"file {encoder.weights_path} (sha256 {encoder.weights_sha256[:12]})."
        )
        raise EmbeddingError(
            f"{path}: {encoder.name} gave non-finite features for tiles "
            f"{b * batch}..{b * batch + len(tiles) - 1} at precision "
            f"{encoder.precision}. {fix}"
        )
    part.emb[b * batch : b * batch + len(tiles)] = feats.cpu().numpy().astype(config.dtype)
    if part.views is not None:
        out = [encoder(v).cpu().numpy() for v in views.get()]
        part.views[b * batch : b * batch + len(tiles)] = np.stack(out, 1).astype(config.dtype)
    part.done[b] = True  # last: this batch is trusted from here on


def _run_pass(
    path: Path, config: EmbedConfig, parts: list[_Part], pixels: Any, n: int, batch: int,
    progress: bool | None,
) -> None:  # fmt: skip
    """Read each batch some encoder still needs once, feed it to each that needs it;
    then each encoder's stage record (an encoder that failed gets none, its error is
    raised once the others are complete)."""
    import torch

    def rows(b: int) -> int:
        return min((b + 1) * batch, n) - b * batch

    todo = [set(p.todo) for p in parts]
    union = sorted(set().union(*todo))
    names = "+".join(p.encoder.name for p in parts)
    update, close = progress_reporter(n, f"{st.slide_id_for(path)} {names}", progress)
    update(n - sum(rows(b) for b in union))
    devices = [p.encoder.device.type for p in parts]
    pin = "cuda" in devices
    threads = max(config.loaders_for(t) for t in devices)
    unnormalised: list[int] = []  # batches holding a tile the stain normaliser left as is
    read: list[int] = []  # batches read and decoded by the loader
    active = list(range(len(parts)))
    current = parts[0]
    t0 = time.perf_counter()
    waited = 0.0  # time the model sat waiting for the loader
    batches = _prefetch(pixels, union, batch, n, threads, config.prefetch, pin,
                        stain_normaliser(config), unnormalised, read)  # fmt: skip
    try:
        while active:
            t_wait = time.perf_counter()
            item = next(batches, None)
            waited += time.perf_counter() - t_wait
            if item is None:
                break
            b, tiles = item
            views = _SharedViews(tiles, b, config)
            for i in [i for i in active if b in todo[i]]:
                current = parts[i]
                try:
                    _embed_batch(path, current, b, tiles, batch, config, views)
                except EmbeddingError as err:
                    current.error = err  # dropped from the pass; the others go on
                    active.remove(i)
                    log.error("%s", err)
            update(len(tiles))
    except (OSError, ValueError, RuntimeError) as err:
        if isinstance(err, WsiError):
            raise
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            written = int(np.asarray(current.done[:]).sum())
            unit = f"batches of {current.encoder.name} features of {path.name}"
            raise OutputFullError.of(path.parent, written, len(current.done), unit, err) from err
        raise StoreError(
            f"{path}: embedding stopped ({type(err).__name__}: {err}). Batches done so far "
            "are kept; fix the cause and re-run to resume."
        ) from err
    finally:
        batches.close()
        close()
    seconds = time.perf_counter() - t0
    for i, part in enumerate(parts):
        if part.error is not None:
            continue
        done_now = sum(rows(b) for b in part.todo)
        counts: dict[str, Any] = {
            "tiles": n,
            "feature_dim": int(part.encoder.spec.feature_dim),
            "batch_size": batch,
            "batches_this_run": len(part.todo),
            "resumed": part.state == "resume",
            "tiles_per_s_this_run": round(done_now / seconds, 1)
            if part.todo and seconds > 0
            else None,
            "loader_wait_s": round(waited, 2),
            "torch_threads": torch.get_num_threads(),
            "batches_read": len(read),  # by the whole pass, for every encoder of it
        }
        if len(parts) > 1:
            counts["one_pass_with"] = [p.encoder.name for p in parts if p is not part]
        if config.stain_target:
            counts["batches_with_unnormalised_tiles"] = len(todo[i].intersection(unnormalised))
        group = st.open_store(path, mode="r+")
        st.complete_stage(group, part.keys[0], counts)
        log.info("%s: %s, %d tiles in %.1f s", path, part.keys[0], n, seconds)
    if config.stain_target and unnormalised:
        log.warning(
            "%s: %d batch(es) hold tiles the stain normaliser could not estimate "
            "(near-white, pen): embedded as stored",
            path,
            len(unnormalised),
        )
    failed = [p.error for p in parts if p.error is not None]
    if failed:
        raise failed[0]
