"""The compute precisions of an encoder: the one registry that config validation, the
encoders and the CLI read.

Names map to the torch dtype used under autocast (None: plain float32, no autocast).
``"auto"`` is resolved per device: bf16 autocast on a CUDA GPU, float32 elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["PRECISIONS", "AUTO", "autocast_dtype", "resolve_precision"]

AUTO = "auto"

#: precision name -> torch dtype name under autocast (None: float32, no autocast)
PRECISIONS: Mapping[str, str | None] = MappingProxyType(
    {AUTO: None, "fp32": None, "bf16": "bfloat16", "fp16": "float16"}
)


def resolve_precision(precision: str, device_type: str) -> str:
    """The concrete precision of ``precision`` on a device of type ``device_type``
    ("cuda", "cpu", "mps"): ``"auto"`` is "bf16" on CUDA and "fp32" otherwise.

    Raises ``ValueError`` naming the choices for an unknown name (callers wrap it in
    their own error)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == AUTO:
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


def autocast_dtype(precision: str) -> str | None:
    """The torch dtype name autocast runs ``precision`` in; None for float32."""
    return PRECISIONS[precision]
