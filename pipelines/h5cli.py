"""``wsi export-h5`` and ``wsi import-h5``: features as CLAM / TRIDENT h5 files.

:func:`add_parsers` adds both subcommands to the ``wsi`` parser's subparsers. Each
loops over its inputs, prints one line per item ("ok" or "FAILED" with the reason), and
a bad item never stops the others; the exit code is 1 if any failed, else 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.tasks import print_results, run_items

__all__ = ["add_parsers"]


def _cmd_export(args: argparse.Namespace) -> int:
    from wsi.h5io import export_h5

    results = run_items(args.stores, lambda s: export_h5(s, args.encoder, args.out))
    ok = sum(r.status == "ok" for r in results)
    return print_results(f"exported {ok} of {len(results)} store(s) into {args.out}", results)


def _cmd_import(args: argparse.Namespace) -> int:
    from wsi.h5io import import_h5

    results = run_items(
        args.h5, lambda h: import_h5(h, args.encoder, args.out, overwrite=args.overwrite)
    )
    ok = sum(r.status == "ok" for r in results)
    return print_results(f"imported {ok} of {len(results)} file(s) into {args.out}", results)


def add_parsers(sub: Any) -> None:
    """Add ``export-h5`` and ``import-h5`` to ``sub`` (from ``parser.add_subparsers()``)."""
    from pipelines.config import add_wait_option

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
    add_wait_option(p)
    p.set_defaults(func=_cmd_import)
