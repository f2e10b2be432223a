"""The ``wsi`` command line: info, tile, encoders, embed, export-h5, import-h5, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from wsi.errors import ConfigError, WsiError
from wsi.mil.tasks import KINDS

__all__ = ["main"]

log = logging.getLogger("wsi")


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (pytest and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging(verbose: int, quiet: bool) -> None:
    """Console logging at the level asked for. The loggers themselves pass INFO on, so a
    run's log file (``wsi run``) holds INFO lines even with ``-q``."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    for name in ("wsi", "pipelines"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _Stderr)]:
            logger.removeHandler(old)  # main() called again in one process
        handler = _Stderr()
        handler.setLevel(level)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.setLevel(min(level, logging.INFO))
        logger.addHandler(handler)
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips is chatty at INFO


def _cmd_info(args: argparse.Namespace) -> int:
    from wsi.slide import open_slide

    rows, failed = [], 0
    for path in args.slides:
        try:
            with open_slide(path, mpp=args.mpp) as slide:
                rows.append(slide.info().as_dict())
        except WsiError as err:
            failed += 1
            rows.append({"path": str(path), "error": str(err)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(row["path"])
            if "error" in row:
                print(f"  error: {row['error']}")
                continue
            mpp = row["mpp"]
            mpp_s = (
                "missing (give --mpp)"
                if mpp is None
                else (f"{mpp['x']:.4f} x {mpp['y']:.4f} um/px ({mpp['source']})")
            )
            print(f"  vendor:            {row['vendor']}")
            print(f"  mpp:               {mpp_s}")
            print(f"  objective power:   {row['objective_power']}")
            print(f"  associated images: {', '.join(row['associated_images']) or '-'}")
            print("  levels:")
            for i, (dims, ds) in enumerate(
                zip(row["level_dimensions"], row["level_downsamples"], strict=True)
            ):
                print(f"    {i}: {dims[0]} x {dims[1]} px, downsample {ds:.3f}")
    return 1 if failed else 0


def _tiling_config(args: argparse.Namespace):  # noqa: ANN202 - TilingConfig
    from pipelines.config import load_job_section
    from wsi.config import TilingConfig

    return load_job_section(
        args.config,
        "tiling",
        TilingConfig,
        tile_size=args.tile_size,
        target_mpp=args.target_mpp,
        stride=args.stride,
        min_tissue=args.min_tissue,
        codec=args.codec,
        quality=args.quality,
        backend=args.backend,
    )


def _run_tiling(args: argparse.Namespace, slides: Sequence[str]) -> int:
    from pipelines.cluster import dask_client
    from pipelines.tasks import print_results, tile_slides

    config = _tiling_config(args)
    progress = False if args.quiet else None
    with dask_client(args.scheduler, args.workers) as client:
        results = tile_slides(
            slides,
            args.out,
            config,
            client=client,
            mpp=args.mpp,
            overwrite=args.overwrite,
            progress=progress,
        )
    ok = sum(r.status == "ok" for r in results)
    return print_results(f"tiled {ok} of {len(results)} slide(s) into {args.out}", results)


def _cmd_tile(args: argparse.Namespace) -> int:
    return _run_tiling(args, args.slides)


def _cmd_encoders(args: argparse.Namespace) -> int:
    from wsi.encoders import find_weights, registered
    from wsi.encoders.weights import where_to_put

    rows = []
    for spec in registered():
        path = find_weights(spec)
        rows.append(
            {
                **spec.summary(),
                "pooling": spec.pooling,
                "layout": spec.layout,
                "gated": spec.gated,
                "description": spec.description,
                "weights": str(path) if path else None,
                "how_to_get_weights": None if path else where_to_put(spec),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not args.long:
        width = max(len(r["name"]) for r in rows)
        print(f"{'name':<{width}}  {'dim':>5}  input  gated  weights  licence")
        for r in rows:
            size = r["preprocessing"]["input_size"]
            print(
                f"{r['name']:<{width}}  {r['feature_dim']:>5}  {size:>5}"
                f"  {'yes' if r['gated'] else 'no':<5}  {'here' if r['weights'] else '-':<7}"
                f"  {r['licence'].split(' (')[0]}"
            )
        here = sum(bool(r["weights"]) for r in rows)
        print(
            f"{len(rows)} encoders, weights for {here} on this machine. `wsi encoders --long` "
            "says where each one's weights go; any timm architecture name also works as "
            "--encoder NAME --weights PATH."
        )
        return 0
    for row in rows:
        pre = row["preprocessing"]
        crop = (
            f", resized to {pre['resize_size']} then centre-cropped" if "resize_size" in pre else ""
        )
        print(f"{row['name']}  ({row['architecture']}, {row['feature_dim']}-d)")
        print(f"  {row['description']}")
        print(
            f"  input {pre['input_size']} px{crop} ({pre['interpolation']}), mean {pre['mean']}, "
            f"std {pre['std']}; embedding: {row['pooling']}; checkpoint layout: {row['layout']}"
        )
        print(f"  licence {row['licence'] or '-'}; {'gated' if row['gated'] else 'not gated'}")
        print(f"  weights: {row['weights'] or 'not on this machine. ' + row['how_to_get_weights']}")
    print("Any timm architecture name also works as --encoder NAME --weights PATH.")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from pipelines.config import load_job_section
    from pipelines.tasks import embed_stores, print_results
    from wsi.config import EmbedConfig

    names = args.encoder or []
    weights, by_name = _weights_options(args.weights or [])
    config = load_job_section(
        args.config,
        "embed",
        EmbedConfig,
        encoder=names[0] if names else None,
        # one --encoder replaces a config file's list; several make the list
        encoders=(names if len(names) > 1 else []) if names else None,
        weights=weights,
        encoder_weights=by_name,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        dtype=args.dtype,
        loader_threads=args.loader_threads,
        stain_target=args.stain_target,
        stain_views=args.stain_views,
        stain_jitter=args.stain_jitter,
    )
    progress = False if args.quiet else None
    results = embed_stores(args.stores, config, overwrite=args.overwrite, progress=progress)
    ok = sum(r.status == "ok" for r in results)
    used = ", ".join(config.names)
    return print_results(f"embedded {ok} of {len(results)} store(s) with {used}", results)


def _weights_options(values: Sequence[str]) -> tuple[str | None, dict[str, str] | None]:
    """``--weights`` values as (one weight file, files by encoder name): ``NAME=PATH``
    where the text before ``=`` is a name (no path separator) and the whole value is no
    existing file; ConfigError for two plain files."""
    plain: list[str] = []
    pairs: dict[str, str] = {}
    for value in values:
        name, eq, path = value.partition("=")
        if eq and name and path and not any(c in name for c in "/\\") and not os.path.exists(value):
            if name in pairs:
                raise ConfigError(f"--weights {value}: {name} is given weights twice")
            pairs[name] = path
        else:
            plain.append(value)
    if len(plain) > 1:
        raise ConfigError(
            f"--weights given {len(plain)} plain files ({', '.join(plain)}): which encoder "
            "takes which is ambiguous. Give NAME=PATH for each (--weights uni=PATH "
            "--weights conch_v1_5=PATH)."
        )
    return (plain[0] if plain else None), (pairs or None)


def _cmd_stain_target(args: argparse.Namespace) -> int:
    from wsi.embed import fit_stain_target

    path = fit_stain_target(args.stores, args.method, args.out,
                            tiles_per_store=args.tiles_per_store)  # fmt: skip
    print(f"stain target ({args.method}) written to {path}; embed with --stain-target {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pipelines.config import load_job_section
    from wsi.mil.train import TrainConfig, train_model

    overrides = {
        k: v
        for k, v in {
            "model": args.model,
            "folds": args.folds,
            "test_fraction": args.test_fraction,
            "epochs": args.epochs,
            "patience": args.patience,
            "min_epochs": args.min_epochs,
            "lr": args.lr,
            "seed": args.seed,
            "target_sensitivity": args.target_sensitivity,
            "max_train_tiles": args.max_train_tiles,
            "stain_augment": args.stain_augment,
            "task": args.task,
            "classes": tuple(args.classes.split(",")) if args.classes else None,
            "negative_class": args.negative_class,
            "time_unit": args.time_unit,
        }.items()
        if v is not None
    }
    out = train_model(
        args.stores,
        args.labels,
        args.out,
        load_job_section(args.config, "train", TrainConfig, **overrides),
        encoder=args.encoder,
        positive=args.positive,
        splits=args.splits,
    )
    from wsi.mil.outcomes import summary_line
    from wsi.mil.predict import load_model

    task = load_model(out).task
    metrics = json.loads((out / "metrics.json").read_text())
    if task.kind != "binary":
        for part in ("validation_pooled", "test"):
            if part in metrics:
                print(f"{part}: {summary_line(task, metrics[part])}")
        print(f"model card: {out / 'model.json'}")
        return 0
    op = metrics["operating_point"]
    for part in ("validation_pooled", "test"):
        if part not in metrics:
            continue
        r = metrics[part]
        at = r["at_threshold"]
        lo, hi = r["auroc_ci95"]

        def f(v: object) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        print(
            f"{part}: AUROC {f(r['auroc'])} (95% CI {f(lo)}-{f(hi)}), sensitivity "
            f"{f(at['sensitivity'])}, specificity {f(at['specificity'])} at probability "
            f"{f(op['threshold'])} (target sensitivity {op['target_sensitivity']}), "
            f"ECE {f(r.get('ece_uncalibrated'))} -> {f(r['ece_calibrated'])} calibrated"
        )
    if "test" not in metrics:
        print("no test part: validation figures are in-sample for the operating point")
    print(f"model card: {out / 'model.json'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pipelines.tasks import predict_stores

    patients = None
    if args.patients:
        from wsi.mil.data import read_patients

        patients = read_patients(args.patients)
    results = predict_stores(args.stores, args.model, overwrite=args.overwrite, patients=patients)
    failed = 0
    for res in results:
        pred = res.value
        if res.status != "ok":
            failed += 1
            print(f"  FAILED  {res.item}: {res.error}")
            continue
        print(f"  {pred['decision']:<8} {res.item}: {_prediction_text(pred)}")
    return 1 if failed else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from wsi.mil.external import evaluate_model
    from wsi.mil.outcomes import summary_line
    from wsi.mil.tasks import Task

    out = evaluate_model(
        args.stores,
        args.labels,
        args.model,
        args.out,
        time_unit=args.time_unit,
        overwrite=args.overwrite,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    task = Task.from_card(metrics["task"])
    part = metrics["external"]

    def f(v: object) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    if part is None:
        print(f"metrics not computed: {metrics['not_computed']}")
    elif task.kind == "binary":
        op, at = metrics["operating_point"], part["at_threshold"]
        lo, hi = part["auroc_ci95"]
        print(
            f"external: AUROC {f(part['auroc'])} (95% CI {f(lo)}-{f(hi)}), sensitivity "
            f"{f(at['sensitivity'])}, specificity {f(at['specificity'])} at the model's "
            f"probability {f(op['threshold'])} (target sensitivity "
            f"{op['target_sensitivity']}), ECE {f(part['ece_calibrated'])}"
        )
    else:
        print(f"external: {summary_line(task, part)}")
    print(
        f"{metrics['n']} slide(s) of {metrics['n_patients']} patient(s) evaluated (per "
        f"slide), {len(metrics['failed'])} failed, {len(metrics['missing'])} missing"
    )
    for row in metrics["failed"]:
        print(f"  FAILED  {row['slide_id']}: {row['error']}")
    for sid in metrics["missing"]:
        print(f"  MISSING {sid}: labelled, but no store of it was given")
    print(f"metrics, predictions and plots: {out}")
    return 1 if metrics["failed"] or part is None else 0


def _prediction_text(pred: dict[str, Any]) -> str:
    """One line of what a prediction says, per task."""
    if "probability" in pred:  # binary, or classes screened against a benign class
        text = (
            f"p = {pred['probability']:.3f} (+/- {pred['probability_std']:.3f} across folds; "
            f"threshold {pred['threshold']:.3f})"
        )
        if "class_probabilities" in pred:
            top = sorted(pred["class_probabilities"].items(), key=lambda kv: -kv[1])[:3]
            text += "; " + ", ".join(f"{c} {p:.2f}" for c, p in top)
        return text
    if "class_probabilities" in pred:
        top = sorted(pred["class_probabilities"].items(), key=lambda kv: -kv[1])[:3]
        return ", ".join(f"{c} {p:.2f}" for c, p in top)
    if "risk" in pred:
        return f"risk {pred['risk']:.3f} (+/- {pred['risk_std']:.3f} across folds)"
    return f"value {pred['value']:.4g} (+/- {pred['value_std']:.2g} across folds)"


def _cmd_report(args: argparse.Namespace) -> int:
    from wsi.reports import ReportOptions, report

    options = ReportOptions(top_k=args.top_k, least_k=args.least_k, pdf=not args.no_pdf)
    result = report(args.stores, args.model, args.out, options)
    for r in result.slides:
        flags = f" [{', '.join(r.row['flags'])}]" if r.row["flags"] else ""
        p = f": p = {r.row['probability']:.3f}" if r.row.get("probability") is not None else ""
        print(f"  {r.row['decision']:<8} {r.slide_id}{p}{flags}")
        print(f"           {r.html}" + (f" + {r.pdf.name}" if r.pdf else ""))
    for f in result.failed:
        print(f"  FAILED  {f['slide_id']}: {f['error']}")
    print(f"cohort report: {result.cohort_html} and {result.cohort_csv}")
    if result.failed and not result.slides:
        return 2
    return 1 if result.failed else 0


def _cmd_heatmap(args: argparse.Namespace) -> int:
    from pipelines.tasks import heatmap_stores
    from wsi.heatmap import DEFAULT_EXPORTS, HeatmapOptions

    exports = tuple(e.strip() for e in args.exports.split(",")) if args.exports else DEFAULT_EXPORTS
    options = HeatmapOptions(
        source=args.source,
        normalise=args.normalise,
        smooth=args.smooth,
        cmap=args.cmap,
        alpha=args.alpha,
        exports=exports,
    )
    failed = 0
    for r in heatmap_stores(args.stores, args.model, args.out, options):
        if r.status != "ok":
            failed += 1
            print(f"  FAILED  {r.item}: {r.error}")
            continue
        res = r.value
        top = res["regions"][0] if res["regions"] else None
        where = f"; hottest region at level-0 {top['bbox_l0']}" if top else ""
        print(f"  ok      {r.item}: {', '.join(res['files'].values())}{where}")
    return 1 if failed else 0


def _add_tiling_options(p: argparse.ArgumentParser) -> None:
    from pipelines.config import mpp_arg, workers_arg

    p.add_argument(
        "--mpp", type=mpp_arg, help="level-0 micrometres per pixel, for slides without it"
    )
    p.add_argument("--config", help="YAML config (section `tiling`), see configs/default.yaml")
    p.add_argument("--tile-size", type=int, help="tile side in pixels (default 256)")
    p.add_argument("--target-mpp", type=float, help="tile resolution in um/px (default 0.5)")
    p.add_argument("--stride", type=int, help="step between tiles in pixels (default tile size)")
    p.add_argument("--min-tissue", type=float, help="minimum tissue fraction (default 0.5)")
    from wsi.codecs import CODECS
    from wsi.slide import BACKENDS

    p.add_argument(
        "--codec",
        choices=list(CODECS),
        help="tile codec: " + "; ".join(f"{c.name}: {c.description}" for c in CODECS.values()),
    )
    p.add_argument("--quality", type=int, help="JPEG quality or zstd level")
    p.add_argument(
        "--backend",
        choices=list(BACKENDS),
        help="tile reader: " + "; ".join(f"{b.name}: {b.description}" for b in BACKENDS.values()),
    )
    p.add_argument(
        "--workers", type=workers_arg, help="LocalCluster worker processes (default: cores)"
    )
    p.add_argument("--scheduler", help="address of an existing Dask scheduler")
    p.add_argument("--overwrite", action="store_true", help="redo stages made with other params")


def build_parser() -> argparse.ArgumentParser:
    from pipelines.config import add_wait_option
    from pipelines.viewcli import add_score_options, exports_help
    from wsi.precision import PRECISIONS

    parser = argparse.ArgumentParser(prog="wsi", description="Whole-slide pathology pipeline")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log detail (-vv: debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress, warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    from pipelines.config import mpp_arg

    p = sub.add_parser("info", help="print slide metadata")
    p.add_argument("slides", nargs="+", help="slide files, or DICOM slide folders (.dcm)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--mpp", type=mpp_arg, help="override the level-0 mpp")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("tile", help="tile slides into per-slide Zarr stores")
    p.add_argument("slides", nargs="+", help="slide files, or DICOM slide folders (.dcm)")
    p.add_argument("--out", required=True, help="output folder for <slide_id>.zarr stores")
    _add_tiling_options(p)
    add_wait_option(p)
    p.set_defaults(func=_cmd_tile)

    p = sub.add_parser("encoders", help="list registered encoders and whether weights are here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--long", action="store_true", help="every entry's contract and where its weights go"
    )
    p.set_defaults(func=_cmd_encoders)

    p = sub.add_parser("embed", help="embed the tiles of stores with frozen encoders")
    p.add_argument("stores", nargs="+", help="slide stores (<slide_id>.zarr) made by `wsi tile`")
    p.add_argument(
        "--encoder",
        action="append",
        help="registered name or timm architecture (default efficientnet_lite0); repeat it "
        "to embed with several in one pass, each tile batch read once",
    )
    p.add_argument(
        "--weights",
        action="append",
        help="local weight file (.safetensors or a torch state dict); with several "
        "encoders NAME=PATH, once per encoder",
    )
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        help="compute precision: auto (bf16 on a CUDA GPU, fp32 otherwise), fp32, bf16, fp16",
    )
    p.add_argument("--batch-size", type=int, help="tiles per forward pass (64 CPU / 256 GPU)")
    p.add_argument("--dtype", choices=["float32", "float16"], help="stored embeddings dtype")
    p.add_argument("--loader-threads", type=int, help="background tile-decoding threads")
    p.add_argument(
        "--stain-target",
        help="normalise each tile's stain to this target (written by `wsi stain-target`)",
    )
    p.add_argument(
        "--stain-views", type=int, help="HED-jittered views of each tile to embed (augmentation)"
    )
    p.add_argument("--stain-jitter", type=float, help="scale range of each stain (default 0.2)")
    p.add_argument("--config", help="YAML config (section `embed`), see configs/default.yaml")
    p.add_argument("--overwrite", action="store_true", help="replace features of other weights")
    add_wait_option(p)
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser(
        "stain-target",
        help="fit a stain normalisation target (Macenko, Reinhard) on training stores' tiles",
    )
    p.add_argument("stores", nargs="+", help="tiled slide stores of the training slides")
    p.add_argument(
        "--method", default="macenko", help="macenko (default) or reinhard (wsi.stain.NORMALISERS)"
    )
    p.add_argument("--out", required=True, help="the target file to write (JSON)")
    p.add_argument("--tiles-per-store", type=int, default=64, help="tiles sampled per store")
    p.set_defaults(func=_cmd_stain_target)

    p = sub.add_parser("train", help="train an attention-MIL head on embedded stores")
    p.add_argument("--stores", required=True, help="folder of <slide_id>.zarr stores")
    p.add_argument("--labels", required=True, help="labels.csv: slide_id, patient_id, label")
    p.add_argument("--encoder", default="efficientnet_lite0", help="features to train on")
    p.add_argument(
        "--model", help="abmil (default), clam_sb, clam_mb, transmil, additive, mean, max"
    )
    p.add_argument("--out", required=True, help="model folder")
    p.add_argument("--folds", type=int, help="patient-level folds (default 5)")
    p.add_argument("--test-fraction", type=float, help="patients held out for testing")
    p.add_argument("--target-sensitivity", type=float, help="operating point (default 0.95)")
    p.add_argument("--positive", help="the positive (tumour) label, if not recognised")
    p.add_argument("--task", choices=KINDS, help="the task, if not guessed from the columns")
    p.add_argument("--classes", help="multiclass/ordinal: class names, comma-separated, in order")
    p.add_argument("--negative-class", help="multiclass/ordinal: the benign class (screening)")
    p.add_argument("--time-unit", help="survival: unit of the time column (days ... years)")
    p.add_argument("--splits", help="splits.csv of an earlier run, to repeat it exactly")
    p.add_argument("--epochs", type=int, help="most epochs per fold (default 50)")
    p.add_argument("--patience", type=int, help="early stopping patience, epochs (default 8)")
    p.add_argument(
        "--min-epochs", type=int, help="no early stop before this many epochs (default 20)"
    )
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 2e-4)")
    p.add_argument("--seed", type=int, help="seed of splits and training (default 0)")
    p.add_argument("--max-train-tiles", type=int, help="subsample bigger bags while training")
    p.add_argument(
        "--stain-augment",
        action="store_true",
        default=None,
        help="train on the stores' stain-jittered views (wsi embed --stain-views)",
    )
    p.add_argument("--config", help="YAML config (section `train`), see configs/default.yaml")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="predict stores with a trained model")
    p.add_argument("stores", nargs="+", help="embedded slide stores")
    p.add_argument("--model", required=True, help="model folder written by `wsi train`")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a prediction of another model of this name",
    )
    p.add_argument(
        "--patients",
        help="CSV with slide_id, patient_id (a labels.csv will do): a patient-level model "
        "predicts each patient's stores as one bag",
    )
    add_wait_option(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "evaluate", help="a model's metrics on new labelled slides (nothing refitted)"
    )
    p.add_argument("stores", nargs="+", help="embedded slide stores of the labelled slides")
    p.add_argument("--labels", required=True, help="labels.csv in the columns of the model's task")
    p.add_argument("--model", required=True, help="model folder written by `wsi train`")
    p.add_argument("--out", required=True, help="folder for metrics.json, predictions.csv, plots")
    p.add_argument("--time-unit", help="survival: unit of the time column (must be the model's)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a prediction of another model of this name",
    )
    add_wait_option(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("heatmap", help="heatmaps of predicted stores: PNG, QuPath GeoJSON, TIFF")
    p.add_argument("stores", nargs="+", help="predicted slide stores")
    p.add_argument("--model", required=True, help="model name (predictions/<model> in the store)")
    p.add_argument("--out", required=True, help="folder for the exports")
    add_score_options(p)
    p.add_argument("--smooth", action="store_true", help="interpolate between tiles (display)")
    p.add_argument("--exports", help=exports_help())
    p.add_argument("--alpha", type=float, default=0.5, help="heat layer opacity, 0..1")
    add_wait_option(p)
    p.set_defaults(func=_cmd_heatmap)

    p = sub.add_parser(
        "report", help="second-opinion reports (HTML + PDF) per slide and a cohort triage table"
    )
    p.add_argument("stores", nargs="+", help="predicted slide stores")
    p.add_argument("--model", required=True, help="model folder written by `wsi train`")
    p.add_argument("--out", required=True, help="folder for the reports")
    p.add_argument("--top-k", type=int, default=8, help="most attended tiles shown (default 8)")
    p.add_argument(
        "--least-k", type=int, default=4, help="least attended tiles shown for contrast (0: none)"
    )
    p.add_argument("--no-pdf", action="store_true", help="HTML only (no WeasyPrint needed)")
    p.set_defaults(func=_cmd_report)

    from pipelines.h5cli import add_parsers as add_h5_parsers
    from pipelines.viewcli import add_parsers as add_view_parsers

    add_h5_parsers(sub)
    add_view_parsers(sub)

    from pipelines.runcli import add_parsers as add_run_parsers

    add_run_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    if getattr(args, "wait", None) is not None:
        from wsi._lock import WAIT_ENV

        os.environ[WAIT_ENV] = str(args.wait)  # Dask workers started from here inherit it
    try:
        return int(args.func(args))
    except WsiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
