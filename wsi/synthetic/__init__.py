"""Synthetic slides and labelled cohorts with known truth, for benchmarks, tests and the demo.

* :func:`make_synthetic_slide` writes one H&E-like pyramidal TIFF and its tissue mask
  (:mod:`wsi.synthetic.slide`);
* :func:`make_cohort` writes a labelled cohort of such slides with lesion ground truth
  (:mod:`wsi.synthetic.cohort`; what it holds is decided in :mod:`wsi.synthetic.plan`,
  its labels for each of :data:`TASKS` in :mod:`wsi.synthetic.tasks`, its texture
  sets, :data:`TEXTURE_SETS`, in :mod:`wsi.synthetic.texture_sets`, its stain shift
  in :mod:`wsi.synthetic.stains`),
  and :func:`lesion_fraction_of_tiles` measures that truth per tile
  (:mod:`wsi.synthetic.lesions`).

The pieces they share: texture sources (:mod:`wsi.synthetic.textures`) and tissue
masks (:mod:`wsi.synthetic.masks`).  Sizes and coordinates are level-0 pixels, ``mpp``
micrometres per level-0 pixel.  Importing this package loads neither numpy nor pyvips.
"""

from __future__ import annotations

from wsi.synthetic.cohort import Cohort, load_cohort, make_cohort
from wsi.synthetic.lesions import lesion_fraction_of_tiles
from wsi.synthetic.plan import BACKGROUND_SOURCES, COHORT_MPP, LESION_SOURCES
from wsi.synthetic.slide import (
    MAX_SIDE,
    SyntheticSlide,
    make_synthetic_slide,
    mask_path_for,
    save_slide_tiff,
)
from wsi.synthetic.tasks import TASKS
from wsi.synthetic.texture_sets import TEXTURE_SETS
from wsi.synthetic.textures import default_tile_source_dir

__all__ = [
    "BACKGROUND_SOURCES",
    "COHORT_MPP",
    "Cohort",
    "LESION_SOURCES",
    "MAX_SIDE",
    "SyntheticSlide",
    "TASKS",
    "TEXTURE_SETS",
    "default_tile_source_dir",
    "lesion_fraction_of_tiles",
    "load_cohort",
    "make_cohort",
    "make_synthetic_slide",
    "mask_path_for",
    "save_slide_tiff",
]
