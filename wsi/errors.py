"""One root exception for everything a user can see.

Each subclass also inherits the matching built-in, so callers can catch either
``WsiError`` or, say, ``FileNotFoundError``. Messages say what failed, on which
file, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "WsiError",
    "SlideOpenError",
    "SlideNotFoundError",
    "SlideReadError",
    "MppError",
    "ConfigError",
    "StoreError",
    "OutputFullError",
    "StageConflictError",
    "StaleStageError",
    "LockedError",
    "BackendUnavailableError",
    "ClusterError",
    "UnknownEncoderError",
    "WeightsError",
    "WeightsNotFoundError",
    "NoTissueError",
    "EmbeddingError",
    "H5FormatError",
    "H5NotFoundError",
    "OutputError",
    "OutputExistsError",
]


class WsiError(Exception):
    """Root of every error raised on purpose by wsi."""


class SlideOpenError(WsiError, OSError):
    """A file could not be opened as a slide (missing, not a slide, corrupt)."""


class SlideNotFoundError(SlideOpenError, FileNotFoundError):
    """The slide path does not exist."""


class SlideReadError(WsiError, OSError):
    """A region of an opened slide could not be read (truncated or corrupt data)."""


class MppError(WsiError, ValueError):
    """The slide's resolution (micrometres per pixel) is missing or implausible."""


class ConfigError(WsiError, ValueError):
    """A configuration value or file is wrong."""


class StoreError(WsiError, RuntimeError):
    """A slide store is missing, unreadable, or belongs to another slide."""


class OutputFullError(WsiError, OSError):
    """The disk that holds an output folder is full; the work marked done is kept."""

    @classmethod
    def of(cls, folder: object, done: int, total: int, unit: str, err: OSError) -> OutputFullError:
        """The error for ``done`` of ``total`` ``unit`` (e.g. "chunks of tiles") written
        to ``folder`` when ``err`` (ENOSPC) stopped the rest."""
        return cls(
            err.errno,
            f"{folder}: no space left on the device that holds this output folder "
            f"({err.strerror or err}). {done} of {total} {unit} were written, marked done "
            "and are kept. Free space there and re-run the same command to resume.",
        )

    def __str__(self) -> str:
        return str(self.strerror)


class StageConflictError(StoreError):
    """A stage is already complete with other parameters; pass overwrite=True to redo it."""


class StaleStageError(StoreError):
    """A stage was made from inputs that have since been redone (other features, another
    prediction): re-run it."""


class LockedError(WsiError, BlockingIOError):
    """Another process is writing the store or run folder (the message names it)."""


class ClusterError(WsiError, ConnectionError):
    """The Dask scheduler could not be reached or started."""


class BackendUnavailableError(WsiError, ImportError):
    """An optional reader or library is not installed."""


class UnknownEncoderError(ConfigError):
    """An encoder name is neither registered nor a timm architecture."""


class WeightsError(WsiError, ValueError):
    """A weight file cannot be read, or its keys or shapes do not fit the architecture."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """An encoder's weight file is missing."""


class NoTissueError(WsiError, ValueError):
    """No tile of the slide has enough tissue."""


class EmbeddingError(WsiError, ArithmeticError):
    """The encoder produced non-finite features."""


class H5FormatError(WsiError, ValueError):
    """An h5 file is not HDF5, or lacks or has malformed ``features`` / ``coords``."""


class H5NotFoundError(H5FormatError, FileNotFoundError):
    """The h5 file does not exist."""


class OutputError(WsiError, OSError):
    """The output folder cannot be written (full, read-only, no permission): the job's
    problem, not one slide's. The message names the folder and the fix."""


class OutputExistsError(WsiError, FileExistsError):
    """An output would replace a file wsi did not write there (or one changed since)."""
