"""The one source of wsi's version: the package metadata (pyproject.toml) reads it here."""

__version__ = "0.1.0"
