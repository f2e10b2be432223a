"""Attention-MIL on the stored tile features: heads, labels and bags, training, metrics.

``build_head(name, in_dim, n_classes, **hparams)`` builds a head from ``HEADS``
(``wsi.mil.heads``); torch is imported only when one of these names is first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = ["HEADS", "MILOutput", "build_head"]

_LAZY = {
    "HEADS": "wsi.mil.heads",
    "MILOutput": "wsi.mil.heads",
    "build_head": "wsi.mil.heads",
}

if TYPE_CHECKING:
    from wsi.mil.heads import HEADS, MILOutput, build_head


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wsi.mil' has no attribute {name!r}")
