"""Frozen patch encoders: a registry of timm architectures, their weights and input contract.

``load_encoder(name, weights=PATH)`` builds one with its weights loaded strictly;
``registered()`` lists the built-in names. Nothing is downloaded at run time.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "DEFAULT_ENCODER",
    "EncoderSpec",
    "Preprocessing",
    "WeightSource",
    "Encoder",
    "load_encoder",
    "get_spec",
    "registered",
    "find_weights",
]

_LAZY = {
    "DEFAULT_ENCODER": "wsi.encoders.registry",
    "get_spec": "wsi.encoders.registry",
    "registered": "wsi.encoders.registry",
    "EncoderSpec": "wsi.encoders.spec",
    "Preprocessing": "wsi.encoders.spec",
    "WeightSource": "wsi.encoders.spec",
    "find_weights": "wsi.encoders.weights",
    "Encoder": "wsi.encoders.encoder",
    "load_encoder": "wsi.encoders.encoder",
}

if TYPE_CHECKING:
    from wsi.encoders.encoder import Encoder, load_encoder
    from wsi.encoders.registry import DEFAULT_ENCODER, get_spec, registered
    from wsi.encoders.spec import EncoderSpec, Preprocessing, WeightSource
    from wsi.encoders.weights import find_weights


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wsi.encoders' has no attribute {name!r}")
