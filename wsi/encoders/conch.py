"""CONCH v1 and v1.5: a timm ViT trunk with CONCH's attentional pooler."""

from __future__ import annotations

from wsi.encoders.builders import Builder
from wsi.encoders.spec import EncoderSpec

__all__ = ["SPECS", "BUILDERS"]

SPECS: tuple[EncoderSpec, ...] = ()
BUILDERS: dict[str, Builder] = {}
