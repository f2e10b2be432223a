"""``wsi viewer`` (write offline deep-zoom viewers) and ``wsi view`` (serve them locally).

:func:`add_parsers` adds both subcommands to the ``wsi`` parser's subparsers;
:func:`add_score_options` and :func:`exports_help` are shared with ``wsi heatmap``. Choices
and defaults are read from ``wsi.heatmap`` (``SOURCES``, ``NORMALISE``, ``EXPORTS``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parsers", "add_score_options", "exports_help"]


def _cmd_viewer(args: argparse.Namespace) -> int:
    from pipelines.tasks import print_results as report
    from pipelines.tasks import run_items
    from wsi.heatmap import HeatmapOptions, write_viewer

    options = HeatmapOptions(
        source=args.source, normalise=args.normalise, cmap=args.cmap, alpha=args.alpha
    )
    results = run_items(
        args.stores,
        lambda s: write_viewer(s, args.model, args.out, options, max_regions=args.max_regions),
    )
    ok = sum(r.status == "ok" for r in results)
    code = report(f"wrote viewers of {ok} of {len(results)} store(s) into {args.out}", results)
    if any(r.status == "ok" for r in results):
        print(f"open with: wsi view {args.out}   (or open <slide>_<model>_viewer/index.html)")
    return code


def _cmd_view(args: argparse.Namespace) -> int:
    from wsi.errors import ConfigError
    from wsi.heatmap import serve

    root = Path(args.dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder")
    pages = (
        [Path("index.html")]
        if (root / "index.html").exists()
        else sorted(p.relative_to(root) for p in root.glob("*/index.html"))
    )
    url, server = serve(root, args.port)
    try:
        print(f"serving {root} at {url} (127.0.0.1 only); Ctrl-C to stop")
        for page in pages:
            print(f"  {url}{page.as_posix()}")
        if not pages:
            print("  (no index.html found: write viewers with `wsi viewer`)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.shutdown()
        server.server_close()
    return 0


def add_score_options(p: Any) -> None:
    """What a heat layer shows and how it is coloured (``wsi heatmap`` and ``wsi viewer``);
    choices from ``wsi.heatmap.SOURCES`` and ``NORMALISE``, defaults from
    ``HeatmapOptions``."""
    from wsi.heatmap import NORMALISE, SOURCES, HeatmapOptions

    defaults = HeatmapOptions()
    p.add_argument(
        "--source",
        default=defaults.source,
        choices=list(SOURCES),
        help="evidence: each tile's contribution to the calibrated slide score of the shown "
        "class (default; heads without it show attention); attention: fold attention "
        "normalised then averaged; attention_raw: the raw scores",
    )
    p.add_argument(
        "--normalise",
        default=defaults.normalise,
        choices=list(NORMALISE),
        help="fixed: evidence on the model's scale, the same on every slide (default); "
        "rank: percentiles within the slide; raw: the scores as they are",
    )
    p.add_argument(
        "--cmap", default=defaults.cmap, help=f"matplotlib colour map (default {defaults.cmap})"
    )


def exports_help() -> str:
    """Help of an ``--exports`` option: the names in ``wsi.heatmap.EXPORTS`` and the
    default, ``DEFAULT_EXPORTS``."""
    from wsi.heatmap import DEFAULT_EXPORTS, EXPORTS

    return f"comma-separated: {','.join(EXPORTS)} (default: {','.join(DEFAULT_EXPORTS)})"


def add_parsers(sub: Any) -> None:
    """Add ``viewer`` and ``view`` to ``sub`` (from ``parser.add_subparsers()``)."""
    p = sub.add_parser(
        "viewer", help="write an offline deep-zoom viewer (slide + heatmap) per predicted store"
    )
    p.add_argument("stores", nargs="+", metavar="STORE", help="<slide_id>.zarr stores")
    p.add_argument("--model", required=True, help="model name (predictions/<model> in the store)")
    p.add_argument("--out", required=True, help="folder for the <slide_id>_<model>_viewer folders")
    add_score_options(p)
    p.add_argument("--alpha", type=float, default=0.5, help="initial heatmap opacity")
    p.add_argument("--max-regions", type=int, default=10, help="regions listed in the viewer")
    p.set_defaults(func=_cmd_viewer)

    p = sub.add_parser("view", help="serve viewer folders on 127.0.0.1 until Ctrl-C")
    p.add_argument("dir", metavar="DIR", help="a <slide>_<model>_viewer folder, or their folder")
    p.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    p.set_defaults(func=_cmd_view)
