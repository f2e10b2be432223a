"""Frozen stage configs: tissue detection, tiling and embedding, with their defaults.

Each one is the section of a config file that maps onto it one to one (``tiling``,
``embed``); reading and validating those files is ``wsi.configfile``. Checks beyond
types (ranges, choices from the registries ``wsi.codecs.CODECS``, ``wsi.slide.BACKENDS``
and ``wsi.precision.PRECISIONS``) are the dataclasses' own and raise ``ConfigError``
naming ``<section>.<field>``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from wsi.codecs import CODECS, SUBSAMPLING
from wsi.errors import ConfigError
from wsi.precision import PRECISIONS
from wsi.slide import BACKENDS

__all__ = ["TissueConfig", "TilingConfig", "EmbedConfig", "MAX_CHUNK_MIB"]

#: Largest uncompressed chunk of tiles a worker holds at once, MiB.
MAX_CHUNK_MIB = 128

#: Field metadata marking a path: a relative value in a config file is resolved against
#: the folder of that file (``field(metadata={"path": True})``, read by ``wsi.configfile``).
_PATH: Mapping[str, Any] = MappingProxyType({"path": True})


@dataclass(frozen=True)
class TissueConfig:
    """Tissue detection on a low-resolution image (see ``wsi.tissue``).

    Areas are in square micrometres so they mean the same at any mask resolution.
    """

    mask_mpp: float = 8.0  #: resolution of the tissue mask, micrometres per pixel
    median_size: int = 7  #: median blur window, mask pixels
    min_saturation: float = 0.04  #: floor of the Otsu saturation threshold (0..1)
    max_saturation: float = 0.15  #: ceiling of the Otsu threshold, so pale tissue is kept
    closing_um: float = 32.0  #: radius of the morphological closing, micrometres
    min_object_um2: float = 20_000.0  #: tissue pieces smaller than this are dropped
    max_hole_um2: float = 50_000.0  #: holes smaller than this are filled
    exclude_pen: bool = True  #: remove pen-ink pixels (and a margin) from the mask
    pen_margin_um: float = 48.0  #: dilation of the pen mask before it is removed
    min_pen_um2: float = 5_000.0  #: ink strokes smaller than this are not pen


@dataclass(frozen=True)
class TilingConfig:
    """How tiles are cut and stored (see ``wsi.tiling``); section ``tiling`` of a config.

    A tile is ``tile_size`` x ``tile_size`` output pixels at ``target_mpp`` micrometres
    per pixel (0.05 to 50), read from the coarsest pyramid level at least that fine and
    resized (a level within 2 % of the target is used as is); its footprint on level 0 is
    ``tile_size * target_mpp / slide mpp`` level-0 pixels. Tiles lie on a grid with a
    step of ``stride`` output pixels (None: ``tile_size``, no overlap; at most
    4 x ``tile_size``) and are kept where at least ``min_tissue`` (0..1) of their area
    is tissue (``tissue``: a ``TissueConfig``, areas in µm²). ``tile_size`` is 16 to
    4096 pixels. ``chunk_tiles`` (1 to 1024) tiles make one Zarr chunk and one Dask
    task; uncompressed, a chunk (``tile_size² * 3 * chunk_tiles`` bytes) may not exceed
    ``MAX_CHUNK_MIB`` (128 MiB). ``codec`` ``"jpeg"`` (lossy, ``quality`` 1..100, default
    90, ``chroma_subsampling`` ``"444"`` or ``"420"``) or ``"zstd"`` (lossless, level
    1..22, default 1); ``backend`` the tile reader, ``"openslide"`` or ``"pyvips"``.

    Raises ``ConfigError`` naming ``tiling.<field>`` for a value of the wrong type or out
    of range.

    Example::

        config = TilingConfig(tile_size=224, target_mpp=0.5, stride=112, codec="zstd")
        config.step, config.level      # (112, 1): output pixels between tiles, zstd level
        store = wsi.tile_slide("slides/s1.svs", "stores", config)
    """

    tile_size: int = 256  #: output tile side, pixels
    target_mpp: float = 0.5  #: output resolution, micrometres per pixel
    stride: int | None = None  #: step between tiles in output pixels; None = tile_size
    min_tissue: float = 0.5  #: minimum tissue fraction under a tile (0..1)
    chunk_tiles: int = 64  #: tiles per Zarr chunk and per Dask task
    codec: str = "jpeg"  #: "jpeg" (lossy) or "zstd" (lossless)
    quality: int | None = None  #: JPEG quality (1..100) or zstd level (1..22); None: 90 / 1
    chroma_subsampling: str = "444"  #: JPEG only: "444" (none) or "420" (smaller, faster)
    #: tile reader: "openslide" (default: detects corrupt tile data) or "pyvips" (about 4x
    #: faster reads where libvips gives OpenSlide's pixels, see wsi.slide.tile_backend)
    backend: str = "openslide"
    tissue: TissueConfig = field(default_factory=TissueConfig)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"tiling.{name} = {getattr(self, name)!r}: {why}")

        for name in ("tile_size", "chunk_tiles", "stride", "quality"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise bad(name, "must be a whole number")
        for name in ("target_mpp", "min_tissue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(name, "must be a number")
        if not 16 <= self.tile_size <= 4096:
            raise bad("tile_size", "must be between 16 and 4096 pixels")
        if not 0.05 <= self.target_mpp <= 50:
            raise bad("target_mpp", "must be between 0.05 and 50 micrometres per pixel")
        if self.stride is not None and not 1 <= self.stride <= 4 * self.tile_size:
            raise bad("stride", "must be between 1 and 4 x tile_size pixels, or null")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise bad("min_tissue", "is a fraction between 0 and 1")
        if not 1 <= self.chunk_tiles <= 1024:
            raise bad("chunk_tiles", "must be between 1 and 1024")
        chunk_mib = self.tile_size**2 * 3 * self.chunk_tiles / 2**20
        if chunk_mib > MAX_CHUNK_MIB:
            raise bad(
                "chunk_tiles",
                f"{self.chunk_tiles} tiles of {self.tile_size} px make {chunk_mib:.0f} MiB per "
                f"chunk, more than {MAX_CHUNK_MIB} MiB a worker should hold; lower chunk_tiles",
            )
        if self.codec not in CODECS:
            raise bad("codec", f"choose one of {tuple(CODECS)}")
        lo, hi = CODECS[self.codec].levels
        if self.quality is not None and not lo <= self.quality <= hi:
            raise bad("quality", f"must be between {lo} and {hi} for codec {self.codec}")
        if self.chroma_subsampling not in SUBSAMPLING:
            raise bad("chroma_subsampling", f"choose one of {SUBSAMPLING}")
        if self.backend not in BACKENDS:
            raise bad("backend", f"choose one of {tuple(BACKENDS)}")

    @property
    def level(self) -> int:
        """The codec's quality (JPEG) or level (zstd), with the codec's default filled in."""
        if self.quality is not None:
            return self.quality
        return CODECS[self.codec].default_level

    @property
    def step(self) -> int:
        """Stride between tiles, in output pixels."""
        return self.stride if self.stride is not None else self.tile_size


@dataclass(frozen=True)
class EmbedConfig:
    """How a store's tiles are embedded (see ``wsi.embed``); section ``embed`` of a config.

    ``encoder`` is a registered encoder or a timm architecture name; ``weights`` a local
    weight file (a relative path in a config file is resolved against the file's folder;
    None: the encoder's registered source). ``device`` is ``"auto"`` (a CUDA GPU if there
    is one, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or ``"mps"``);
    ``precision`` the compute precision: ``"auto"`` (bf16 on a CUDA GPU, fp32 otherwise),
    ``"fp32"``, ``"bf16"`` or ``"fp16"``. ``batch_size`` is tiles per forward pass
    (1 to 8192; None: 64 on a CPU, 256 on a GPU); ``dtype`` the stored features'
    (``"float32"`` or ``"float16"``); ``loader_threads`` (1 to 64; None: 1 on a CPU, else
    up to 8) threads read and decode tile chunks while the model runs, ``prefetch``
    (1 to 64) batches ahead. ``stain_target`` (a JSON target written by ``wsi
    stain-target``) normalises every tile's stain before the encoder sees it. The encoder,
    its weights, the precision, ``dtype`` and the stain normalisation (method and target
    checksum) make the features' identity (see ``wsi.embed.is_embedded``); batch size and
    threads do not change it. ``stain_views`` (0 to 16) HED-jittered views of every tile
    (``stain_jitter``: the scale range of each stain) are embedded beside the tiles, for
    stain augmentation in training (``TrainConfig.stain_augment``).

    ``encoders`` names several encoders embedded in one pass (each tile batch is read and
    decoded once and fed to each; ``names`` is the pass, ``encoders`` or else
    ``(encoder,)``); ``encoder`` is then left at its default or is one of them. One
    ``weights`` file is for one encoder only; with several, ``encoder_weights`` maps
    names to files (``--weights NAME=PATH``). Every other key (device, precision, batch
    size, dtype, loaders, stain options) applies to every encoder of the pass, and each
    encoder's features keep the identity they would have alone (``for_encoder``).

    Raises ``ConfigError`` naming ``embed.<field>`` for a value of the wrong type or out
    of range.

    Example::

        config = EmbedConfig(encoder="uni", weights="weights/uni/pytorch_model.bin",
                             device="cuda:0", dtype="float16")
        wsi.embed_store("stores/s1.zarr", config)

        both = EmbedConfig(encoders=("uni", "resnet50_trunc"), device="cuda",
                           encoder_weights={"uni": "weights/uni/pytorch_model.bin"})
        wsi.embed_store("stores/s1.zarr", both)    # features/uni and features/resnet50_trunc
    """

    encoder: str = "efficientnet_lite0"  #: registered name or timm architecture (`wsi encoders`)
    #: local weight file; None: the encoder's registered source (``wsi encoders``)
    weights: str | None = field(default=None, metadata=_PATH)
    device: str = "auto"  #: "cpu", "cuda", "cuda:N" or "auto" (a GPU if there is one)
    precision: str = "auto"  #: "auto" (bf16 on a GPU, fp32 on a CPU), "fp32", "bf16", "fp16"
    batch_size: int | None = None  #: tiles per forward pass; None: 64 on a CPU, 256 on a GPU
    dtype: str = "float32"  #: stored embeddings: "float32" or "float16"
    #: background threads reading tile chunks; None: 1 on a CPU (the cores are the
    #: model's), up to 8 on a GPU
    loader_threads: int | None = None
    prefetch: int = 4  #: batches read ahead of the model
    #: stain normalisation before embedding: a target file written by `wsi stain-target`
    #: (Macenko or Reinhard, from training slides); part of the features' identity.
    #: None: tiles are embedded as stored
    stain_target: str | None = field(default=None, metadata=_PATH)
    #: stain augmentation for training: embed this many HED-jittered views of every tile
    #: too (``features/<encoder>/views``); 0: none
    stain_views: int = 0
    #: HED jitter of those views: each stain scaled by 1 + U(-s, s) (Tellez et al. 2018)
    stain_jitter: float = 0.2
    #: several encoders in one pass (each tile batch read once, fed to each); empty:
    #: ``encoder`` alone
    encoders: tuple[str, ...] = ()
    #: weight files by encoder name (``--weights NAME=PATH``), for a pass of several
    encoder_weights: dict[str, str] = field(default_factory=dict, metadata=_PATH)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"embed.{name} = {getattr(self, name)!r}: {why}")

        self._check_encoders(bad)

        if (
            isinstance(self.stain_views, bool)
            or not isinstance(self.stain_views, int)
            or not (0 <= self.stain_views <= 16)
        ):
            raise bad("stain_views", "must be a whole number from 0 to 16")
        if not isinstance(self.stain_jitter, (int, float)) or not 0 < self.stain_jitter <= 1:
            raise bad("stain_jitter", "must be a number in (0, 1]")

        for name in ("batch_size", "loader_threads", "prefetch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise bad(name, "must be a whole number")
        if self.batch_size is not None and not 1 <= self.batch_size <= 8192:
            raise bad("batch_size", "must be between 1 and 8192, or null")
        if self.loader_threads is not None and not 1 <= self.loader_threads <= 64:
            raise bad("loader_threads", "must be between 1 and 64")
        if not 1 <= self.prefetch <= 64:
            raise bad("prefetch", "must be between 1 and 64")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"choose one of {', '.join(map(repr, PRECISIONS))}")
        if self.dtype not in ("float32", "float16"):
            raise bad("dtype", "choose 'float32' or 'float16'")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")
        ):
            raise bad("device", "choose 'auto', 'cpu', 'cuda' or 'cuda:N'")

    def _check_encoders(self, bad: Callable[[str, str], ConfigError]) -> None:
        if not isinstance(self.encoders, (tuple, list)) or not all(
            isinstance(e, str) and e for e in self.encoders
        ):
            raise bad("encoders", "must be a list of encoder names")
        object.__setattr__(self, "encoders", tuple(self.encoders))  # a list given in Python
        if len(set(self.encoders)) != len(self.encoders):
            raise bad("encoders", "names an encoder twice")
        default = type(self).__dataclass_fields__["encoder"].default
        if self.encoders and self.encoder != default and self.encoder not in self.encoders:
            raise bad(
                "encoders",
                f"embed.encoder is {self.encoder!r}, not one of them: list every encoder of "
                "the pass in embed.encoders (or give embed.encoder alone)",
            )
        names = self.names
        if self.weights is not None and len(names) > 1:
            raise bad(
                "weights",
                f"one weight file for {len(names)} encoders ({', '.join(names)}) is "
                "ambiguous: give each encoder its own, `--weights NAME=PATH` (repeatable) "
                "on the command line or `encoder_weights: {NAME: PATH}` in the embed section",
            )
        if not isinstance(self.encoder_weights, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.encoder_weights.items()
        ):
            raise bad("encoder_weights", "must map encoder names to weight files")
        for name in self.encoder_weights:
            if name not in names:
                raise bad(
                    "encoder_weights",
                    f"{name!r} is not an encoder of this pass ({', '.join(names)}): add it "
                    "to embed.encoders (--encoder), or drop its weights",
                )
        if self.weights is not None and self.encoder_weights:
            raise bad(
                "weights",
                f"embed.encoder_weights gives the weights of {names[0]!r} too: give one",
            )

    @property
    def names(self) -> tuple[str, ...]:
        """The encoders of the pass, in order: ``encoders``, or else ``(encoder,)``."""
        return self.encoders or (self.encoder,)

    def weights_for(self, name: str) -> str | None:
        """The weight file given for encoder ``name`` (None: its registered source)."""
        if name in self.encoder_weights:
            return self.encoder_weights[name]
        return self.weights if self.names == (name,) else None

    def for_encoder(self, name: str) -> EmbedConfig:
        """The one-encoder config of ``name`` in this pass: what embedding it alone would
        take (its features' identity is the same either way)."""
        return replace(
            self, encoder=name, encoders=(), weights=self.weights_for(name), encoder_weights={}
        )

    def loaders_for(self, device_type: str) -> int:
        if self.loader_threads is not None:
            return self.loader_threads
        return 1 if device_type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))

    def batch_for(self, device_type: str) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 64 if device_type == "cpu" else 256
