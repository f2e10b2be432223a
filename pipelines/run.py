"""``wsi run``: every slide through tile -> embed -> predict -> heatmap -> report on Dask,
then the cohort report.

Layout of the output folder::

    <out>/stores/<slide_id>.zarr      slide stores (tiles, features, predictions, heatmaps)
    <out>/heatmaps/                   heatmap exports (heatmap.exports: PNG, GeoJSON, TIFF,
                                      viewer)
    <out>/reports/<slide_id>.html|pdf second-opinion reports; cohort.html and cohort.csv
    <out>/status/<slide_id>.json      per slide: stages done, or the stage that failed and why
    <out>/summary.json                the run: counts, per-slide status, seconds
    <out>/run.log                     the log of every run into this folder (appended)

Where the work runs: tiling chunks on any worker; a slide's embedding on a worker that
declares the GPU resource (``dask worker --resources GPU=1``) where the cluster has one, any
worker otherwise; prediction, heatmap and report on any worker (``pipelines.tasks``).
Slides stream through: a slide is embedded while the next is tiled.

Resuming: every stage of a store is idempotent (complete stages are kept, a killed tiling
or embedding resumes from its done-chunks), and a slide whose status file says all stages
are done with the same inputs is skipped outright. A slide that fails (or whose id another
slide of the run already has) is recorded with its stage and error, and the others go on.
Status files, the summary and the cohort report are ``pipelines.summary``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import tasks
from pipelines.config import ClusterConfig, RunConfig
from pipelines.slides import SlideJob, claim_ids, input_problem, resolve_slides
from pipelines.summary import (
    RunResult,
    StatusBook,
    cohort_report,
    failed_record,
    is_complete,
    write_summary,
)
from wsi import store as st
from wsi._lock import holding, lock_file
from wsi.config import EmbedConfig, TilingConfig
from wsi.configfile import section_class
from wsi.errors import ConfigError, WeightsNotFoundError, WsiError
from wsi.outputs import output_error
from wsi.progress import Progress
from wsi.reports.options import ReportOptions

__all__ = ["STAGES", "RunPlan", "run_job"]

log = logging.getLogger(__name__)

STAGES = ("tile", "embed", "predict", "heatmap", "report")


@dataclass(frozen=True)
class RunPlan:
    """Everything the slides of a run need, fixed before the first one starts."""

    out: Path  #: the run's output folder
    cluster: ClusterConfig
    tiling: TilingConfig
    embed: EmbedConfig
    finish: tasks.Finish  #: the model (folder, id) and the heatmap and report options
    parts: dict[str, Any]  #: the settings a slide's inputs key covers
    #: a patient-level model: the slides of a patient (manifest ``patient_id``) are
    #: predicted together, as one bag, once all of them are embedded
    patient_level: bool = False


def _patient(job: SlideJob) -> str:
    """The patient of a slide: the manifest's ``patient_id``, else the slide itself."""
    return job.patient_id or job.slide_id


def run_job(
    run: RunConfig,
    cluster: ClusterConfig | None = None,
    *,
    tiling: TilingConfig | None = None,
    embed: EmbedConfig | None = None,
    heatmap: tasks.HeatmapOptions | None = None,
    report: ReportOptions | None = None,
    progress: bool | None = None,
) -> RunResult:
    """Run every slide of ``run`` through all stages on Dask and write the cohort report.

    ``cluster.scheduler`` names an existing Dask scheduler; otherwise a LocalCluster of
    spawned single-threaded workers is started for the run. ``tiling``, ``embed`` (default:
    the model's encoder), ``heatmap`` (a ``HeatmapOptions``: what is drawn and which
    exports are written) and ``report`` are the stage settings, their defaults where
    None. Returns the per-slide status and the exit code (``RunResult.exit_code``).
    Raises ConfigError/ClusterError only for problems of the whole run (no slides, no
    model, unreachable scheduler), and OutputError when the output folder cannot be
    written (full, read-only): naming the folder and the fix.
    """
    from wsi.mil.predict import load_model
    from wsi.reports.render import check_pdf

    cluster = cluster or ClusterConfig()
    tiling = tiling or TilingConfig()
    heatmap = heatmap or section_class("heatmap")()
    report = report or ReportOptions()
    out = Path(run.out)
    claimed = claim_ids(resolve_slides(run))  # a slide listed twice is listed once
    model = load_model(run.model)  # a missing or damaged model stops the run here
    encoder = model.card["encoder"]["name"]
    embed = embed or EmbedConfig(encoder=encoder)
    if embed.names != (encoder,):
        which = (
            f"embed.encoders are {list(embed.names)}"
            if len(embed.names) > 1
            else f"embed.encoder is {embed.names[0]!r}"
        )
        raise ConfigError(
            f"{which} but the model {run.model} was trained on {encoder!r} features; use "
            "its encoder (or leave the embed section out). `wsi run` embeds with the "
            "model's encoder only: embed others with `wsi embed --encoder`."
        )
    embed = embed.for_encoder(encoder)  # the one-encoder form: weights, no list
    _check_weights(embed, model, run.model, local=cluster.scheduler is None)
    if report.pdf:
        check_pdf()
    model_id = model.card["model_id"]
    plan = RunPlan(
        out=out,
        cluster=cluster,
        tiling=tiling,
        embed=embed,
        finish=tasks.Finish(str(Path(run.model).resolve()), model_id, str(out), heatmap, report),
        parts={
            "tiling": dataclasses.asdict(tiling),
            # the pass keys (empty here) stay out: keys of earlier runs stay the same
            "embed": {
                k: v
                for k, v in dataclasses.asdict(embed).items()
                if k not in ("encoders", "encoder_weights")
            },
            "heatmap": dataclasses.asdict(heatmap),
            "report": dataclasses.asdict(report),
        },
        patient_level=model.card.get("data", {}).get("level") == "patient",
    )
    try:
        # one run per output folder: a second `wsi run --out` here is refused (or waits)
        with holding(lock_file(out, "run"), f"run folder {out}"):
            return _run_plan(plan, claimed, run, model, progress)
    except WsiError:
        raise
    except OSError as err:  # writing status, reports, the summary or the log: the job's
        raise output_error(out, err) from err


def _run_plan(
    plan: RunPlan,
    claimed: list[tuple[SlideJob, str | None]],
    run: RunConfig,
    model: Any,
    progress: bool | None,
) -> RunResult:
    """The run itself once everything is checked: the slides, the cohort report, the
    summary, with the log in ``<out>/run.log``."""
    out, cluster = plan.out, plan.cluster
    jobs = [job for job, _ in claimed]
    for sub in ("stores", "heatmaps", "reports", "status"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    records = StatusBook(out / "status")
    with _log_to(out / "run.log"):
        log.info("wsi run: %d slides -> %s (model %s)", len(jobs), out, run.model)
        bar = Progress(len(jobs), "wsi run", progress, unit="slide", leave=True)
        try:
            todo = _plan_slides(claimed, plan, run.retry_failed, records, bar)
            if todo:
                from pipelines.cluster import dask_client

                with dask_client(
                    cluster.scheduler,
                    workers=cluster.local_workers(),
                    memory_limit=cluster.memory_limit,
                    threads_per_worker=cluster.threads_per_worker,
                ) as client:
                    _run_on(client, todo, plan, records, bar)
        finally:
            bar.close()
        cohort_html, cohort_csv = cohort_report(out, jobs, records, model)
        result = RunResult(
            out,
            [records[j] for j in jobs],
            cohort_html,
            cohort_csv,
            time.perf_counter() - t_start,
        )
        write_summary(result, run.model, model)
        log.info(
            "wsi run finished: %d ok, %d failed, %.1f s",
            len(jobs) - len(result.failed), len(result.failed), result.seconds,
        )  # fmt: skip
    return result


def _inputs_key(job: SlideJob, model_id: str, parts: dict[str, Any]) -> str:
    source = st.source_record(job.path)
    return st.params_hash(
        {"fingerprint": source["fingerprint"], "mpp": job.mpp, "model": model_id, **parts}
    )


def _plan_slides(
    claimed: list[tuple[SlideJob, str | None]],
    plan: RunPlan,
    retry_failed: bool,
    records: StatusBook,
    bar: Progress,
) -> list[tuple[SlideJob, str]]:
    """The slides to (re)do, with their inputs keys; the others are recorded now: a
    refused id, an unreadable file, done earlier, or failed earlier (not retried)."""
    todo = []
    kept: list[tuple[SlideJob, str, dict[str, Any]]] = []  # done or failed earlier
    model_id = plan.finish.model_id
    for job, clash in claimed:
        if clash is not None:
            # no status file: it would be that of the slide that has the id
            records.keep(job, failed_record(job, "tile", clash))
            bar.update()
            continue
        old = records.earlier(job)
        problem = input_problem(job.path)  # missing, a symlink loop, a folder: this slide's
        try:
            key = _inputs_key(job, model_id, plan.parts) if problem is None else ""
        except (OSError, RuntimeError) as err:  # RuntimeError: pathlib's symlink loop
            problem = f"{job.path}: {getattr(err, 'strerror', None) or err}"
        if problem is not None:
            records.finish(job, failed_record(job, "tile", problem))
            bar.update()
            continue
        if is_complete(old, key, plan.out, model_id):
            kept.append((job, key, {**(old or {}), "skipped": True}))
        elif old and old.get("status") == "failed" and old.get("key") == key and not retry_failed:
            kept.append((job, key, {**old, "skipped": True}))
        else:
            todo.append((job, key))
    # a patient-level call reads all of a patient's slides: one redone redoes them all
    redo = {_patient(job) for job, _ in todo} if plan.patient_level else set()
    for job, key, rec in kept:
        if _patient(job) in redo:
            todo.append((job, key))
            continue
        records.keep(job, rec)
        if rec.get("status") != "failed":
            log.info("%s: done in an earlier run, skipped", job.slide_id)
        bar.update()
    return todo


class _RunLog(logging.FileHandler):
    """The run's log file. A line it cannot write (a full disk) is dropped without the
    traceback ``logging`` prints: the run reports that error itself."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        return None


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Append INFO and above of this package (and Dask's warnings) to ``path``."""
    handler = _RunLog(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(n) for n in ("wsi", "pipelines")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    # Dask's own handler: a LocalCluster's ``silence_logs`` sets the level of every stream
    # handler of the "distributed" logger, and on a shared handler that silenced ours too
    # (the per-slide errors after the cluster started never reached run.log)
    dask_handler = _RunLog(path, encoding="utf-8")
    dask_handler.setFormatter(handler.formatter)
    dask_handler.setLevel(logging.WARNING)
    dask_log = logging.getLogger("distributed")
    dask_log.addHandler(dask_handler)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        dask_log.removeHandler(dask_handler)
        handler.close()
        dask_handler.close()


def _gpu_workers(client: Any, resource: str) -> list[str]:
    info = client.scheduler_info()
    return [
        addr
        for addr, w in info.get("workers", {}).items()
        if float((w.get("resources") or {}).get(resource, 0)) >= 1
    ]


def _check_weights(embed: EmbedConfig, model: Any, model_dir: str, *, local: bool) -> None:
    """Stop before any slide when the weights the run would embed with are missing (where
    the workers are this machine's: a LocalCluster), or are not those the model was
    trained on (where the driver can see the weight file)."""
    from wsi.encoders import get_spec
    from wsi.encoders.encoder import planned_identity
    from wsi.encoders.weights import where_to_put

    want = model.card["encoder"]["weights_sha256"]
    try:
        ident = planned_identity(embed.encoder, embed.weights, "cpu", "fp32")
    except WsiError:
        return  # the workers may have the weights; embed_task reports it per slide
    if ident is None and local:  # every slide would fail for want of them
        fix = (
            f"embed.weights is {embed.weights}: no such file. Fix the path"
            if embed.weights is not None
            else where_to_put(get_spec(embed.encoder))
        )
        raise WeightsNotFoundError(
            f"the model {model_dir} needs the {embed.encoder!r} encoder weights (sha256 "
            f"{want[:12]}), and there is no weight file for them on this machine. {fix} "
            "(embed.weights in the --config job file), then re-run. No slide was started."
        )
    if ident is not None and ident.get("weights_sha256") != want:
        raise ConfigError(
            f"the {embed.encoder!r} weights here ({ident.get('weights_file')}, sha256 "
            f"{str(ident.get('weights_sha256'))[:12]}) are not those the model {model_dir} "
            f"was trained on (sha256 {want[:12]}). Give the model's weights with "
            "embed.weights (or --config), or use a model trained on these."
        )


def _message(job: SlideJob, err: BaseException) -> str:
    if isinstance(err, OSError) and not isinstance(err, WsiError):
        return f"{err.filename or job.path}: {err.strerror or err} ({type(err).__name__})"
    return str(err)


def _run_on(
    client: Any,
    todo: list[tuple[SlideJob, str]],
    plan: RunPlan,
    records: StatusBook,
    bar: Progress,
) -> None:
    """Tile each slide of ``todo`` on ``client`` (here, its chunks as tasks), then embed
    it and finish it (predict, heatmap, report) as worker tasks, slides streaming."""
    import uuid

    from distributed import as_completed

    resource = plan.cluster.gpu_resource
    gpus = _gpu_workers(client, resource)
    embed_res = {resource: 1} if gpus else None
    if gpus:
        log.info("embedding on the %d worker(s) with resource %s", len(gpus), resource)
    token = uuid.uuid4().hex[:8]  # task keys of two runs on one scheduler never collide
    meta: dict[Any, tuple[Any, ...]] = {}
    # patient-level models: embedded slides wait for the rest of their patient
    expected = Counter(_patient(job) for job, _ in todo)
    waiting: dict[str, list[tuple[SlideJob, str, dict[str, Any]]]] = {}
    lost: Counter[str] = Counter()  # slides of a patient that failed before predict

    def patient_ready(pid: str) -> Any:
        """The patient's finish task once none of its slides is still on its way."""
        group = waiting.get(pid, [])
        if not group or len(group) + lost[pid] < expected[pid]:
            return None
        del waiting[pid]
        group.sort(key=lambda item: item[0].slide_id)  # one bag order, whatever came first
        bar.stage(f"predict/map/report patient {pid}")
        nxt = client.submit(tasks.finish_patient_task, [s for _, s, _ in group], plan.finish,
                            pure=False, key=f"finish-{group[0][0].slide_id}-{token}")  # fmt: skip
        meta[nxt.key] = ("patient", group)
        return nxt

    def fail(job: SlideJob, rec: dict[str, Any], stage: str, error: str) -> Any:
        """Record the slide's failure; returns its patient's finish task if this failure
        was the last slide it waited for (patient-level models), else None."""
        records.finish(job, {**failed_record(job, stage, error, rec["key"]),
                             "stages": rec["stages"]})  # fmt: skip
        bar.update()
        if plan.patient_level and stage in ("tile", "embed"):
            lost[_patient(job)] += 1
            return patient_ready(_patient(job))
        return None

    def finished(job: SlideJob, rec: dict[str, Any], value: dict[str, Any]) -> None:
        rec["stages"].update({k: round(v, 2) for k, v in value["seconds"].items()})
        if not value["ok"]:
            fail(job, rec, value["stage"], value["error"])
            return
        rec.update(status="ok", decision=value["decision"], probability=value["probability"],
                   files=value["files"])  # fmt: skip
        records.finish(job, rec)
        bar.update()

    def handle(fut: Any) -> Any:
        """Take a finished embed or finish task; returns the next task, if any."""
        stage, *info = meta.pop(fut.key)
        try:
            value = fut.result()
        except Exception as err:  # noqa: BLE001 - a worker that died fails these slides only
            group = info[0] if stage == "patient" else [tuple(info)]
            nxt = None
            for job, _, rec in group:
                msg = (_message(job, err) if isinstance(err, (WsiError, OSError))
                       else f"internal error: {type(err).__name__}: {err}")  # fmt: skip
                nxt = fail(job, rec, "predict" if stage == "patient" else stage, msg) or nxt
            return nxt
        if stage == "patient":
            for (job, _, rec), one in zip(info[0], value, strict=True):
                finished(job, rec, one)
            return None
        job, store, rec = info
        if stage == "embed" and value.get("error") is not None:  # a WsiError, as data
            return fail(job, rec, stage, str(value["error"]))
        if stage == "embed":
            rec["stages"]["embed"] = round(value["seconds"], 2)
            rec["embed_worker"] = value["worker"]
            if plan.patient_level:
                waiting.setdefault(_patient(job), []).append((job, store, rec))
                return patient_ready(_patient(job))
            bar.stage(f"predict/map/report {job.slide_id}")
            nxt = client.submit(tasks.finish_task, store, plan.finish, pure=False,
                                key=f"finish-{job.slide_id}-{token}")  # fmt: skip
            meta[nxt.key] = ("predict", job, store, rec)
            return nxt
        finished(job, rec, value)
        return None

    running: list[Any] = []
    for job, key in todo:
        records.forget(job)  # being redone
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
            store_path = tasks.tile_task(job, plan.out / "stores", plan.tiling, client=client,
                                         overwrite=True, progress=False)  # fmt: skip
        except (WsiError, OSError) as err:
            nxt = fail(job, rec, "tile", _message(job, err))
            running += [nxt] if nxt is not None else []
            continue
        except Exception as err:  # noqa: BLE001 - e.g. a worker killed by a bad file
            nxt = fail(job, rec, "tile", f"internal error: {type(err).__name__}: {err}")
            running += [nxt] if nxt is not None else []
            continue
        rec["stages"]["tile"] = round(time.perf_counter() - t0, 2)
        rec["store"] = str(store_path)
        fut = client.submit(
            tasks.timed, tasks.embed_task, str(store_path), plan.embed, overwrite=True,
            progress=False, resources=embed_res, pure=False, key=f"embed-{job.slide_id}-{token}",
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
