"""Shared by the heatmap tests: a private copy of a predicted store (stages write into
stores, so tests never write into the session's fixture)."""

from __future__ import annotations

import shutil
from pathlib import Path


def store_copy(root: Path, slide_id: str, tmp_path: Path) -> Path:
    """A copy of ``root/stores/<slide_id>.zarr`` under ``tmp_path`` (same folder name)."""
    copy = tmp_path / "stores" / f"{slide_id}.zarr"
    shutil.copytree(root / "stores" / f"{slide_id}.zarr", copy)
    return copy
