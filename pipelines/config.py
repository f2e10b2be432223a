"""A ``wsi run`` job: its ``run`` and ``cluster`` sections, and the YAML job file.

A job file is a config file (``wsi.configfile``) with two more sections: ``run`` (which
slides, which model, where results go: ``RunConfig``) and ``cluster`` (where the work
runs: ``ClusterConfig``). Every section of it is validated at once, with the rules of
``docs/config.md``; the stage sections (``tiling``, ``embed``, ``heatmap``, ``report``)
keep their ``wsi`` dataclasses. Heatmap exports are the ``heatmap`` section's
(``heatmap.exports``), for ``wsi run`` as for ``wsi heatmap``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, cast

from wsi.configfile import SECTIONS, did_you_mean, load_sections
from wsi.errors import ConfigError

__all__ = [
    "ClusterConfig",
    "RunConfig",
    "JOB_CLASSES",
    "load_job_file",
    "load_job_section",
    "load_run_config",
    "workers_arg",
    "mpp_arg",
]

T = TypeVar("T")

#: Field metadata marking a path: a relative value in a job file is resolved against the
#: file's folder (the rule of ``wsi.configfile``).
_PATH: Mapping[str, Any] = MappingProxyType({"path": True})

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

    Relative paths in a config file are resolved against the file's folder. The heatmap
    exports of a run are the ``heatmap`` section's (``heatmap.exports``).
    """

    out: str = field(metadata=_PATH)  #: output folder (required)
    model: str = field(metadata=_PATH)  #: trained model folder, the one with model.json
    #: slide paths, folders or glob patterns; give these or ``manifest``
    slides: tuple[str, ...] = field(default=(), metadata=_PATH)
    #: CSV with columns slide_id, path, mpp and optional patient_id, label
    manifest: str | None = field(default=None, metadata=_PATH)
    retry_failed: bool = True  #: try again slides that failed in an earlier run

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"run.{name} = {getattr(self, name)!r}: {why}")

        for name in ("out", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise bad(name, "give a folder path")
        if isinstance(self.slides, str) or not all(isinstance(v, str) and v for v in self.slides):
            raise bad("slides", "must be a list of non-empty strings")
        object.__setattr__(self, "slides", tuple(self.slides))
        if self.manifest is not None and (not isinstance(self.manifest, str) or not self.manifest):
            raise bad("manifest", "give a CSV path, or null")
        if bool(self.slides) == (self.manifest is not None):
            raise ConfigError(
                "run: give either `slides` (paths, folders or glob patterns) or `manifest` "
                "(a CSV of slide_id, path, mpp), "
                + ("not both" if self.slides else "one of them is required")
            )


#: The job file's own sections, beside the stage sections of ``wsi.configfile.SECTIONS``.
JOB_CLASSES: Mapping[str, type[Any]] = MappingProxyType(
    {"run": RunConfig, "cluster": ClusterConfig}
)

#: Keys a job file may no longer hold where they were, and what to write instead.
_MOVED: Mapping[str, str] = MappingProxyType(
    {
        "run.exports": (
            "moved to the heatmap section: write it as `heatmap: {exports: [...]}` "
            "(one exports setting, for `wsi run` as for `wsi heatmap`)"
        )
    }
)


def load_job_file(path: str | os.PathLike[str]) -> dict[str, object]:
    """Read and validate a whole job file: the stage sections and ``run``, ``cluster``.

    Args:
        path: a YAML file whose top level maps section names to mappings.

    Returns:
        Section name -> its built frozen dataclass, for the sections the file holds.

    Raises:
        ConfigError: every problem of the file at once (see ``wsi.configfile.load_file``).

    Example:
        >>> load_job_file("configs/cluster.yaml")["cluster"].scheduler
        'tcp://127.0.0.1:8786'
    """
    return load_sections(path, classes=JOB_CLASSES, moved=_MOVED)


def load_job_section(
    path: str | os.PathLike[str] | None, section: str, cls: type[T], **overrides: Any
) -> T:
    """Section ``section`` of a job or config file, the whole file validated (``run`` and
    ``cluster`` too): what the per-stage commands read with ``--config``.

    Args:
        path: the YAML file, or None for the dataclass defaults.
        section: the section name, e.g. ``"tiling"``.
        cls: the dataclass the section maps onto.
        overrides: keys that win over the file; a None value means "not given".

    Returns:
        An instance of ``cls``; the defaults where the file lacks the section.

    Raises:
        ConfigError: a problem anywhere in the file or the overrides.

    Example:
        >>> from wsi.config import TilingConfig
        >>> load_job_section(None, "tiling", TilingConfig, tile_size=224).tile_size
        224
    """
    classes = {**JOB_CLASSES, section: cls}
    return cast(T, load_sections(path, {section: overrides}, classes, _MOVED)[section])


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
            (``embed={"device": "cuda"}``, ``heatmap={"exports": ("png",)}``). They win
            over the file and are validated the same way; None values are skipped.

    Returns:
        (run, cluster, others): the RunConfig, the ClusterConfig (defaults where the file has
        no ``cluster`` section), and section name -> built dataclass for the other sections
        the file holds or the overrides name (tiling, embed, train, heatmap, report).

    Raises:
        ConfigError: an unknown override name, a ``run.exports`` (it is
            ``heatmap.exports`` now), or any problem of the file (see ``load_job_file``).

    Example:
        >>> run, cluster, others = load_run_config("configs/run.yaml", scheduler=None)
        >>> run.out.endswith("runs/example"), cluster.scheduler, sorted(others)
        (True, None, ['heatmap'])
    """
    sections: dict[str, dict[str, Any]] = {"run": {}, "cluster": {}}
    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    cluster_keys = {f.name for f in dataclasses.fields(ClusterConfig)}
    for name, value in overrides.items():
        if value is None:
            continue
        if name == "exports":
            raise ConfigError(f"overrides: run.exports: {_MOVED['run.exports']}")
        if name in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"overrides: {name}: expected a mapping of {name} keys")
            sections.setdefault(name, {}).update(value)
        elif name in run_keys or name in cluster_keys:
            sections["run" if name in run_keys else "cluster"][name] = value
        else:
            hint = did_you_mean(name, run_keys | cluster_keys | set(SECTIONS), "known")
            raise ConfigError(f"overrides: {name}: unknown key; {hint}")
    built = load_sections(path, sections, JOB_CLASSES, _MOVED)
    return built.pop("run"), built.pop("cluster"), built


# -- command-line values, checked by argparse before any work ------------------------------


def workers_arg(text: str) -> int:
    """``--workers``: LocalCluster worker processes, a whole number from 1 to 1024."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 1024 or str(n) != text.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of workers: give a whole number from 1 to 1024, "
            "or leave --workers out for one per core"
        )
    return n


def mpp_arg(text: str) -> float:
    """``--mpp``: a plausible level-0 resolution in micrometres per pixel."""
    from wsi.slide.mpp import MPP_RANGE

    lo, hi = MPP_RANGE
    try:
        mpp = float(text)
    except ValueError:
        mpp = math.nan
    if not (math.isfinite(mpp) and lo <= mpp <= hi):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plausible level-0 resolution: give micrometres per pixel "
            f"from {lo:g} to {hi:g} (0.25 for a 40x scan, 0.5 for 20x)"
        )
    return mpp


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give the seconds to wait, 0 or more")
    return value


def add_wait_option(p: argparse.ArgumentParser) -> None:
    """``--wait SECONDS``: wait for another writer of the same store (or run folder) to
    finish instead of being refused at once."""
    p.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="when another wsi process is writing the same store or run folder, wait up to "
        "SECONDS for it instead of stopping at once (default 0)",
    )
