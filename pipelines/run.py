"""``wsi run``: every slide through tile -> embed -> predict -> heatmap -> report on Dask,
then the cohort report.

Layout of the output folder::

    <out>/stores/<slide_id>.zarr      slide stores (tiles, features, predictions, heatmaps)
    <out>/heatmaps/                   PNG overlays, QuPath GeoJSON (and TIFF, viewer if asked)
    <out>/reports/<slide_id>.html|pdf second-opinion reports; cohort.html and cohort.csv
    <out>/status/<slide_id>.json      per slide: stages done, or the stage that failed and why
    <out>/summary.json                the run: counts, per-slide status, seconds
    <out>/run.log                     the log of every run into this folder (appended)

Where the work runs: tiling chunks on any worker; a slide's embedding on a worker that
declares the GPU resource (``dask worker --resources GPU=1``) where the cluster has one, any
worker otherwise; prediction, heatmap and report on any worker. Slides stream through: a
slide is embedded while the next is tiled.

Resuming: every stage of a store is idempotent (complete stages are kept, a killed tiling
or embedding resumes from its done-chunks), and a slide whose status file says all stages
are done with the same inputs is skipped outright. A slide that fails is recorded with its
stage and error, and the others go on.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi import store as st
from wsi._files import write_json
from wsi.config import ClusterConfig, EmbedConfig, RunConfig, TilingConfig
from wsi.errors import ConfigError, WsiError
from wsi.heatmap.options import HeatmapOptions
from wsi.reports.options import ReportOptions
from wsi.store import params_hash

__all__ = ["SlideJob", "RunResult", "resolve_slides", "run_job", "STAGES"]

log = logging.getLogger(__name__)

STAGES = ("tile", "embed", "predict", "heatmap", "report")

#: File extensions taken from a folder of slides (OpenSlide's formats and generic TIFF).
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
)  # fmt: skip

MANIFEST_COLUMNS = ("slide_id", "path", "mpp")


@dataclass(frozen=True)
class SlideJob:
    """One slide of a run: its id (store and report name), file, mpp override, and the
    optional patient and label of a manifest (carried into the summary, never a report)."""

    slide_id: str
    path: Path
    mpp: float | None = None
    patient_id: str | None = None
    label: str | None = None


@dataclass
class RunResult:
    """What a run did: per-slide status records, the cohort report, the exit code."""

    out: Path
    slides: list[dict[str, Any]]
    cohort_html: Path | None
    cohort_csv: Path | None
    seconds: float

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [s for s in self.slides if s["status"] == "failed"]

    @property
    def exit_code(self) -> int:
        """0: every slide done; 1: some failed; 2: none done."""
        if not self.failed:
            return 0
        return 2 if len(self.failed) == len(self.slides) else 1


# -- which slides -----------------------------------------------------------------------


def _read_manifest(path: Path) -> list[SlideJob]:
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found. Give a CSV of slide_id, path, mpp.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(
                f"{path}: manifest lacks column(s) {missing}; it needs slide_id, path, mpp "
                f"(mpp may be empty) and optionally patient_id, label. Found "
                f"{reader.fieldnames}."
            )
        jobs = []
        for line, row in enumerate(reader, start=2):
            if None in row:
                raise ConfigError(f"{path}:{line}: more fields than columns")
            sid = (row["slide_id"] or "").strip()
            file = (row["path"] or "").strip()
            if not sid or not file:
                raise ConfigError(f"{path}:{line}: slide_id and path must not be empty")
            try:
                st.check_slide_id(sid)
            except ConfigError as err:
                raise ConfigError(f"{path}:{line}: {err}") from None
            mpp_text = (row["mpp"] or "").strip()
            try:
                mpp = float(mpp_text) if mpp_text else None
            except ValueError:
                raise ConfigError(
                    f"{path}:{line}: mpp {mpp_text!r} is not a number (micrometres per pixel; "
                    "leave it empty to use the slide's own)"
                ) from None
            if mpp is not None and not 0.05 <= mpp <= 50:
                raise ConfigError(f"{path}:{line}: mpp {mpp} is not a plausible resolution")
            slide = Path(file) if Path(file).is_absolute() else path.parent / file
            jobs.append(
                SlideJob(
                    sid,
                    slide,
                    mpp,
                    (row.get("patient_id") or "").strip() or None,
                    (row.get("label") or "").strip() or None,
                )
            )
    return jobs


def resolve_slides(run: RunConfig) -> list[SlideJob]:
    """The slides of a run, in order: from ``run.manifest``, or from ``run.slides`` (files,
    folders: every slide file directly inside, or glob patterns). ConfigError naming the
    entry when it matches nothing, or when two slides would get the same id."""
    if run.manifest:
        jobs = _read_manifest(Path(run.manifest))
    else:
        jobs = []
        for entry in run.slides:
            p = Path(entry).expanduser()
            if p.is_file() or not (p.is_dir() or glob.has_magic(entry)):
                found = [p]  # a missing file fails as that slide's first stage, not the run
            elif p.is_dir():
                found = sorted(
                    f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SLIDE_SUFFIXES
                )
            else:
                found = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
                found = [f for f in found if f.is_file()]
            if not found:
                raise ConfigError(
                    f"{entry}: no slide file there (not a file, a folder with slides, or a "
                    "glob pattern that matches files)"
                )
            jobs += [SlideJob(st.slide_id_for(f), f) for f in found]
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.slide_id in seen and seen[job.slide_id] != job.path:
            raise ConfigError(
                f"slide id {job.slide_id!r} is both {seen[job.slide_id]} and {job.path}; their "
                "stores would collide. Rename one, or use a manifest with distinct slide_ids."
            )
        seen[job.slide_id] = job.path
    unique = list({j.slide_id: j for j in jobs}.values())
    if not unique:
        raise ConfigError("the run has no slides")
    return unique


# -- work done on the workers -------------------------------------------------------------

_ENCODERS: dict[tuple[Any, ...], Any] = {}  # per worker process: loaded once
_MODELS: dict[str, Any] = {}


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "driver"


def embed_task(store: str, config: EmbedConfig) -> dict[str, Any]:
    """Embed one store on this worker (the encoder is loaded once per worker process)."""
    from wsi.embed import embed_store, is_embedded
    from wsi.encoders import load_encoder

    t0 = time.perf_counter()
    if not is_embedded(store, config):
        weights = Path(config.weights) if config.weights else None
        stamp = (weights.stat().st_mtime_ns, weights.stat().st_size) if weights else None
        key = (config.encoder, config.weights, stamp, config.device, config.precision)
        if key not in _ENCODERS:
            _ENCODERS[key] = load_encoder(
                config.encoder, weights=config.weights, device=config.device,
                precision=config.precision,
            )  # fmt: skip
        # the run's inputs key said redo: features of other weights are replaced
        embed_store(store, config, encoder=_ENCODERS[key], overwrite=True, progress=False)
    return {"worker": _worker_name(), "seconds": time.perf_counter() - t0}


def finish_task(
    store: str,
    model_dir: str,
    model_id: str,
    out: str,
    heatmap: HeatmapOptions,
    report: ReportOptions,
) -> dict[str, Any]:
    """Predict, map and report one embedded store. Returns per-stage seconds, or the stage
    that failed with its error: the slide's problem, never the run's."""
    from wsi.heatmap import make_heatmap
    from wsi.mil.predict import load_model, predict_store
    from wsi.reports import report_slide

    stages: dict[str, float] = {}
    stage = "predict"
    try:
        model = _MODELS.get(model_dir)
        if model is None or model.card["model_id"] != model_id:  # a retrained model folder
            model = _MODELS[model_dir] = load_model(model_dir)
        if model.card["model_id"] != model_id:
            raise ConfigError(
                f"{model_dir}: the model changed while the run was going (id "
                f"{model.card['model_id']}, the run started with {model_id}). Re-run."
            )
        t0 = time.perf_counter()
        pred = predict_store(store, model, overwrite=True)
        stages["predict"] = time.perf_counter() - t0
        stage, t0 = "heatmap", time.perf_counter()
        maps = make_heatmap(store, model.name, Path(out) / "heatmaps", heatmap)
        stages["heatmap"] = time.perf_counter() - t0
        stage, t0 = "report", time.perf_counter()
        viewer = maps["files"].get("viewer")
        rep = report_slide(
            store, model, Path(out) / "reports", report,
            viewer=Path(viewer).parent if viewer else None,
        )  # fmt: skip
        stages["report"] = time.perf_counter() - t0
    except (WsiError, OSError) as err:
        return {"ok": False, "stage": stage, "error": str(err), "seconds": stages}
    except Exception as err:  # noqa: BLE001 - a bug fails this slide, not the run
        msg = f"internal error: {type(err).__name__}: {err}"
        return {"ok": False, "stage": stage, "error": msg, "seconds": stages}
    return {
        "ok": True,
        "seconds": stages,
        "worker": _worker_name(),
        "decision": pred["decision"],
        "probability": pred["probability"],
        "files": {**maps["files"], "report": str(rep.html), "pdf": str(rep.pdf or "")},
    }


# -- the driver -----------------------------------------------------------------------------


def _inputs_key(job: SlideJob, model_id: str, parts: dict[str, Any]) -> str:
    source = st.source_record(job.path)
    return params_hash(
        {"fingerprint": source["fingerprint"], "mpp": job.mpp, "model": model_id, **parts}
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _complete(status: dict[str, Any] | None, key: str, out: Path, model_id: str) -> bool:
    """A slide finished earlier with the same inputs; its store and this model's report
    are still there."""
    if not (status and status.get("status") == "ok" and status.get("key") == key):
        return False
    sid = status["slide_id"]
    row = _read_json(out / "reports" / f"{sid}.json")
    return bool(
        row
        and row.get("model_id") == model_id
        and (out / "stores" / f"{sid}.zarr" / "zarr.json").exists()
    )


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Append INFO and above of this package (and Dask's warnings) to ``path``."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(n) for n in ("wsi", "pipelines")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    dask_log = logging.getLogger("distributed")
    dask_log.addHandler(handler)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        dask_log.removeHandler(handler)
        handler.close()


def _gpu_workers(client: Any, resource: str) -> list[str]:
    info = client.scheduler_info()
    return [
        addr
        for addr, w in info.get("workers", {}).items()
        if float((w.get("resources") or {}).get(resource, 0)) >= 1
    ]


class _Records(dict[str, dict[str, Any]]):
    """Slide id -> status record; a final record is written to ``status/`` at once, so a
    run killed later still knows which slides are done."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def __setitem__(self, slide_id: str, rec: dict[str, Any]) -> None:
        super().__setitem__(slide_id, rec)
        if not rec.get("skipped"):
            write_json(self.folder / f"{slide_id}.json", rec, indent=1)


class _Progress:
    """One line per cohort: slides done of total and what is happening now."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        import sys

        from tqdm import tqdm

        on = sys.stderr.isatty() if enabled is None else enabled
        self.bar = tqdm(total=total, unit="slide", desc="wsi run", disable=not on, leave=True)

    def stage(self, text: str) -> None:
        self.bar.set_postfix_str(text[:60], refresh=True)

    def done(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def run_job(
    run: RunConfig,
    cluster: ClusterConfig | None = None,
    *,
    tiling: TilingConfig | None = None,
    embed: EmbedConfig | None = None,
    heatmap: HeatmapOptions | None = None,
    report: ReportOptions | None = None,
    progress: bool | None = None,
) -> RunResult:
    """Run every slide of ``run`` through all stages on Dask and write the cohort report.

    ``cluster.scheduler`` names an existing Dask scheduler; otherwise a LocalCluster of
    spawned single-threaded workers is started for the run. Returns the per-slide status
    and the exit code (``RunResult.exit_code``). Raises ConfigError/ClusterError only for
    problems of the whole run (no slides, no model, unreachable scheduler).
    """
    from pipelines.cluster import dask_client
    from wsi.mil.predict import load_model
    from wsi.reports.render import check_pdf

    cluster = cluster or ClusterConfig()
    tiling = tiling or TilingConfig()
    heatmap = dataclasses.replace(heatmap or HeatmapOptions(), exports=tuple(run.exports))
    report = report or ReportOptions()
    out = Path(run.out)
    jobs = resolve_slides(run)
    model = load_model(run.model)  # a missing or damaged model stops the run here
    encoder = model.card["encoder"]["name"]
    embed = embed or EmbedConfig(encoder=encoder)
    if embed.encoder != encoder:
        raise ConfigError(
            f"embed.encoder is {embed.encoder!r} but the model {run.model} was trained on "
            f"{encoder!r} features; use its encoder (or leave the embed section out)."
        )
    _check_weights(embed, model, run.model)
    if report.pdf:
        check_pdf()
    for sub in ("stores", "heatmaps", "reports", "status"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    parts = {
        "tiling": dataclasses.asdict(tiling),
        "embed": dataclasses.asdict(embed),
        "heatmap": dataclasses.asdict(heatmap),
        "report": dataclasses.asdict(report),
    }
    t_start = time.perf_counter()
    records = _Records(out / "status")
    with _log_to(out / "run.log"):
        log.info("wsi run: %d slides -> %s (model %s)", len(jobs), out, run.model)
        bar = _Progress(len(jobs), progress)
        try:
            todo = []
            for job in jobs:
                status_path = out / "status" / f"{job.slide_id}.json"
                old = _read_json(status_path)
                try:
                    key = _inputs_key(job, model.card["model_id"], parts)
                except OSError as err:
                    records[job.slide_id] = _failed(job, "tile", f"{job.path}: {err.strerror}")
                    bar.done()
                    continue
                if _complete(old, key, out, model.card["model_id"]):
                    records[job.slide_id] = {**(old or {}), "skipped": True}
                    log.info("%s: done in an earlier run, skipped", job.slide_id)
                    bar.done()
                elif (
                    old
                    and old.get("status") == "failed"
                    and old.get("key") == key
                    and (not run.retry_failed)
                ):
                    records[job.slide_id] = {**old, "skipped": True}
                    bar.done()
                else:
                    todo.append((job, key))
            if todo:
                with dask_client(
                    cluster.scheduler,
                    workers=cluster.local_workers(),
                    memory_limit=cluster.memory_limit,
                    threads_per_worker=cluster.threads_per_worker,
                ) as client:
                    _run_on(client, todo, out, run, cluster, tiling, embed, heatmap, report,
                            model.card["model_id"], records, bar)  # fmt: skip
        finally:
            bar.close()
        cohort_html, cohort_csv = _cohort(out, jobs, records, model)
        result = RunResult(
            out,
            [records[j.slide_id] for j in jobs],
            cohort_html,
            cohort_csv,
            time.perf_counter() - t_start,
        )
        write_json(out / "summary.json", _summary(result, run, model), indent=1)
        log.info(
            "wsi run finished: %d ok, %d failed, %.1f s",
            len(jobs) - len(result.failed), len(result.failed), result.seconds,
        )  # fmt: skip
    return result


def _check_weights(embed: EmbedConfig, model: Any, model_dir: str) -> None:
    """Stop before any slide when the weights the run would embed with are not those the
    model was trained on (where the driver can see the weight file)."""
    from wsi.encoders.encoder import planned_identity

    try:
        ident = planned_identity(embed.encoder, embed.weights, "cpu", "fp32")
    except WsiError:
        return  # the workers may have the weights; embed_task reports it per slide
    want = model.card["encoder"]["weights_sha256"]
    if ident is not None and ident.get("weights_sha256") != want:
        raise ConfigError(
            f"the {embed.encoder!r} weights here ({ident.get('weights_file')}, sha256 "
            f"{str(ident.get('weights_sha256'))[:12]}) are not those the model {model_dir} "
            f"was trained on (sha256 {want[:12]}). Give the model's weights with "
            "embed.weights (or --config), or use a model trained on these."
        )


def _failed(job: SlideJob, stage: str, error: str, key: str | None = None) -> dict[str, Any]:
    log.error("%s: %s failed: %s", job.slide_id, stage, error)
    return {
        "slide_id": job.slide_id,
        "path": str(job.path),
        "status": "failed",
        "stage": stage,
        "error": error,
        "key": key,
        "stages": {},
    }


def _run_on(
    client: Any,
    todo: list[tuple[SlideJob, str]],
    out: Path,
    run: RunConfig,
    cluster: ClusterConfig,
    tiling: TilingConfig,
    embed: EmbedConfig,
    heatmap: HeatmapOptions,
    report: ReportOptions,
    model_id: str,
    records: dict[str, dict[str, Any]],
    bar: _Progress,
) -> None:
    import uuid

    from distributed import as_completed

    from wsi.tiling import tile_slide

    gpus = _gpu_workers(client, cluster.gpu_resource)
    embed_res = {cluster.gpu_resource: 1} if gpus else None
    if gpus:
        log.info("embedding on the %d worker(s) with resource %s", len(gpus), cluster.gpu_resource)
    token = uuid.uuid4().hex[:8]  # task keys of two runs on one scheduler never collide
    meta: dict[Any, tuple[str, SlideJob, str, dict[str, Any]]] = {}
    stores = out / "stores"
    model_dir = str(Path(run.model).resolve())

    def fail(job: SlideJob, rec: dict[str, Any], stage: str, error: str) -> None:
        records[job.slide_id] = {**_failed(job, stage, error, rec["key"]), "stages": rec["stages"]}
        bar.done()

    def handle(fut: Any) -> Any:
        """Take a finished embed or finish task; returns the next task, if any."""
        stage, job, store, rec = meta.pop(fut.key)
        try:
            value = fut.result()
        except (WsiError, OSError) as err:
            return fail(job, rec, stage, _message(job, err))
        except Exception as err:  # noqa: BLE001 - a worker that died fails this slide only
            return fail(job, rec, stage, f"internal error: {type(err).__name__}: {err}")
        if stage == "embed":
            rec["stages"]["embed"] = round(value["seconds"], 2)
            rec["embed_worker"] = value["worker"]
            bar.stage(f"predict/map/report {job.slide_id}")
            nxt = client.submit(
                finish_task, store, model_dir, model_id, str(out), heatmap, report,
                pure=False, key=f"finish-{job.slide_id}-{token}",
            )  # fmt: skip
            meta[nxt.key] = ("predict", job, store, rec)
            return nxt
        rec["stages"].update({k: round(v, 2) for k, v in value["seconds"].items()})
        if not value["ok"]:
            return fail(job, rec, value["stage"], value["error"])
        rec.update(status="ok", decision=value["decision"], probability=value["probability"],
                   files=value["files"])  # fmt: skip
        records[job.slide_id] = rec
        bar.done()
        return None

    running: list[Any] = []
    for job, key in todo:
        (out / "status" / f"{job.slide_id}.json").unlink(missing_ok=True)  # being redone
        rec: dict[str, Any] = {
            "slide_id": job.slide_id,
            "path": str(job.path),
            "patient_id": job.patient_id,
            "status": "running",
            "key": key,
            "stages": {},
        }
        bar.stage(f"tile {job.slide_id}")
        t0 = time.perf_counter()
        try:
            # overwrite: the run's inputs key said this slide is to be (re)done, so a store
            # from another file or other parameters is brought to this run's settings
            store_path = tile_slide(job.path, stores, tiling, mpp=job.mpp, client=client,
                                    overwrite=True, progress=False,
                                    slide_id=job.slide_id)  # fmt: skip
        except (WsiError, OSError) as err:
            fail(job, rec, "tile", _message(job, err))
            continue
        except Exception as err:  # noqa: BLE001 - e.g. a worker killed by a bad file
            fail(job, rec, "tile", f"internal error: {type(err).__name__}: {err}")
            continue
        rec["stages"]["tile"] = round(time.perf_counter() - t0, 2)
        rec["store"] = str(store_path)
        fut = client.submit(
            embed_task, str(store_path), embed, resources=embed_res, pure=False,
            key=f"embed-{job.slide_id}-{token}",
        )  # fmt: skip
        meta[fut.key] = ("embed", job, str(store_path), rec)
        running.append(fut)
        # slides stream: whatever finished while this slide was tiled goes on now
        for done in [f for f in running if f.done()]:
            running.remove(done)
            nxt = handle(done)
            if nxt is not None:
                running.append(nxt)
    pending = as_completed(running)
    for fut in pending:
        nxt = handle(fut)
        if nxt is not None:
            pending.add(nxt)


def _message(job: SlideJob, err: BaseException) -> str:
    if isinstance(err, OSError) and not isinstance(err, WsiError):
        return f"{err.filename or job.path}: {err.strerror or err} ({type(err).__name__})"
    return str(err)


def _cohort(
    out: Path, jobs: list[SlideJob], records: dict[str, dict[str, Any]], model: Any
) -> tuple[Path | None, Path | None]:
    """The cohort report over every slide of this run (done now or earlier)."""
    from wsi.reports import redact_paths, report_cohort

    rows, failed = [], []
    for job in jobs:
        rec = records[job.slide_id]
        row_path = out / "reports" / f"{job.slide_id}.json"
        if rec.get("status") == "ok" and row_path.exists():
            rows.append(json.loads(row_path.read_text()))
        else:
            failed.append(  # recipient-side: no paths (the status file keeps them)
                {
                    "slide_id": job.slide_id,
                    "stage": str(rec.get("stage")),
                    "error": redact_paths(str(rec.get("error")), job.path, out),
                }
            )
    return report_cohort(
        rows,
        out / "reports",
        model=model.name,
        positive=model.card["task"]["positive"],
        failed=failed,
    )


def _summary(result: RunResult, run: RunConfig, model: Any) -> dict[str, Any]:
    return {
        "out": str(result.out),
        "model": {"folder": str(run.model), "name": model.name, "id": model.card["model_id"]},
        "slides": len(result.slides),
        "ok": len(result.slides) - len(result.failed),
        "failed": len(result.failed),
        "skipped": sum(1 for s in result.slides if s.get("skipped")),
        "seconds": round(result.seconds, 1),
        "cohort_report": str(result.cohort_html) if result.cohort_html else None,
        "exit_code": result.exit_code,
        "per_slide": [
            {
                k: s.get(k)
                for k in (
                    "slide_id",
                    "status",
                    "stage",
                    "error",
                    "decision",
                    "probability",
                    "stages",
                    "skipped",
                    "embed_worker",
                )  # fmt: skip
                if s.get(k) is not None
            }
            for s in result.slides
        ],
    }


def print_summary(result: RunResult) -> None:
    """The table a person reads at the end of a run."""
    print(f"{'slide':<28} {'status':<8} {'stage':<8} detail")
    for s in result.slides:
        if s["status"] == "ok":
            detail = f"{s.get('decision')} p={float(s.get('probability', 0)):.3f}"
            if s.get("skipped"):
                detail += " (done earlier)"
            print(f"{s['slide_id'][:28]:<28} {'ok':<8} {'':<8} {detail}")
    for s in result.failed:
        print(f"{s['slide_id'][:28]:<28} {'FAILED':<8} {s['stage']:<8} {s['error']}")
    ok = len(result.slides) - len(result.failed)
    print(
        f"{ok} of {len(result.slides)} slides done, {len(result.failed)} failed, "
        f"{result.seconds:.0f} s. Cohort report: {result.cohort_html}"
    )
    print(f"summary: {result.out / 'summary.json'}; log: {result.out / 'run.log'}")
