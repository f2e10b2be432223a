#!/usr/bin/env python3
"""Write a labelled benchmark cohort of synthetic slides with lesion ground truth.

Example (from the repository root)::

    python tools/make_cohort.py --out bench_out/cohort --slides 60 --size 4000 --seed 0
    python tools/make_cohort.py --out bench_out/surv --task survival --slides 120 --size 4000
    python tools/make_cohort.py --out bench_out/site_b --textures site_b --stain-shift 1.5 0.5 1

Writes ``slides/*.tiff`` (mpp 0.25), ``masks/<slide_id>_{lesion,tissue}.png``,
``labels.csv`` and ``cohort.json`` (and, for ``--task survival``, ``truth.csv``) under
``--out`` (see ``wsi.synthetic.cohort``; what ``labels.csv`` holds per task:
``wsi.synthetic.tasks``). Re-running with the same arguments skips the slides already written.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

try:
    from wsi.errors import WsiError
    from wsi.synthetic import make_cohort
    from wsi.synthetic.tasks import TASKS
    from wsi.synthetic.texture_sets import TEXTURE_SETS
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from wsi.errors import WsiError
    from wsi.synthetic import make_cohort
    from wsi.synthetic.tasks import TASKS
    from wsi.synthetic.texture_sets import TEXTURE_SETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write a labelled cohort of synthetic slides with lesion masks."
    )
    p.add_argument("--out", type=Path, required=True, help="cohort folder")
    p.add_argument(
        "--task",
        choices=TASKS,
        default="binary",
        help="what labels.csv holds (default binary: tumor/normal per patient)",
    )
    p.add_argument("--slides", type=int, default=60, help="number of slides (default 60)")
    p.add_argument(
        "--size", type=int, default=4000, help="slide side in level-0 pixels (default 4000)"
    )
    p.add_argument(
        "--patients", type=int, default=None, help="number of patients (default slides // 2)"
    )
    p.add_argument(
        "--positive-fraction",
        type=float,
        default=0.5,
        help="fraction of patients with lesions (tumor, or a lesion class) (default 0.5)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--lesion-fraction",
        type=float,
        nargs=2,
        default=(0.01, 0.10),
        metavar=("LOW", "HIGH"),
        help="lesion area as a fraction of the tissue area (default 0.01 0.10)",
    )
    p.add_argument(
        "--min-lesion-um",
        type=float,
        default=256.0,
        help="smallest lesion: area of a disk this many micrometres across (default 256)",
    )
    p.add_argument(
        "--mask-downsample",
        type=int,
        default=16,
        help="level-0 pixels per mask pixel (default 16)",
    )
    p.add_argument(
        "--tiles",
        type=Path,
        default=None,
        help="folder of H&E images (default ../shared/data/tiles; procedural when missing)",
    )
    p.add_argument(
        "--textures",
        choices=tuple(TEXTURE_SETS),
        default="default",
        help="texture set: default, site_b (a second site's images) or subtle (lesions "
        "closer to the background) (default: default)",
    )
    p.add_argument(
        "--stain-shift",
        type=float,
        nargs=3,
        default=(1.0, 1.0, 1.0),
        metavar=("H", "E", "DAB"),
        help="haematoxylin, eosin and DAB factors (> 0) applied in HED colour space to the "
        "tissue and lesions, e.g. 1.5 0.5 1 (default 1 1 1: no shift)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a cohort made with other arguments"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pyvips").setLevel(logging.WARNING)
    t0 = time.monotonic()
    try:
        cohort = make_cohort(
            args.out,
            slides=args.slides,
            size=args.size,
            patients=args.patients,
            positive_fraction=args.positive_fraction,
            seed=args.seed,
            lesion_fraction=tuple(args.lesion_fraction),
            tile_source_dir=args.tiles,
            mask_downsample=args.mask_downsample,
            min_lesion_diameter_um=args.min_lesion_um,
            overwrite=args.overwrite,
            task=args.task,
            stain_shift=tuple(args.stain_shift),
            textures=args.textures,
        )
    except (WsiError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"cohort: {cohort.out_dir}")
    print(f"slides: {len(cohort.slides)}")
    print(f"labels: {cohort.labels_csv}")
    print(f"manifest: {cohort.manifest}")
    print(f"time: {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
