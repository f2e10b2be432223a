"""Frozen configuration dataclasses and the YAML files that map onto them one to one.

A config file has one mapping per section (``tiling``, ``embed``, ``train``, ``heatmap``,
``report``, ``run``, ``cluster``; see ``SECTIONS``). Each section is validated by pydantic in
strict mode before its frozen dataclass is built: an unknown key, a wrong type or a missing
required value is a ``ConfigError`` naming the file and the dotted key, and every problem of
a file is listed at once. The rules are in ``docs/config.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, UnionType
from typing import Any, TypeVar, cast

from wsi.codecs import CODECS, SUBSAMPLING
from wsi.errors import ConfigError
from wsi.precision import PRECISIONS
from wsi.slide import BACKENDS

__all__ = [
    "TissueConfig",
    "TilingConfig",
    "EmbedConfig",
    "ClusterConfig",
    "RunConfig",
    "SECTIONS",
    "section_class",
    "load_file",
    "load_config",
    "load_embed_config",
    "load_section",
    "load_run_config",
]

#: Largest uncompressed chunk of tiles a worker holds at once, MiB.
MAX_CHUNK_MIB = 128

#: Field metadata marking a path: a relative value in a config file is resolved against
#: the folder of that file (``field(metadata=PATH)``).
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
    (1 to 64) batches ahead. The encoder, its weights, the precision and ``dtype`` make
    the features' identity (see ``wsi.embed.is_embedded``); batch size and threads do
    not change it.

    Raises ``ConfigError`` naming ``embed.<field>`` for a value of the wrong type or out
    of range.

    Example::

        config = EmbedConfig(encoder="uni", weights="weights/uni/pytorch_model.bin",
                             device="cuda:0", dtype="float16")
        wsi.embed_store("stores/s1.zarr", config)
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
        if self.precision not in PRECISIONS:
            raise bad("precision", f"choose one of {', '.join(map(repr, PRECISIONS))}")
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


_ADDRESS = re.compile(r"^([a-z][a-z0-9+.-]*://)?[^\s:/]+(:\d+)?$|^[a-z][a-z0-9+.-]*://\S+$")
_BYTES = re.compile(r"^\d+(\.\d+)?(e\d+)?\s*([kmgtp]i?b?|b)?$", re.IGNORECASE)


@dataclass(frozen=True)
class ClusterConfig:
    """Where a batch job (``wsi run``) runs: an existing Dask scheduler or a LocalCluster.

    ``n_workers``, ``threads_per_worker`` and ``memory_limit`` shape the LocalCluster only;
    an existing scheduler brings its own workers.
    """

    #: address of an existing Dask scheduler (``tcp://host:8786``); None: a LocalCluster
    scheduler: str | None = None
    n_workers: int | None = None  #: LocalCluster workers; None: one per core
    threads_per_worker: int = 1  #: LocalCluster threads per worker
    memory_limit: str = "auto"  #: per LocalCluster worker, Dask syntax ("4GiB") or "auto"
    #: worker resource the encoder's tasks ask for where workers declare it (``--resources``)
    gpu_resource: str = "GPU"

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"cluster.{name} = {getattr(self, name)!r}: {why}")

        if self.scheduler is not None and not _ADDRESS.match(self.scheduler):
            raise bad("scheduler", "give an address like tcp://host:8786, or null for a local one")
        if self.n_workers is not None and not 1 <= self.n_workers <= 1024:
            raise bad("n_workers", "must be between 1 and 1024, or null")
        if not 1 <= self.threads_per_worker <= 256:
            raise bad("threads_per_worker", "must be between 1 and 256")
        if self.memory_limit != "auto" and not _BYTES.match(self.memory_limit):
            raise bad("memory_limit", "give a size in Dask syntax such as '4GiB', or 'auto'")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.gpu_resource):
            raise bad("gpu_resource", "give a resource name such as 'GPU'")
        if self.scheduler is not None:
            local = [
                name
                for name, default in (
                    ("n_workers", None),
                    ("threads_per_worker", 1),
                    ("memory_limit", "auto"),
                )
                if getattr(self, name) != default
            ]
            if local:
                raise ConfigError(
                    f"cluster: {', '.join(local)} apply only to a LocalCluster, not to the "
                    f"scheduler {self.scheduler}; remove them or the scheduler"
                )

    def local_workers(self) -> int:
        """Workers of the LocalCluster: ``n_workers``, or one per core."""
        if self.n_workers is not None:
            return self.n_workers
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class RunConfig:
    """A batch job (``wsi run``): which slides, which trained model, where results go.

    Relative paths in a config file are resolved against the file's folder.
    """

    out: str = field(metadata=_PATH)  #: output folder (required)
    model: str = field(metadata=_PATH)  #: trained model folder, the one with model.json
    #: slide paths, folders or glob patterns; give these or ``manifest``
    slides: tuple[str, ...] = field(default=(), metadata=_PATH)
    #: CSV with columns slide_id, path, mpp and optional patient_id, label
    manifest: str | None = field(default=None, metadata=_PATH)
    exports: tuple[str, ...] = ("png", "geojson")  #: heatmap exports (wsi.heatmap.EXPORTS)
    retry_failed: bool = True  #: try again slides that failed in an earlier run

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"run.{name} = {getattr(self, name)!r}: {why}")

        for name in ("out", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise bad(name, "give a folder path")
        for name in ("slides", "exports"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise bad(name, "must be a list of non-empty strings")
            object.__setattr__(self, name, tuple(value))
        if self.manifest is not None and (not isinstance(self.manifest, str) or not self.manifest):
            raise bad("manifest", "give a CSV path, or null")
        if bool(self.slides) == (self.manifest is not None):
            raise ConfigError(
                "run: give either `slides` (paths, folders or glob patterns) or `manifest` "
                "(a CSV of slide_id, path, mpp), "
                + ("not both" if self.slides else "one of them is required")
            )
        from wsi.heatmap.exports import EXPORTS

        wrong = [e for e in self.exports if e not in EXPORTS]
        if wrong:
            raise bad("exports", f"choose from {list(EXPORTS)}")


#: Config file sections and the frozen dataclass each one maps onto ("module:Class"; the
#: module is imported only when a file holds that section).
SECTIONS: Mapping[str, str] = MappingProxyType(
    {
        "tiling": "wsi.config:TilingConfig",
        "embed": "wsi.config:EmbedConfig",
        "train": "wsi.mil.train:TrainConfig",
        "heatmap": "wsi.heatmap.options:HeatmapOptions",
        "report": "wsi.reports.options:ReportOptions",
        "run": "wsi.config:RunConfig",
        "cluster": "wsi.config:ClusterConfig",
    }
)

T = TypeVar("T")


def _hint(name: object, choices: typing.Iterable[str], what: str) -> str:
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"{what}: {', '.join(choices)}"


def section_class(section: str) -> type[Any]:
    """The frozen dataclass that config section ``section`` maps onto.

    Args:
        section: a key of ``SECTIONS``, e.g. ``"heatmap"``.

    Returns:
        The dataclass (its module is imported now).

    Raises:
        ConfigError: ``section`` is not a known section.

    Example:
        >>> section_class("tiling").__name__
        'TilingConfig'
    """
    if section not in SECTIONS:
        raise ConfigError(f"{section}: unknown section; {_hint(section, SECTIONS, 'sections')}")
    module, _, name = SECTIONS[section].partition(":")
    return cast(type[Any], getattr(importlib.import_module(module), name))


# --- reading and validating -------------------------------------------------------------


def _read(path: str | os.PathLike[str]) -> dict[Any, Any]:
    """The top-level mapping of a YAML file (empty for an empty file)."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"{p}: config file not found.") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: cannot read the config file ({err}).") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{p}: {at}not valid YAML: {problem}") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{p}: expected a mapping of sections ({', '.join(SECTIONS)}) at the top level, "
            f"got {_show(raw)}"
        )
    return raw


def _show(value: object) -> str:
    """A value as the user wrote it in YAML, shortened."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_NESTED: dict[type[Any], dict[str, type[Any]]] = {}
_ADAPTERS: dict[type[Any], Any] = {}


def _nested(cls: type[Any]) -> dict[str, type[Any]]:
    """Fields of ``cls`` that hold another dataclass (or None), by name."""
    if cls not in _NESTED:
        hints = typing.get_type_hints(cls)
        out: dict[str, type[Any]] = {}
        for f in dataclasses.fields(cls):
            tp = hints.get(f.name)
            union = typing.get_origin(tp) in (typing.Union, UnionType)
            options = typing.get_args(tp) if union else (tp,)
            classes = [c for c in options if isinstance(c, type) and dataclasses.is_dataclass(c)]
            if len(classes) == 1:
                out[f.name] = classes[0]
        _NESTED[cls] = out
    return _NESTED[cls]


def _adapter(cls: type[Any]) -> Any:
    """The pydantic TypeAdapter of dataclass ``cls`` (built once)."""
    if cls not in _ADAPTERS:
        from pydantic import TypeAdapter

        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def _resolve_paths(cls: type[Any], data: dict[Any, Any], base: Path) -> dict[Any, Any]:
    """``data`` with the relative values of path fields joined to ``base``."""

    def resolve(value: object) -> object:
        if not isinstance(value, str) or not value or "://" in value:
            return value
        return os.path.normpath(os.path.join(base, os.path.expanduser(value)))

    out = dict(data)
    nested = _nested(cls)
    for f in dataclasses.fields(cls):
        if f.name not in out:
            continue
        value = out[f.name]
        if f.metadata.get("path"):
            out[f.name] = [resolve(v) for v in value] if isinstance(value, list) else resolve(value)
        elif f.name in nested and isinstance(value, dict):
            out[f.name] = _resolve_paths(nested[f.name], value, base)
    return out


def _known_keys(
    cls: type[Any],
    data: dict[Any, Any],
    key: str,
    where: typing.Callable[[str], str],
    problems: list[str],
    top: str | None = None,
) -> dict[str, Any]:
    """``data`` without unknown keys (each one added to ``problems``), nested ones too."""
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    nested = _nested(cls)
    clean: dict[str, Any] = {}
    for name, value in data.items():
        first = top if top is not None else str(name)
        if name not in fields:
            hint = _hint(name, fields, "known keys")
            problems.append(f"{where(first)}: {key}.{name}: unknown key; {hint}")
            continue
        if name in nested and isinstance(value, dict):
            value = _known_keys(nested[name], value, f"{key}.{name}", where, problems, first)
        clean[name] = value
    return clean


_YAML_WORDS = {"an object": "a mapping", "valid array": "valid list", "valid tuple": "valid list"}


def _describe(error: Mapping[str, Any], section: str, where: typing.Callable[[str], str]) -> str:
    """One pydantic error as ``<source>: <dotted key>: <what is wrong>``."""
    loc = error["loc"]
    key = section + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    source = where(str(loc[0]) if loc else "")
    if error["type"] in ("value_error", "assertion_error"):  # a __post_init__ check
        msg = str(error.get("ctx", {}).get("error", error["msg"]))
        named = msg.startswith((key + ".", key + " ", key + ":"))  # the message names the key
        return f"{source}: {msg}" if named else f"{source}: {key}: {msg}"
    if error["type"] == "missing":
        return f"{source}: {key}: required, but missing"
    msg = str(error["msg"])
    for word, yaml_word in _YAML_WORDS.items():
        msg = msg.replace(word, yaml_word)
    return f"{source}: {key}: {msg}, got {_show(error['input'])}"


def _build(
    section: str, cls: type[Any], data: dict[Any, Any], source: str, overridden: set[str]
) -> tuple[Any, list[str]]:
    """Validate one section; returns (the dataclass or None, problems)."""
    from pydantic import ValidationError

    def where(top: str) -> str:
        return "overrides" if top in overridden else source

    problems: list[str] = []
    clean = _known_keys(cls, data, section, where, problems)
    try:
        blob = json.dumps(clean, default=str, allow_nan=True)
    except (TypeError, ValueError) as err:
        return None, [*problems, f"{source}: {section}: not plain YAML data ({err})"]
    try:
        built = _adapter(cls).validate_json(blob, strict=True)
    except ValidationError as err:
        problems += [_describe(e, section, where) for e in err.errors(include_url=False)]
        return None, problems
    except TypeError as err:  # a __post_init__ that raises TypeError
        return None, [*problems, f"{source}: {section}: {err}"]
    return (None if problems else built), problems


def _without_none(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides minus those that are None ("not given"), mappings as dicts."""
    return {
        k: _without_none(v) if isinstance(v, Mapping) else v
        for k, v in overrides.items()
        if v is not None
    }


def _merge(data: dict[Any, Any], overrides: Mapping[str, Any]) -> dict[Any, Any]:
    out = dict(data)
    for k, v in overrides.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _merge(out[k], v) if nested else v
    return out


def _load(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    classes: Mapping[str, type[Any]] | None = None,
) -> dict[str, Any]:
    """Every section of ``path`` plus the overridden ones, validated and built.

    ``overrides`` maps a section to key/value pairs that win over the file (None values are
    skipped); a section in ``overrides`` is built even when the file lacks it. ``classes``
    adds or replaces section classes. Raises one ConfigError listing every problem.
    """
    raw = _read(path) if path is not None else {}
    source = str(path) if path is not None else "overrides"
    base = Path(os.path.abspath(path)).parent if path is not None else None
    overrides = {s: _without_none(o) for s, o in (overrides or {}).items()}
    classes = dict(classes or {})
    known = set(SECTIONS) | set(classes)
    problems: list[str] = []
    for name in raw:
        if name not in known:
            hint = _hint(name, known, "sections")
            problems.append(f"{source}: {name}: unknown section; {hint}")
    built: dict[str, Any] = {}
    for section in [s for s in raw if s in known] + [s for s in overrides if s not in raw]:
        data = raw.get(section)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.append(
                f"{source}: {section}: must be a mapping of keys to values, got {_show(data)}"
            )
            continue
        cls = classes.get(section) or section_class(section)
        if base is not None:
            data = _resolve_paths(cls, data, base)
        extra = overrides.get(section, {})
        obj, found = _build(section, cls, _merge(data, extra), source, set(extra))
        problems += found
        if obj is not None:
            built[section] = obj
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        head = f"{source}: {len(problems)} problems"
        raise ConfigError(head + ":\n  " + "\n  ".join(problems))
    return built


# --- public loaders ---------------------------------------------------------------------


def load_file(path: str | os.PathLike[str]) -> dict[str, object]:
    """Read and validate a whole config file.

    Every section present is validated, and every problem is listed in one error.

    Args:
        path: a YAML file whose top level maps section names (``SECTIONS``) to mappings.

    Returns:
        Section name -> its built frozen dataclass, for the sections the file holds.

    Raises:
        ConfigError: the file is missing, not YAML, not a mapping, or has an unknown
            section, an unknown key, a value of the wrong type or a failed check.

    Example:
        >>> load_file("configs/default.yaml")["tiling"].tile_size
        256
    """
    return _load(path)


def load_section(
    path: str | os.PathLike[str] | None, section: str, cls: type[T], **overrides: Any
) -> T:
    """Read section ``section`` of a config file into the frozen dataclass ``cls``.

    The whole file is validated, so a bad key in another section is reported too.

    Args:
        path: the YAML file, or None for the dataclass defaults.
        section: the section name, e.g. ``"train"``.
        cls: the dataclass the section maps onto (may be outside ``SECTIONS``).
        overrides: keys that win over the file (e.g. command-line options), validated the
            same way; a None value means "not given" and is skipped.

    Returns:
        An instance of ``cls``; the defaults where the file lacks the section.

    Raises:
        ConfigError: a problem in the file or the overrides (see ``load_file``).

    Example:
        >>> from wsi.mil.train import TrainConfig
        >>> load_section("configs/default.yaml", "train", TrainConfig, folds=3).folds
        3
    """
    return cast(T, _load(path, {section: overrides}, {section: cls})[section])


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> TilingConfig:
    """Read section ``tiling`` of a config file (None: the defaults) into a TilingConfig.

    Args:
        path: the YAML file, or None.
        overrides: TilingConfig keys that win over the file; None values are skipped.

    Returns:
        The TilingConfig.

    Raises:
        ConfigError: see ``load_file``.

    Example:
        >>> load_config(None, tile_size=224).tile_size
        224
    """
    return load_section(path, "tiling", TilingConfig, **overrides)


def load_embed_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> EmbedConfig:
    """Read section ``embed`` of a config file (None: the defaults) into an EmbedConfig.

    Args:
        path: the YAML file, or None; a relative ``weights`` path in it is resolved against
            the file's folder.
        overrides: EmbedConfig keys that win over the file; None values are skipped.

    Returns:
        The EmbedConfig.

    Raises:
        ConfigError: see ``load_file``.

    Example:
        >>> load_embed_config("configs/encoders/uni.yaml").encoder
        'uni'
    """
    return load_section(path, "embed", EmbedConfig, **overrides)


def load_run_config(
    path: str | os.PathLike[str] | None, **overrides: Any
) -> tuple[RunConfig, ClusterConfig, dict[str, Any]]:
    """Read a batch job's config file (``wsi run``).

    Relative paths in the file (``run.out``, ``run.model``, ``run.slides``, ``run.manifest``,
    ``embed.weights``) are resolved against the file's folder; override values are kept as
    given (relative to the working directory).

    Args:
        path: the YAML file (it must give ``run.out`` and ``run.model`` unless the overrides
            do), or None.
        overrides: ``RunConfig`` or ``ClusterConfig`` keys by name (``out=``, ``slides=``,
            ``scheduler=``, ``n_workers=`` ...), or a section name with a mapping
            (``embed={"device": "cuda"}``). They win over the file and are validated the
            same way; None values are skipped.

    Returns:
        (run, cluster, others): the RunConfig, the ClusterConfig (defaults where the file has
        no ``cluster`` section), and section name -> built dataclass for the other sections
        the file holds or the overrides name (tiling, embed, train, heatmap, report).

    Raises:
        ConfigError: an unknown override name, or any problem of the file (see ``load_file``).

    Example:
        >>> run, cluster, others = load_run_config("configs/run.yaml", scheduler=None)
        >>> run.out.endswith("runs/example"), cluster.scheduler, sorted(others)
        (True, None, [])
    """
    sections: dict[str, dict[str, Any]] = {"run": {}, "cluster": {}}
    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    cluster_keys = {f.name for f in dataclasses.fields(ClusterConfig)}
    for name, value in overrides.items():
        if value is None:
            continue
        if name in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"overrides: {name}: expected a mapping of {name} keys")
            sections.setdefault(name, {}).update(value)
        elif name in run_keys or name in cluster_keys:
            sections["run" if name in run_keys else "cluster"][name] = value
        else:
            hint = _hint(name, run_keys | cluster_keys | set(SECTIONS), "known")
            raise ConfigError(f"overrides: {name}: unknown key; {hint}")
    built = _load(path, sections)
    return built.pop("run"), built.pop("cluster"), built
