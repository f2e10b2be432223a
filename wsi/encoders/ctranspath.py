"""CTransPath: a Swin-T with its convolutional stem, mean-pooled 768-d.

CTransPath (Wang et al. 2022) is timm's ``swin_tiny_patch4_window7_224`` whose patch
embedding is a small convolutional stem (``ConvStem``: two 3x3 stride-2 convolutions with
batch norm and ReLU, then a 1x1 convolution to 96 channels, then LayerNorm). The
published ``ctranspath.pth`` (a dict with key ``model``) was written by timm 0.5.4, whose
Swin key layout differs from current timm's:

* a stage's ``PatchMerging`` sits at the END of the stage there (``layers.0.downsample``
  .. ``layers.2.downsample``) and at the START of the next one here
  (``layers.1.downsample`` .. ``layers.3.downsample``): renamed stage N -> N + 1;
* ``relative_position_index`` and ``attn_mask`` were persistent buffers there: they are
  checked to equal the ones this architecture computes, then dropped;
* it has no ``head.*`` (the authors' loader replaces the head before a strict load); a
  file that kept a classifier has ``head.weight`` / ``head.bias`` dropped by name.

PatchMerging concatenates the 2x2 neighbours in the same order in both versions
((0,0), (1,0), (0,1), (1,1) as (row, column) offsets), so its weights carry over unchanged.

Sources: TransPath ``ctran.py`` and ``get_features_CTransPath.py``; TRIDENT
``patch_encoder_models/load.py`` (``CTransPathInferenceEncoder``) and
``model_zoo/ctranspath/ctran.py``; timm's ``swin_transformer.py`` (``checkpoint_filter_fn``
does the same renaming for timm's own old checkpoints).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi.encoders.builders import Builder, PooledTimm, _create
from wsi.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, Preprocessing, WeightSource
from wsi.encoders.weights import load_strict
from wsi.errors import WeightsError

__all__ = ["SPECS", "BUILDERS", "ConvStem", "ctranspath_keys"]


class ConvStem(nn.Module):
    """CTransPath's patch embedding, in the form current timm's Swin expects (NHWC out).

    ``proj``: Conv(3 -> E/8, 3x3, s2, no bias), BN, ReLU, Conv(E/8 -> E/4, 3x3, s2, no
    bias), BN, ReLU, Conv(E/4 -> E, 1x1) (indices 0, 1, 3, 4, 6 hold weights); ``norm``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Any = None,
        strict_img_size: bool = True,
        output_fmt: str = "NHWC",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if patch != (4, 4) or embed_dim % 8 or output_fmt != "NHWC":
            raise ValueError("ConvStem: patch size 4, embed_dim divisible by 8, NHWC output only")
        dd = {"device": device, "dtype": dtype}
        self.img_size = size
        self.patch_size = patch
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, embed_dim // 8
        for _ in range(2):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False, **dd),
                nn.BatchNorm2d(c_out, **dd),
                nn.ReLU(inplace=True),
            ]
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, embed_dim, kernel_size=1, **dd))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strict_img_size:
            torch._assert(
                tuple(x.shape[-2:]) == self.img_size,
                f"CTransPath takes {self.img_size} inputs, got {tuple(x.shape[-2:])}",
            )
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


#: timm's random initialisation is skipped: strict loading replaces every parameter, and the
#: derived buffers (relative position index, shifted-window masks) are computed by the
#: modules' constructors regardless (and checked against the file's)
_SKIP_INIT = "skip"

_OLD_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.(.+)$")
_BUFFERS = (".relative_position_index", ".attn_mask")
_OLD_HEAD = ("head.weight", "head.bias")


def ctranspath_keys(sd: dict[str, Any], net: nn.Module, path: str | Path) -> dict[str, Any]:
    """timm 0.5.4 Swin keys (CTransPath's published file) renamed for current timm's Swin.

    The old layout is recognised, as timm does, by ``layers.0.downsample`` (current timm
    has no downsample in stage 0); a file already in the current layout passes unchanged.
    The old persistent buffers must equal the module's own (same window and input size);
    a mismatch is a ``WeightsError``. Unknown keys stay, so strict loading reports them.
    """
    old = any(k.startswith("layers.0.downsample.") for k in sd)
    own = dict(net.named_buffers())
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if key.endswith(_BUFFERS):
            mine = own.get(key)
            if (
                mine is None
                or tuple(mine.shape) != tuple(value.shape)
                or not torch.equal(mine.to(value.dtype), value)
            ):
                raise WeightsError(
                    f"{path}: buffer {key} differs from the one CTransPath's Swin-T (224 px, "
                    "window 7) computes: the file is for another window or input size. Check "
                    "that the file belongs to this encoder."
                )
            continue
        if key in _OLD_HEAD:
            continue
        m = _OLD_DOWNSAMPLE.match(key)
        if old and m:
            key = f"layers.{int(m[1]) + 1}.downsample.{m[2]}"
        out[key] = value
    return out


def build_ctranspath(spec: EncoderSpec, sd: dict[str, Any], path: Path) -> nn.Module:
    """Swin-T with ConvStem, final norm, mean of the 7x7 tokens: 768-d."""
    net = _create(spec, embed_layer=ConvStem, num_classes=0, weight_init=_SKIP_INIT)
    load_strict(net, ctranspath_keys(sd, net, path), path)
    return PooledTimm(net)


SPECS: tuple[EncoderSpec, ...] = (
    EncoderSpec(
        name="ctranspath",
        architecture="swin_tiny_patch4_window7_224",
        builder="ctranspath",
        feature_dim=768,
        # published on Google Drive (TransPath README), not on the Hugging Face hub
        weights=WeightSource(kind="file", hf_filename="ctranspath.pth"),
        # TransPath's get_features_CTransPath.py: Resize(224), ImageNet mean / std
        # (TRIDENT: the same, bilinear with antialias)
        preprocessing=Preprocessing(
            input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear"
        ),
        description=(
            "CTransPath: Swin-T with a convolutional stem (SRCL, 15M tiles), 768-d mean-pooled"
        ),
        licence="GPL-3.0, non-commercial academic use (TransPath README)",
        reference="Wang et al. 2022, Medical Image Analysis (CTransPath)",
        layout="timm-0.5.4",
        pooling="model",
        gated=False,
    ),
)

BUILDERS: dict[str, Builder] = {"ctranspath": build_ctranspath}
