"""CTransPath: a Swin-T with its convolutional stem."""

from __future__ import annotations

from wsi.encoders.builders import Builder
from wsi.encoders.spec import EncoderSpec

__all__ = ["SPECS", "BUILDERS"]

SPECS: tuple[EncoderSpec, ...] = ()
BUILDERS: dict[str, Builder] = {}
