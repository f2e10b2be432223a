"""Second-opinion reports for pathologists: one per slide (HTML and PDF) and one per cohort.

``report(stores, model, out_dir)`` writes, for every predicted store,
``<slide_id>.html``, ``<slide_id>.pdf`` and ``<slide_id>.json`` (the row of the cohort
table), then ``cohort.html`` and ``cohort.csv`` sorted by risk. A report says where
(heatmap), what (the call), why (the tiles with the most evidence for the shown class, or
the most attended where the head gives no evidence) and how sure (calibrated
probability, spread across fold models, flags), and that the diagnosis is the
pathologist's. What the call is depends on the model's task (``wsi.reports.calls``): a
screening decision at the operating point (binary, and classes with a benign one), class
probabilities, a survival risk group against the training cohort, or a value. It never
shows the slide's label or macro image, its path, or any slide property outside an
allow-list (see ``wsi.reports.facts``), and every string is escaped.

Example::

    from wsi.reports import report
    result = report(["stores/s1.zarr"], "models/abmil", "reports")
    print(result.cohort_html)
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wsi.errors import WsiError
from wsi.outputs import FOLDER_ERRNOS, output_error, write_output
from wsi.reports import calls
from wsi.reports.charts import class_bars, km_chart
from wsi.reports.facts import Finding, SlideFacts, TileImage, flags, gather
from wsi.reports.options import ReportOptions
from wsi.reports.render import (
    DISCLAIMER,
    check_pdf,
    data_uri,
    pct,
    prob,
    render,
    write_pdf,
)

__all__ = [
    "report",
    "report_slide",
    "report_cohort",
    "redact_paths",
    "ReportOptions",
    "SlideReport",
    "Reports",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideReport:
    """The files of one slide's report and its row of the cohort table."""

    slide_id: str
    html: Path
    pdf: Path | None
    row: dict[str, Any]


@dataclass(frozen=True)
class Reports:
    """What ``report`` wrote: per-slide reports, failures (slide id, error), cohort files."""

    slides: list[SlideReport]
    failed: list[dict[str, str]] = field(default_factory=list)
    cohort_html: Path | None = None
    cohort_csv: Path | None = None


def _load(model: Any) -> Any:
    from wsi.mil.predict import load_model

    return load_model(model) if isinstance(model, (str, os.PathLike)) else model


def _at_threshold(part: dict[str, Any]) -> dict[str, Any]:
    """Validation or test figures at the operating point (classes keep them under
    ``screening``)."""
    return part.get("at_threshold") or (part.get("screening") or {}).get("at_threshold") or {}


def _meaning(card: dict[str, Any], finding: Finding) -> tuple[str, str | None]:
    """What the call means: for a screening call, the operating point in the words of the
    validation (and test) figures; otherwise what the numbers are relative to."""
    screening = finding.screening
    if screening is None:
        return _meaning_without_screening(card, finding), None
    pos, neg = screening.positive_class, screening.negative_class
    val = (card.get("metrics") or {}).get("validation_pooled") or {}
    at = _at_threshold(val)
    if at.get("sensitivity") is None:
        text = "The model card holds no validation figures for this operating point."
    else:
        n_pos, n_neg = at["tp"] + at["fn"], at["tn"] + at["fp"]
        text = (
            f"At this threshold the model found {pct(at['sensitivity'])} of {pos} slides in "
            f"validation ({at['tp']} of {n_pos}), with specificity {pct(at['specificity'])} "
            f"({at['tn']} of {n_neg} {neg} slides called {neg}), each slide scored by the fold "
            "model that did not train on it. These validation slides also chose the "
            "threshold, so the figures are optimistic."
        )
    test = (card.get("metrics") or {}).get("test") or {}
    t_at = _at_threshold(test)
    test_text = None
    if t_at.get("sensitivity") is not None:
        test_text = (
            f"On {t_at['tp'] + t_at['fn'] + t_at['tn'] + t_at['fp']} held-out test slides "
            f"it found {pct(t_at['sensitivity'])} of {pos} slides ({t_at['tp']} of "
            f"{t_at['tp'] + t_at['fn']}) with specificity {pct(t_at['specificity'])}."
        )
    if not screening.positive:
        text += f" A {neg} call does not rule out {pos}."
    return text, test_text


def _meaning_without_screening(card: dict[str, Any], finding: Finding) -> str:
    if finding.classes is not None:
        return (
            "The class probabilities are calibrated (one temperature fitted on the pooled "
            "out-of-fold validation slides) and averaged over the fold models. The model has "
            "no benign class, so it makes no screening decision: the most probable class is "
            "an opinion to weigh against the slide, not a call at a validated operating point."
        )
    if finding.risk is not None:
        cuts = finding.risk.cuts
        bounds = (
            f" (low below {cuts[0]:.3g}, high at {cuts[1]:.3g} or above)" if len(cuts) == 2 else ""
        )
        return (
            "The risk is relative to the training cohort: the risk groups are the tertiles of "
            f"the training cohort's out-of-fold risk scores{bounds}, and the curves below "
            "are that cohort's observed (Kaplan-Meier) survival per group. The risk score is "
            "minus the expected number of time bins survived (higher: worse); it is neither a "
            "probability nor a survival time, and it says nothing about patients unlike the "
            "training cohort."
        )
    return (
        "The value is the mean of the fold models' values; their spread is shown as the "
        "standard deviation and the range. It is fitted directly to the training targets, "
        "with no calibration."
    )


def _num(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _with_ci(part: dict[str, Any], key: str, name: str) -> str:
    lo, hi = part.get(f"{key}_ci95") or (None, None)
    ci = "" if lo is None or hi is None else f" (95% CI {lo:.3f}-{hi:.3f})"
    return f"{name} {_num(part.get(key))}{ci}"


def _at_point(at: dict[str, Any]) -> str:
    n = at.get("tp", 0) + at.get("fn", 0) + at.get("tn", 0) + at.get("fp", 0)
    return (
        f"sensitivity {pct(at.get('sensitivity'))}, specificity {pct(at.get('specificity'))} "
        f"(n = {n})"
    )


def _binary_metrics(part: dict[str, Any], task: dict[str, Any]) -> str:
    return f"{_with_ci(part, 'auroc', 'AUROC')}; at the operating point " + _at_point(
        part.get("at_threshold") or {}
    )


def _class_metrics(part: dict[str, Any], task: dict[str, Any]) -> str:
    text = (
        f"{_with_ci(part, 'macro_auroc', 'macro AUROC (one vs rest)')}, balanced accuracy "
        f"{_num(part.get('balanced_accuracy'))}"
    )
    if part.get("kappa_quadratic") is not None:
        text += f", quadratic kappa {_num(part['kappa_quadratic'])}"
    screening = part.get("screening") or {}
    if screening.get("at_threshold"):
        text += (
            f"; screening non-{task.get('negative')}: AUROC {_num(screening.get('auroc'))}, at "
            "the operating point " + _at_point(screening["at_threshold"])
        )
    return text


def _survival_metrics(part: dict[str, Any], task: dict[str, Any]) -> str:
    return (
        f"{_with_ci(part, 'c_index_harrell', 'C-index (Harrell)')}, Uno's C-index "
        f"{_num(part.get('c_index_uno'))}, integrated Brier score {_num(part.get('ibs'))}"
    )


def _regression_metrics(part: dict[str, Any], task: dict[str, Any]) -> str:
    return (
        f"{_with_ci(part, 'pearson_r', 'Pearson r')}, mean absolute error "
        f"{_num(part.get('mae'), 4)}, root mean squared error {_num(part.get('rmse'), 4)}"
    )


_METRICS = {
    "binary": _binary_metrics,
    "multiclass": _class_metrics,
    "ordinal": _class_metrics,
    "survival": _survival_metrics,
    "regression": _regression_metrics,
}


def _metric_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    metrics = card.get("metrics") or {}
    task = card["task"]
    text = _METRICS[str(task.get("kind") or "binary")]
    for key, name in (("validation_pooled", "Validation (out of fold)"), ("test", "Test")):
        part = metrics.get(key)
        if part:
            rows.append((name, text(part, task)))
    if not metrics.get("test"):
        rows.append(("Test", "no held-out test part: only the (optimistic) validation figures"))
    return rows


def _task_rows(model: Any) -> list[tuple[str, str]]:
    """The model card's task and training cohort, in words."""
    card, task = model.card, model.card["task"]
    data = (card.get("data") or {}).get("all") or {}
    cohort = f"{data.get('slides', '?')} slides"
    kind = str(task.get("kind") or "binary")
    if kind == "binary":
        what = f"{task['positive']} vs {task['negative']}"
        cohort += f" ({data.get('positive_slides', '?')} {task['positive']})"
    else:
        what = model.task.describe()
        per_class = data.get("slides_per_class")
        if per_class:
            cohort += " (" + ", ".join(f"{n} {c}" for c, n in per_class.items()) + ")"
    cohort += f" of {data.get('patients', '?')} patients; split {card['data'].get('split')}"
    return [("Task", what), ("Training cohort", cohort)]


def _mpp_words(source: str | None) -> str:
    return {
        "metadata": "stated by the slide",
        "tiff-resolution": "from the TIFF resolution tags",
        "override": "given by the user, not read from the slide",
    }.get(str(source), str(source))


def _quality_rows(
    facts: SlideFacts, finding: Finding, options: ReportOptions
) -> list[tuple[str, str]]:
    qc = facts.qc
    area = "unknown" if facts.tissue_mm2 is None else f"{facts.tissue_mm2:.2f} mm²"
    mpp = _mpp_words(facts.mpp_source)
    rows = [
        (
            "Tissue",
            f"{area}, {facts.tiles:,} tiles (flag below {options.min_tissue_mm2} mm² "
            f"or {options.min_tiles} tiles)",
        ),
        ("Resolution", mpp if facts.mpp else "unknown"),
    ]
    if qc:
        rows += [
            ("Blurred tiles", f"{pct(qc['blurred'])} (flag above {pct(options.blur_fraction)})"),
            ("Tiles with pen ink", f"{pct(qc['pen'])} (flag above {pct(options.pen_fraction)})"),
            ("Mostly background tiles", pct(qc["background"])),
        ]
    if facts.verifies_data is False:
        rows.append(
            (
                "Tile data check",
                f"not verified: tiles were read with {facts.reader or 'a reader'} that does not "
                "detect corrupt tile data; re-tile with --backend openslide to check",
            )
        )
    elif facts.verifies_data:
        rows.append(("Tile data check", f"verified on reading ({facts.reader})"))
    if finding.far_fraction is None:
        rows.append(("Similarity to training tiles", finding.ood_note or "not checked"))
    else:
        rows.append(
            (
                "Tiles unlike any training tile",
                f"{pct(finding.far_fraction)} (flag above {pct(options.ood_fraction)}; "
                f"{pct(finding.far_expected)} of training tiles are this far from other "
                "training slides)",
            )
        )
        rows.append(
            ("Tiles that are training tiles", f"{pct(finding.seen_fraction)} (flag above 20%)")
        )
    return rows


def _viewer_link(store: Path, model: str, out_dir: Path, viewer: Path | None) -> str | None:
    """Relative link from the report to the viewer's index.html, if there is one."""
    if viewer is None:
        from wsi import store as st

        group = st.open_store(store)
        files = (
            dict(group[st.heatmap_keys(model).stage].attrs).get("files", {})
            if st.heatmap_keys(model).stage in group
            else {}
        )
        viewer = Path(files["viewer"]) if files.get("viewer") else None
    if viewer is None:
        return None
    index = viewer if viewer.name == "index.html" else viewer / "index.html"
    if not index.exists():
        return None
    return Path(os.path.relpath(index.resolve(), out_dir.resolve())).as_posix()


def _heat_note(grid: Any, options: Any) -> str:
    """What the report's heatmap shows, under it: evidence on the model's scale (the same
    on every slide), or attention ranked within the slide."""
    scale = grid.scale_label or grid.label
    if grid.vmin is not None:
        return (
            f"Tile evidence of the fold models: {scale}. Dark = no evidence for the class "
            "(or evidence against it), bright = as much as the model's strongest tiles on "
            "its training slides; the scale is the same on every slide, so a slide without "
            "evidence stays dark."
        )
    if options.normalise == "rank":
        return (
            f"{scale[:1].upper() + scale[1:]} (bright = highest in this slide). Ranked "
            "within the slide, it lights up a normal slide as much as a tumour: it shows "
            "where the model looked, not where tumour is."
        )
    return f"{scale[:1].upper() + scale[1:]}, coloured over this slide's range."


def _tile_rows(tiles: list[TileImage], link: str | None) -> list[dict[str, Any]]:
    return [
        {
            "index": t.index,
            "src": None if t.pixels is None else data_uri(t.pixels, quality=90),
            "box": t.box_l0,
            "percentile": t.percentile,
            "evidence": t.evidence,
            "link": f"{link}#box={','.join(str(v) for v in t.box_l0)}" if link else None,
        }
        for t in tiles
    ]


def report_slide(
    store: str | os.PathLike[str],
    model: Any,
    out_dir: str | os.PathLike[str],
    options: ReportOptions | None = None,
    *,
    viewer: str | os.PathLike[str] | None = None,
) -> SlideReport:
    """Write the report of one predicted store: ``<slide_id>.html``, ``.pdf``, ``.json``.

    Parameters
    ----------
    store: a slide store with ``predictions/<model>`` (``wsi predict``).
    model: the model folder written by ``wsi train`` (or a loaded ``TrainedModel``).
    out_dir: where the files go (created).
    options: contents and flag thresholds (``ReportOptions``).
    viewer: the slide's viewer folder (``wsi viewer``) to link tiles into; by default the
        one recorded by ``wsi heatmap --exports viewer``, if any.

    The heatmap is the one the heatmap stage stored, drawn with the options it ran with,
    when ``heatmaps/<model>`` is made from the current prediction; otherwise it is
    computed from the prediction with ``HeatmapOptions()`` (``wsi.heatmap.stored_grid``).

    Coordinates in the report are level-0 pixels; areas are in mm² from the slide's mpp.
    In detail: tile boxes are level-0 ``(x0, y0, x1, y1)`` in pixels; the tissue area is
    the tissue mask's pixel count times its pixel area (the mask's µm/px, from the
    slide's mpp, squared), in mm²; resolutions are in micrometres per pixel. File names
    are the slide id with ``/``, ``\\`` and control characters replaced by ``_`` and
    leading dots removed.

    Returns
    -------
    A ``SlideReport``: ``slide_id``, ``html`` (``<out_dir>/<slide_id>.html``), ``pdf``
    (``<out_dir>/<slide_id>.pdf``, or None when ``options.pdf`` is False) and ``row``, the
    dict also written to ``<slide_id>.json``: ``slide_id``, ``decision``, the task's
    numbers (a screening call: ``positive``, ``probability``, ``probability_std``,
    ``log_odds``; classes: ``predicted_class``, ``class_probabilities``,
    ``class_probability_std``; survival: ``risk``, ``risk_std``, ``risk_group``;
    regression: ``value``, ``value_std``, ``value_min``, ``value_max``), ``task`` (its
    kind), ``flags`` (titles), ``tiles``, ``tissue_mm2``, ``report`` and ``pdf`` (file
    names), ``model``, ``model_id``.

    Raises
    ------
    StoreError: ``store`` is not a slide store, or holds no prediction of ``model`` (or one
        from another model of the same name): run ``wsi.predict_store`` first; or, where
        the model has an out-of-distribution reference, it lacks the model's features.
    ConfigError: ``model`` is a folder that ``wsi.load_model`` cannot load.
    BackendUnavailableError: ``options.pdf`` and WeasyPrint or Pango is missing (the HTML
        is written by then, the JSON not).

    Example::

        model = wsi.load_model("models/abmil")
        one = wsi.report_slide("stores/s1.zarr", model, "reports", wsi.ReportOptions(pdf=False))
        one.html, one.row["decision"], one.row["flags"]   # reports/s1.html, "tumor", [...]
    """
    from wsi.heatmap import compose_overlay, outline, stored_grid

    options = options or ReportOptions()
    trained = _load(model)
    path = Path(store)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts, finding, top, least = gather(path, trained, options)
    found = flags(facts, finding, options)
    thumb = facts.thumbnail.copy()
    if facts.tissue_mask is not None and facts.tissue_mask.any():
        thumb[outline(facts.tissue_mask, thumb.shape[:2])] = 0
    # the heatmap stage's grid and options when there is a current one, else the defaults
    grid, heat_options, _ = stored_grid(path, trained.name)
    overlay = compose_overlay(facts.thumbnail, grid, heat_options, "", facts.tissue_mask)
    link = _viewer_link(path, trained.name, out, Path(viewer) if viewer else None)
    meaning, test_meaning = _meaning(trained.card, finding)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    from wsi._version import __version__

    html = render(
        "slide.html.j2",
        facts=facts,
        finding=finding,
        card=trained.card,
        flags=found,
        meaning=meaning,
        test_meaning=test_meaning,
        fold_list=_fold_list(finding),
        bars=None if finding.classes is None else class_bars(finding.classes, _negative(trained)),
        km=None if finding.risk is None else km_chart(finding.risk),
        calm=_calm(finding),
        trust_rows=trust_rows(finding),
        call_class=_call_class(finding),
        task_rows=_task_rows(trained),
        mpp_source=_mpp_words(facts.mpp_source),
        images={"thumbnail": data_uri(thumb), "overlay": data_uri(overlay)},
        heat_note=_heat_note(grid, heat_options),
        top=_tile_rows(top, link),
        least=_tile_rows(least, link),
        viewer_link=link,
        quality=_quality_rows(facts, finding, options),
        metric_rows=_metric_rows(trained.card),
        disclaimer=DISCLAIMER,
        created=now,
        version=__version__,
    )
    sid = facts.slide_id
    # PDF first, then HTML, then the JSON row last: a failure leaves no report that looks
    # finished (the JSON row is what the cohort report and `wsi run` trust)
    pdf_path = write_pdf(html, out / f"{_safe(sid)}.pdf") if options.pdf else None
    html_path = write_output(out / f"{_safe(sid)}.html", html)
    row = {
        "slide_id": sid,
        "decision": finding.decision,
        **finding.parts.row(),
        "task": finding.kind,
        "flags": [f.title for f in found],
        "call": finding.call or finding.decision,
        "shift": ((finding.trust or {}).get("shift") or {}).get("status", "not checked"),
        "shift_check": (finding.trust or {}).get("shift"),
        "conformal_set": ((finding.trust or {}).get("conformal") or {}).get("set"),
        "tiles": facts.tiles,
        "tissue_mm2": facts.tissue_mm2,
        "report": html_path.name,
        "pdf": pdf_path.name if pdf_path else None,
        "model": finding.model,
        "model_id": trained.card["model_id"],
    }
    write_output(out / f"{_safe(sid)}.json", json.dumps(row, indent=1) + "\n")
    return SlideReport(sid, html_path, pdf_path, row)


def trust_rows(finding: Finding) -> list[tuple[str, str]]:
    """The "How sure" rows of a report: the conformal set and the site-shift check in
    words (none for predictions made before they existed)."""
    from wsi.reports.facts import measure_words

    trust = finding.trust
    if trust is None:
        return []
    rows: list[tuple[str, str]] = []
    conformal = trust.get("conformal")
    if conformal and "set" in conformal:
        level = f"{1 - conformal['alpha']:.0%}"
        labels = conformal["set"]
        text = {
            "certain": f"{{{labels[0]}}}: only {labels[0]} is consistent with the "
            "validation slides",
            "uncertain": f"{{{', '.join(labels)}}}: the model cannot rule out any of "
            f"these: uncertain, refer",
            "atypical": "{} (empty): the slide conforms to no class the model was trained "
            "on: atypical",
        }[conformal["status"]]
        rows.append((f"Conformal prediction set ({level})", text))
    elif conformal and conformal.get("interval"):
        lo, hi = conformal["interval"]
        rows.append(
            (
                f"Conformal interval ({1 - conformal['alpha']:.0%})",
                f"{lo:.4g} to {hi:.4g}",
            )
        )
    elif conformal:
        rows.append(("Conformal interval", "unbounded: too few training slides for the rate"))
    else:
        rows.append(("Conformal prediction set", "none for this task"))
    shift = trust.get("shift") or {}
    status = shift.get("status", "not checked")
    if status == "failed":
        text = "failed: " + ", ".join(measure_words(n) for n in shift.get("failed") or [])
    elif status == "passed":
        text = "passed: stain and embeddings within the range of in-site slides"
        if shift.get("note"):
            text += f" (partly {shift['note']})"
    else:
        text = f"not checked: {shift.get('note') or 'no shift reference'}"
    rows.append(("Site-shift check", text))
    return rows


def _negative(model: Any) -> str | None:
    return model.card["task"].get("negative")


def _fold_list(finding: Finding) -> str:
    """Each fold model's number: probability (screening), risk or value."""
    if finding.screening is not None:
        return ", ".join(prob(p) for p in finding.screening.fold_probabilities)
    if finding.risk is not None:
        return ", ".join(f"{r:.3g}" for r in finding.risk.fold_risks)
    if finding.value is not None:
        return ", ".join(f"{v:.4g}" for v in finding.value.fold_values)
    return ""


def _call_class(finding: Finding) -> str:
    """How the call is drawn: red (positive, high risk), green (negative), else neutral."""
    if finding.positive is not None:
        return "positive" if finding.positive else "negative"
    if finding.risk is not None and finding.risk.group == finding.risk.names[-1]:
        return "positive"
    return "neutral"


def _calm(finding: Finding) -> str:
    """What "no flags" means for this task."""
    if finding.screening is not None:
        return "the fold models agree, the case is not near the threshold"
    if finding.classes is not None:
        return "the fold models agree, the most probable class stands clear of the next"
    if finding.risk is not None:
        return "the fold models agree on the risk group, the risk is not near a group boundary"
    return "the fold models' values agree"


_ABS_PATH = re.compile(r"(?<![\w.])(?:~|[A-Za-z]:)?[/\\][^\s:;,'\"()<>]+")


def redact_paths(text: str, *paths: str | os.PathLike[str]) -> str:
    """``text`` without the given paths (and their resolved forms) or any other absolute
    path: what a recipient-side report may show of an error. Folder names can carry
    patient names; the operator's log and status files keep the full message."""
    for p in paths:
        try:
            forms = {str(p), str(Path(p).expanduser().resolve())}
        except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
            forms = {str(p)}
        for form in sorted(forms, key=len, reverse=True):
            if form and form != ".":
                text = text.replace(form, "[path]")
    return _ABS_PATH.sub("[path]", text)


def _csv_cell(value: Any) -> Any:
    """No spreadsheet formula injection: text cells starting with = + - @ are quoted."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _safe(slide_id: str) -> str:
    """A file name for a slide id: path separators and control characters replaced."""
    bad = set("/\\\0") | {chr(c) for c in range(32)}
    name = "".join("_" if c in bad else c for c in slide_id).lstrip(".")
    return name or "_"


def batch_shift(
    shift: dict[str, Any] | None, rows: list[dict[str, Any]]
) -> tuple[dict[str, Any], str]:
    """The batch's site-shift test over report rows and what it says, in words."""
    from wsi.mil.shift import check_batch
    from wsi.reports.facts import measure_words

    checks = [r["shift_check"] for r in rows if r.get("shift_check")]
    batch = check_batch(shift, checks)
    if batch["status"] == "differs":
        tests = batch["tests"]
        parts = [
            f"{measure_words(n)} (p = {tests[n]['p_value']:.2g}; median "
            f"{tests[n]['batch_median']:.3g} against {tests[n]['training_median']:.3g} in "
            "training)"
            for n in batch["differs"]
        ]
        text = (
            "Compared with the training slides it differs in " + "; ".join(parts) + f". "
            f"{batch['flagged_slides']} of {batch['slides']} slides failed their own "
            "check. The model's probabilities and operating point may not hold here: "
            "validate it on this site before relying on it."
        )
    elif batch["status"] == "similar":
        text = (
            f"similar to the training slides ({batch['slides']} slides; "
            f"{batch['flagged_slides']} failed their own check)"
        )
    else:
        text = f"not checked: {batch.get('note', '')}"
    return batch, text


def report_cohort(
    rows: list[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    model: str,
    positive: str | None = None,
    task: dict[str, Any] | None = None,
    failed: list[dict[str, str]] | None = None,
    shift: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """The triage table: every slide sorted by risk, linking to each slide's report;
    slides that failed are listed with their stage and error (pass errors through
    ``redact_paths``: this table goes to the pathologist). Writes ``cohort.html`` and
    ``cohort.csv``; returns both paths.

    ``task`` is the model card's task (``model.json``'s ``task``; None: a binary task
    with ``positive`` the positive class). Risk is, per task: the calibrated log-odds of
    the screening call (binary, and classes with a benign class), highest first; the
    predicted class (ordinal: the highest grade first), then its probability; the
    survival risk score; the predicted value. ``cohort.csv`` has the columns ``rank,
    slide_id, decision``, the task's (``wsi.reports.calls.cohort_columns``: binary
    ``probability, probability_std, positive``), then ``flags, tiles, tissue_mm2,
    report, error``. Among the slides a screening model calls negative, flagged ones
    (``call`` uncertain, or any flag) come first: they are the ones to review.

    ``shift`` (the model card's ``shift`` section) adds the batch's site-shift test
    (``wsi.mil.shift.check_batch`` over the rows' ``shift_check``): a banner naming the
    measures when the batch differs from the training slides."""
    from wsi._version import __version__

    task = task or {"kind": "binary", "positive": positive}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key, order_text = calls.cohort_order(task)
    ordered = sorted(rows, key=key)
    columns = calls.cohort_display(task)
    batch, batch_text = batch_shift(shift, rows) if shift is not None else (None, "")
    html = render(
        "cohort.html.j2",
        batch=batch,
        batch_text=batch_text,
        rows=[(r, [show(r) for _, show in columns]) for r in ordered],
        headers=[name for name, _ in columns],
        failed=failed or [],
        model=model,
        order_text=order_text,
        disclaimer=DISCLAIMER,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        version=__version__,
    )
    html_path = write_output(out / "cohort.html", html)
    values = calls.cohort_columns(task)
    head, tail = ["rank", "slide_id", "decision"], ["flags", "tiles", "tissue_mm2", "report"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*head, *values, *tail, "error"], lineterminator="\n")
    writer.writerow({k: _csv_cell(k) for k in writer.fieldnames})  # class names are text
    for rank, r in enumerate(ordered, 1):
        row = {
            **{k: r.get(k) for k in (*head, *tail) if k != "rank"},
            **calls.cohort_cells(r, values),
            "rank": rank,
            "flags": "; ".join(r["flags"]),
            "error": "",
        }
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    for f in failed or []:
        row = {"slide_id": f["slide_id"], "error": f"{f['stage']}: {f['error']}"}
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    csv_path = write_output(out / "cohort.csv", buf.getvalue())
    return html_path, csv_path


def report(
    stores: list[str | os.PathLike[str]],
    model: Any,
    out_dir: str | os.PathLike[str],
    options: ReportOptions | None = None,
) -> Reports:
    """Per-slide reports of ``stores`` and the cohort report, in ``out_dir``.

    A store that cannot be reported (no prediction, damaged) is listed in ``failed`` and in
    the cohort report; the others go on. (Its ``WsiError`` or ``OSError`` is logged, not
    raised.)

    Each slide gets ``<slide_id>.html``, ``.pdf`` (when ``options.pdf``) and ``.json`` (see
    ``report_slide``: level-0 pixel coordinates, tissue areas in mm²); then
    ``cohort.html`` and ``cohort.csv`` list every slide by risk (calibrated log-odds,
    highest first; per task: see ``report_cohort``) and the failed stores with their
    errors.

    Args:
        stores: slide store folders with a prediction of ``model`` (``wsi.predict_store``).
        model: the model folder written by ``wsi train``, or a loaded ``TrainedModel``
            (loaded once for all slides).
        out_dir: where every file goes (created).
        options: contents and flag thresholds; None: ``ReportOptions()`` (PDF on).

    Returns:
        ``Reports``: ``slides`` (a ``SlideReport`` per reported store), ``failed`` (per
        store that failed: ``slide_id`` (the store folder's name without ``.zarr``),
        ``stage`` ``"report"`` and ``error``), ``cohort_html`` and ``cohort_csv`` (paths).

    Raises:
        BackendUnavailableError: ``options.pdf`` and WeasyPrint or Pango is missing;
            checked before any slide, so none is half reported.
        ConfigError: ``model`` is a folder that ``wsi.load_model`` cannot load.
        OutputError: ``out_dir`` cannot be written (full, read-only): the job stops,
            naming the folder and the fix.
        OutputExistsError: a report would replace a file wsi did not write there.

    Example::

        result = report(sorted(Path("stores").glob("*.zarr")), "models/abmil", "reports")
        result.cohort_csv, [f["slide_id"] for f in result.failed]
    """
    options = options or ReportOptions()
    if options.pdf:
        check_pdf()
    trained = _load(model)
    done: list[SlideReport] = []
    failed: list[dict[str, str]] = []
    for s in stores:
        try:
            done.append(report_slide(s, trained, out_dir, options))
        except (WsiError, OSError) as err:  # one bad slide never stops the cohort
            if isinstance(err, OSError) and _folder_problem(err, out_dir):
                raise output_error(out_dir, err) from err  # a full or read-only out_dir
            log.error("%s", err)
            failed.append(
                {
                    "slide_id": Path(s).name.removesuffix(".zarr"),
                    "stage": "report",
                    "error": redact_paths(str(err), s),
                }
            )
    try:
        html, csv_path = report_cohort(
            [r.row for r in done],
            out_dir,
            model=trained.name,
            task=trained.card["task"],
            failed=failed,
            shift=trained.card.get("shift") or {},
        )
    except OSError as err:
        if isinstance(err, WsiError):
            raise
        raise output_error(out_dir, err) from err
    return Reports(done, failed, html, csv_path)


def _folder_problem(err: OSError, out_dir: str | os.PathLike[str]) -> bool:
    """``err`` is a write into ``out_dir`` that failed for the folder's sake (full,
    read-only): every slide would fail the same way."""
    if isinstance(err, WsiError):
        return False
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True  # (a failed write names no file)
    if err.errno not in FOLDER_ERRNOS or not err.filename:
        return False
    return Path(os.path.abspath(err.filename)).is_relative_to(os.path.abspath(out_dir))
