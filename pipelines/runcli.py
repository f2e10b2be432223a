"""``wsi run`` (the batch job) and ``wsi demo`` (the whole pipeline on a made-up cohort)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parsers"]


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.config import load_run_config
    from pipelines.run import run_job
    from pipelines.summary import print_summary

    overrides: dict[str, Any] = {
        "out": args.out,
        "model": args.model,
        "slides": tuple(args.slides) or None,
        "manifest": args.manifest,
        "scheduler": args.scheduler,
        "n_workers": args.workers,
        "retry_failed": False if args.no_retry_failed else None,
    }
    if args.exports:
        overrides["heatmap"] = {"exports": tuple(e.strip() for e in args.exports.split(","))}
    if args.no_pdf:
        overrides["report"] = {"pdf": False}
    run, cluster, sections = load_run_config(args.config, **overrides)
    result = run_job(
        run,
        cluster,
        tiling=sections.get("tiling"),
        embed=sections.get("embed"),
        heatmap=sections.get("heatmap"),
        report=sections.get("report"),
        progress=False if args.quiet else None,
    )
    print_summary(result)
    return result.exit_code


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo(args.out, slides=args.slides, size=args.size, quiet=args.quiet)


def add_parsers(sub: Any) -> None:
    from pipelines.config import add_wait_option, workers_arg
    from pipelines.viewcli import exports_help

    p = sub.add_parser(
        "run",
        help="the whole pipeline on Dask: tile, embed, predict, heatmap, report; cohort report",
        description=(
            "Run slides through every stage with a trained model. Give a --config file "
            "(see configs/run.yaml) or the short form: wsi run SLIDES... --out DIR --model DIR. "
            "Command-line values win over the file. Re-running finishes only what is missing. "
            "Exit 0: all slides done; 1: some failed (see the table and summary.json); "
            "2: none done or the job itself is wrong."
        ),
    )
    p.add_argument("slides", nargs="*", help="slide files, folders or glob patterns")
    p.add_argument("--config", help="YAML job file (sections run, cluster, tiling, embed, ...)")
    p.add_argument("--out", help="output folder (stores, heatmaps, reports, summary.json, log)")
    p.add_argument("--model", help="trained model folder (written by `wsi train`)")
    p.add_argument("--manifest", help="CSV of slide_id, path, mpp (+ patient_id, label)")
    p.add_argument("--scheduler", help="address of an existing Dask scheduler (tcp://host:8786)")
    p.add_argument(
        "--workers", type=workers_arg, help="LocalCluster workers (default: one per core)"
    )
    p.add_argument(
        "--exports",
        help=f"heatmap exports (sets heatmap.exports; the job file's when not given): "
        f"{exports_help()}",
    )
    p.add_argument("--no-pdf", action="store_true", help="HTML reports only")
    p.add_argument(
        "--no-retry-failed", action="store_true", help="leave slides that failed before alone"
    )
    add_wait_option(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "demo",
        help="the main job on a made-up cohort: train ABMIL, run held-out slides, reports",
    )
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--slides", type=int, default=32, help="slides in the demo cohort")
    p.add_argument("--size", type=int, default=4000, help="slide side, pixels at 0.25 mpp")
    p.set_defaults(func=_cmd_demo)
