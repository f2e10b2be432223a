"""Frozen configuration dataclasses; ``configs/default.yaml`` maps onto them one to one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from wsi.errors import ConfigError

__all__ = [
    "TissueConfig",
    "TilingConfig",
    "EmbedConfig",
    "load_config",
    "load_embed_config",
    "load_section",
    "params_hash",
    "CODECS",
]

#: Largest uncompressed chunk of tiles a worker holds at once, MiB.
MAX_CHUNK_MIB = 128

#: Tile codecs: ``jpeg`` (lossy, per-tile JPEG; default) and ``zstd`` (lossless).
CODECS = ("jpeg", "zstd")


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
    """How tiles are cut and stored (see ``wsi.tiling``)."""

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
            raise bad("codec", f"choose one of {CODECS}")
        hi = 100 if self.codec == "jpeg" else 22
        if self.quality is not None and not 1 <= self.quality <= hi:
            raise bad("quality", f"must be between 1 and {hi} for codec {self.codec}")
        if self.chroma_subsampling not in ("444", "420"):
            raise bad("chroma_subsampling", "choose '444' or '420'")
        if self.backend not in ("pyvips", "openslide"):
            raise bad("backend", "choose 'openslide' or 'pyvips'")

    @property
    def level(self) -> int:
        """The codec's quality (JPEG) or level (zstd), with the codec's default filled in."""
        if self.quality is not None:
            return self.quality
        return 90 if self.codec == "jpeg" else 1

    @property
    def step(self) -> int:
        """Stride between tiles, in output pixels."""
        return self.stride if self.stride is not None else self.tile_size


@dataclass(frozen=True)
class EmbedConfig:
    """How a store's tiles are embedded (see ``wsi.embed``)."""

    encoder: str = "efficientnet_lite0"  #: registered name or timm architecture (`wsi encoders`)
    weights: str | None = None  #: local weight file; None: the encoder's registered source
    device: str = "auto"  #: "cpu", "cuda", "cuda:N" or "auto" (a GPU if there is one)
    precision: str = "auto"  #: "auto" (bf16 on a GPU, fp32 on a CPU), "fp32", "bf16", "fp16"
    batch_size: int | None = None  #: tiles per forward pass; None: 64 on a CPU, 256 on a GPU
    dtype: str = "float32"  #: stored embeddings: "float32" or "float16"
    #: background threads reading tile chunks; None: 1 on a CPU (the cores are the
    #: model's), up to 8 on a GPU
    loader_threads: int | None = None
    prefetch: int = 4  #: batches read ahead of the model

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"embed.{name} = {getattr(self, name)!r}: {why}")

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
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise bad("precision", "choose 'auto', 'fp32', 'bf16' or 'fp16'")
        if self.dtype not in ("float32", "float16"):
            raise bad("dtype", "choose 'float32' or 'float16'")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")
        ):
            raise bad("device", "choose 'auto', 'cpu', 'cuda' or 'cuda:N'")

    def loaders_for(self, device_type: str) -> int:
        if self.loader_threads is not None:
            return self.loader_threads
        return 1 if device_type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))

    def batch_for(self, device_type: str) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 64 if device_type == "cpu" else 256


T = TypeVar("T")


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "tissue" and cls is TilingConfig:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.tissue: expected a mapping, got {value!r}")
            value = _build(TissueConfig, value, f"{where}.tissue")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


_SECTIONS = ("tiling", "embed", "train")


def _read_section(path: str | os.PathLike[str] | None, section: str) -> tuple[dict[str, Any], str]:
    if path is None:
        return {}, section
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"{p}: config file not found.") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML ({err}).") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level.")
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{p}: unknown section(s) {unknown}; known: {list(_SECTIONS)}")
    data = raw.get(section) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: `{section}` must be a mapping of keys to values, got {data!r}")
    return dict(data), f"{p}: {section}"


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> TilingConfig:
    """Read a YAML config (section ``tiling``) into a TilingConfig; None gives the defaults."""
    data, where = _read_section(path, "tiling")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _build(TilingConfig, data, where)


def load_embed_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> EmbedConfig:
    """Read a YAML config (section ``embed``) into an EmbedConfig; None gives the defaults."""
    data, where = _read_section(path, "embed")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _build(EmbedConfig, data, where)


def load_section(
    path: str | os.PathLike[str] | None, section: str, cls: type[T], **overrides: Any
) -> T:
    """Read YAML section ``section`` into the frozen dataclass ``cls`` (None: defaults)."""
    data, where = _read_section(path, section)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _build(cls, data, where)


def params_hash(params: dict[str, Any]) -> str:
    """A stable short hash of JSON-able parameters."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
