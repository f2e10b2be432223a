"""Worker tasks: one slide or store through one stage (or the last three at once), and the
batches of the per-stage commands built on them.

The same tasks serve ``wsi run`` (submitted to Dask workers) and ``wsi tile``, ``wsi
embed``, ``wsi predict``, ``wsi heatmap`` (looped over their items here). Loaded
encoders and models live in one cache per process (a Dask worker, or the process of a
per-stage command): encoders by (name, weight file and its stamp, device, precision),
models by (folder, model id), so a retrained model or replaced weights are loaded anew.

A batch never stops for one bad item: ``run_item`` records a ``WsiError`` or ``OSError``
as that item's failure (and logs it), and the others go on. What would fail every item
(an unknown encoder, a missing model) stops the batch before the first one.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.slides import SlideJob, claim_ids, input_problem, slide_jobs
from wsi._files import read_json
from wsi.config import EmbedConfig, TilingConfig
from wsi.errors import ConfigError, WsiError
from wsi.reports.options import ReportOptions

if TYPE_CHECKING:
    from wsi.heatmap import HeatmapOptions

__all__ = [
    "ItemResult",
    "run_item",
    "run_items",
    "print_results",
    "cached_encoder",
    "cached_model",
    "worker_name",
    "timed",
    "tile_task",
    "embed_task",
    "predict_task",
    "heatmap_task",
    "report_task",
    "Finish",
    "finish_task",
    "tile_slides",
    "embed_stores",
    "predict_stores",
    "heatmap_stores",
]

log = logging.getLogger(__name__)


# -- one item of a batch ----------------------------------------------------------------


@dataclass(frozen=True)
class ItemResult:
    """``ok`` with its output (a path) and the work's return value, or ``failed`` with why."""

    item: str
    status: str
    output: str | None = None
    error: str | None = None
    seconds: float = 0.0
    value: Any = None


def run_item(item: str | Path, work: Callable[[str | Path], Any]) -> ItemResult:
    """Run ``work(item)``; a WsiError or OSError (a full disk, a vanished file) is recorded.

    A returned path becomes ``output``; anything else is kept as ``value``.
    """
    t0 = time.perf_counter()
    try:
        value = work(item)
    except WsiError as err:
        msg = str(err)
    except OSError as err:
        msg = _os_error_message(item, err)
    else:
        output = str(value) if isinstance(value, (str, Path)) else None
        return ItemResult(str(item), "ok", output, None, time.perf_counter() - t0, value)
    log.error("%s", msg)
    return ItemResult(str(item), "failed", error=msg, seconds=time.perf_counter() - t0)


def _os_error_message(item: str | Path, err: OSError) -> str:
    """What an OSError that no stage turned into a WsiError means for ``item``."""
    where = f" (writing {err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC:
        folder = Path(err.filename).parent if err.filename else "the output folder"
        return (
            f"{item}: no space left on the device that holds {folder}{where}. Free space "
            "there and re-run: the work marked done is kept and resumes."
        )
    return (
        f"{item}: {err.strerror or err}{where} ({type(err).__name__}). Fix it and re-run: "
        "the work marked done is kept."
    )


def run_items(items: Sequence[str | Path], work: Callable[[str | Path], Any]) -> list[ItemResult]:
    return [run_item(item, work) for item in items]


def print_results(header: str, results: Sequence[ItemResult]) -> int:
    """Print the header, one line per item, failures last; 1 if any failed, else 0."""
    print(header)
    for r in results:
        if r.status == "ok":
            arrow = f" -> {r.output}" if r.output and r.output != r.item else ""
            print(f"  ok      {r.item}{arrow} ({r.seconds:.1f} s)")
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        print(f"  FAILED  {r.item}: {r.error}")
    return 1 if failed else 0


# -- the per-process cache --------------------------------------------------------------

_KEEP = 2  #: loaded encoders (and models) kept per process, the most recently used


class _Cache:
    """The last ``_KEEP`` values of each table, by key; ``get`` loads a missing one.

    A worker may run several tasks at once in threads: one lock makes a second task wait
    for the first one's load instead of loading the same encoder twice."""

    def __init__(self) -> None:
        self.tables: dict[str, OrderedDict[Hashable, Any]] = {}
        self._lock = threading.Lock()

    def get(self, table: str, key: Hashable, load: Callable[[], Any], keep: int = _KEEP) -> Any:
        """The value of ``key``, loaded if missing; the table keeps the ``keep`` most
        recently used (at least ``_KEEP``)."""
        with self._lock:
            values = self.tables.setdefault(table, OrderedDict())
            if key in values:
                values.move_to_end(key)
                return values[key]
            value = values[key] = load()
            while len(values) > max(keep, _KEEP):
                values.popitem(last=False)
            return value


_CACHE = _Cache()


def _stamp(path: str | None) -> tuple[int, int] | None:
    """(mtime_ns, size) of a weight file, so a replaced file is loaded anew."""
    if path is None:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return None  # load_encoder says what is wrong with it
    return st.st_mtime_ns, st.st_size


def cached_encoder(config: EmbedConfig, keep: int = _KEEP) -> Any:
    """The encoder of one-encoder ``config`` (``wsi.load_encoder``), loaded once per
    process; ``keep``: how many encoders the cache holds (those of a whole pass)."""
    from wsi.encoders import load_encoder

    key = (config.encoder, config.weights, _stamp(config.weights), config.device,
           config.precision)  # fmt: skip
    return _CACHE.get(
        "encoders",
        key,
        lambda: load_encoder(
            config.encoder,
            weights=config.weights,
            device=config.device,
            precision=config.precision,
        ),
        keep,
    )


def _needed(store: str | Path, config: EmbedConfig) -> list[EmbedConfig]:
    """The one-encoder configs of ``config``'s pass whose features ``store`` lacks."""
    return [c for c in map(config.for_encoder, config.names) if not _is_embedded(store, c)]


def cached_model(folder: str | Path, model_id: str | None = None) -> Any:
    """The trained model in ``folder`` (``wsi.load_model``), loaded once per process and
    model id.

    ``model_id`` None: whatever model the folder holds now. Given (a run fixes it when it
    starts): ConfigError when the folder holds another model by now.
    """
    from wsi.mil.predict import load_model

    folder = str(Path(folder).resolve())
    if model_id is None:
        try:
            model_id = str(read_json(Path(folder) / "model.json")["model_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return load_model(folder)  # it says what is wrong with the folder
    expected = model_id

    def load() -> Any:
        model = load_model(folder)
        if model.card["model_id"] != expected:
            raise ConfigError(
                f"{folder}: the model changed while the run was going (id "
                f"{model.card['model_id']}, the run started with {expected}). Re-run."
            )
        return model

    return _CACHE.get("models", (folder, model_id), load)


def worker_name() -> str:
    """The Dask worker this runs on (its address), or ``"driver"`` outside a worker."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "driver"


def timed(task: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``task(*args, **kwargs)`` as {"value", "worker", "seconds"}: what a run records.

    A WsiError comes back as data, {"error": its message, ...}, not raised: its text then
    reaches the client whatever the client can unpickle (on an external scheduler a
    raised WsiError could arrive as a bare ``Exception`` and read as an internal error).
    """
    t0 = time.perf_counter()
    try:
        value = task(*args, **kwargs)
    except WsiError as err:
        return {"error": str(err), "worker": worker_name(), "seconds": time.perf_counter() - t0}
    return {"value": value, "worker": worker_name(), "seconds": time.perf_counter() - t0}


# -- one slide or store through one stage -----------------------------------------------


def tile_task(
    job: SlideJob,
    out: str | Path,
    config: TilingConfig,
    *,
    client: Any = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Path:
    """Tile ``job``'s slide into ``<out>/<slide_id>.zarr`` (chunks as tasks on ``client``)."""
    from wsi.tiling import tile_slide

    return tile_slide(job.path, out, config, mpp=job.mpp, client=client, overwrite=overwrite,
                      progress=progress, slide_id=job.slide_id)  # fmt: skip


def _is_embedded(store: str | Path, config: EmbedConfig) -> bool:
    from wsi.embed import is_embedded

    try:
        return is_embedded(store, config)
    except WsiError:  # not a store, or unreadable: embed_store reports it
        return False


def embed_task(
    store: str | Path, config: EmbedConfig, *, overwrite: bool = False, progress: bool | None = None
) -> Path:
    """Embed ``store``'s tiles with the cached encoder(s) of ``config``, all in one pass
    (none is loaded for features that are done)."""
    from wsi.embed import embed_store

    keep = len(config.names)
    encoders = [cached_encoder(c, keep) for c in _needed(store, config)]
    return embed_store(store, config, encoders=encoders or None, overwrite=overwrite,
                       progress=progress)  # fmt: skip


def predict_task(
    store: str | Path, model_dir: str | Path, *, model_id: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Predict ``store`` with the cached model of ``model_dir`` (``wsi.predict_store``)."""
    from wsi.mil.predict import predict_store

    return predict_store(store, cached_model(model_dir, model_id), overwrite=overwrite)


def heatmap_task(
    store: str | Path, model_name: str, out: str | Path, options: HeatmapOptions
) -> dict[str, Any]:
    """The heatmap of ``store``'s ``model_name`` predictions and its exports into ``out``."""
    from wsi.heatmap import make_heatmap

    return make_heatmap(store, model_name, out, options)


def report_task(
    store: str | Path, model_dir: str | Path, out: str | Path, options: ReportOptions, *,
    model_id: str | None = None, viewer: Path | None = None,
) -> Any:  # fmt: skip
    """The second-opinion report of one predicted store into ``out`` (``report_slide``)."""
    from wsi.reports import report_slide

    model = cached_model(model_dir, model_id)
    return report_slide(store, model, out, options, viewer=viewer)


@dataclass(frozen=True)
class Finish:
    """What the last three stages of a run's slide need: the model (folder and the id the
    run started with), the run's output folder, the heatmap and report options."""

    model_dir: str
    model_id: str
    out: str
    heatmap: HeatmapOptions
    report: ReportOptions


def finish_task(store: str, finish: Finish) -> dict[str, Any]:
    """Predict, map and report one embedded store. Returns per-stage seconds, or the stage
    that failed with its error: the slide's problem, never the run's."""
    t0 = time.perf_counter()
    try:
        pred = predict_task(store, finish.model_dir, model_id=finish.model_id, overwrite=True)
    except Exception as err:  # noqa: BLE001 - a bug fails this slide, not the run
        return _failed("predict", err, {})
    return _map_and_report(store, finish, pred, {"predict": time.perf_counter() - t0})


def finish_patient_task(stores: list[str], finish: Finish) -> list[dict[str, Any]]:
    """A patient-level model's last stages for one patient: its embedded ``stores``
    predicted as one bag (``wsi.predict_patient``), then each slide mapped and reported.
    One result per store, in order, as ``finish_task`` gives them."""
    from wsi.mil.predict import predict_patient

    t0 = time.perf_counter()
    try:
        model = cached_model(finish.model_dir, finish.model_id)
        pred = predict_patient(stores, model, overwrite=True)
    except Exception as err:  # noqa: BLE001 - a bug fails this patient, not the run
        return [_failed("predict", err, {}) for _ in stores]
    seconds = {"predict": (time.perf_counter() - t0) / len(stores)}
    return [_map_and_report(s, finish, pred, dict(seconds)) for s in stores]


def _failed(stage: str, err: BaseException, stages: dict[str, float]) -> dict[str, Any]:
    if isinstance(err, (WsiError, OSError)):
        msg = str(err)
    else:
        msg = f"internal error: {type(err).__name__}: {err}"
    return {"ok": False, "stage": stage, "error": msg, "seconds": stages}


def _map_and_report(
    store: str, finish: Finish, pred: dict[str, Any], stages: dict[str, float]
) -> dict[str, Any]:
    """The heatmap and the report of a predicted store (``pred``: its prediction)."""
    out = Path(finish.out)
    stage = "heatmap"
    try:
        t0 = time.perf_counter()
        name = cached_model(finish.model_dir, finish.model_id).name
        maps = heatmap_task(store, name, out / "heatmaps", finish.heatmap)
        stages["heatmap"] = time.perf_counter() - t0
        stage, t0 = "report", time.perf_counter()
        viewer = maps["files"].get("viewer")
        rep = report_task(store, finish.model_dir, out / "reports", finish.report,
                          model_id=finish.model_id,
                          viewer=Path(viewer).parent if viewer else None)  # fmt: skip
        stages["report"] = time.perf_counter() - t0
    except Exception as err:  # noqa: BLE001 - a bug fails this slide, not the run
        return _failed(stage, err, stages)
    return {
        "ok": True,
        "seconds": stages,
        "worker": worker_name(),
        "decision": pred["decision"],
        "probability": pred.get("probability"),  # None: no screening (risk, value)
        "files": {**maps["files"], "report": str(rep.html), "pdf": str(rep.pdf or "")},
    }


# -- the batches of the per-stage commands ----------------------------------------------


def tile_slides(
    slides: Sequence[str | Path],
    out_dir: str | Path,
    config: TilingConfig,
    *,
    client: Any,
    mpp: float | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> list[ItemResult]:
    """Tile each slide into ``out_dir``; errors of one slide never stop the others.

    Slides whose ids (file names without extension) collide would share one store: the
    first is tiled, the others fail with a message naming both files (``claim_ids``).
    """
    tile = partial(tile_task, out=out_dir, config=config, client=client, overwrite=overwrite,
                   progress=progress)  # fmt: skip
    results = []
    for job, clash in claim_ids(slide_jobs(slides, mpp)):
        problem = clash or input_problem(job.path)  # a symlink loop, a folder: this slide's
        if problem is not None:
            log.error("%s", problem)
            results.append(ItemResult(str(job.path), "failed", error=problem))
        else:

            def work(_path: str | Path, job: SlideJob = job) -> Path:
                return tile(job)

            results.append(run_item(job.path, work))
    return results


def embed_stores(
    stores: Sequence[str | Path],
    config: EmbedConfig,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
) -> list[ItemResult]:
    """Embed each store's tiles with every encoder of ``config`` (``config.names``, in one
    pass per store); each encoder is loaded once, for the first store needing it.

    Features already embedded with an encoder and its weights are skipped without
    loading it. A missing weight file or an unknown encoder stops the batch at once (it
    would fail for every store); an error of one store is logged and the others go on.
    """
    embed = partial(embed_task, config=config, overwrite=overwrite, progress=progress)
    keep = len(config.names)
    results = []
    for store in stores:
        for one in _needed(store, config):
            cached_encoder(one, keep)  # here, outside run_item: a bad encoder stops the batch
        results.append(run_item(store, embed))
    return results


def predict_stores(
    stores: Sequence[str | Path],
    model_dir: str | Path,
    *,
    overwrite: bool = False,
    patients: Mapping[str, str] | None = None,
) -> list[ItemResult]:
    """Each store's prediction (``value``, a dict) or its error; the model is loaded once
    (a missing or damaged model stops the batch).

    With a patient-level model (``level: patient``) and ``patients`` (slide id -> patient
    id), the stores of one patient are predicted together as one bag
    (``wsi.predict_patient``): each gets the patient's result, and a failure fails every
    store of that patient. Without ``patients`` each store is a patient of one slide.
    """
    model = cached_model(model_dir)
    model_id = model.card["model_id"]
    level = model.card.get("data", {}).get("level", "slide")
    if level != "patient" or not patients:
        return run_items(
            stores, lambda s: predict_task(s, model_dir, model_id=model_id, overwrite=overwrite)
        )
    from wsi.mil.predict import predict_patient

    groups: dict[str, list[Path]] = {}
    for s in stores:
        sid = Path(s).name.removesuffix(".zarr")
        groups.setdefault(patients.get(sid, sid), []).append(Path(s))

    def patient(group: list[Path]) -> Callable[[str | Path], Any]:
        return lambda _: predict_patient(group, model, overwrite=overwrite)

    results = []
    for group in groups.values():
        res = run_item(group[0], patient(group))
        results += [dataclasses.replace(res, item=str(s)) for s in group]
    return results


def heatmap_stores(
    stores: Sequence[str | Path], model_name: str, out: str | Path, options: HeatmapOptions
) -> list[ItemResult]:
    """Each store's heatmap (``value``: ``make_heatmap``'s dict of files and regions) or
    its error."""
    return run_items(stores, lambda s: heatmap_task(s, model_name, out, options))
