"""``wsi export-h5`` and ``wsi import-h5``: features as CLAM / TRIDENT h5 files.

:func:`add_parsers` adds both subcommands to the ``wsi`` parser's subparsers. Each
loops over its inputs, prints one line per item ("ok" or "FAILED" with the reason), and
a bad item never stops the others; the exit code is 1 if any failed, else 0.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi.errors import WsiError

__all__ = ["add_parsers", "ItemResult", "run_items"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemResult:
    """Outcome of one input: ``ok`` with its output path, or ``failed`` with the reason."""

    item: str
    status: str
    output: str | None = None
    error: str | None = None
    seconds: float = 0.0


def run_items(items: list[str], work: Callable[[str], Path]) -> list[ItemResult]:
    """Run ``work`` on each item; a WsiError or OSError of one item is recorded, not raised."""
    results = []
    for item in items:
        t0 = time.perf_counter()
        try:
            output = work(item)
        except (WsiError, OSError) as err:
            msg = str(err) if isinstance(err, WsiError) else f"{item}: {err} ({type(err).__name__})"
            log.error("%s", msg)
            results.append(ItemResult(item, "failed", error=msg, seconds=time.perf_counter() - t0))
            continue
        results.append(ItemResult(item, "ok", output=str(output), seconds=time.perf_counter() - t0))
    return results


def _report(verb: str, what: str, out: str, results: list[ItemResult]) -> int:
    ok = [r for r in results if r.status == "ok"]
    failed = [r for r in results if r.status != "ok"]
    print(f"{verb} {len(ok)} of {len(results)} {what} into {out}")
    for r in ok:
        print(f"  ok      {r.item} -> {r.output} ({r.seconds:.1f} s)")
    for r in failed:
        print(f"  FAILED  {r.item}: {r.error}")
    return 1 if failed else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from wsi.h5io import export_h5

    results = run_items(list(args.stores), lambda s: export_h5(s, args.encoder, args.out))
    return _report("exported", "store(s)", args.out, results)


def _cmd_import(args: argparse.Namespace) -> int:
    from wsi.h5io import import_h5

    results = run_items(
        list(args.h5),
        lambda h: import_h5(h, args.encoder, args.out, overwrite=args.overwrite),
    )
    return _report("imported", "file(s)", args.out, results)


def add_parsers(sub: Any) -> None:
    """Add ``export-h5`` and ``import-h5`` to ``sub`` (from ``parser.add_subparsers()``)."""
    p = sub.add_parser(
        "export-h5", help="write a store's features as a CLAM/TRIDENT h5 file per slide"
    )
    p.add_argument("stores", nargs="+", metavar="STORE", help="<slide_id>.zarr stores")
    p.add_argument("--encoder", required=True, help="name of the features to export")
    p.add_argument("--out", required=True, help="output folder for <slide_id>.h5 files")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("import-h5", help="bring CLAM/TRIDENT h5 features into per-slide stores")
    p.add_argument("h5", nargs="+", metavar="H5", help="h5 files with features and coords")
    p.add_argument("--encoder", required=True, help="name to store the features under")
    p.add_argument("--out", required=True, help="folder of the <stem>.zarr stores")
    p.add_argument(
        "--overwrite", action="store_true", help="replace features of that name made otherwise"
    )
    p.set_defaults(func=_cmd_import)
