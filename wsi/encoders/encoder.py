"""A loaded encoder: module, preprocessing, weights identity, device and precision together."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from wsi.encoders.registry import DEFAULT_ENCODER, build, get_spec
from wsi.encoders.spec import EncoderSpec, Preprocessing
from wsi.encoders.weights import read_state_dict, resolve_weights, weights_digest, where_to_put
from wsi.errors import ConfigError, WeightsNotFoundError
from wsi.precision import autocast_dtype
from wsi.precision import resolve_precision as _resolve

__all__ = [
    "Preprocess",
    "Encoder",
    "load_encoder",
    "planned_identity",
    "resolve_device",
]

log = logging.getLogger(__name__)


class Preprocess(nn.Module):
    """uint8 RGB tiles (B, H, W, 3) to the normalised float input (B, 3, S, S), channels last.

    Runs on the encoder's device, so a GPU receives uint8 (a quarter of the bytes).
    """

    offset: torch.Tensor
    scale: torch.Tensor

    def __init__(self, p: Preprocessing) -> None:
        super().__init__()
        self.size = p.input_size
        self.resize = p.resize_size or p.input_size
        self.mode = p.interpolation
        self.register_buffer("offset", torch.tensor(p.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("scale", 1.0 / (torch.tensor(p.std).view(1, 3, 1, 1) * 255.0))

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = tiles.permute(0, 3, 1, 2)  # a channels-last view, no copy
        r = self.resize
        if x.shape[-2:] != (r, r):
            if not (x.device.type == "cpu" and x.dtype == torch.uint8 and self.mode == "bilinear"):
                x = x.float()  # torch's fast uint8 path (rounds to whole levels) is CPU-only
            x = F.interpolate(x, size=(r, r), mode=self.mode, antialias=True, align_corners=False)
            if x.dtype != torch.uint8 and self.mode == "bicubic":
                x = x.clamp_(0.0, 255.0)  # bicubic overshoots; PIL's does not leave [0, 255]
        if r != self.size:  # the published centre crop (timm's crop_pct)
            top = (r - self.size) // 2
            x = x[..., top : top + self.size, top : top + self.size]
        x = (
            x.float().sub_(self.offset).mul_(self.scale)
            if x.dtype == torch.uint8
            else ((x - self.offset) * self.scale)
        )
        return x.contiguous(memory_format=torch.channels_last)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None: the first GPU if there is one, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} was asked for but torch sees no CUDA GPU "
            f"(torch {torch.__version__}). Use --device cpu."
        )
    return dev


@dataclass
class Encoder:
    """A frozen encoder ready to embed uint8 tiles.

    ``model`` maps the normalised batch to (B, ``spec.feature_dim``) features;
    ``preprocess`` makes that batch from uint8 tiles. ``weights_sha256`` identifies the
    weights: features made with other weights are never mixed with these.
    """

    spec: EncoderSpec
    model: nn.Module
    preprocess: Preprocess
    weights_path: Path
    weights_sha256: str
    device: torch.device
    precision: str  #: "fp32", "bf16" or "fp16": the compute precision (autocast)

    @property
    def name(self) -> str:
        return self.spec.name

    def autocast(self) -> Any:
        dtype = autocast_dtype(self.precision)
        if dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=getattr(torch, dtype))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of an already preprocessed batch on the device (the bare forward)."""
        with torch.inference_mode(), self.autocast():
            return self.model(batch)

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """Float32 features (B, D) on the device of uint8 tiles (B, H, W, 3)."""
        with torch.inference_mode():
            x = self.preprocess(tiles.to(self.device, non_blocking=True))
            return self.forward(x).float()

    def identity(self) -> dict[str, Any]:
        """What goes into a store's attrs about this encoder."""
        return identity_of(self.spec, self.weights_path, self.weights_sha256, self.precision)


def identity_of(spec: EncoderSpec, weights: Path, sha256: str, precision: str) -> dict[str, Any]:
    """The identity of an encoder's features: contract, weights checksum, compute precision."""
    return {
        **spec.summary(),
        "weights_sha256": sha256,
        "weights_file": weights.name,
        "precision": precision,
    }


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bf16 autocast on a GPU, float32 on a CPU."""
    try:
        return _resolve(precision, device.type)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def planned_identity(
    name: str, weights: str | os.PathLike[str] | None, device: str | None, precision: str
) -> dict[str, Any] | None:
    """The identity ``load_encoder`` would give, without building the model (None: unknown)."""
    spec = get_spec(name)
    try:
        path = resolve_weights(spec, weights)
    except WeightsNotFoundError:
        return None
    if path is None or not path.is_file():
        return None
    prec = resolve_precision(precision, resolve_device(device))
    return identity_of(spec, path.resolve(), weights_digest(path), prec)


def load_encoder(
    name: str = DEFAULT_ENCODER,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = "cpu",
    precision: str = "auto",
) -> Encoder:
    """Build encoder ``name`` with its weights loaded strictly; nothing is downloaded.

    The model is frozen (inference only) and comes with its input contract: uint8 RGB
    tiles whose side differs from the encoder's input size in pixels (224 for the
    registered ones) are resized (bilinear, antialiased), then normalised on the device.

    Args:
        name: a registered encoder (``efficientnet_lite0`` (default, 1280-d),
            ``resnet50_trunc`` (1024-d), ``uni`` (1024-d), ``uni2_h`` (1536-d); ``wsi
            encoders`` lists them) or any timm architecture name, whose weights come from
            ``weights`` or ``$WSI_WEIGHTS_DIR/<name>/``.
        weights: a local ``.safetensors`` or state-dict file (``.pth``, ``.bin`` ...; read
            without running pickled code), or a Hugging Face snapshot folder holding one
            (the published file name is looked for; sharded ``.index.json`` too).
            None: the registered source is searched (an installed package,
            ``$WSI_WEIGHTS_DIR/<name>/``, the local Hugging Face and torch hub caches).
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"``, a ``torch.device``, or
            ``"auto"`` / None for the first GPU if there is one, else the CPU.
        precision: compute precision (autocast): ``"fp32"``, ``"bf16"``, ``"fp16"``, or
            ``"auto"``: bf16 on a CUDA GPU, fp32 otherwise.

    Returns:
        An ``Encoder``: called on uint8 tiles ``(B, H, W, 3)`` (a torch tensor) it returns
        float32 features ``(B, D)`` on its device, D = ``encoder.spec.feature_dim``;
        ``weights_sha256`` identifies the weights and ``identity()`` what a store records.

    Raises:
        UnknownEncoderError: ``name`` is neither registered nor a timm architecture (the
            message suggests close names).
        WeightsNotFoundError: ``weights`` is not a file, or (without ``weights``) no
            weight file of a registered encoder is on this machine (the message says where
            to put one).
        WeightsError: the file is unreadable, holds pickled objects other than tensors,
            or its keys or shapes do not fit the architecture.
        ConfigError: ``device`` asks for CUDA where torch sees no GPU, or ``precision``
            is not one of the four names.

    Example::

        import torch

        enc = wsi.load_encoder("efficientnet_lite0", device="cpu")
        tiles = torch.zeros((8, 256, 256, 3), dtype=torch.uint8)   # 8 RGB tiles, 256 px
        enc(tiles).shape                                            # (8, 1280) float32

        uni = wsi.load_encoder("uni", weights="weights/uni/pytorch_model.bin", device="cuda")
    """
    spec = get_spec(name)
    path = resolve_weights(spec, weights)
    if path is None:
        raise WeightsNotFoundError(
            f"encoder {name!r}: no weight file on this machine. {where_to_put(spec)}."
        )
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    sd = read_state_dict(path)
    digest = weights_digest(path)
    model = build(spec, sd, path)
    del sd
    model = model.to(dev).to(memory_format=torch.channels_last)
    pre = Preprocess(spec.preprocessing).to(dev)
    log.info("encoder %s: weights %s (sha256 %s), %s %s", name, path, digest[:12], dev, precision)
    return Encoder(spec, model, pre, path.resolve(), digest, dev, precision)
