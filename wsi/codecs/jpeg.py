"""Zarr v3 codec for stacks of RGB tiles: one JPEG per tile inside each chunk.

A chunk of shape (n, h, w, 3) uint8 is stored as ``b"WSJ1"``, ``n`` (uint32 LE), ``n``
byte lengths (uint32 LE), then the ``n`` JPEG streams. One tile decodes on its own and
no JPEG block straddles two tiles. Registered with zarr under the name ``wsi.jpeg``
(entry point in pyproject and ``register()``), so any environment with ``wsi``
installed reads the store. Measurements behind the choice: ``docs/codecs.md``.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec

from wsi.codecs import SUBSAMPLING

__all__ = ["JpegTilesCodec", "CODEC_NAME", "register"]

CODEC_NAME = "wsi.jpeg"
_MAGIC = b"WSJ1"


@dataclass(frozen=True)
class JpegTilesCodec(ArrayBytesCodec):
    """Per-tile JPEG (libjpeg-turbo via imagecodecs).

    ``subsampling`` is the chroma subsampling: "444" (none; the default, because
    H&E stain information lives in the chroma) or "420".
    """

    is_fixed_size = False
    quality: int = 90
    subsampling: str = "444"

    def __post_init__(self) -> None:
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"JPEG quality must be 1..100, got {self.quality}")
        if self.subsampling not in SUBSAMPLING:
            raise ValueError(
                f"JPEG subsampling must be one of {SUBSAMPLING}, got {self.subsampling}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JpegTilesCodec:
        config = data.get("configuration") or {}
        return cls(
            quality=int(config.get("quality", 90)),
            subsampling=str(config.get("subsampling", "444")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": CODEC_NAME,
            "configuration": {"quality": self.quality, "subsampling": self.subsampling},
        }

    def validate(self, *, shape: Any, dtype: Any, chunk_grid: Any) -> None:
        if len(shape) != 4 or shape[-1] != 3 or np.dtype(dtype.to_native_dtype()) != np.uint8:
            raise ValueError(f"{CODEC_NAME} stores uint8 (n, h, w, 3) tiles, got {shape} {dtype}")

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        import imagecodecs

        tiles = np.asarray(chunk_array.as_numpy_array())
        parts = [
            imagecodecs.jpeg8_encode(
                np.ascontiguousarray(t), level=self.quality, subsampling=self.subsampling
            )
            for t in tiles
        ]
        header = _MAGIC + struct.pack(f"<I{len(parts)}I", len(parts), *map(len, parts))
        return chunk_spec.prototype.buffer.from_bytes(header + b"".join(parts))

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        import imagecodecs

        raw = chunk_bytes.to_bytes()
        if raw[:4] != _MAGIC:
            raise ValueError(f"not a {CODEC_NAME} chunk (bad magic {raw[:4]!r})")
        (n,) = struct.unpack_from("<I", raw, 4)
        lengths = struct.unpack_from(f"<{n}I", raw, 8)
        out = np.empty(chunk_spec.shape, dtype=np.uint8)
        offset = 8 + 4 * n
        for i, length in enumerate(lengths):
            out[i] = imagecodecs.jpeg8_decode(raw[offset : offset + length])
            offset += length
        return chunk_spec.prototype.nd_buffer.from_numpy_array(out)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        # off zarr's event-loop thread: libjpeg releases the GIL, so the chunks of one read
        # (and reads from several threads) decode in parallel instead of one at a time
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG output size is not known in advance")


def register() -> None:
    """Make the codec known to zarr in this process (the entry point does it when installed)."""
    from zarr.registry import register_codec

    register_codec(CODEC_NAME, JpegTilesCodec)
