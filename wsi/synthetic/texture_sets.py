"""Named texture sets of synthetic cohorts: which real H&E images paint the background
tissue and the lesions, and how the procedural fallback looks where they are missing.

A cohort is made with one set (``make_cohort(textures=...)``), looked up by name in
:data:`TEXTURE_SETS` through :func:`texture_set`:

* ``default``: the original choice (:data:`BACKGROUND_SOURCES`, :data:`LESION_SOURCES`):
  stroma and low-cellularity tissue around dense, nuclei-rich carcinoma.
* ``site_b``: a second hospital for train-on-A, test-on-B benchmarks: other images of
  the same folder, none of them in ``default`` (benign breast lobules in pale,
  blue-violet stroma around carcinoma nests and sheets of tumour cells), and a
  lilac procedural fallback.  Its lesions are paler than ``default``'s and differ
  from its background more by texture and eosin than by brightness.
* ``subtle``: ``default``'s background around lesions of lower nuclear density
  (diffuse or pale-staining tumour cells) whose colour and brightness are close to
  the background's, for a harder benchmark; its procedural lesions carry half the
  tint of ``default``'s.

Image names are relative to the tile folder (``../shared/data/tiles``, see its
``SOURCES.md``).  The class tasks paint lesion class ``k`` with the set's ``k``-th
lesion image alone, so every set names at least three lesion images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wsi.errors import ConfigError
from wsi.synthetic.textures import procedural_he, procedural_lesion, tinted

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

__all__ = [
    "BACKGROUND_SOURCES",
    "DEFAULT_TEXTURE_SET",
    "LESION_SOURCES",
    "TEXTURE_SETS",
    "TextureSet",
    "procedural_background",
    "procedural_lesion_texture",
    "texture_set",
]

RGB = tuple[float, float, float]

#: Real H&E images (relative to the tile folder) used for background (normal) tissue:
#: stroma, collagen, loose connective tissue and low-cellularity tissue.
BACKGROUND_SOURCES = (
    "histolab/very-low-nuclei-score-level0.png",
    "histolab/medium-nuclei-score-level0.png",
    "histolab/tissue-level0-4302-10273-4814-10785.png",
    "histolab/tissue-level0-7352-11762-7864-12274.png",
    "histolab/tissue-level2-3000-7666-7096-11763.png",
    "histoqc_template1.png",
)
#: Real H&E images used for lesions: dense, nuclei-rich carcinoma.
LESION_SOURCES = (
    "histolab/high-nuclei-score-level0.png",
    "histoqc_template3.png",
    "tiatoolbox_target_image.png",
)
#: Tint of the procedural lesion texture of each lesion class (purple, blue, magenta);
#: the first is also the tint of the binary lesion texture.
_LESION_TINTS: tuple[RGB, RGB, RGB] = (
    (80.0, 45.0, 130.0),
    (40.0, 70.0, 160.0),
    (140.0, 25.0, 95.0),
)


@dataclass(frozen=True)
class TextureSet:
    """One named choice of texture sources (image names relative to the tile folder).

    Attributes:
        name: The name ``make_cohort(textures=...)`` takes.
        background: Images of the background (normal) tissue.
        lesion: Images of the lesions; class tasks paint class ``k`` with ``lesion[k]``.
        description: What the images show, in words (for the manifest).
        procedural_seed: Offset of the seeds of the procedural fallback (background
            ``1 + offset``, lesion ``2 + offset``, lesion class ``k``: ``2 + offset + k``).
        background_tint: RGB the procedural background is pushed towards (None: not).
        background_tint_weight: Weight of ``background_tint``, in [0, 1].
        lesion_tints: Tint of the procedural lesion of each lesion class (the first
            also the binary lesion's).
        lesion_tint_weight: Weight of the tint in the procedural lesion, in [0, 1]
            (0.5 for ``default``; lower is closer to the background).
    """

    name: str
    background: tuple[str, ...]
    lesion: tuple[str, ...]
    description: str
    procedural_seed: int = 0
    background_tint: RGB | None = None
    background_tint_weight: float = 0.0
    lesion_tints: tuple[RGB, RGB, RGB] = _LESION_TINTS
    lesion_tint_weight: float = 0.5

    def procedural_name(self, what: str) -> str:
        """Name of a procedural texture (``default``'s as before sets existed)."""
        if self.name == DEFAULT_TEXTURE_SET:
            return f"procedural-{what}"
        return f"procedural-{self.name}-{what}"

    def manifest_entry(self) -> dict[str, Any]:
        """The set as the manifest records it."""
        return {"name": self.name, "description": self.description}


#: The name of the set a cohort gets by default.
DEFAULT_TEXTURE_SET = "default"

#: The texture sets by name.
TEXTURE_SETS: dict[str, TextureSet] = {
    s.name: s
    for s in (
        TextureSet(
            name=DEFAULT_TEXTURE_SET,
            background=BACKGROUND_SOURCES,
            lesion=LESION_SOURCES,
            description="stroma and low-cellularity tissue; dense nuclei-rich carcinoma",
        ),
        TextureSet(
            name="site_b",
            # the folder's only other benign image: its fat tile (histolab/low-nuclei-...)
            # is mostly white, and tissue detection drops it
            background=("torchstain_target.png",),
            lesion=("torchstain_source.png", "histoqc_template4.png", "histoqc_template2.png"),
            description=(
                "a second site, no image shared with default: benign breast lobules in "
                "pale blue-violet stroma; carcinoma nests and sheets of tumour cells"
            ),
            procedural_seed=100,
            background_tint=(200.0, 185.0, 225.0),
            background_tint_weight=0.35,
            lesion_tints=((60.0, 55.0, 160.0), (30.0, 90.0, 170.0), (120.0, 40.0, 150.0)),
        ),
        TextureSet(
            name="subtle",
            background=BACKGROUND_SOURCES,
            lesion=("histoqc_template2.png", "histoqc_template4.png", "histolab/tcga-lung-rgb.png"),
            description=(
                "default's background; lesions of lower nuclear density (diffuse or "
                "pale-staining tumour cells) close to the background in colour and brightness"
            ),
            procedural_seed=200,
            lesion_tint_weight=0.25,
        ),
    )
}


def texture_set(name: Any) -> TextureSet:
    """The texture set called ``name``; :class:`ConfigError` naming the sets otherwise."""
    if not isinstance(name, str) or name not in TEXTURE_SETS:
        raise ConfigError(f"textures must be one of {', '.join(TEXTURE_SETS)}; got {name!r}")
    return TEXTURE_SETS[name]


def procedural_background(tset: TextureSet) -> np.ndarray:
    """The procedural background texture of ``tset`` (RGB uint8; seeded by a constant)."""
    import numpy as np

    arr = procedural_he(np.random.default_rng(1 + tset.procedural_seed))
    if tset.background_tint is not None:
        arr = tinted(arr, tset.background_tint, tset.background_tint_weight)
    return arr


def procedural_lesion_texture(tset: TextureSet, lesion_class: int = 0) -> np.ndarray:
    """The procedural lesion texture of ``tset`` for lesion texture set ``lesion_class``
    (0-based; 0 also for the binary lesion), RGB uint8, seeded by a constant."""
    import numpy as np

    rng = np.random.default_rng(2 + tset.procedural_seed + lesion_class)
    return procedural_lesion(
        rng, tint=tset.lesion_tints[lesion_class], weight=tset.lesion_tint_weight
    )
