"""Benchmark attention-MIL on a synthetic cohort with known truth.

With no arguments: builds the cohort (``wsi.synthetic.make_cohort``: 60 slides of 6000 px,
``subtle`` textures (lesions close to the background in colour and brightness), positives
with lesions of 1-3% of the tissue (at least 192 um across), ground-truth masks), tiles
it on a local Dask cluster, embeds it with the default encoder, trains the head with
patient-level folds and a held-out test part, predicts the test slides, and scores

- slide level: test AUROC (bootstrap 95% CI), sensitivity and specificity at the
  operating point chosen on validation data, ECE before and after calibration;
- tile level: AUROC of the attention against the ground-truth lesion masks (tiles of the
  positive test slides; a tile is lesion when at least half of it is; attention ranked
  within each slide, then pooled);
- wall time of each stage and of prediction per slide.

With ``--task multiclass|ordinal|survival|regression`` the cohort is labelled for that
task (``wsi.synthetic.make_cohort(task=...)``) and the last line is the task's test figure
with its 95% CI: macro AUROC, balanced accuracy (and kappa for grades); the C-index against
the oracle C-index (that of the cohort's true hazards on the same test slides: the best
any model can do there); Pearson r and MAE.

    python tools/bench_mil.py
    python tools/bench_mil.py --slides 120 --size 6000 --model clam_sb
    python tools/bench_mil.py --task survival --slides 90
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/mil")
    parser.add_argument("--slides", type=int, default=60)
    parser.add_argument("--size", type=int, default=6000, help="slide side, px at 0.25 mpp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="abmil")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--task",
        default="binary",
        choices=["binary", "multiclass", "ordinal", "survival", "regression"],
    )
    parser.add_argument("--patients", type=int, help="default: one per two slides")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--textures", default="subtle", help="texture set of the (site A) cohort")
    parser.add_argument(
        "--lesion-fraction", type=float, nargs=2, default=(0.004, 0.012), metavar=("LOW", "HIGH")
    )
    parser.add_argument(
        "--min-lesion-um", type=float, default=128.0, help="smallest lesion diameter, um"
    )
    parser.add_argument(
        "--external",
        action="store_true",
        help="train on site A, evaluate on a shifted site B (other textures, HED stain "
        "shift) and on site A's held-out slides: calibration, conformal sets, shift flags",
    )
    parser.add_argument("--external-slides", type=int, default=24)
    parser.add_argument(
        "--stain-shift", type=float, nargs=3, default=(1.5, 0.5, 1.0), metavar=("H", "E", "D")
    )
    parser.add_argument(
        "--variants",
        default="plain",
        help="with --external, comma-separated: plain (as embedded), normalised (Macenko "
        "target fitted on site A's stores, both sites normalised), augmented (site A embedded "
        "with --stain-views views, trained with stain_augment); a table of each at the end",
    )
    parser.add_argument("--stain-views", type=int, default=2, help="views of the augmented run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("distributed", "pyvips"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from pipelines.cluster import dask_client
    from pipelines.tasks import embed_stores, tile_slides
    from wsi.config import EmbedConfig, TilingConfig
    from wsi.mil import metrics as m
    from wsi.mil.data import read_labels
    from wsi.mil.predict import load_model, predict_store
    from wsi.mil.splits import TEST, read_splits
    from wsi.mil.train import TrainConfig, train_model
    from wsi.store import TILES_COORDS, open_store, prediction_keys, store_path
    from wsi.synthetic import lesion_fraction_of_tiles, make_cohort

    if args.external:
        return _external(args)
    out = Path(args.out)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    cohort = make_cohort(out / "cohort", slides=args.slides, size=args.size, seed=args.seed,
                         patients=args.patients, task=args.task, textures=args.textures,
                         lesion_fraction=tuple(args.lesion_fraction),
                         min_lesion_diameter_um=args.min_lesion_um)  # fmt: skip
    times["cohort"] = time.perf_counter() - t0

    stores = out / "stores"
    t0 = time.perf_counter()
    with dask_client(None, args.workers) as client:
        tiled = tile_slides(cohort.slides, stores, TilingConfig(), client=client, progress=False)
    failed = [r for r in tiled if r.status != "ok"]
    if failed:
        print(f"tiling failed for {len(failed)} slide(s): {failed[0].error}")
        return 1
    times["tiling"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    embedded = embed_stores(
        [r.output for r in tiled if r.output], EmbedConfig(device="cpu"), progress=False
    )
    times["embedding"] = time.perf_counter() - t0
    n_tiles = sum(open_store(r.output)[TILES_COORDS].shape[0] for r in embedded if r.output)

    t0 = time.perf_counter()
    config = TrainConfig(
        model=args.model,
        folds=args.folds,
        test_fraction=args.test_fraction,
        seed=args.seed,
        epochs=args.epochs,
        ordinal=args.task == "ordinal",
        time_unit="months" if args.task == "survival" else None,
    )
    name = f"model_{args.model}" + ("" if args.task == "binary" else f"_{args.task}")
    model_dir = train_model(stores, cohort.labels_csv, out / name, config)
    times["training"] = time.perf_counter() - t0

    table = read_labels(cohort.labels_csv, kind=args.task, ordinal=config.ordinal,
                        time_unit=config.time_unit)  # fmt: skip
    splits = read_splits(model_dir / "splits.csv", table)
    test_ids = [s for s, p in splits.part.items() if p == TEST]
    records = json.loads(cohort.manifest.read_text())["slides"]
    truth = {r["slide_id"]: int(r["lesion_mask_px"] > 0) for r in records}  # holds a lesion
    model = load_model(model_dir)
    t0 = time.perf_counter()
    preds = {s: predict_store(store_path(stores, s), model, overwrite=True) for s in test_ids}
    times["prediction_per_slide"] = (time.perf_counter() - t0) / max(len(test_ids), 1)

    tile_auc, tile_ev = _tile_aurocs(model, cohort, stores, [s for s in test_ids if truth[s]])
    ranks, lesion, per_slide = [], [], []
    for sid in test_ids:
        if not truth[sid]:
            continue
        group = open_store(store_path(stores, sid))
        coords = np.asarray(group[TILES_COORDS][:])
        footprint = float(group[TILES_COORDS].attrs["footprint_l0"])
        frac = lesion_fraction_of_tiles(
            cohort.masks_dir / f"{sid}_lesion.png", coords, footprint, cohort.mask_downsample
        )
        att = np.asarray(group[prediction_keys(model.name).attention_mean][:])
        is_lesion = (frac >= 0.5).astype(int)
        if 0 < is_lesion.sum() < len(is_lesion):
            per_slide.append(m.auroc(is_lesion, att))
        ranks.append(np.argsort(np.argsort(att)) / max(len(att) - 1, 1))
        lesion.append(is_lesion)

    metrics = json.loads((model_dir / "metrics.json").read_text())
    test = metrics["test"]
    if args.task != "binary":
        _task_lines(args, model, table, test_ids, preds, metrics, cohort, times, n_tiles)
        print(
            f"attention tile AUROC {tile_auc:.3f} ({sum(len(x) for x in lesion)} tiles of "
            f"{len(lesion)} lesion test slides; mean per slide "
            f"{np.mean(per_slide) if per_slide else float('nan'):.3f})"
        )
        print(_final_line(args, model, test, table, test_ids, cohort))
        return 0
    op = metrics["operating_point"]
    at = test["at_threshold"]
    lo, hi = test["auroc_ci95"]
    called = sum(p["positive"] for p in preds.values())
    print(
        f"cohort: {args.slides} slides of {args.size} px, {len(table.rows)} labelled, "
        f"{n_tiles} tiles; test part {len(test_ids)} slides ({sum(truth[s] for s in test_ids)} "
        f"positive), {called} called positive by `predict`"
    )
    print(
        f"wall time: cohort {times['cohort']:.0f} s, tiling {times['tiling']:.0f} s, "
        f"embedding {times['embedding']:.0f} s ({n_tiles / times['embedding']:.0f} tiles/s), "
        f"training {times['training']:.0f} s ({args.folds} folds), prediction "
        f"{1000 * times['prediction_per_slide']:.0f} ms per slide"
    )
    print(
        f"ECE {test['ece_uncalibrated']:.3f} before calibration, {test['ece_calibrated']:.3f} after"
    )
    print(
        f"sensitivity {at['sensitivity']:.2f}, specificity {at['specificity']:.2f} at "
        f"probability {op['threshold']:.3f} (log-odds {op['threshold_log_odds']:.2f}; "
        f"target sensitivity {op['target_sensitivity']}, chosen on validation)"
    )
    print(
        f"attention tile AUROC {tile_auc:.3f} ({sum(len(x) for x in lesion)} tiles of "
        f"{len(lesion)} positive test slides; mean per slide "
        f"{np.mean(per_slide) if per_slide else float('nan'):.3f})"
    )
    print(f"evidence tile AUROC {tile_ev:.3f} (stored evidence, one scale for every slide)")
    print(f"{args.model.upper()} test AUROC {test['auroc']:.2f} (95% CI {lo:.2f}-{hi:.2f})")
    return 0


def _task_lines(args, model, table, test_ids, preds, metrics, cohort, times, n_tiles) -> None:
    from wsi.mil.outcomes import summary_line

    print(
        f"cohort: {args.slides} slides of {args.size} px ({args.task}), {len(table.rows)} "
        f"labelled, {n_tiles} tiles; test part {len(test_ids)} slides"
    )
    print(
        f"wall time: cohort {times['cohort']:.0f} s, tiling {times['tiling']:.0f} s, "
        f"embedding {times['embedding']:.0f} s, training {times['training']:.0f} s "
        f"({args.folds} folds), prediction {1000 * times['prediction_per_slide']:.0f} ms per slide"
    )
    print(f"validation (out of fold): {summary_line(model.task, metrics['validation_pooled'])}")
    print(f"test: {summary_line(model.task, metrics['test'])}")
    if model.task.has_classes:
        decisions = [p["decision"] for p in preds.values()]
        print(
            f"test decisions: {', '.join(f'{c} {decisions.count(c)}' for c in model.task.classes)}"
        )
        print(f"test confusion (rows truth, columns call): {metrics['test']['confusion']}")


def _oracle_c(table, test_ids, cohort) -> float:
    """Harrell's C-index of the cohort's true hazards on the test slides."""
    import csv

    from sksurv.metrics import concordance_index_censored

    with open(cohort.out_dir / "truth.csv", newline="") as f:
        hazard = {r["patient_id"]: float(r["hazard"]) for r in csv.DictReader(f)}
    rows = {r.slide_id: r for r in table.rows}
    return float(
        concordance_index_censored(
            np.array([bool(rows[s].event) for s in test_ids]),
            np.array([rows[s].time for s in test_ids]),
            np.array([hazard[rows[s].patient_id] for s in test_ids]),
        )[0]
    )


def _final_line(args, model, test, table, test_ids, cohort) -> str:
    def ci(key: str) -> str:
        lo, hi = test[f"{key}_ci95"]
        return f"{test[key]:.2f} (95% CI {lo:.2f}-{hi:.2f})"

    head = args.model.upper()
    if model.task.has_classes:
        kappa = f", kappa {test['kappa_quadratic']:.2f}" if "kappa_quadratic" in test else ""
        return (
            f"{head} test macro AUROC {ci('macro_auroc')}, balanced accuracy "
            f"{test['balanced_accuracy']:.2f}{kappa}"
        )
    if model.task.kind == "survival":
        oracle = _oracle_c(table, test_ids, cohort)
        share = test["c_index_harrell"] / oracle
        return (
            f"{head} test C-index {ci('c_index_harrell')} = {share:.0%} of the oracle "
            f"C-index {oracle:.2f}"
        )
    return f"{head} test Pearson r {ci('pearson_r')}, MAE {test['mae']:.3f}"


def _tile_auroc(model, cohort, stores, ids) -> float:
    """Attention tile AUROC against the lesion masks over the lesion slides ``ids``
    (attention ranked within each slide, then pooled)."""
    return _tile_aurocs(model, cohort, stores, ids)[0]


def _tile_aurocs(model, cohort, stores, ids) -> tuple[float, float]:
    """Tile AUROCs against the lesion masks over the lesion slides ``ids``: the attention
    (ranked within each slide, then pooled) and the stored evidence (as stored, pooled:
    the scale every slide shares; nan where the head gives none)."""
    from wsi.mil import metrics as m
    from wsi.store import TILES_COORDS, open_store, prediction_keys, store_path
    from wsi.synthetic import lesion_fraction_of_tiles

    keys = prediction_keys(model.name)
    ranks, evidence, lesion = [], [], []
    for sid in ids:
        group = open_store(store_path(stores, sid))
        coords = np.asarray(group[TILES_COORDS][:])
        footprint = float(group[TILES_COORDS].attrs["footprint_l0"])
        mask = cohort.masks_dir / f"{sid}_lesion.png"
        frac = lesion_fraction_of_tiles(mask, coords, footprint, cohort.mask_downsample)
        if not (frac >= 0.5).any():
            continue
        att = np.asarray(group[keys.attention_mean][:])
        ranks.append(np.argsort(np.argsort(att)) / max(len(att) - 1, 1))
        if keys.evidence in group:
            evidence.append(np.asarray(group[keys.evidence][:]))
        lesion.append((frac >= 0.5).astype(int))
    if not lesion:
        return float("nan"), float("nan")
    truth = np.concatenate(lesion)
    ev = m.auroc(truth, np.concatenate(evidence)) if len(evidence) == len(lesion) else float("nan")
    return m.auroc(truth, np.concatenate(ranks)), ev


def _f(value, digits: int = 2) -> str:
    """A figure, or "n/a" where the metrics hold None (one class only, too few slides)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _site_line(name: str, part: dict, trust: dict) -> str:
    at = part["at_threshold"]
    lo, hi = part.get("ece_calibrated_ci95") or (None, None)
    return (
        f"{name}: AUROC {_f(part['auroc'])}, sensitivity {_f(at['sensitivity'])} at the "
        f"operating point (specificity {_f(at['specificity'])}), unflagged false negatives "
        f"{trust['unflagged_false_negatives']} (of {trust['false_negatives']} false "
        f"negatives), ECE {_f(part['ece_calibrated'])} (95% CI {_f(lo)}-{_f(hi)}, "
        f"{part['n']} slides)"
    )


VARIANTS = ("plain", "normalised", "augmented")


def _external(args) -> int:
    """Train on site A; evaluate (``wsi.evaluate_model``) on site A's held-out slides and on
    site B: other textures and a HED stain shift. With several ``--variants``, the same
    tiles are embedded and a model trained once per variant (stain normalisation, stain
    augmentation), then compared in a table; the plain variant's lines come last."""
    import shutil

    from pipelines.cluster import dask_client
    from pipelines.tasks import tile_slides
    from wsi.config import TilingConfig
    from wsi.synthetic import make_cohort

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        print(f"--variants {args.variants!r}: choose from {', '.join(VARIANTS)}")
        return 2
    out = Path(args.out)
    t0 = time.perf_counter()
    site_a = make_cohort(out / "site_a", slides=args.slides, size=args.size, seed=args.seed,
                         textures=args.textures, lesion_fraction=tuple(args.lesion_fraction),
                         min_lesion_diameter_um=args.min_lesion_um)  # fmt: skip
    site_b = make_cohort(out / "site_b", slides=args.external_slides, size=args.size,
                         seed=args.seed + 1000, textures="site_b",
                         stain_shift=tuple(args.stain_shift),
                         lesion_fraction=tuple(args.lesion_fraction),
                         min_lesion_diameter_um=args.min_lesion_um)  # fmt: skip
    t_cohort = time.perf_counter() - t0
    t0 = time.perf_counter()
    tiles = {"a": out / "tiles_a", "b": out / "tiles_b"}
    with dask_client(None, args.workers) as client:
        for key, cohort in (("a", site_a), ("b", site_b)):
            tiled = tile_slides(cohort.slides, tiles[key], TilingConfig(), client=client,
                                progress=False)  # fmt: skip
            bad = [r for r in tiled if r.status != "ok"]
            if bad:
                print(f"tiling failed for {len(bad)} slide(s): {bad[0].error}")
                return 1
    t_tiling = time.perf_counter() - t0
    print(
        f"site A: {args.slides} slides of {args.size} px ({args.textures} textures, lesions "
        f"{args.lesion_fraction[0]:g}-{args.lesion_fraction[1]:g} of the tissue); site B: "
        f"{args.external_slides} slides, textures site_b, HED x{args.stain_shift[0]:g}/"
        f"x{args.stain_shift[1]:g}/x{args.stain_shift[2]:g}"
    )
    print(f"wall time: cohorts {t_cohort:.0f} s, tiling {t_tiling:.0f} s")
    results = {}
    for variant in variants:
        stores = {k: out / variant / f"stores_{k}" for k in tiles}
        for k, src in tiles.items():
            if not stores[k].exists():
                shutil.copytree(src, stores[k])
        print(f"--- variant {variant}")
        results[variant] = _external_variant(args, variant, site_a, site_b, stores,
                                             out / variant)  # fmt: skip
    if len(results) > 1:
        _variant_table(results)
    for line in results[variants[0]]["last_lines"]:
        print(line)
    return 0


def _external_variant(args, variant, site_a, site_b, stores, out) -> dict:
    """Embed both sites' stores for ``variant``, train on site A, evaluate both sites;
    print the variant's lines and return its figures."""
    from pipelines.tasks import embed_stores
    from wsi.config import EmbedConfig
    from wsi.embed import fit_stain_target
    from wsi.mil.data import read_labels
    from wsi.mil.external import evaluate_model
    from wsi.mil.predict import load_model
    from wsi.mil.splits import TEST, read_splits
    from wsi.mil.train import TrainConfig, train_model
    from wsi.store import store_path

    paths = {k: sorted(v.glob("*.zarr")) for k, v in stores.items()}
    base = EmbedConfig(device="cpu")
    configs = {"a": base, "b": base}
    t0 = time.perf_counter()
    if variant == "normalised":
        # the target comes from site A's stores (its held-out slides included: one stain
        # target for the site, as a user would fit it on their own slides)
        target = fit_stain_target(paths["a"], "macenko", out / "stain_target.json")
        configs = {k: EmbedConfig(device="cpu", stain_target=str(target)) for k in paths}
    elif variant == "augmented":
        configs["a"] = EmbedConfig(device="cpu", stain_views=args.stain_views)
    t_embed = {}
    for k in ("a", "b"):
        t1 = time.perf_counter()
        done = embed_stores(paths[k], configs[k], progress=False)
        bad = [r for r in done if r.status != "ok"]
        if bad:
            raise SystemExit(f"embedding failed for {len(bad)} store(s): {bad[0].error}")
        t_embed[k] = time.perf_counter() - t1
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    config = TrainConfig(model=args.model, folds=args.folds, test_fraction=args.test_fraction,
                         seed=args.seed, epochs=args.epochs,
                         stain_augment=variant == "augmented")  # fmt: skip
    model_dir = train_model(stores["a"], site_a.labels_csv, out / f"model_{args.model}", config)
    t_train = time.perf_counter() - t0
    model = load_model(model_dir)
    table = read_labels(site_a.labels_csv)
    test_ids = [s for s, p in read_splits(model_dir / "splits.csv", table).part.items()
                if p == TEST]  # fmt: skip
    in_dir = evaluate_model([store_path(stores["a"], s) for s in test_ids], site_a.labels_csv,
                            model, out / "eval_site_a", overwrite=True)  # fmt: skip
    ex_dir = evaluate_model(paths["b"], site_b.labels_csv, model, out / "eval_site_b",
                            overwrite=True)  # fmt: skip
    ins = json.loads((in_dir / "metrics.json").read_text())
    ext = json.loads((ex_dir / "metrics.json").read_text())
    cal = model.card["calibration"]
    print(
        f"wall time: embedding {t_prep:.0f} s (site A {t_embed['a']:.0f} s, site B "
        f"{t_embed['b']:.0f} s), training {t_train:.0f} s"
    )
    print(
        f"calibration: T {cal['temperature']:.2f} (unconstrained fit "
        f"{cal['temperature_unconstrained']:.2f}, "
        f"{cal['validation_errors']} of {cal['n']} validation slides misclassified"
        f"{'; limited by the data' if cal['limited_by_data'] else ''})"
    )
    for label, part in (("in-site", ins), ("external", ext)):
        batch = part["trust"]["shift"]["batch"]
        tests = ", ".join(
            f"{k} p={v['p_value']:.2g}"
            for k, v in batch.get("tests", {}).items()
            if v.get("p_value") is not None
        )
        print(f"{label} batch shift test: {batch['status']} ({tests or batch.get('note')})")
    measures = _measure_counts(stores, model, test_ids)
    for name, (n_in, n_ex) in measures.items():
        print(f"measure {name}: fails {n_ex[0]} of {n_ex[1]} external slides, {n_in[0]} of "
              f"{n_in[1]} in-site")  # fmt: skip
    tile_ext, ev_ext = _tile_aurocs(model, site_b, stores["b"], [p.stem for p in site_b.slides])
    tile_in, ev_in = _tile_aurocs(model, site_a, stores["a"], test_ids)
    print(f"attention tile AUROC: in-site {tile_in:.3f}, external {tile_ext:.3f}")
    print(f"evidence tile AUROC (stored, one scale): in-site {ev_in:.3f}, external {ev_ext:.3f}")
    cov = ins["trust"]["conformal"]
    cov_ext = ext["trust"]["conformal"]
    last = [
        _site_line("in-site test", ins["external"], ins["trust"]),
        _site_line("external site", ext["external"], ext["trust"]),
        f"shift flags: {ext['trust']['shift']['flagged']} of {ext['trust']['shift']['n']} "
        f"external slides, {ins['trust']['shift']['flagged']} of {ins['trust']['shift']['n']} "
        "in-site slides",
        f"conformal coverage {cov['coverage']:.2f} at nominal {cov['nominal']:.2f} (in-site "
        f"test; {cov['uncertain']} uncertain, {cov['atypical']} atypical of {cov['n']}); "
        f"external {cov_ext['coverage']:.2f} ({cov_ext['uncertain']} uncertain, "
        f"{cov_ext['atypical']} atypical of {cov_ext['n']})",
    ]
    for line in last:
        print(line)
    return {
        "in": ins["external"],
        "ex": ext["external"],
        "trust_in": ins["trust"],
        "trust_ex": ext["trust"],
        "tile_in": tile_in,
        "tile_ex": tile_ext,
        "embed_s": t_prep,
        "train_s": t_train,
        "temperature": cal["temperature"],
        "last_lines": last,
    }


def _variant_table(results: dict) -> None:
    """A markdown table of the variants (the first is the baseline of the ratios)."""
    first = next(iter(results.values()))
    print("| variant | external AUROC | external sensitivity / specificity | external ECE | "
          "in-site AUROC | in-site ECE | tile AUROC in-site / external | unflagged FN "
          "in-site / external | shift flags external / in-site | embedding s (x first) | "
          "training s (x first) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        at = r["ex"]["at_threshold"]
        print(
            f"| {name} | {_f(r['ex']['auroc'], 3)} | {_f(at['sensitivity'])} / "
            f"{_f(at['specificity'])} | {_f(r['ex']['ece_calibrated'], 3)} | "
            f"{_f(r['in']['auroc'], 3)} | {_f(r['in']['ece_calibrated'], 3)} | "
            f"{_f(r['tile_in'], 3)} / {_f(r['tile_ex'], 3)} | "
            f"{r['trust_in']['unflagged_false_negatives']} / "
            f"{r['trust_ex']['unflagged_false_negatives']} | "
            f"{r['trust_ex']['shift']['flagged']}/{r['trust_ex']['shift']['n']} / "
            f"{r['trust_in']['shift']['flagged']}/{r['trust_in']['shift']['n']} | "
            f"{r['embed_s']:.0f} ({r['embed_s'] / first['embed_s']:.1f}x) | "
            f"{r['train_s']:.0f} ({r['train_s'] / first['train_s']:.1f}x) |"
        )


def _measure_counts(stores, model, test_ids) -> dict:
    """How many slides each shift measure alone flags (in-site test, external)."""
    from wsi.store import open_store, prediction_keys, store_path

    counts: dict[str, list] = {}
    groups = {
        "in": [store_path(stores["a"], s) for s in test_ids],
        "ex": sorted(stores["b"].glob("*.zarr")),
    }
    for side, paths in groups.items():
        for path in paths:
            attrs = dict(open_store(path)[prediction_keys(model.name).stage].attrs)
            for name, m in (
                ((attrs.get("trust") or {}).get("shift") or {}).get("measures", {}).items()
            ):
                c = counts.setdefault(name, [[0, 0], [0, 0]])
                k = 0 if side == "in" else 1
                c[k][1] += 1
                c[k][0] += bool(m.get("failed"))
    return {k: (v[0], v[1]) for k, v in counts.items()}


if __name__ == "__main__":
    sys.exit(main())
