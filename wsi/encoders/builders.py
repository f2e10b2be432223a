"""Make an encoder's module and load its checkpoint strictly.

Each builder takes the spec and a checkpoint's tensors and returns a module whose
``forward`` maps a normalised float batch (B, 3, S, S) to pooled features (B, D).
Keys that a builder drops or renames are dropped or renamed by explicit rules here;
everything else must match the architecture exactly (``strict=True``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi.encoders.spec import EncoderSpec
from wsi.encoders.weights import load_strict

__all__ = [
    "BUILDERS",
    "pooled",
    "PooledTimm",
    "TokenPooled",
    "efficientnet_lite_keys",
]


class PooledTimm(nn.Module):
    """A timm network used up to its pooled pre-logits features; the head is kept unused."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net: Any = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The original classifier's output (for checking the weights, not for embedding)."""
        return self.net(x)


class TokenPooled(nn.Module):
    """A timm ViT whose embedding is made from its output tokens (after the final norm).

    ``cls``: the class token; ``mean``: the mean of the patch tokens; ``cls+mean``: both,
    concatenated (Virchow's and H0-mini's published embedding). Register tokens
    (timm's ``num_prefix_tokens`` beyond the class token) are never averaged.
    """

    def __init__(self, net: Any, pooling: str) -> None:
        super().__init__()
        self.net: Any = net
        self.pooling = pooling
        self.prefix = int(getattr(net, "num_prefix_tokens", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.net.forward_features(x)
        cls, patches = tokens[:, 0], tokens[:, self.prefix :]
        if self.pooling == "cls":
            return cls
        if self.pooling == "mean":
            return patches.mean(1)
        return torch.cat([cls, patches.mean(1)], dim=-1)


def pooled(net: Any, spec: EncoderSpec) -> nn.Module:
    """``net`` wrapped to give the embedding ``spec.pooling`` names."""
    return PooledTimm(net) if spec.pooling == "model" else TokenPooled(net, spec.pooling)


def _timm_kwargs(spec: EncoderSpec) -> dict[str, Any]:
    """``spec.timm_kwargs`` with layer names resolved to timm classes."""
    import timm.layers

    kwargs = dict(spec.timm_kwargs)
    if isinstance(kwargs.get("mlp_layer"), str):
        kwargs["mlp_layer"] = getattr(timm.layers, kwargs["mlp_layer"])
    if isinstance(kwargs.get("act_layer"), str) and kwargs["act_layer"] in _ACTS:
        kwargs["act_layer"] = _ACTS[kwargs["act_layer"]]
    return kwargs


_ACTS: dict[str, type[nn.Module]] = {"SiLU": nn.SiLU, "GELU": nn.GELU}


def _create(spec: EncoderSpec, **extra: Any) -> Any:
    import timm

    return timm.create_model(spec.architecture, pretrained=False, **{**_timm_kwargs(spec), **extra})


# -- EfficientNet-Lite0 from the efficientnet_pytorch layout ------------------------------

_STEM = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# the first block has no expansion: depthwise, then pointwise projection
_BLOCK_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def efficientnet_lite_keys(state_dict: dict[str, Any], net: nn.Module) -> dict[str, Any]:
    """Rename ``efficientnet_pytorch`` keys (``_blocks.N._bn0``) to timm's (``blocks.s.i.bn1``).

    Block N of the flat list is the N-th (stage, index) pair of timm's nested blocks,
    in order; unknown keys are kept as they are, so strict loading reports them.
    """
    nested = sorted(
        {
            tuple(int(p) for p in k.split(".")[1:3])
            for k in net.state_dict()
            if k.startswith("blocks.")
        }
    )
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        m = _BLOCK_KEY.match(key)
        if m:
            n, layer, rest = int(m[1]), m[2], m[3]
            table = _BLOCK_DS if "_expand_conv" not in _layers_of(state_dict, n) else _BLOCK_IR
            if n < len(nested) and layer in table:
                stage, idx = nested[n]
                out[f"blocks.{stage}.{idx}.{table[layer]}.{rest}"] = value
                continue
        head, _, rest = key.partition(".")
        out[f"{_STEM[head]}.{rest}" if head in _STEM else key] = value
    return out


def _layers_of(state_dict: dict[str, Any], n: int) -> set[str]:
    prefix = f"_blocks.{n}."
    return {k[len(prefix) :].split(".")[0] for k in state_dict if k.startswith(prefix)}


def build_efficientnet_lite(spec: EncoderSpec, sd: dict[str, Any], path: Path) -> nn.Module:
    net = _create(spec)
    load_strict(net, efficientnet_lite_keys(sd, net), path)
    return PooledTimm(net)


# -- ResNet-50 cut after layer 3 (CLAM's resnet50_trunc) ----------------------------------


def build_resnet_trunc(spec: EncoderSpec, sd: dict[str, Any], path: Path) -> nn.Module:
    """ImageNet ResNet-50 up to layer 3, average pooled: 1024-d.

    Takes a full torchvision / timm ResNet-50 checkpoint (or one already cut): the
    keys of ``layer4`` and ``fc``, which this encoder never runs, are dropped by name.
    """
    net = _create(spec)
    net.layer4 = nn.Identity()
    net.fc = nn.Identity()
    kept = {k: v for k, v in sd.items() if not k.startswith(("layer4.", "fc."))}
    load_strict(net, kept, path)
    return PooledTimm(net)


# -- ViTs and any timm model ----------------------------------------------------------


def build_timm(spec: EncoderSpec, sd: dict[str, Any], path: Path) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``).

    A checkpoint that still holds the classifier (the keys named by the model's
    ``pretrained_cfg["classifier"]``) has those keys dropped; all others must match.
    """
    with torch.device("meta"):  # no memory and no random init for weights about to be loaded
        net = _create(spec, num_classes=0)
    heads = net.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    expected = net.state_dict()
    kept = {
        k: v
        for k, v in sd.items()
        if k in expected or not any(k.startswith(f"{h}.") for h in heads)
    }
    load_strict(net, kept, path, assign=True)
    _no_meta_left(net, spec)
    return pooled(net, spec)


def _no_meta_left(net: nn.Module, spec: EncoderSpec) -> None:
    """Every tensor of a module built on the meta device came from the checkpoint."""
    left = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if left:  # a non-persistent buffer: the architecture needs a real build
        raise RuntimeError(f"encoder {spec.name}: tensors not in any checkpoint: {left[:4]}")


Builder = Callable[[EncoderSpec, dict[str, Any], Path], nn.Module]

BUILDERS: dict[str, Builder] = {
    "efficientnet_lite": build_efficientnet_lite,
    "resnet_trunc": build_resnet_trunc,
    "timm": build_timm,
}
