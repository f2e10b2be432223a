"""From slides to reports with the ``wsi`` Python API, in about a minute on a laptop CPU.

Run it as a script::

    python docs/tutorial.py OUT          # or WSI_TUTORIAL_OUT=OUT python docs/tutorial.py

or open it in Jupyter (with jupytext) or VS Code, where each ``# %%`` block is a cell
and the slide, the store and the heatmap show themselves: thumbnails, tables, the
overlay. In a terminal, their views are collected in ``OUT/views.html`` instead.
The output folder defaults to ``tutorial_out``.

It makes a small labelled cohort of synthetic slides (textures from real H&E images
where ``../shared/data/tiles`` holds them), tiles and embeds every slide on the CPU,
trains an attention-MIL model, predicts every slide, draws a heatmap and writes the
second-opinion reports. Every step is a public ``wsi.*`` function; each writes its
results to disk and returns where. The test suite runs this file
(tests/test_notebook.py), so it stays true.

Units: coordinates are level-0 pixels (x, y from the top-left), sizes (w, h) in pixels,
resolution in micrometres per pixel (mpp).
"""

# %% [markdown]
# # wsi tutorial: from a slide to a report
#
# Where the outputs go: the first command-line argument, else `$WSI_TUTORIAL_OUT`,
# else `tutorial_out`.

# %%
import logging
import os
import sys
from pathlib import Path

import wsi

try:  # in Jupyter, objects display themselves (their _repr_html_)
    from IPython import get_ipython

    IN_JUPYTER = get_ipython() is not None
except ImportError:
    IN_JUPYTER = False

if not IN_JUPYTER and len(sys.argv) > 1:  # a kernel's argv is its own
    OUT = Path(sys.argv[1])
else:
    OUT = Path(os.environ.get("WSI_TUTORIAL_OUT", "tutorial_out"))
OUT.mkdir(parents=True, exist_ok=True)
VIEWS = OUT / "views.html"  # a terminal's stand-in for the notebook's rich output
if not IN_JUPYTER:
    VIEWS.write_text('<!doctype html><meta charset="utf-8"><title>wsi tutorial</title>\n')
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def show(obj: object) -> None:
    """Display ``obj`` in Jupyter; in a terminal print it and add its HTML view to VIEWS."""
    if IN_JUPYTER:
        from IPython.display import display

        display(obj)
        return
    print(repr(obj))
    view = getattr(obj, "_repr_html_", None)
    if view is not None:
        with VIEWS.open("a", encoding="utf-8") as f:
            f.write(view() + "\n<hr>\n")


# %% [markdown]
# ## 1. A labelled cohort
#
# Eight synthetic slides of 3000 x 3000 px at 0.25 mpp (so 750 µm across), from four
# patients; half the patients are `tumor` and their slides hold a lesion of at least
# 192 µm across. `labels.csv` says which slide is which.

# %%
cohort = wsi.make_cohort(OUT / "cohort", slides=8, size=3000, seed=5, min_lesion_diameter_um=192)
print(f"{len(cohort.slides)} slides in {cohort.out_dir}; labels in {cohort.labels_csv}")

# %% [markdown]
# ## 2. Open a slide
#
# A `Slide` reads regions in level-0 coordinates at a resolution you name. In Jupyter it
# shows its thumbnail (the main image only, never a label or macro image) and metadata.

# %%
with wsi.open_slide(cohort.slides[0]) as slide:
    show(slide)
    print(f"level-0 size {slide.dimensions} px at {slide.mpp.mean} mpp")
    patch = slide.read_region((1000, 1000), (256, 256), mpp=0.5)  # 256 px at 0.5 mpp
    print(f"a 256 px patch at 0.5 mpp from level-0 (1000, 1000): {patch.shape}")

# %% [markdown]
# ## 3. Tile and embed every slide
#
# `tile_slide` finds the tissue, cuts 256 px tiles at 0.5 mpp (the `TilingConfig`
# defaults) and writes them to `stores/<slide_id>.zarr`. `embed_store` runs a frozen
# encoder (the default, `efficientnet_lite0`, whose ImageNet weights ship as a package)
# over the tiles. Both skip work that is already done, so re-running is cheap.

# %%
STORES = OUT / "stores"
encoder = wsi.load_encoder(device="cpu")  # loaded once, used for every slide
stores = []
for path in cohort.slides:
    store = wsi.tile_slide(path, STORES, progress=False)
    wsi.embed_store(store, wsi.EmbedConfig(device="cpu"), encoder=encoder, progress=False)
    stores.append(store)
print(f"{len(stores)} stores in {STORES}")

# %% [markdown]
# ## 4. Train an attention-MIL model
#
# ABMIL with patient-level cross-validation (2 folds here; 5 by default). The model
# folder holds the fold heads and a model card (`model.json`): data, metrics, the
# operating point and calibration.

# %%
model_dir = wsi.train_model(
    STORES,
    cohort.labels_csv,
    OUT / "models" / "abmil",
    wsi.TrainConfig(folds=2, epochs=30, patience=10, lr=1e-3),
)
model = wsi.load_model(model_dir)
print(f"model {model.name!r} in {model_dir}")

# %% [markdown]
# ## 5. Predict every slide and look at a store
#
# `predict_store` writes `predictions/<model>/` into each store: the calibrated
# probability, its spread across the fold models, the decision, and per-tile attention.
# `open_store` gives a read-only view that shows the thumbnail, the slide's facts, the
# stages done and the predictions.

# %%
for store in stores:
    wsi.predict_store(store, model)
views = [wsi.open_store(s) for s in stores]
view = max(views, key=lambda v: v.predictions[model.name]["probability"])  # the likeliest tumour
show(view)
pred = view.predictions[model.name]
print(f"{view.slide_id}: {pred['decision']} (p = {pred['probability']:.2f}), {view.tiles} tiles")

# %% [markdown]
# ## 6. The heatmap
#
# Attention per tile, as percentiles within the slide, on a grid with one cell per
# tile; shown over the thumbnail with the tissue outline. `regions` are the hottest 5%
# of the tissue, in level-0 pixels. `save` writes the PNG overlay and a GeoJSON that
# QuPath imports.

# %%
heat = wsi.Heatmap(view, model)
show(heat)
if heat.regions:
    top = heat.regions[0]
    print(f"hottest region: level-0 box {tuple(round(v) for v in top.bbox_l0)}")
files = heat.save(OUT / "heatmaps", exports=("png", "geojson"))["files"]
print("heatmap files:", ", ".join(sorted(files.values())))

# %% [markdown]
# ## 7. Reports
#
# One HTML report per slide (set `pdf=True` for the PDF too; it needs WeasyPrint) and a
# cohort table sorted by risk. They never show a slide's label, macro image or path.

# %%
reports = wsi.report(stores, model, OUT / "reports", wsi.ReportOptions(pdf=False))
for r in reports.slides:
    print(f"{r.slide_id}: {r.row['decision']:>6}  p = {r.row['probability']:.2f}  {r.html}")
print(f"cohort report: {reports.cohort_html}")
if not IN_JUPYTER:
    print(f"views of the slide, store and heatmap: {VIEWS}")
