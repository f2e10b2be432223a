"""CTransPath: the published timm-0.5.4 Swin layout maps onto current timm's Swin exactly.

The published ``ctranspath.pth`` is written here with random weights under its own key
layout (``{"model": state_dict}``; ``layers.N.downsample`` at the end of stage N, the
persistent ``relative_position_index`` / ``attn_mask`` buffers, no ``head``), loaded the
user's two ways, and its embedding compared with a from-scratch forward pass that follows
the OLD code's semantics (downsample at the end of a stage, PatchMerging by strided
slicing, the file's own buffers).
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn import functional as F

from tests.encoders.conftest import load_both_ways
from wsi.encoders import get_spec, load_encoder
from wsi.encoders.builders import _create
from wsi.encoders.ctranspath import ConvStem, ctranspath_keys
from wsi.errors import WeightsError

DEPTHS = (2, 2, 6, 2)
HEADS = (3, 6, 12, 24)
RES = (56, 28, 14, 7)  # token grid of each stage at 224 px
WINDOW, SHIFT = 7, 3


def new_net(device: str = "cpu") -> torch.nn.Module:
    """Current timm's Swin-T with CTransPath's stem (no random init: weights are loaded)."""
    with torch.device(device):
        net = _create(
            get_spec("ctranspath"), embed_layer=ConvStem, num_classes=0, weight_init="skip"
        )
    return net.eval()


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A current-layout CTransPath state dict with random, well-scaled values."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, v in new_net("meta").state_dict().items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            out[key] = torch.rand(v.shape, generator=g) + 0.5
        elif key.endswith("relative_position_bias_table"):
            out[key] = torch.randn(v.shape, generator=g)
        elif v.dim() == 1 and key.endswith("weight"):  # LayerNorm / BatchNorm scales
            out[key] = 1.0 + 0.2 * torch.randn(v.shape, generator=g)
        elif v.dim() == 1:
            out[key] = 0.1 * torch.randn(v.shape, generator=g)
        else:
            fan_in = v[0].numel()
            out[key] = torch.randn(v.shape, generator=g) / fan_in**0.5
    return out


def old_relative_position_index(ws: int) -> torch.Tensor:
    """timm 0.5.4 / Swin's WindowAttention buffer, written out as the old code does."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
    flat = torch.flatten(coords, 1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    return rel.sum(-1)


def _partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)


def _reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = windows.shape[0] // (h * w // ws // ws)
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def old_attn_mask(res: int, ws: int, shift: int) -> torch.Tensor:
    """timm 0.5.4 / Swin's SW-MSA mask (-100 across shifted-window boundaries)."""
    img = torch.zeros((1, res, res, 1))
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = _partition(img, ws).view(-1, ws * ws)
    mask = win.unsqueeze(1) - win.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def old_layout(new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published file's layout: downsample of stage N+1 stored as stage N's, buffers in."""
    out: dict[str, torch.Tensor] = {}
    for key, v in new.items():
        m = re.match(r"^layers\.(\d+)\.downsample\.(.+)$", key)
        out[f"layers.{int(m[1]) - 1}.downsample.{m[2]}" if m else key] = v
    for i, (depth, res) in enumerate(zip(DEPTHS, RES, strict=True)):
        ws = min(WINDOW, res)
        for j in range(depth):
            out[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = (
                old_relative_position_index(ws)
            )
            if j % 2 and res > WINDOW:
                out[f"layers.{i}.blocks.{j}.attn_mask"] = old_attn_mask(res, WINDOW, SHIFT)
    return out


def _ln(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], 1e-5)


def _old_block(x, sd, p, res, heads, ws, shift):  # noqa: ANN001, ANN202
    b, n_tok, c = x.shape
    shortcut = x
    x = _ln(x, sd, f"{p}.norm1").view(b, res, res, c)
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    win = _partition(x, ws).view(-1, ws * ws, c)
    bw, n = win.shape[:2]
    qkv = F.linear(win, sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"])
    q, k, v = qkv.reshape(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    index = sd[f"{p}.attn.relative_position_index"]
    bias = sd[f"{p}.attn.relative_position_bias_table"][index.view(-1)].view(n, n, -1)
    attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
    if shift:
        mask = sd[f"{p}.attn_mask"]
        nw = mask.shape[0]
        attn = attn.view(bw // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c)
    out = F.linear(out, sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"])
    x = _reverse(out.view(-1, ws, ws, c), ws, res, res)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    x = shortcut + x.reshape(b, n_tok, c)
    h = _ln(x, sd, f"{p}.norm2")
    h = F.linear(h, sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])
    h = F.linear(F.gelu(h), sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
    return x + h


def old_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """CTransPath's embedding computed as timm 0.5.4 + TransPath's ConvStem compute it."""
    p = "patch_embed.proj"
    for conv, bn in ((0, 1), (3, 4)):
        x = F.conv2d(x, sd[f"{p}.{conv}.weight"], stride=2, padding=1)
        x = F.batch_norm(
            x,
            sd[f"{p}.{bn}.running_mean"],
            sd[f"{p}.{bn}.running_var"],
            sd[f"{p}.{bn}.weight"],
            sd[f"{p}.{bn}.bias"],
            training=False,
            eps=1e-5,
        ).relu()
    x = F.conv2d(x, sd[f"{p}.6.weight"], sd[f"{p}.6.bias"])
    x = _ln(x.flatten(2).transpose(1, 2), sd, "patch_embed.norm")  # B L C
    for i, (depth, res, heads) in enumerate(zip(DEPTHS, RES, HEADS, strict=True)):
        ws = min(WINDOW, res)
        for j in range(depth):
            shift = SHIFT if (j % 2 and res > WINDOW) else 0
            x = _old_block(x, sd, f"layers.{i}.blocks.{j}", res, heads, ws, shift)
        if i < len(DEPTHS) - 1:  # old PatchMerging at the END of the stage, by slicing
            b, _, c = x.shape
            g = x.view(b, res, res, c)
            parts = [g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]]
            x = _ln(torch.cat(parts, -1).view(b, -1, 4 * c), sd, f"layers.{i}.downsample.norm")
            x = F.linear(x, sd[f"layers.{i}.downsample.reduction.weight"])
    return _ln(x, sd, "norm").mean(1)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The published ctranspath.pth ({"model": ...}, old layout) in a folder, and its tensors."""
    new = random_state(0)
    old = old_layout(new)
    folder = tmp_path_factory.mktemp("ctranspath")
    torch.save({"model": old}, folder / "ctranspath.pth")
    return folder, new, old


@pytest.fixture(scope="module")
def encoders(published):
    """CTransPath loaded from the published file and from its folder."""
    return load_both_ways("ctranspath", published[0], "ctranspath.pth")


@pytest.fixture(scope="module")
def net():
    return new_net()


def test_published_layout_facts(published):
    _, _, old = published
    assert not any(k.startswith("head.") for k in old)
    assert {k for k in old if "downsample.reduction" in k} == {
        f"layers.{i}.downsample.reduction.weight" for i in (0, 1, 2)
    }
    masks = sorted(k for k in old if k.endswith("attn_mask"))
    # the five shifted-window blocks of stages 0-2 (TRIDENT's list of missing keys)
    assert masks == [
        "layers.0.blocks.1.attn_mask",
        "layers.1.blocks.1.attn_mask",
        "layers.2.blocks.1.attn_mask",
        "layers.2.blocks.3.attn_mask",
        "layers.2.blocks.5.attn_mask",
    ]
    assert tuple(old["patch_embed.proj.0.weight"].shape) == (12, 3, 3, 3)
    assert tuple(old["patch_embed.proj.3.weight"].shape) == (24, 12, 3, 3)
    assert tuple(old["patch_embed.proj.6.weight"].shape) == (96, 24, 1, 1)
    assert tuple(old["layers.0.downsample.reduction.weight"].shape) == (192, 384)
    assert tuple(old["layers.2.downsample.norm.weight"].shape) == (1536,)


def test_ctranspath_loads_the_published_file_both_ways(encoders, published, he_tile):
    by_file, by_folder = encoders
    feats = by_file(he_tile)
    assert feats.shape == (1, 768) and torch.isfinite(feats).all()
    assert torch.equal(feats, by_folder(he_tile))
    # the same numbers as the old code's forward pass on the old-layout tensors
    with torch.inference_mode():
        expected = old_forward(published[2], by_file.preprocess(he_tile))
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-4)
    assert float(feats.std()) > 0.05  # not a degenerate comparison


def test_mapping_equals_the_current_layout_and_timms_own_filter(published, net):
    from timm.models.swin_transformer import checkpoint_filter_fn

    _, new, old = published
    mapped = ctranspath_keys(old, net, "ctranspath.pth")
    assert mapped.keys() == new.keys()
    assert all(torch.equal(mapped[k], new[k]) for k in new)
    theirs = checkpoint_filter_fn({"model": old}, net)  # timm's own old-Swin conversion
    assert theirs.keys() == mapped.keys()
    assert all(torch.equal(theirs[k], mapped[k]) for k in mapped)
    # the mapped old layout gives what the same weights loaded directly give
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        net.load_state_dict(new, strict=True)
        direct = net(x)
        net.load_state_dict(mapped, strict=True)
        assert torch.equal(net(x), direct)


def test_patch_merging_concatenation_order_matches_the_old_slicing():
    from timm.models.swin_transformer import PatchMerging

    torch.manual_seed(0)
    merge = PatchMerging(dim=8).eval()
    x = torch.randn(2, 6, 6, 8)  # B H W C
    old = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    with torch.inference_mode():
        expected = F.linear(
            F.layer_norm(old, (32,), merge.norm.weight, merge.norm.bias), merge.reduction.weight
        )
        torch.testing.assert_close(merge(x), expected)


def test_current_layout_with_a_classifier_loads_to_the_same_embedding(
    encoders, published, tmp_path, he_tile
):
    _, new, _ = published
    kept = {**new, "head.weight": torch.zeros(1000, 768), "head.bias": torch.zeros(1000)}
    torch.save({"model": kept}, tmp_path / "current.pth")
    again = load_encoder("ctranspath", weights=tmp_path / "current.pth")
    assert torch.equal(again(he_tile), encoders[0](he_tile))


def test_buffers_of_another_window_size_are_refused(published, net):
    _, _, old = published
    key = "layers.1.blocks.0.attn.relative_position_index"
    bad = {**old, key: old_relative_position_index(7).flip(0)}
    with pytest.raises(WeightsError, match=rf"^ctranspath.pth: buffer {re.escape(key)}"):
        ctranspath_keys(bad, net, "ctranspath.pth")


def test_a_missing_stage_is_listed(published, tmp_path):
    _, _, old = published
    cut = {k: v for k, v in old.items() if not k.startswith("layers.3.")}
    path = tmp_path / "cut.pth"
    torch.save({"model": cut}, path)
    with pytest.raises(WeightsError) as err:
        load_encoder("ctranspath", weights=path)
    msg = str(err.value)
    assert str(path) in msg and "missing (" in msg and "layers.3.blocks.0.norm1.weight" in msg
