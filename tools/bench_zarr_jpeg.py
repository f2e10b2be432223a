#!/usr/bin/env python
"""Tile pixels in a standard Zarr v3 layout? ``wsi.jpeg`` against imagecodecs' JPEG codec.

The tile store keeps each chunk of 64 tiles as one ``wsi.jpeg`` blob (one JPEG per tile,
a small header). The standard-looking alternative is a sharded Zarr v3 array with one
tile per inner chunk and imagecodecs' numcodecs ``Jpeg`` as the inner codec, which a
Zarr reader could open with imagecodecs alone. This measures, on the same real H&E
tiles, in the same run and alternating (best of ``--repeats``), write and read rates of
both, checks the pixels are identical, and then checks whether a fresh process with only
zarr + imagecodecs (no ``wsi``) can open the sharded array.

    .venv/bin/python tools/bench_zarr_jpeg.py [--tiles 2048] [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "tiles" / "tiatoolbox_target_image.png"


def _tiles(n: int) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(0)
    if SOURCE.is_file():
        from PIL import Image

        img = np.asarray(Image.open(SOURCE).convert("RGB"))
        what = f"{SOURCE.name} (real H&E)"
    else:
        from wsi.synthetic.textures import procedural_he

        img = procedural_he(rng, 1024)
        what = "procedural H&E (../shared absent)"
    ys, xs = rng.integers(0, img.shape[0] - 256, n), rng.integers(0, img.shape[1] - 256, n)
    return np.stack([img[y : y + 256, x : x + 256] for y, x in zip(ys, xs, strict=True)]), what


def _standard_codec() -> Any:
    """imagecodecs' numcodecs Jpeg as a Zarr v3 array->bytes codec (zarr's private base)."""
    import numcodecs
    from imagecodecs.numcodecs import Jpeg
    from zarr.codecs.numcodecs import _NumcodecsArrayBytesCodec
    from zarr.registry import register_codec

    numcodecs.register_codec(Jpeg)

    class ImagecodecsJpeg(_NumcodecsArrayBytesCodec, codec_name="imagecodecs_jpeg"):
        pass

    register_codec("numcodecs.imagecodecs_jpeg", ImagecodecsJpeg)
    return ImagecodecsJpeg


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


OPEN_PLAIN = """
import sys, zarr
import imagecodecs.numcodecs as icn
icn.register_codecs()
try:
    print(zarr.open_array(sys.argv[1])[0].shape)
except Exception as err:
    print(f"{type(err).__name__}: {err}")
"""


def main(argv: list[str] | None = None) -> int:
    import warnings

    import zarr

    from wsi.codecs.jpeg import JpegTilesCodec, register

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
    register()
    tiles, what = _tiles(args.tiles)
    n = len(tiles)
    tmp = Path(tempfile.mkdtemp(prefix="bench_zarr_jpeg_"))
    arrays = {
        "wsi.jpeg (64 tiles / chunk)": zarr.create_array(
            tmp / "wsi.zarr",
            shape=tiles.shape,
            chunks=(64, 256, 256, 3),
            dtype="uint8",
            serializer=JpegTilesCodec(quality=90, subsampling="444"),
            compressors=None,
        ),
        "imagecodecs Jpeg, sharded (1 tile / chunk, 64 / shard)": zarr.create_array(
            tmp / "std.zarr",
            shape=tiles.shape,
            chunks=(1, 256, 256, 3),
            shards=(64, 256, 256, 3),
            dtype="uint8",
            serializer=_standard_codec()(level=90, subsampling="444"),
            compressors=None,
        ),
    }
    best: dict[str, list[float]] = {k: [float("inf"), float("inf")] for k in arrays}
    for _ in range(args.repeats):  # alternate, so both see the same machine
        for name, arr in arrays.items():
            t = time.perf_counter()
            arr[:] = tiles
            best[name][0] = min(best[name][0], time.perf_counter() - t)
            t = time.perf_counter()
            arr[:]
            best[name][1] = min(best[name][1], time.perf_counter() - t)
    print(f"{n} tiles of 256 px from {what}, JPEG q90 4:4:4, best of {args.repeats}")
    for name, (w, r) in best.items():
        kib = _size(Path(str(arrays[name].store.root)) / arrays[name].path) / n / 1024
        print(f"  {name:55s} write {n / w:6.0f} tiles/s  read {n / r:6.0f} tiles/s  {kib:.1f} KiB")
    a, b = list(arrays.values())
    print(f"  identical pixels: {np.array_equal(a[:], b[:])}")
    (ours_w, ours_r), (std_w, std_r) = best.values()
    print(f"  standard / wsi.jpeg: write {ours_w / std_w:.2f}x, read {ours_r / std_r:.2f}x")
    res = subprocess.run(
        [sys.executable, "-c", OPEN_PLAIN, str(tmp / "std.zarr")],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    print(f"  zarr + imagecodecs alone opening the sharded array: {res.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
