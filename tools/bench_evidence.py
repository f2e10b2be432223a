"""Benchmark tile evidence against lesion masks: attention, CLAM instance scores, Additive MIL.

On a synthetic cohort with known lesions (``wsi.synthetic.make_cohort``), tiled and embedded
as in ``tools/bench_mil.py``, trains each head (default ``abmil``, ``clam_sb``, ``additive``)
on the same stores and the same splits (the first head's ``splits.csv`` is reused), then
scores the tiles of the held-out positive slides against the ground-truth lesion masks (a
tile is lesion when at least half of it is):

- attention, every head: the fold heads' softmax attention averaged over folds, ranked
  within each slide, then pooled (as ``tools/bench_mil.py``);
- instance score, ``clam_sb`` only: the positive class's instance classifier, softmax
  probability of "positive" per tile, averaged over folds; raw (pooled across slides) and
  ranked within each slide;
- contributions, every head that gives them (``abmil``, ``clam_sb``, ``clam_mb``,
  ``additive``, ``mean``): each tile's share of the positive class's slide logit
  (``MILOutput.contributions[:, 1]``), averaged over folds; raw (pooled across slides,
  not ranked) and ranked within each slide; and its share of the log-odds (``c_1 - c_0``),
  raw;
- stored evidence, the same heads: ``predictions/<model>/evidence`` as ``wsi.predict_store``
  writes it (the share of the calibrated log-odds, fold mean), raw, over the positive
  slides and over every test slide (negative slides' tiles counted as not lesion), with
  the share of the negative slides' tiles above half the model's evidence scale (the
  heatmap's "hot" on the fixed scale).

and prints the slide-level test AUROC of each head. Per-tile scores come from running
every fold head of ``wsi.load_model`` on the store's features (``wsi.embed.features_of``).

    python tools/bench_evidence.py
    python tools/bench_evidence.py --slides 40 --textures default --lesion-fraction 0.02 0.05

Defaults: the harder cohort of ``tools/bench_mil.py`` (60 slides of 6000 px, ``subtle``
textures, lesions of 1-3% of the tissue, at least 192 um across).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

POSITIVE = 1  # the positive class's output of a binary head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/evidence")
    parser.add_argument("--slides", type=int, default=60)
    parser.add_argument("--size", type=int, default=6000, help="slide side, px at 0.25 mpp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", default="abmil,clam_sb,additive", help="comma-separated")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--textures", default="subtle", help="default, site_b or subtle")
    parser.add_argument(
        "--min-lesion-um", type=float, default=128.0, help="smallest lesion diameter, um"
    )
    parser.add_argument(
        "--lesion-fraction", type=float, nargs=2, default=(0.004, 0.012), metavar=("LOW", "HIGH")
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("distributed", "pyvips"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from pipelines.cluster import dask_client
    from pipelines.tasks import embed_stores, tile_slides
    from wsi.config import EmbedConfig, TilingConfig
    from wsi.mil.data import read_labels
    from wsi.mil.predict import load_model
    from wsi.mil.splits import TEST, read_splits
    from wsi.mil.train import TrainConfig, train_model
    from wsi.store import TILES_COORDS, open_store
    from wsi.synthetic import make_cohort

    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    out = Path(args.out)
    t0 = time.perf_counter()
    cohort = make_cohort(out / "cohort", slides=args.slides, size=args.size, seed=args.seed,
                         textures=args.textures, min_lesion_diameter_um=args.min_lesion_um,
                         lesion_fraction=tuple(args.lesion_fraction))  # fmt: skip
    t_cohort = time.perf_counter() - t0

    stores = out / "stores"
    t0 = time.perf_counter()
    with dask_client(None, args.workers) as client:
        tiled = tile_slides(cohort.slides, stores, TilingConfig(), client=client, progress=False)
    failed = [r for r in tiled if r.status != "ok"]
    if failed:
        print(f"tiling failed for {len(failed)} slide(s): {failed[0].error}")
        return 1
    t_tiling = time.perf_counter() - t0
    t0 = time.perf_counter()
    embedded = embed_stores(
        [r.output for r in tiled if r.output], EmbedConfig(device="cpu"), progress=False
    )
    t_embed = time.perf_counter() - t0
    n_tiles = sum(open_store(r.output)[TILES_COORDS].shape[0] for r in embedded if r.output)

    table = read_labels(cohort.labels_csv)
    records = json.loads(cohort.manifest.read_text())["slides"]
    has_lesion = {r["slide_id"]: r["lesion_mask_px"] > 0 for r in records}
    splits_csv: Path | None = None
    lines: list[str] = []
    t_train: dict[str, float] = {}
    test_ids: list[str] = []
    truth: dict[str, np.ndarray] = {}
    for head in heads:
        config = TrainConfig(model=head, folds=args.folds, test_fraction=args.test_fraction,
                             seed=args.seed, epochs=args.epochs)  # fmt: skip
        t0 = time.perf_counter()
        model_dir = train_model(stores, cohort.labels_csv, out / f"model_{head}", config,
                                splits=splits_csv)  # fmt: skip
        t_train[head] = time.perf_counter() - t0
        splits_csv = model_dir / "splits.csv"
        if not test_ids:
            parts = read_splits(splits_csv, table).part
            test_ids = sorted(s for s, p in parts.items() if p == TEST)
            truth = _lesion_truth(cohort, stores, [s for s in test_ids if has_lesion[s]])
        model = load_model(model_dir)
        scores = _tile_scores(model, stores, list(truth))
        lines += _evidence_lines(head, scores, truth)
        lines += _stored_lines(head, model, stores, test_ids, truth)
        test = json.loads((model_dir / "metrics.json").read_text())["test"]
        lo, hi = test["auroc_ci95"]
        lines.append(
            f"{head} slide test AUROC {test['auroc']:.3f} (95% CI {lo:.2f}-{hi:.2f}, "
            f"{len(test_ids)} slides)"
        )

    n_pos = sum(has_lesion[s] for s in test_ids)
    lesion_tiles = sum(int(t.sum()) for t in truth.values())
    print(
        f"cohort: {args.slides} slides of {args.size} px, textures {args.textures}, lesion "
        f"fraction {args.lesion_fraction[0]:g}-{args.lesion_fraction[1]:g}, {n_tiles} tiles; "
        f"test part {len(test_ids)} slides ({n_pos} positive, {len(truth)} with lesion tiles: "
        f"{lesion_tiles} lesion tiles of {sum(len(t) for t in truth.values())})"
    )
    trained = ", ".join(f"{h} {s:.0f} s" for h, s in t_train.items())
    print(
        f"wall time: cohort {t_cohort:.0f} s, tiling {t_tiling:.0f} s, embedding "
        f"{t_embed:.0f} s, training {trained} ({args.folds} folds)"
    )
    for line in lines:
        print(line)
    return 0


def _lesion_truth(cohort: Any, stores: Path, ids: list[str]) -> dict[str, np.ndarray]:
    """Per slide of ``ids`` with at least one lesion tile: 1 where half a tile or more is
    lesion (tiles in the store's ``tiles/coords`` order)."""
    from wsi.store import TILES_COORDS, open_store, store_path
    from wsi.synthetic import lesion_fraction_of_tiles

    truth = {}
    for sid in ids:
        group = open_store(store_path(stores, sid))
        coords = np.asarray(group[TILES_COORDS][:])
        footprint = float(group[TILES_COORDS].attrs["footprint_l0"])
        mask = cohort.masks_dir / f"{sid}_lesion.png"
        is_lesion = lesion_fraction_of_tiles(mask, coords, footprint, cohort.mask_downsample)
        if (is_lesion >= 0.5).any():
            truth[sid] = (is_lesion >= 0.5).astype(int)
    return truth


def _tile_scores(model: Any, stores: Path, ids: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Per slide, per measure, one score per tile, averaged over the fold heads."""
    import torch

    from wsi.embed import features_of
    from wsi.store import store_path

    encoder = model.card["encoder"]["name"]
    result: dict[str, dict[str, np.ndarray]] = {}
    for sid in ids:
        feats = features_of(store_path(stores, sid), encoder)
        bag = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
        folds: dict[str, list[np.ndarray]] = {}
        with torch.inference_mode():
            for head in model.heads:
                out = head(bag)
                att = out.attention if out.attention.ndim == 1 else out.attention[:, POSITIVE]
                folds.setdefault("attention", []).append(torch.softmax(att, 0).numpy())
                if hasattr(head, "clustering"):  # CLAM: the positive class's instance classifier
                    inst = head.clustering.classifiers[POSITIVE](head.fc(bag))
                    folds.setdefault("instance", []).append(torch.softmax(inst, 1)[:, 1].numpy())
                if out.contributions is not None:
                    c = out.contributions
                    folds.setdefault("contribution", []).append(c[:, POSITIVE].numpy())
                    folds.setdefault("log_odds", []).append((c[:, 1] - c[:, 0]).numpy())
        result[sid] = {k: np.mean(v, axis=0) for k, v in folds.items()}
    return result


def _auroc(truth: dict[str, np.ndarray], scores: dict[str, np.ndarray], ranked: bool) -> str:
    """Pooled tile AUROC (scores ranked within each slide first, or raw), with the count
    and the mean of the per-slide AUROCs (slides with both kinds of tile)."""
    from wsi.mil import metrics as m

    ids = list(truth)
    pooled = [
        np.argsort(np.argsort(scores[s])) / max(len(scores[s]) - 1, 1) if ranked else scores[s]
        for s in ids
    ]
    auc = m.auroc(np.concatenate([truth[s] for s in ids]), np.concatenate(pooled))
    per_slide = [m.auroc(truth[s], scores[s]) for s in ids if 0 < truth[s].sum() < len(truth[s])]
    mean = np.mean(per_slide) if per_slide else float("nan")
    n = sum(len(truth[s]) for s in ids)
    return f"{auc:.3f} ({n} tiles of {len(ids)} slides; mean per slide {mean:.3f})"


def _evidence_lines(
    head: str, scores: dict[str, dict[str, np.ndarray]], truth: dict[str, np.ndarray]
) -> list[str]:
    if not truth:
        return [f"{head}: no held-out slide with lesion tiles"]

    def of(key: str) -> dict[str, np.ndarray]:
        return {s: scores[s][key] for s in truth}

    lines = [f"{head} attention tile AUROC {_auroc(truth, of('attention'), ranked=True)}"]
    first = scores[next(iter(truth))]
    if "instance" in first:
        lines.append(
            f"{head} instance score tile AUROC, raw {_auroc(truth, of('instance'), False)}"
        )
        lines.append(
            f"{head} instance score tile AUROC, ranked in slide "
            f"{_auroc(truth, of('instance'), True)}"
        )
    if "contribution" in first:
        lines.append(
            f"{head} contribution tile AUROC, raw {_auroc(truth, of('contribution'), False)}"
        )
        lines.append(
            f"{head} contribution tile AUROC, ranked in slide "
            f"{_auroc(truth, of('contribution'), True)}"
        )
        lines.append(
            f"{head} log-odds contribution tile AUROC, raw {_auroc(truth, of('log_odds'), False)}"
        )
    return lines


def _stored_lines(
    head: str, model: Any, stores: Path, test_ids: list[str], truth: dict[str, np.ndarray]
) -> list[str]:
    """The evidence ``predict_store`` stores, on the test slides: tile AUROC over the
    positive slides and over all (negatives' tiles as not lesion), and how much of the
    negative slides is hot on the model's fixed scale."""
    from wsi.mil.predict import predict_store
    from wsi.store import open_store, prediction_keys, store_path

    scale = (model.card.get("evidence") or {}).get("scale")
    if scale is None:
        return [f"{head}: no stored evidence (the head gives no contributions)"]
    key = prediction_keys(model.name).evidence
    stored: dict[str, np.ndarray] = {}
    for sid in test_ids:
        path = store_path(stores, sid)
        predict_store(path, model, overwrite=True)
        stored[sid] = np.asarray(open_store(path)[key][:], dtype=np.float64)
    everyone = {s: truth.get(s, np.zeros(len(stored[s]), dtype=int)) for s in test_ids}
    negatives = [s for s in test_ids if s not in truth]
    hot = (
        float(np.mean(np.concatenate([stored[s] for s in negatives]) > 0.5 * scale))
        if negatives
        else float("nan")
    )
    lines = [f"{head} evidence scale (model card) {scale:.4g} calibrated log-odds per tile"]
    if truth:
        lines.append(
            f"{head} stored evidence tile AUROC, raw, positive slides "
            f"{_auroc(truth, {s: stored[s] for s in truth}, False)}"
        )
    lines.append(
        f"{head} stored evidence tile AUROC, raw, all test slides "
        f"{_auroc(everyone, stored, False)}; negative slides' tiles above half the scale "
        f"{hot:.1%}"
    )
    return lines


if __name__ == "__main__":
    sys.exit(main())
