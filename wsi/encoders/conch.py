"""CONCH v1 and v1.5: a timm ViT trunk with CONCH's attentional pooler.

Both embed a tile as CONCH's image tower does before its contrastive projection: the
trunk's output tokens (class token and patch tokens, after the final norm) are pooled by
one learned query (an attentional pooler), then layer-normed (``ln_contrast``).

* ``conch_v1`` (MahmoodLab CONCH, Lu et al. 2024): ViT-B/16 at 448 px, pooler 768 -> 512,
  the embedding of ``model.encode_image(x, proj_contrast=False, normalize=False)`` (the
  one CONCH's README recommends for linear probes and MIL, and TRIDENT's ``conch_v1``).
  The published ``pytorch_model.bin`` holds the whole CoCa model under ``visual.*``,
  ``text.*`` (...); the image keys are loaded strictly, the others dropped by name.
* ``conch_v1_5`` (MahmoodLab conchv1_5, the patch encoder of TITAN): ViT-L/16 with layer
  scale at 448 px, a bias-free pooler 1024 -> 768. The published
  ``pytorch_model_vision.bin`` holds the vision tower only (``trunk.*``,
  ``attn_pool_contrast.*``, ``ln_contrast.*``). Its reference code builds the trunk at
  224 px and interpolates the position embedding at run time (DINO's bicubic
  ``scale_factor`` rule); that interpolation is done once here, at loading.

Sources: CONCH ``conch/open_clip_custom/{coca_model,vision_tower,transformer,factory,
transform}.py`` and ``model_configs/conch_ViT-B-16.json``; TRIDENT
``trident/patch_encoder_models/load.py`` and
``model_zoo/conchv1_5/conchv1_5.py`` (the code TITAN's ``return_conch`` ships).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from wsi.encoders.builders import Builder, _create
from wsi.encoders.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    EncoderSpec,
    Preprocessing,
    WeightSource,
)
from wsi.encoders.weights import load_strict

__all__ = [
    "SPECS",
    "BUILDERS",
    "AttentionalPooler",
    "BiasFreeAttentionalPooler",
    "ConchVisual",
    "make_visual",
    "conch_v1_keys",
    "conch_v1_5_keys",
    "conch_v1_5_pos_embed",
]

#: heads of both poolers: CONCH's ``attn_pooler_heads`` (8; ``_build_vision_tower`` does
#: not pass it on, ``VisualModel``'s default 8 applies) and CONCH v1.5's ``n_head=8``
POOLER_HEADS = 8


#: timm's random initialisation of the trunk is skipped: strict loading replaces every
#: parameter (a plain ViT has no derived buffers)
_SKIP_INIT = "skip"


class AttentionalPooler(nn.Module):
    """CONCH v1's (and open_clip's) attentional pooler: learned queries attend to the tokens.

    Parameters named as theirs: ``query`` (Q, d_model), ``attn`` (``nn.MultiheadAttention``
    with ``kdim = vdim = context_dim``, so separate q/k/v projection weights and one
    ``in_proj_bias``), ``ln_q`` (d_model), ``ln_k`` (context_dim). Returns (B, Q, d_model).
    """

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(n_queries, d_model))
        self.attn = nn.MultiheadAttention(
            d_model, n_head, kdim=context_dim, vdim=context_dim, batch_first=True
        )
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_k(x)
        q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.attn(q, x, x, need_weights=False)[0]


class BiasFreeAttentionalPooler(nn.Module):
    """CONCH v1.5's attentional pooler (CoCa-pytorch style): the same attention, other names.

    ``query`` (Q, d_model), ``ln_q``, ``ln_k``, and bias-free ``to_q`` (d_model -> d_model),
    ``to_kv`` (context_dim -> 2 d_model: keys, then values) and ``to_out``; heads split
    ``(h d)`` with scale ``(d_model / h) ** -0.5``. Returns (B, Q, d_model).
    """

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.heads = n_head
        self.query = nn.Parameter(torch.zeros(n_queries, d_model))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.heads
        q = self.to_q(self.ln_q(self.query))  # (Q, D)
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)  # (B, N, D) each
        d = q.shape[-1] // h
        q = q.view(1, -1, h, d).transpose(1, 2).expand(b, -1, -1, -1)
        k = k.reshape(b, n, h, d).transpose(1, 2)
        v = v.reshape(b, n, h, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.to_out(out.transpose(1, 2).reshape(b, -1, h * d))


class ConchVisual(nn.Module):
    """Trunk tokens -> attentional pooler (first query) -> ``ln_contrast``: (B, D).

    CONCH's ``VisualModel.forward_no_head`` (v1) and ``CONCHVisionTower.forward`` (v1.5):
    the pooler attends to all the trunk's tokens after its final norm, class token included.
    """

    def __init__(self, trunk: Any, pooler: nn.Module, dim: int):
        super().__init__()
        self.trunk: Any = trunk
        self.attn_pool_contrast = pooler
        self.ln_contrast = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


# -- CONCH v1: the image tower of the published CoCa checkpoint ---------------------------

_V1_PREFIX = "visual."
#: parts of the published CoCa checkpoint the image embedding never uses: the text tower,
#: the multimodal text decoder (CONCH's README: removed from the public weights; dropped
#: if present), the captioning pooler and its norm
_V1_UNUSED_PREFIXES = ("text.", "text_decoder.", "visual.attn_pool_caption.", "visual.ln_caption.")
#: the contrastive projection (``proj_contrast=False``) and the CLIP temperature
_V1_UNUSED_KEYS = ("visual.proj_contrast", "logit_scale")


def conch_v1_keys(sd: dict[str, Any]) -> dict[str, Any]:
    """The image-tower keys of a CONCH v1 CoCa checkpoint, without their ``visual.`` prefix.

    Keys of the text tower, decoder, captioning pooler, contrastive projection and
    temperature are dropped by name; any other key is kept as it is, so strict loading
    reports it (a file without the image keys, or another model's, fails).
    """
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if key.startswith(_V1_UNUSED_PREFIXES) or key in _V1_UNUSED_KEYS:
            continue
        out[key[len(_V1_PREFIX) :] if key.startswith(_V1_PREFIX) else key] = value
    return out


def make_visual(spec: EncoderSpec) -> ConchVisual:
    """The (unloaded) image tower of a CONCH spec: its trunk, pooler (one query) and norm."""
    trunk = _create(spec, num_classes=0, weight_init=_SKIP_INIT)
    kind = BiasFreeAttentionalPooler if spec.builder == "conch_v1_5" else AttentionalPooler
    pooler = kind(spec.feature_dim, trunk.num_features, POOLER_HEADS, n_queries=1)
    return ConchVisual(trunk, pooler, spec.feature_dim)


def build_conch_v1(spec: EncoderSpec, sd: dict[str, Any], path: Path) -> nn.Module:
    """CONCH v1's image embedding before the contrastive projection, 512-d."""
    model = make_visual(spec)
    load_strict(model, conch_v1_keys(sd), path)
    return model


# -- CONCH v1.5: the published vision tower ------------------------------------------------

#: the position grid of CONCH v1.5's reference trunk (built at 224 px, patch 16). Every
#: checkpoint position embedding is first brought to this grid (timm's bilinear resample,
#: as the reference's ``resize_pos_embed``: a no-op for the expected (1, 197, 1024)), then
#: interpolated to the input's grid as the reference's ``interpolate_pos_encoding`` does.
_V15_REFERENCE_GRID = 14


def conch_v1_5_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """A (1, 1 + g*g, D) position embedding as CONCH v1.5's code uses it on a grid x grid input.

    The reference (TRIDENT / TITAN ``conchv1_5.py``) keeps a 14 x 14 table and, for another
    input size, resizes the patch part with ``F.interpolate(mode="bicubic",
    scale_factor=(grid + 0.1) / 14)`` (DINO's rule, no antialias); the class position is
    kept. Anything not of that form is returned unchanged (strict loading reports it).
    """
    n = pos.shape[1] - 1 if pos.dim() == 3 else -1
    g = math.isqrt(n) if n > 0 else 0
    if pos.dim() != 3 or pos.shape[0] != 1 or g * g != n:
        return pos
    ref = _V15_REFERENCE_GRID
    if g != ref:
        from timm.layers import resample_abs_pos_embed

        pos = resample_abs_pos_embed(
            pos, [ref, ref], num_prefix_tokens=1, interpolation="bilinear", antialias=False
        )
    if grid == ref:
        return pos
    dim = pos.shape[-1]
    cls, patches = pos[:, :1], pos[:, 1:]
    patches = patches.reshape(1, ref, ref, dim).permute(0, 3, 1, 2)
    scale = (grid + 0.1) / float(ref)  # the reference's w0 / sqrt(N), w0 = grid + 0.1
    patches = F.interpolate(patches, scale_factor=(scale, scale), mode="bicubic")
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def conch_v1_5_keys(sd: dict[str, Any], grid: int) -> dict[str, Any]:
    """The published CONCH v1.5 keys, with ``trunk.pos_embed`` brought to the input grid."""
    out = dict(sd)
    if "trunk.pos_embed" in out:
        out["trunk.pos_embed"] = conch_v1_5_pos_embed(out["trunk.pos_embed"], grid)
    return out


def build_conch_v1_5(spec: EncoderSpec, sd: dict[str, Any], path: Path) -> nn.Module:
    """CONCH v1.5's image embedding, 768-d."""
    model = make_visual(spec)
    load_strict(model, conch_v1_5_keys(sd, int(model.trunk.patch_embed.grid_size[0])), path)
    return model


SPECS: tuple[EncoderSpec, ...] = (
    EncoderSpec(
        name="conch_v1",
        architecture="vit_base_patch16_224",
        builder="conch_v1",
        feature_dim=512,
        weights=WeightSource(
            kind="file",
            # the spelling CONCH's own loader downloads with (hf_hub:MahmoodLab/conch), so
            # the cache folder is models--MahmoodLab--conch; the model page is MahmoodLab/CONCH
            hf_repo="MahmoodLab/conch",
            hf_filename="pytorch_model.bin",
        ),
        # CONCH's create_model_from_pretrained transform: Resize(448, bicubic),
        # CenterCrop(448), OpenAI CLIP mean / std
        preprocessing=Preprocessing(
            input_size=448,
            mean=OPENAI_CLIP_MEAN,
            std=OPENAI_CLIP_STD,
            interpolation="bicubic",
        ),
        # conch_ViT-B-16.json: ViT-B/16 (width 768, 12 layers, 12 heads, mlp 4) at 448;
        # CONCH builds timm's VisionTransformer with dynamic_img_size=True
        timm_kwargs={"img_size": 448, "patch_size": 16, "dynamic_img_size": True},
        description=(
            "CONCH v1: vision-language (CoCa) ViT-B/16 at 448 px, attentional pooler, 512-d "
            "(encode_image without projection)"
        ),
        licence="CC-BY-NC-ND-4.0 (weights gated; bring your own file)",
        reference="Lu et al. 2024, Nature Medicine (CONCH)",
        layout="conch_coca",
        pooling="model",
        gated=True,
    ),
    EncoderSpec(
        name="conch_v1_5",
        architecture="vit_large_patch16_224",
        builder="conch_v1_5",
        feature_dim=768,
        weights=WeightSource(
            kind="file", hf_repo="MahmoodLab/conchv1_5", hf_filename="pytorch_model_vision.bin"
        ),
        # TRIDENT's conchv1_5.py transform: Resize(448, bilinear), CenterCrop(448),
        # ImageNet mean / std
        preprocessing=Preprocessing(
            input_size=448, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear"
        ),
        # ViT-L/16 (1024, 24 layers, 16 heads, mlp 4, qkv bias) with layer scale (the
        # reference sets init_values=1.0; the loaded gammas replace it), LayerNorm eps 1e-6
        timm_kwargs={"img_size": 448, "patch_size": 16, "init_values": 1.0},
        description=(
            "CONCH v1.5 (TITAN's patch encoder): ViT-L/16 at 448 px, attentional pooler, 768-d"
        ),
        # not confirmed: the conchv1_5 model card was not available; CONCH v1 and TITAN
        # are CC-BY-NC-ND-4.0
        licence=(
            "CC-BY-NC-ND-4.0 as CONCH / TITAN (unconfirmed; weights gated; bring your own file)"
        ),
        reference="Ding et al. 2024, TITAN (arXiv:2411.19666); MahmoodLab/conchv1_5",
        layout="conch_vision",
        pooling="model",
        gated=True,
    ),
)

BUILDERS: dict[str, Builder] = {
    "conch_v1": build_conch_v1,
    "conch_v1_5": build_conch_v1_5,
}
