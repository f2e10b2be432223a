"""Catalogue tests: a real H&E tile, and weights written in a published layout to disk.

Every catalogue entry is proved the same way: random weights under the names and shapes
of the published checkpoint are saved to a file (and to a Hugging Face snapshot folder),
loaded back through the user's path (``load_encoder(name, weights=FILE or FOLDER)``)
strictly, and run on a real H&E tile.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import TILES


@pytest.fixture(scope="session")
def he_tile() -> torch.Tensor:
    """One 256 px RGB H&E tile (1, 256, 256, 3) uint8: a real one from ../shared/data,
    else a procedural H&E texture (only shapes are asserted on it, never values)."""
    path = TILES / "histoqc_template1.png"
    if path.is_file():
        from PIL import Image

        rgb = np.asarray(Image.open(path).convert("RGB"))[100:356, 100:356]
    else:
        from wsi.synthetic.textures import procedural_he

        rgb = procedural_he(np.random.default_rng(0), 256)[:256, :256]
    return torch.from_numpy(np.ascontiguousarray(rgb))[None]


def save_checkpoint(path: Path, sd: Mapping[str, torch.Tensor]) -> Path:
    """``sd`` written as the published file is: safetensors by suffix, else torch.save."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(dict(sd), path)
    return path


def save_snapshot(
    folder: Path, filename: str, sd: Mapping[str, torch.Tensor], config: dict[str, Any] | None
) -> Path:
    """A Hugging Face snapshot folder: the weights under their published name, config.json."""
    save_checkpoint(folder / filename, sd)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def load_both_ways(name: str, folder: Path, filename: str) -> tuple[Any, Any]:
    """The encoder loaded from the file (``--weights FILE``) and from its folder."""
    from wsi.encoders import load_encoder

    by_file = load_encoder(name, weights=folder / filename, device="cpu")
    by_folder = load_encoder(name, weights=folder, device="cpu")
    return by_file, by_folder


def random_like(shapes: Mapping[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float tensors for a {key: shape} layout (small values, finite outputs)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
