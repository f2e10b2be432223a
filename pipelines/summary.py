"""What a run leaves for people: per-slide status files, ``summary.json``, the table
printed at the end, and the cohort report over every slide of the run.

``<out>/status/<slide_id>.json`` is written as soon as a slide is finished (done, or the
stage that failed and why), so a run killed later still knows which slides are done; a
slide refused for an id another slide of the run already has gets no status file of its
own (it would overwrite that slide's) and is in ``summary.json`` and the cohort report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.slides import SlideJob
from wsi import store as st
from wsi._files import read_json, write_json

__all__ = [
    "RunResult",
    "StatusBook",
    "failed_record",
    "is_complete",
    "cohort_report",
    "write_summary",
    "print_summary",
]

log = logging.getLogger(__name__)

#: Keys of a slide's record that ``summary.json`` lists per slide (where set).
_PER_SLIDE = ("slide_id", "status", "stage", "error", "decision", "probability", "stages",
              "skipped", "embed_worker")  # fmt: skip


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


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return dict(read_json(path))
    except (OSError, ValueError, TypeError):
        return None


class StatusBook:
    """Slide -> status record, the final ones written to ``<folder>/<slide_id>.json`` at
    once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._records: dict[SlideJob, dict[str, Any]] = {}

    def earlier(self, job: SlideJob) -> dict[str, Any] | None:
        """The status file an earlier run left for ``job``'s slide id, if readable."""
        return _read(self.folder / f"{job.slide_id}.json")

    def forget(self, job: SlideJob) -> None:
        """Remove the status file of a slide that is being redone."""
        (self.folder / f"{job.slide_id}.json").unlink(missing_ok=True)

    def finish(self, job: SlideJob, rec: dict[str, Any]) -> None:
        """``job`` is done or failed now: keep ``rec`` and write its status file."""
        self._records[job] = rec
        write_json(self.folder / f"{job.slide_id}.json", rec, indent=1)

    def keep(self, job: SlideJob, rec: dict[str, Any]) -> None:
        """Keep ``rec`` without a status file (skipped slides, refused ids)."""
        self._records[job] = rec

    def __getitem__(self, job: SlideJob) -> dict[str, Any]:
        return self._records[job]


def failed_record(job: SlideJob, stage: str, error: str, key: str | None = None) -> dict[str, Any]:
    """The status of a slide that failed at ``stage`` (logged as an error)."""
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


def is_complete(status: dict[str, Any] | None, key: str, out: Path, model_id: str) -> bool:
    """A slide finished earlier with the same inputs (``key``); its store and this
    model's report are still there."""
    if not (status and status.get("status") == "ok" and status.get("key") == key):
        return False
    sid = status["slide_id"]
    row = _read(out / "reports" / f"{sid}.json")
    return bool(
        row and row.get("model_id") == model_id and st.is_store(st.store_path(out / "stores", sid))
    )


def cohort_report(
    out: Path, jobs: Sequence[SlideJob], records: StatusBook, model: Any
) -> tuple[Path | None, Path | None]:
    """The cohort report over every slide of this run (done now or earlier)."""
    from wsi.reports import redact_paths, report_cohort

    rows, failed = [], []
    for job in jobs:
        rec = records[job]
        row = _read(out / "reports" / f"{job.slide_id}.json")
        if rec.get("status") == "ok" and row is not None:
            rows.append(row)
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
        task=model.card["task"],
        failed=failed,
        shift=model.card.get("shift") or {},
    )


def write_summary(result: RunResult, model_dir: str, model: Any) -> Path:
    """``<out>/summary.json``: counts, the exit code and every slide's status."""
    summary = {
        "out": str(result.out),
        "model": {"folder": str(model_dir), "name": model.name, "id": model.card["model_id"]},
        "slides": len(result.slides),
        "ok": len(result.slides) - len(result.failed),
        "failed": len(result.failed),
        "skipped": sum(1 for s in result.slides if s.get("skipped")),
        "seconds": round(result.seconds, 1),
        "cohort_report": str(result.cohort_html) if result.cohort_html else None,
        "exit_code": result.exit_code,
        "per_slide": [
            {k: s.get(k) for k in _PER_SLIDE if s.get(k) is not None} for s in result.slides
        ],
    }
    return write_json(result.out / "summary.json", summary, indent=1)


def print_summary(result: RunResult) -> None:
    """The table a person reads at the end of a run."""
    print(f"{'slide':<28} {'status':<8} {'stage':<8} detail")
    for s in result.slides:
        if s["status"] == "ok":
            detail = str(s.get("decision"))
            if s.get("probability") is not None:  # a screening call (not risk or value)
                detail += f" p={float(s['probability']):.3f}"
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
