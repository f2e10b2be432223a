"""``wsi demo``: the main job end to end on a cohort made here, with nothing of the user's.

1. A labelled cohort of slides built from the real H&E textures in ``../shared/data`` (or
   procedural textures where that folder is missing), with ground-truth lesion masks.
2. Patients split: about a quarter held out, never seen in training.
3. The training slides tiled and embedded (default encoder, CPU), ABMIL trained with
   patient-level cross-validation, an operating point for 95% sensitivity, calibration.
4. ``wsi run`` on the held-out slides: tiles, features, predictions, heatmaps (PNG,
   QuPath GeoJSON, the offline viewer), per-slide reports (HTML + PDF), cohort report.
5. The held-out calls against the truth, and where to look.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def _split(labels_csv: Path, out: Path, seed: int) -> tuple[Path, list[str], dict[str, str]]:
    """Hold out ~25% of patients (stratified); write the training labels. Returns the
    training labels file, the held-out slide ids and every slide's label."""
    from wsi.mil.data import read_labels
    from wsi.mil.splits import make_splits

    table = read_labels(labels_csv)
    held = set(make_splits(table, folds=3, test_fraction=0.25, seed=seed).test)
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    train_csv = out / "train_labels.csv"
    with open(train_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["slide_id"] not in held)
    truth = {r["slide_id"]: r["label"] for r in rows}
    return train_csv, sorted(held), truth


def run_demo(out_dir: str | Path, *, slides: int = 32, size: int = 4000, quiet: bool = False,
             seed: int = 0) -> int:  # fmt: skip
    """Run the demo into ``out_dir``; returns the exit code (0 when every step worked)."""
    from pipelines.config import ClusterConfig, RunConfig
    from pipelines.run import run_job
    from pipelines.summary import print_summary
    from pipelines.tasks import embed_stores
    from wsi.config import EmbedConfig
    from wsi.heatmap import HeatmapOptions
    from wsi.mil.train import TrainConfig, train_model
    from wsi.synthetic import make_cohort
    from wsi.tiling import tile_slide

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet else print
    say(f"1/4 making a cohort of {slides} slides ({size} px) in {out / 'cohort'}")
    cohort = make_cohort(
        out / "cohort", slides=slides, size=size, seed=seed, min_lesion_diameter_um=192
    )
    train_csv, held_out, truth = _split(cohort.labels_csv, out, seed)
    by_id = {p.stem: p for p in cohort.slides}
    train_ids = [s for s in by_id if s not in held_out]
    say(f"2/4 tiling and embedding {len(train_ids)} training slides ({len(held_out)} held out)")
    stores = out / "train_stores"
    paths = [tile_slide(by_id[s], stores, progress=False) for s in train_ids]
    failed = [r for r in embed_stores(paths, EmbedConfig(device="cpu"), progress=False)
              if r.status != "ok"]  # fmt: skip
    if failed:
        print(f"embedding failed: {failed[0].error}")
        return 1
    say("3/4 training ABMIL (3 folds by patient, operating point for 95% sensitivity)")
    model_dir = train_model(
        stores, train_csv, out / "abmil", TrainConfig(folds=3, epochs=60, patience=10, lr=5e-4)
    )
    say(f"4/4 wsi run on the {len(held_out)} held-out slides")
    result = run_job(
        RunConfig(
            out=str(out / "run"),
            model=str(model_dir),
            slides=tuple(str(by_id[s]) for s in held_out),
        ),
        ClusterConfig(),
        heatmap=HeatmapOptions(exports=("png", "geojson", "viewer")),
        progress=False if quiet else None,
    )
    print_summary(result)
    calls = {s["slide_id"]: s.get("decision") for s in result.slides if s["status"] == "ok"}
    positive = "tumor"
    tp = sum(1 for s, d in calls.items() if d == positive and truth[s] == positive)
    fn = sum(1 for s, d in calls.items() if d != positive and truth[s] == positive)
    tn = sum(1 for s, d in calls.items() if d != positive and truth[s] != positive)
    fp = sum(1 for s, d in calls.items() if d == positive and truth[s] != positive)
    print(
        f"\nheld-out slides against the truth: {tp} of {tp + fn} tumour slides found, "
        f"{tn} of {tn + fp} normal slides called normal"
    )
    print(f"demo done in {time.perf_counter() - t0:.0f} s. Where to look:")
    print(f"  cohort report (triage table):  {result.cohort_html}")
    print(f"  per-slide reports (HTML, PDF): {out / 'run' / 'reports'}/")
    print(f"  heatmaps, GeoJSON for QuPath:  {out / 'run' / 'heatmaps'}/")
    viewers = sorted((out / "run" / "heatmaps").glob("*_viewer/index.html"))
    if viewers:
        print(f"  offline viewer:                {viewers[0]}  (or `wsi view {viewers[0].parent}`)")
    print(f"  model card and metrics:        {model_dir / 'model.json'}, metrics.json, roc.png")
    return result.exit_code
