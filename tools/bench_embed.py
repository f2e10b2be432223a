"""Benchmark the embedding stage against the bare forward pass of the same encoder.

Makes a synthetic slide, tiles it, then alternates, ``--repeats`` times:

- bare forward: ``encoder.forward`` over the store's tiles, already decoded and
  preprocessed in memory, in the same batches the stage uses;
- stage: ``wsi.embed.embed_store`` on the store (overwrite: a fresh stage each time),
  wall time from the call to its return: reading, decoding, preprocessing, forward,
  writing and the stage record.

The best time of each is compared (the machine is noisy; both get the same number of
tries). The last line reads ``embed stage: N img/s = P% of bare forward (R img/s)``.

With ``--encoders A,B`` it measures several encoders in one pass instead, on the same
store and in the same run, alternating ``--repeats`` times:

- separate: ``embed_store`` once per encoder (each reads and decodes every batch);
- one pass: ``embed_store(encoders=[A, B])`` (each batch read and decoded once).

The best of each is compared; the last lines give the ratio, the wall time the pass
saved, and what reading and decoding every batch costs alone (the loader, timed
separately). Encoders without weights on this machine get random weights.

    python tools/bench_embed.py                         # default encoder on the CPU
    python tools/bench_embed.py --device cuda           # the same on a GPU (bf16 autocast)
    python tools/bench_embed.py --device cuda --encoder uni --random-weights
    python tools/bench_embed.py --encoders efficientnet_lite0,resnet50_trunc --size 10000
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _random_weights(name: str, folder: Path) -> Path:
    """A safetensors file of randomly initialised weights for encoder ``name``."""
    import timm
    from safetensors.torch import save_file

    from wsi.encoders import get_spec
    from wsi.encoders.builders import _timm_kwargs

    spec = get_spec(name)
    if spec.builder not in ("timm", "resnet_trunc"):
        raise SystemExit(f"random weights: timm-built encoders and resnet50_trunc, not {name}")
    net = timm.create_model(
        spec.architecture, pretrained=False, num_classes=0, **_timm_kwargs(spec)
    )
    path = folder / f"{name}-random.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _forget_features(store: Path, encoder: str) -> None:
    """Drop the encoder's features, so the next stage run embeds every tile again."""
    from wsi import store as st

    group = st.open_store(store, mode="r+")
    name = st.features_keys(encoder)[0]
    if name in group:
        del group[name]
    meta = st.read_meta(group)
    meta.get("stages", {}).pop(name, None)
    meta.get("pending", {}).pop(name, None)
    st.write_meta(group, meta)


def _sync(device) -> None:  # noqa: ANN001
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine(device) -> str:  # noqa: ANN001
    import torch

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    return (
        f"machine: {name}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def _loader_seconds(pixels, batch: int, threads: int, pin: bool) -> float:  # noqa: ANN001
    """Seconds the stage's loader takes to read and decode every batch once, alone."""
    from wsi.embed import _prefetch

    n = pixels.shape[0]
    t0 = time.perf_counter()
    for _ in _prefetch(pixels, list(range(-(-n // batch))), batch, n, threads, 4, pin):
        pass
    return time.perf_counter() - t0


def _several(args: argparse.Namespace, store: Path, tmp: Path) -> int:
    """Several encoders: separate runs against one pass, alternating, best of each."""
    from wsi.config import EmbedConfig
    from wsi.embed import embed_store
    from wsi.encoders import find_weights, get_spec, load_encoder
    from wsi.store import TILES_PIXELS, features_keys, open_store, stage_entry

    names = [n.strip() for n in args.encoders.split(",") if n.strip()]
    encoders, random = [], []
    for name in names:
        weights = None
        if args.random_weights or find_weights(get_spec(name)) is None:
            weights = str(_random_weights(name, tmp))
            random.append(name)
        encoders.append(
            load_encoder(name, weights=weights, device=args.device, precision=args.precision)
        )
    config = EmbedConfig(
        device=args.device, batch_size=args.batch_size, loader_threads=args.loader_threads
    )
    dev = encoders[0].device
    batch = config.batch_for(dev.type)
    pixels = open_store(store)[TILES_PIXELS]
    n = pixels.shape[0]
    import torch

    warm = torch.from_numpy(np.asarray(pixels[:batch]))
    for enc in encoders:  # warm-up: kernels chosen, caches filled
        enc(warm)
    times: dict[str, list[float]] = {"separate": [], "pass": []}
    reads = {"separate": 0, "pass": 0}
    for i in range(args.repeats):
        # alternate which goes first, so neither always gets the quieter moment
        for how in ("separate", "pass") if i % 2 == 0 else ("pass", "separate"):
            for name in names:
                _forget_features(store, name)
            t0 = time.perf_counter()
            if how == "separate":
                for enc in encoders:
                    embed_store(store, config, encoder=enc, progress=False)
            else:
                embed_store(store, config, encoders=encoders, progress=False)
            _sync(dev)
            times[how].append(time.perf_counter() - t0)
            group = open_store(store)
            counts = [(stage_entry(group, features_keys(e)[0]) or {})["counts"] for e in names]
            reads[how] = (
                sum(c["batches_read"] for c in counts)
                if how == "separate"
                else (counts[0]["batches_read"])
            )
    separate, one_pass = times["separate"], times["pass"]
    loader = _loader_seconds(pixels, batch, config.loaders_for(dev.type), dev.type == "cuda")
    print(_machine(dev))
    print(
        "encoders " + ", ".join(f"{e.name} ({e.precision})" for e in encoders) + f", batch "
        f"{batch}, {n} tiles of {pixels.shape[1]} px; random weights: {', '.join(random) or 'none'}"
    )
    print("separate runs s: " + ", ".join(f"{t:.2f}" for t in separate))
    print("one pass s:      " + ", ".join(f"{t:.2f}" for t in one_pass))
    print(f"batches read: separate {reads['separate']}, one pass {reads['pass']}")
    best_sep, best_pass = min(separate), min(one_pass)
    print(
        f"loader alone (read + decode every batch once, "
        f"{config.loaders_for(dev.type)} thread(s)): {loader:.2f} s ({n / loader:.0f} tiles/s)"
    )
    print(
        f"one pass: {n / best_pass:.1f} tiles/s = {best_sep / best_pass:.3f}x separate runs "
        f"({n / best_sep:.1f} tiles/s); saved {best_sep - best_pass:.2f} s of "
        f"{best_sep:.2f} s, against {(len(names) - 1) * loader:.2f} s of reading and "
        "decoding the pass does not repeat"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="synthetic slide side, px")
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument(
        "--encoders",
        help="comma-separated: several encoders in one pass against separate runs "
        "(random weights where none are here)",
    )
    parser.add_argument("--weights", help="weight file (default: the registered source)")
    parser.add_argument("--random-weights", action="store_true", help="random init (ViTs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--loader-threads", type=int, help="default: 1 on a CPU, up to 8 on a GPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench_out/embed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from wsi.config import EmbedConfig
    from wsi.embed import embed_store
    from wsi.encoders import load_encoder
    from wsi.synthetic import make_synthetic_slide
    from wsi.tiling import tile_slide

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slide = out / f"bench_{args.size}.tiff"
    if not slide.exists():
        make_synthetic_slide(slide, width=args.size, height=args.size, mpp=0.25, seed=7)
    store = tile_slide(slide, out / "stores", progress=False)

    tmp = tempfile.TemporaryDirectory()
    if args.encoders:
        try:
            return _several(args, store, Path(tmp.name))
        finally:
            tmp.cleanup()
    weights = args.weights
    if args.random_weights:
        weights = str(_random_weights(args.encoder, Path(tmp.name)))
    enc = load_encoder(args.encoder, weights=weights, device=args.device, precision=args.precision)
    config = EmbedConfig(
        encoder=args.encoder,
        weights=weights,
        device=args.device,
        precision=enc.precision,
        batch_size=args.batch_size,
        loader_threads=args.loader_threads,
    )
    batch = config.batch_for(enc.device.type)

    from wsi.store import TILES_PIXELS, open_store

    pixels = open_store(store)[TILES_PIXELS]
    n = pixels.shape[0]
    batches = []
    with torch.inference_mode():
        for start in range(0, n, batch):
            tiles = torch.from_numpy(np.asarray(pixels[start : start + batch]))
            batches.append(enc.preprocess(tiles.to(enc.device)))
    enc.forward(batches[0])  # warm-up: kernels chosen, caches filled
    _sync(enc.device)

    from wsi.store import features_keys, open_store, stage_entry

    bare, stage, waits = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for x in batches:
            enc.forward(x)
        _sync(enc.device)
        bare.append(time.perf_counter() - t0)
        _forget_features(store, enc.name)
        t0 = time.perf_counter()
        embed_store(store, config, encoder=enc, progress=False)
        _sync(enc.device)
        stage.append(time.perf_counter() - t0)
        entry = stage_entry(open_store(store), features_keys(enc.name)[0]) or {}
        waits.append(entry.get("counts", {}).get("loader_wait_s"))

    print(_machine(enc.device))
    print(
        f"encoder {enc.name} ({enc.spec.architecture}), {enc.precision}, batch {batch}, "
        f"input {enc.spec.preprocessing.input_size} px, {n} tiles of {pixels.shape[1]} px"
    )
    print("bare forward s: " + ", ".join(f"{t:.2f}" for t in bare))
    print("stage s:        " + ", ".join(f"{t:.2f}" for t in stage))
    print("model waited on the loader s: " + ", ".join(str(w) for w in waits))
    from wsi.embed import _prefetch

    threads = config.loaders_for(enc.device.type)
    pin = enc.device.type == "cuda"
    t0 = time.perf_counter()
    for _ in _prefetch(pixels, list(range(len(batches))), batch, n, threads, 4, pin):
        pass
    loader_rate = n / (time.perf_counter() - t0)
    print(f"loader alone (read + decode, {threads} thread(s)): {loader_rate:.0f} tiles/s")
    bare_rate, stage_rate = n / min(bare), n / min(stage)
    print(
        f"embed stage: {stage_rate:.0f} img/s = {100 * stage_rate / bare_rate:.0f}% of bare "
        f"forward ({bare_rate:.0f} img/s)"
    )
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
