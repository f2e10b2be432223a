"""Benchmark of ``wsi run``: slides per minute through every stage on a LocalCluster, against
the same stages called one after another in one process (the baseline, measured in the same
run on the same slides).

    python tools/bench_run.py [--slides 8] [--size 4000] [--workers 2] [--out bench_out/run]

Both paths start from raw slide files and end with reports (HTML + PDF), so the ratio is
what the Dask orchestration (spawned workers, one encoder per worker, slides streaming
between stages) buys or costs over a plain loop on this machine. The model is trained once
beforehand on other slides of the same cohort and is not timed.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


def _sequential(slides: list[Path], model_dir: Path, out: Path) -> float:
    from wsi.config import EmbedConfig
    from wsi.embed import embed_store
    from wsi.encoders import load_encoder
    from wsi.heatmap import HeatmapOptions, make_heatmap
    from wsi.mil.predict import load_model, predict_store
    from wsi.reports import report_slide
    from wsi.tiling import tile_slide

    t0 = time.perf_counter()
    encoder = load_encoder(device="cpu")
    model = load_model(model_dir)
    options = HeatmapOptions(exports=("png", "geojson"))
    for slide in slides:
        store = tile_slide(slide, out / "stores", progress=False)
        embed_store(store, EmbedConfig(device="cpu"), encoder=encoder, progress=False)
        predict_store(store, model)
        make_heatmap(store, model.name, out / "heatmaps", options)
        report_slide(store, model, out / "reports")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", type=int, default=8, help="slides timed (plus 16 for training)")
    ap.add_argument("--size", type=int, default=4000, help="slide side, px at 0.25 mpp")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="bench_out/run")
    args = ap.parse_args()

    from pipelines.config import ClusterConfig, RunConfig
    from pipelines.run import run_job
    from pipelines.tasks import embed_stores
    from wsi.config import EmbedConfig
    from wsi.heatmap import HeatmapOptions
    from wsi.mil.train import TrainConfig, train_model
    from wsi.synthetic import make_cohort
    from wsi.tiling import tile_slide

    out = Path(args.out)
    cohort = make_cohort(out / "cohort", slides=16 + args.slides, size=args.size, seed=1,
                         min_lesion_diameter_um=192)  # fmt: skip
    train, timed = cohort.slides[:16], cohort.slides[16:]
    if not (out / "model" / "model.json").exists():
        stores = [tile_slide(s, out / "train", progress=False) for s in train]
        embed_stores(stores, EmbedConfig(device="cpu"), progress=False)
        labels = out / "train_labels.csv"
        lines = cohort.labels_csv.read_text().splitlines()
        keep = {s.stem for s in train}
        labels.write_text(
            "\n".join([lines[0], *(ln for ln in lines[1:] if ln.split(",")[0] in keep)]) + "\n"
        )
        train_model(out / "train", labels, out / "model", TrainConfig(folds=3, epochs=30))
    for sub in ("seq", "run"):
        shutil.rmtree(out / sub, ignore_errors=True)

    seq = _sequential(timed, out / "model", out / "seq")
    t0 = time.perf_counter()
    result = run_job(
        RunConfig(out=str(out / "run"), model=str(out / "model"),
                  slides=tuple(map(str, timed))),
        ClusterConfig(n_workers=args.workers),
        heatmap=HeatmapOptions(exports=("png", "geojson")),
        progress=False,
    )  # fmt: skip
    run = time.perf_counter() - t0
    assert result.exit_code == 0, result.failed
    from wsi import store as st

    tiles = sum(
        st.open_store(st.store_path(out / "seq" / "stores", s.stem))[st.TILES_COORDS].shape[0]
        for s in timed
    )
    n = len(timed)
    print(f"{n} slides of {args.size} px ({tiles} tiles), every stage to reports (HTML + PDF)")
    print(f"  baseline, one process, stages in sequence: {seq:6.1f} s  "
          f"{60 * n / seq:5.1f} slides/min")  # fmt: skip
    print(f"  wsi run, LocalCluster x{args.workers} (incl. start-up): {run:6.1f} s  "
          f"{60 * n / run:5.1f} slides/min")  # fmt: skip
    print(f"  ratio wsi run / baseline throughput: {seq / run:.2f}x")


if __name__ == "__main__":
    main()
