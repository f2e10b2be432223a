"""Encoders published in the Hugging Face ``transformers`` layout, mapped onto timm modules.

Phikon (``ViTModel``), Phikon-v2 and Midnight-12k (``Dinov2Model``) and Hibou-B / Hibou-L
(a custom ``Dinov2ModelWithRegisters``, ``trust_remote_code``) are published as
``transformers`` checkpoints. Nothing of ``transformers`` runs here: each key of the
published file is renamed, by the explicit rules below, onto timm's ``VisionTransformer``,
and the result is loaded strictly. Keys that inference never uses are dropped by name
(``_VIT_DROPPED``, ``_DINOV2_DROPPED``); anything else that does not fit is reported by
``load_strict``.

Published layout -> timm (per block ``i``)::

    embeddings.cls_token                          cls_token
    embeddings.position_embeddings                pos_embed (class + patch positions)
    embeddings.patch_embeddings.projection.*      patch_embed.proj.*
    embeddings.register_tokens                    reg_token (registers carry no position)
    layernorm.*                                   norm.*
    ViT:    encoder.layer.i.layernorm_before / layernorm_after -> blocks.i.norm1 / norm2
            encoder.layer.i.intermediate.dense / output.dense   -> blocks.i.mlp.fc1 / fc2
    DINOv2: encoder.layer.i.norm1 / norm2                       -> blocks.i.norm1 / norm2
            encoder.layer.i.layer_scale{1,2}.lambda1            -> blocks.i.ls{1,2}.gamma
            encoder.layer.i.mlp.fc1 / fc2 (GELU MLP)            -> blocks.i.mlp.fc1 / fc2
            encoder.layer.i.mlp.weights_in / weights_out (SwiGLU)
                                                                -> blocks.i.mlp.fc1 / fc2
    both:   encoder.layer.i.attention.attention.{query,key,value} -> blocks.i.attn.qkv
            (concatenated in that order), attention.output.dense -> blocks.i.attn.proj

SwiGLU: transformers splits ``weights_in`` output as ``x1, x2 = chunk(2)`` and computes
``silu(x1) * x2``; timm's ``SwiGLUPacked`` (``GluMlp(gate_last=False)``) computes
``act(x1) * x2`` on the same chunks, so ``weights_in`` maps onto ``fc1`` unchanged. The
hidden width is transformers' ``(int(4 * D * 2 / 3) + 7) // 8 * 8`` (768 -> 2048,
1024 -> 2736, 1536 -> 4096); timm gets it as ``mlp_ratio = 2 * hidden / D``.

Registers (DINOv2 with registers): the position embedding covers the class and patch
tokens, and the registers are inserted after the class token without a position. timm's
``reg_tokens`` + ``no_embed_class=True`` gives the same token order ``[cls, registers,
patches]`` with ``pos_embed`` on the patches only, so the class position is folded into
``cls_token`` (``cls + pos[0]``, the sum transformers computes at run time) -- timm's
own ``_convert_dinov2`` does the same.

Position grids: a checkpoint whose grid differs from the 224 px input grid (Midnight-12k
stores 37 x 37 + 1 positions, a 518 px grid) is resampled once at load time exactly as
transformers does at run time for a 224 px input: bicubic, ``align_corners=False``, to the
target size (not a scale factor), in float32; without antialiasing for ``ViTModel`` and
``Dinov2Model``, with it for ``Dinov2WithRegistersModel`` (transformers 5.x; the Dinov2Model
case is checked in the tests: identical embeddings). The original DINOv2 code's default
(``interpolate_offset`` 0.1: ``scale_factor=(g + 0.1) / G``) samples slightly different
points (about 4 % of the position embedding's range on a smooth grid); releases of
transformers before the switch to ``size=`` may have done the same (not checked). timm's
own default resampling is antialiased (about 3 %), hence the explicit rule here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from wsi.encoders.builders import Builder, _create, pooled
from wsi.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, Preprocessing, WeightSource
from wsi.encoders.weights import load_strict

__all__ = ["SPECS", "BUILDERS", "hf_vit_keys", "hf_dinov2_keys", "resample_grid"]

#: Hibou's published normalisation (HistAI/hibou example.ipynb; TRIDENT's ``hibou`` constants)
HIBOU_MEAN = (0.7068, 0.5755, 0.7220)
HIBOU_STD = (0.1950, 0.2316, 0.1816)
#: Kaiko's (Midnight model card: "mean of (0.5, 0.5, 0.5) and a standard deviation of ...")
KAIKO_MEAN = (0.5, 0.5, 0.5)
KAIKO_STD = (0.5, 0.5, 0.5)

#: Published keys that inference never reads, dropped by name (and only these), per layout.
_MASK_TOKEN = {"embeddings.mask_token": "masked-image-modelling token (pre-training only)"}
_VIT_DROPPED = {
    **_MASK_TOKEN,  # present only when saved with use_mask_token
    # ViTModel's pooler: tanh(dense(cls)), not the embedding (the class token is)
    "pooler.dense.weight": "ViT pooler (unused)",
    "pooler.dense.bias": "ViT pooler (unused)",
}
_DINOV2_DROPPED = dict(_MASK_TOKEN)

_COMMON = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
)
_VIT_RULES = _COMMON + (
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
)
_DINOV2_RULES = _COMMON + (
    (r"embeddings\.register_tokens", "reg_token"),
    (r"encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"blocks.\1.mlp.fc\2.\3"),
    (r"encoder\.layer\.(\d+)\.mlp\.weights_in\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.mlp\.weights_out\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
)
_QKV = re.compile(
    r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$"
)


def _rename(
    sd: dict[str, Any], rules: tuple[tuple[str, str], ...], dropped: dict[str, str]
) -> dict[str, Any]:
    """Apply ``rules`` (full-key regexes), fuse query/key/value into ``qkv``, drop ``dropped``.

    Keys no rule matches are kept under their published name, so that ``load_strict``
    lists them as unexpected; a query/key/value triple that is incomplete is kept too.
    """
    compiled = [(re.compile(f"^{pattern}$"), repl) for pattern, repl in rules]
    out: dict[str, Any] = {}
    qkv: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in sd.items():
        if key in dropped:
            continue
        m = _QKV.match(key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = (key, value)
            continue
        for pattern, repl in compiled:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            out[key] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            fused = [parts[name][1] for name in ("query", "key", "value")]
            out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat(fused, dim=0)
        else:
            out.update(dict(parts.values()))
    return out


def hf_vit_keys(sd: dict[str, Any]) -> dict[str, Any]:
    """transformers ``ViTModel`` keys renamed to timm ``VisionTransformer`` keys."""
    return _rename(sd, _VIT_RULES, _VIT_DROPPED)


def hf_dinov2_keys(sd: dict[str, Any], no_embed_class: bool = False) -> dict[str, Any]:
    """transformers ``Dinov2Model`` / DINOv2-with-registers keys renamed to timm's.

    ``no_embed_class``: the timm model keeps positions for the patches only (registers);
    the class position is then added to ``cls_token`` and removed from ``pos_embed``.
    """
    out = _rename(sd, _DINOV2_RULES, _DINOV2_DROPPED)
    published = "embeddings.position_embeddings" in sd and "embeddings.cls_token" in sd
    pos, cls = out.get("pos_embed"), out.get("cls_token")
    if no_embed_class and published and pos is not None and cls is not None and pos.ndim == 3:
        out["cls_token"] = cls + pos[:, :1].to(cls.dtype)
        out["pos_embed"] = pos[:, 1:]
    return out


def resample_grid(
    pos: torch.Tensor, grid: tuple[int, int], prefix: int, antialias: bool
) -> torch.Tensor:
    """``pos`` (1, prefix + G*G, D) with its square patch grid resampled to ``grid``.

    Bicubic, ``align_corners=False``, to the target size, in float32 (transformers'
    ``interpolate_pos_encoding``); the ``prefix`` positions are kept as they are. A
    tensor whose patch positions do not form a square, or already form ``grid``, is
    returned unchanged (``load_strict`` then reports a shape that does not fit).
    """
    if pos.ndim != 3:
        return pos
    n = pos.shape[1] - prefix
    side = math.isqrt(max(n, 0))
    if side * side != n or (side, side) == tuple(grid):
        return pos
    patches = pos[:, prefix:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(
        patches.float(), size=tuple(grid), mode="bicubic", align_corners=False, antialias=antialias
    )
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:, :prefix], patches], dim=1)


def _empty_timm(spec: EncoderSpec) -> Any:
    """The timm module of ``spec`` without initialising its weights (all are loaded next).

    Made on the meta device, then given uninitialised CPU storage: ``load_strict`` writes
    every parameter and persistent buffer or raises, so nothing uninitialised survives.
    """
    with torch.device("meta"):
        net = _create(spec, num_classes=0)
    persistent = set(net.state_dict())
    stray = [name for name, _ in net.named_buffers() if name not in persistent]
    if stray:  # a non-persistent buffer would stay uninitialised
        raise RuntimeError(f"{spec.architecture}: unexpected non-persistent buffers {stray}")
    return net.to_empty(device="cpu")


@dataclass(frozen=True)
class _Layout:
    keys: str  # "vit" or "dinov2"
    antialias: bool  # how transformers resamples this model's position grid


def _build(spec: EncoderSpec, sd: dict[str, Any], path: Path, layout: _Layout) -> nn.Module:
    net = _empty_timm(spec)
    no_embed_class = bool(getattr(net, "no_embed_class", False))
    if layout.keys == "vit":
        mapped = hf_vit_keys(sd)
    else:
        mapped = hf_dinov2_keys(sd, no_embed_class=no_embed_class)
    if "pos_embed" in mapped:
        prefix = 0 if no_embed_class else int(net.num_prefix_tokens)
        rows, cols = (int(g) for g in net.patch_embed.grid_size)
        grid = (rows, cols)
        mapped["pos_embed"] = resample_grid(mapped["pos_embed"], grid, prefix, layout.antialias)
    load_strict(net, mapped, path)
    return pooled(net, spec)


def build_hf_vit(spec: EncoderSpec, sd: dict[str, Any], path: Path) -> nn.Module:
    """A transformers ``ViTModel`` checkpoint (Phikon) on timm's ``VisionTransformer``."""
    return _build(spec, sd, path, _Layout(keys="vit", antialias=False))


def build_hf_dinov2(spec: EncoderSpec, sd: dict[str, Any], path: Path) -> nn.Module:
    """A transformers ``Dinov2Model`` checkpoint (Phikon-v2, Midnight-12k) on timm."""
    return _build(spec, sd, path, _Layout(keys="dinov2", antialias=False))


def build_hf_dinov2_reg(spec: EncoderSpec, sd: dict[str, Any], path: Path) -> nn.Module:
    """A DINOv2-with-registers checkpoint (Hibou) on timm (``reg_tokens``, ``no_embed_class``).

    Resampling (unused at Hibou's published 224 px grid) follows transformers'
    ``Dinov2WithRegistersModel``: antialiased. Hibou's own remote code was not read.
    """
    return _build(spec, sd, path, _Layout(keys="dinov2", antialias=True))


def _swiglu_ratio(dim: int) -> float:
    """timm ``mlp_ratio`` giving ``SwiGLUPacked`` the transformers DINOv2 SwiGLU width.

    transformers: hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8, ``weights_in`` = 2 * hidden.
    timm: fc1 width = int(dim * mlp_ratio); half a unit of margin keeps ``int`` exact.
    """
    hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
    return (2 * hidden + 0.5) / dim


def _hibou_kwargs(dim: int) -> dict[str, Any]:
    return {
        "img_size": 224,
        "patch_size": 14,
        "reg_tokens": 4,
        "no_embed_class": True,
        "init_values": 1e-5,  # only makes timm create ls1/ls2; the values are loaded
        "mlp_layer": "SwiGLUPacked",
        "act_layer": "SiLU",
        "mlp_ratio": _swiglu_ratio(dim),
    }


SPECS: tuple[EncoderSpec, ...] = (
    EncoderSpec(
        name="phikon",
        architecture="vit_base_patch16_224",
        builder="hf_vit",
        feature_dim=768,
        weights=WeightSource(
            kind="file",
            hf_repo="owkin/phikon",
            hf_filename="model.safetensors",
            alt_filenames=("pytorch_model.bin",),
        ),
        # HistoSSLscaling: 224 px tiles at 0.5 um/px, ImageNet normalisation (no resize of
        # its own); TRIDENT: Resize(224, bilinear) for other tile sizes.
        preprocessing=Preprocessing(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        timm_kwargs={"img_size": 224, "patch_size": 16},
        description=(
            "Phikon: iBOT ViT-B/16 (transformers ViTModel), class token after the final norm, 768-d"
        ),
        licence="Owkin non-commercial licence",
        reference="Filiot et al. 2023, medRxiv 10.1101/2023.07.21.23292757 (owkin/phikon)",
        layout="transformers",
        pooling="cls",
    ),
    EncoderSpec(
        name="phikon_v2",
        architecture="vit_large_patch16_224",
        builder="hf_dinov2",
        feature_dim=1024,
        weights=WeightSource(
            kind="file", hf_repo="owkin/phikon-v2", hf_filename="model.safetensors"
        ),
        # TRIDENT: Resize(224) + CenterCrop(224), ImageNet. The published
        # preprocessor_config.json (750 bytes) was not read: whether it resizes to 256
        # first is unconfirmed.
        preprocessing=Preprocessing(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5},
        description=(
            "Phikon-v2: DINOv2 ViT-L/16 (transformers Dinov2Model), class token after the "
            "final norm, 1024-d"
        ),
        licence="Owkin non-commercial licence (LICENSE.pdf in the repository)",
        reference="Filiot et al. 2024, arXiv:2409.09173 (owkin/phikon-v2)",
        layout="transformers",
        pooling="cls",
    ),
    EncoderSpec(
        name="hibou_b",
        architecture="vit_base_patch14_reg4_dinov2",
        builder="hf_dinov2_reg",
        feature_dim=768,
        weights=WeightSource(
            kind="file", hf_repo="histai/hibou-b", hf_filename="model.safetensors"
        ),
        # HistAI/hibou example.ipynb: Resize((224, 224), bicubic) + CenterCrop(224)
        preprocessing=Preprocessing(
            input_size=224, mean=HIBOU_MEAN, std=HIBOU_STD, interpolation="bicubic"
        ),
        timm_kwargs=_hibou_kwargs(768),
        description=(
            "Hibou-B: DINOv2 ViT-B/14, 4 registers, SwiGLU (transformers remote code "
            "Dinov2ModelWithRegisters), class token after the final norm (pooler_output), 768-d"
        ),
        licence="Apache-2.0",
        reference="Nechaev et al. 2024, arXiv:2406.05074 (histai/hibou-b)",
        layout="transformers",
        pooling="cls",
    ),
    EncoderSpec(
        name="hibou_l",
        architecture="vit_large_patch14_reg4_dinov2",
        builder="hf_dinov2_reg",
        feature_dim=1024,
        weights=WeightSource(
            kind="file", hf_repo="histai/hibou-L", hf_filename="model.safetensors"
        ),
        preprocessing=Preprocessing(
            input_size=224, mean=HIBOU_MEAN, std=HIBOU_STD, interpolation="bicubic"
        ),
        # Hibou-L's config.json was not read: ViT-L/14 with Hibou-B's registers, SwiGLU and
        # 224 px grid is assumed (TRIDENT builds it like Hibou-B; the paper: ViT-L/14).
        timm_kwargs=_hibou_kwargs(1024),
        description=(
            "Hibou-L: DINOv2 ViT-L/14, 4 registers, SwiGLU (transformers remote code), class "
            "token after the final norm (pooler_output), 1024-d"
        ),
        licence="Apache-2.0 (weights gated: access on request)",
        reference="Nechaev et al. 2024, arXiv:2406.05074 (histai/hibou-L)",
        layout="transformers",
        pooling="cls",
        gated=True,
    ),
    EncoderSpec(
        name="midnight_12k",
        architecture="vit_giant_patch14_dinov2",
        builder="hf_dinov2",
        feature_dim=3072,
        weights=WeightSource(
            kind="file", hf_repo="kaiko-ai/midnight", hf_filename="model.safetensors"
        ),
        # Model card: Resize(224) + CenterCrop(224) (torchvision v2, bilinear), 0.5 / 0.5
        preprocessing=Preprocessing(input_size=224, mean=KAIKO_MEAN, std=KAIKO_STD),
        # published grid 37 x 37 (518 px), resampled once to 16 x 16 at load (see above)
        timm_kwargs={"img_size": 224, "patch_size": 14, "init_values": 1e-5},
        description=(
            "Midnight-12k: DINOv2 ViT-g/14, SwiGLU (transformers Dinov2Model); class token "
            "concatenated with the mean of the patch tokens, 3072-d"
        ),
        licence="MIT",
        reference="Karasikov et al. 2025, arXiv:2504.05186 (kaiko-ai/midnight)",
        layout="transformers",
        pooling="cls+mean",
    ),
)

BUILDERS: dict[str, Builder] = {
    "hf_vit": build_hf_vit,
    "hf_dinov2": build_hf_dinov2,
    "hf_dinov2_reg": build_hf_dinov2_reg,
}
