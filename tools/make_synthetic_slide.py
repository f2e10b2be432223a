#!/usr/bin/env python3
"""Write a synthetic H&E-like pyramidal TIFF slide (streamed) and its tissue mask.

Example (from the repository root)::

    python tools/make_synthetic_slide.py /tmp/synth.tiff --size 40000 --mpp 0.25 --seed 0

Sizes are in level-0 pixels; ``--mpp`` is micrometres per level-0 pixel.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

try:
    from wsi.synthetic import make_synthetic_slide
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from wsi.synthetic import make_synthetic_slide


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write a synthetic H&E-like pyramidal JPEG TIFF slide and its tissue mask."
    )
    p.add_argument(
        "out", type=Path, help="output TIFF path (mask goes beside it as <stem>_mask.png)"
    )
    p.add_argument("--size", type=int, required=True, help="width in level-0 pixels (and height)")
    p.add_argument(
        "--height", type=int, default=None, help="height in level-0 pixels (default: --size)"
    )
    p.add_argument(
        "--mpp", type=float, default=0.25, help="micrometres per level-0 pixel (default 0.25)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--tiles",
        type=Path,
        default=None,
        help="folder of H&E images for the texture (default ../shared/data/tiles; "
        "procedural texture when missing)",
    )
    p.add_argument(
        "--tile-size", type=int, default=256, help="TIFF tile side in pixels (default 256)"
    )
    p.add_argument("--quality", type=int, default=85, help="JPEG quality 1..100 (default 85)")
    p.add_argument(
        "--mask-downsample",
        type=int,
        default=64,
        help="level-0 pixels per tissue-mask pixel (default 64)",
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
        slide = make_synthetic_slide(
            args.out,
            width=args.size,
            height=args.height if args.height is not None else args.size,
            mpp=args.mpp,
            seed=args.seed,
            tile_source_dir=args.tiles,
            tile_size=args.tile_size,
            quality=args.quality,
            mask_downsample=args.mask_downsample,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"path: {slide.path}")
    print(f"size: {slide.width} x {slide.height} px")
    print(f"mpp: {slide.mpp}")
    print(f"mask: {slide.mask_path} (1 px = {slide.mask_downsample} level-0 px)")
    print(f"tissue fraction: {slide.tissue_fraction:.3f}")
    print(f"time: {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
