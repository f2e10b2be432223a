"""Config files: YAML sections validated by pydantic and built into frozen dataclasses.

A config file has one mapping per section (``tiling``, ``embed``, ``train``, ``heatmap``,
``report``; see ``SECTIONS``). Each section is validated by pydantic in strict mode
before its frozen dataclass is built: an unknown key, a wrong type or a missing required
value is a ``ConfigError`` naming the file and the dotted key, and every problem of a file
is listed at once. The rules are in ``docs/config.md``.

The sections of a ``wsi run`` job file (``run``, ``cluster``: ``JOB_SECTIONS``) belong to
the application that composes the stages; the loaders here let them pass unread, so one
file serves every command. The application validates them by handing their classes to
``load_sections`` (``classes=``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType, UnionType
from typing import Any, TypeVar, cast

from wsi.config import EmbedConfig, TilingConfig
from wsi.errors import ConfigError

__all__ = [
    "SECTIONS",
    "JOB_SECTIONS",
    "section_class",
    "did_you_mean",
    "load_file",
    "load_sections",
    "load_section",
    "load_config",
    "load_embed_config",
]

#: Config file sections and the frozen dataclass each one maps onto ("module:Class"; the
#: module is imported only when a file holds that section).
SECTIONS: Mapping[str, str] = MappingProxyType(
    {
        "tiling": "wsi.config:TilingConfig",
        "embed": "wsi.config:EmbedConfig",
        "train": "wsi.mil.train:TrainConfig",
        "heatmap": "wsi.heatmap.options:HeatmapOptions",
        "report": "wsi.reports.options:ReportOptions",
    }
)

#: Sections of a ``wsi run`` job file, validated by its own loader: the loaders here let
#: them pass unread unless ``load_sections`` is given their classes.
JOB_SECTIONS = ("run", "cluster")

T = TypeVar("T")


def did_you_mean(name: object, choices: Iterable[str], what: str) -> str:
    """A hint for an unknown ``name``: the closest of ``choices``, or all of them."""
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
        hint = did_you_mean(section, SECTIONS, "sections")
        raise ConfigError(f"{section}: unknown section; {hint}")
    module, _, name = SECTIONS[section].partition(":")
    return cast(type[Any], getattr(importlib.import_module(module), name))


# --- reading and validating -------------------------------------------------------------


def _read(path: str | os.PathLike[str], sections: Iterable[str]) -> dict[Any, Any]:
    """The top-level mapping of a YAML file (empty for an empty file); ``sections`` are
    named when the top level is not a mapping."""
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
            f"{p}: expected a mapping of sections ({', '.join(sections)}) at the top level, "
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
            if isinstance(value, list):
                out[f.name] = [resolve(v) for v in value]
            elif isinstance(value, dict):  # paths by name (embed.encoder_weights)
                out[f.name] = {k: resolve(v) for k, v in value.items()}
            else:
                out[f.name] = resolve(value)
        elif f.name in nested and isinstance(value, dict):
            out[f.name] = _resolve_paths(nested[f.name], value, base)
    return out


def _known_keys(
    cls: type[Any],
    data: dict[Any, Any],
    key: str,
    where: Callable[[str], str],
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
            hint = did_you_mean(name, fields, "known keys")
            problems.append(f"{where(first)}: {key}.{name}: unknown key; {hint}")
            continue
        if name in nested and isinstance(value, dict):
            value = _known_keys(nested[name], value, f"{key}.{name}", where, problems, first)
        clean[name] = value
    return clean


_YAML_WORDS = {"an object": "a mapping", "valid array": "valid list", "valid tuple": "valid list"}


def _describe(error: Mapping[str, Any], section: str, where: Callable[[str], str]) -> str:
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

    def where(top: str) -> str:
        return "overrides" if top in overridden else source

    problems: list[str] = []
    clean = _known_keys(cls, data, section, where, problems)
    try:
        blob = json.dumps(clean, default=str, allow_nan=True)
    except (TypeError, ValueError) as err:
        return None, [*problems, f"{source}: {section}: not plain YAML data ({err})"]
    built, found = _validate(cls, blob, section, source, where)
    if not found:
        return (None if problems else built), problems

    # a wrong type stops validation before the value checks, and a dataclass's checks stop
    # at the first bad value: check the keys one by one, each with the keys found good so
    # far (a check may depend on another key), to list every problem at once
    def probe(keys: dict[str, Any]) -> list[str]:
        blob = json.dumps(keys, default=str, allow_nan=True)
        return _validate(cls, blob, section, source, where)[1]

    good: dict[str, Any] = {}
    pending = dict(clean)
    grew = True
    while grew:
        grew = False
        for k, v in list(pending.items()):
            if not any(_names(m, f"{section}.{k}") for m in probe({**good, k: v})):
                good[k] = pending.pop(k)
                grew = True
    for k, v in pending.items():
        found += [m for m in probe({**good, k: v}) if _names(m, f"{section}.{k}")]
    return None, problems + list(dict.fromkeys(found))


def _names(message: str, key: str) -> bool:
    """Whether a problem's message is about dotted ``key`` (or a key nested in it)."""
    return re.search(rf"(^|[\s:]){re.escape(key)}(?![A-Za-z0-9_])", message) is not None


def _validate(
    cls: type[Any], blob: str, section: str, source: str, where: Callable[[str], str]
) -> tuple[Any, list[str]]:
    """Build ``cls`` from JSON ``blob``; returns (the dataclass or None, problems)."""
    from pydantic import ValidationError

    try:
        return _adapter(cls).validate_json(blob, strict=True), []
    except ValidationError as err:
        return None, [_describe(e, section, where) for e in err.errors(include_url=False)]
    except TypeError as err:  # a __post_init__ that raises TypeError
        return None, [f"{source}: {section}: {err}"]


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


def _moved_keys(
    section: str, data: dict[Any, Any], moved: Mapping[str, str], source: str, overridden: set[str]
) -> tuple[dict[Any, Any], list[str]]:
    """``data`` without the keys that moved elsewhere, and a problem for each one."""
    problems = []
    for name in list(data):
        advice = moved.get(f"{section}.{name}")
        if advice is not None:
            where = "overrides" if name in overridden else source
            problems.append(f"{where}: {section}.{name}: {advice}")
            data = {k: v for k, v in data.items() if k != name}
    return data, problems


def load_sections(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    classes: Mapping[str, type[Any]] | None = None,
    moved: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Every section of ``path`` plus the overridden ones, validated and built.

    Args:
        path: the YAML file, or None (only the overridden sections are built).
        overrides: section -> key/value pairs that win over the file (None values are
            skipped); a section in ``overrides`` is built even when the file lacks it.
        classes: sections added or replaced, name -> frozen dataclass (an application's
            own sections, such as the ``JOB_SECTIONS`` of ``wsi run``).
        moved: dotted keys that are no longer read where they are (``"run.exports"``)
            -> what to write instead; each one found is a problem naming the file.

    Returns:
        Section name -> built dataclass, for the sections the file holds or the
        overrides name (``JOB_SECTIONS`` without a class in ``classes`` are skipped).

    Raises:
        ConfigError: listing every problem of the file and the overrides at once.

    Example:
        >>> load_sections(None, {"tiling": {"tile_size": 224}})["tiling"].tile_size
        224
    """
    classes = dict(classes or {})
    known = set(SECTIONS) | set(classes)
    raw = _read(path, sorted(known)) if path is not None else {}
    source = str(path) if path is not None else "overrides"
    base = Path(os.path.abspath(path)).parent if path is not None else None
    overrides = {s: _without_none(o) for s, o in (overrides or {}).items()}
    problems: list[str] = []
    for name in raw:
        if name not in known and name not in JOB_SECTIONS:
            hint = did_you_mean(name, known, "sections")
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
        merged = _merge(data, extra)
        if moved:
            merged, found = _moved_keys(section, merged, moved, source, set(extra))
            problems += found
        obj, found = _build(section, cls, merged, source, set(extra))
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

    Every section present is validated, and every problem is listed in one error. The
    sections of a ``wsi run`` job (``JOB_SECTIONS``) pass unread: ``wsi run`` reads them.

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
    return load_sections(path)


def load_section(
    path: str | os.PathLike[str] | None, section: str, cls: type[T], **overrides: Any
) -> T:
    """Read section ``section`` of a config file into the frozen dataclass ``cls``.

    The whole file is validated (but for ``JOB_SECTIONS``), so a bad key in another
    section is reported too.

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
    return cast(T, load_sections(path, {section: overrides}, {section: cls})[section])


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
