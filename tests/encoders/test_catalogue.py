"""The foundation models published as timm checkpoints, each proved against its own recipe.

For each entry the reference is built here the way the model's card (and TRIDENT) build it,
with the published ``timm.create_model`` arguments written out independently of our
registry, filled with random weights and saved under the published file name in a snapshot
folder. ``load_encoder`` must load that file and that folder strictly and give, on a real
H&E tile, the embedding the published recipe computes (class token, class token + mean of
the patch tokens after the register tokens, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.encoders.conftest import load_both_ways, save_snapshot
from wsi.encoders import get_spec, load_encoder, registered
from wsi.errors import WeightsError

SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": nn.SiLU}


def _reference(arch: str, seed: int = 0, **kwargs: Any) -> nn.Module:
    """The published ``timm.create_model(arch, **kwargs)`` with random weights, quickly:
    built on the meta device, then every tensor drawn (a real init of 1B parameters
    takes minutes on two cores)."""
    import timm.layers

    if kwargs.get("mlp_layer") == "SwiGLUPacked":
        kwargs["mlp_layer"] = timm.layers.SwiGLUPacked
    with torch.device("meta"):
        net = timm.create_model(arch, pretrained=False, **kwargs)
    net = net.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if "norm" in name and name.endswith("weight"):
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.02 * torch.randn(t.shape, generator=g))
    return net.eval()


def _cls(out: torch.Tensor, net: Any) -> torch.Tensor:
    return out if out.ndim == 2 else out[:, 0]


def _cls_mean(first_patch: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def f(out: torch.Tensor, net: Any) -> torch.Tensor:
        return torch.cat([out[:, 0], out[:, first_patch:].mean(1)], dim=-1)

    return f


# name: (published create_model architecture, its published kwargs, the published embedding,
#        the published file name)
RECIPES: dict[str, tuple[str, dict[str, Any], Callable[..., torch.Tensor], str]] = {
    # paige-ai/Virchow card: output = model(x); cat(output[:, 0], output[:, 1:].mean(1))
    "virchow": (
        "vit_huge_patch14_224",
        {
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            **SWIGLU,
        },
        _cls_mean(1),
        "pytorch_model.bin",
    ),
    # paige-ai/Virchow2 card: tokens 1-4 are register tokens: output[:, 5:]
    "virchow2": (
        "vit_huge_patch14_224",
        {
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "reg_tokens": 4,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            **SWIGLU,
        },
        _cls_mean(5),
        "pytorch_model.bin",
    ),
    "h_optimus_0": (
        "vit_giant_patch14_reg4_dinov2",
        {
            "num_classes": 0,
            "img_size": 224,
            "global_pool": "token",
            "init_values": 1e-5,
            "dynamic_img_size": True,
        },
        _cls,
        "pytorch_model.bin",
    ),
    "h_optimus_1": (
        "vit_giant_patch14_reg4_dinov2",
        {
            "num_classes": 0,
            "img_size": 224,
            "global_pool": "token",
            "init_values": 1e-5,
            "dynamic_img_size": True,
        },
        _cls,
        "pytorch_model.bin",
    ),
    # bioptimus/H0-mini card: cat(output[:, 0], output[:, model.num_prefix_tokens:].mean(1))
    "h0_mini": (
        "vit_base_patch14_reg4_dinov2",
        {"img_size": 224, "num_classes": 0, "global_pool": "", "dynamic_img_size": True, **SWIGLU},
        _cls_mean(5),
        "pytorch_model.bin",
    ),
    "gigapath": (
        "vit_giant_patch14_dinov2",
        {
            "img_size": 224,
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
            "num_classes": 0,
        },
        _cls,
        "pytorch_model.bin",
    ),
    "kaiko_vits16": ("vit_small_patch16_224", {"num_classes": 0}, _cls, "model.safetensors"),
    "kaiko_vits8": ("vit_small_patch8_224", {"num_classes": 0}, _cls, "model.safetensors"),
    "kaiko_vitb16": ("vit_base_patch16_224", {"num_classes": 0}, _cls, "model.safetensors"),
    "kaiko_vitb8": ("vit_base_patch8_224", {"num_classes": 0}, _cls, "model.safetensors"),
    # the L14 backbone is built at 518 px and run on 224 px inputs (dynamic position grid)
    "kaiko_vitl14": (
        "vit_large_patch14_reg4_dinov2",
        {"num_classes": 0, "img_size": 518, "dynamic_img_size": True},
        _cls,
        "model.safetensors",
    ),
    "lunit_vits8": ("vit_small_patch8_224", {"num_classes": 0}, _cls, "model.safetensors"),
    "lunit_vits16": ("vit_small_patch16_224", {"num_classes": 0}, _cls, "model.safetensors"),
}

# more than a few seconds each on two cores (hundreds of MB to 4.5 GB of weights)
HEAVY = {"virchow", "virchow2", "h_optimus_0", "h_optimus_1", "gigapath", "kaiko_vitl14"}

# Figures the publishers state, against the architecture we build (meta device, no memory).
PUBLISHED_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "virchow": {"pos_embed": (1, 257, 1280), "blocks.31.mlp.fc1.weight": (6832, 1280)},
    "virchow2": {"reg_token": (1, 4, 1280), "blocks.0.mlp.fc2.weight": (1280, 3416)},
    "h_optimus_0": {"reg_token": (1, 4, 1536), "pos_embed": (1, 256, 1536)},
    "gigapath": {"patch_embed.proj.weight": (1536, 3, 16, 16), "pos_embed": (1, 197, 1536)},
    "kaiko_vitl14": {"pos_embed": (1, 1369, 1024), "reg_token": (1, 4, 1024)},
    "lunit_vits8": {"patch_embed.proj.weight": (384, 3, 8, 8), "pos_embed": (1, 785, 384)},
}
PUBLISHED_PARAMETERS = {
    "gigapath": 1_134_953_984,  # the Prov-GigaPath tile encoder's parameter count
    "uni": 303_350_784,
}


def _meta_state(name: str) -> dict[str, torch.Tensor]:
    import timm

    from wsi.encoders.builders import _timm_kwargs

    spec = get_spec(name)
    with torch.device("meta"):
        net = timm.create_model(
            spec.architecture, pretrained=False, num_classes=0, **_timm_kwargs(spec)
        )
    return dict(net.state_dict())


def test_every_entry_has_a_complete_contract():
    names = [s.name for s in registered()]
    assert len(names) == len(set(names))
    for spec in registered():
        assert spec.feature_dim > 0 and spec.licence and spec.reference, spec.name
        assert spec.preprocessing.input_size % 2 == 0, spec.name
        if spec.weights.kind == "file":  # a published name to look for (or a cache glob)
            assert spec.weights.filenames() or spec.weights.torch_hub_glob, spec.name
        if spec.gated:
            assert "gated" in spec.licence, spec.name


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_registry_builds_the_published_architecture(name):
    """Our spec and the published create_model call give the same key names and shapes."""
    import timm.layers

    arch, kwargs, _, _ = RECIPES[name]
    kwargs = dict(kwargs)
    if kwargs.get("mlp_layer") == "SwiGLUPacked":
        kwargs["mlp_layer"] = timm.layers.SwiGLUPacked
    with torch.device("meta"):
        published = timm.create_model(arch, pretrained=False, **kwargs).state_dict()
    ours = _meta_state(name)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in published.items()
    }
    assert get_spec(name).architecture == arch
    for key, shape in PUBLISHED_SHAPES.get(name, {}).items():
        assert tuple(ours[key].shape) == shape, key
    if name in PUBLISHED_PARAMETERS:
        assert sum(v.numel() for v in ours.values()) == PUBLISHED_PARAMETERS[name]


def _roundtrip(name: str, tmp_path: Path, he_tile: torch.Tensor) -> None:
    arch, kwargs, embed, filename = RECIPES[name]
    ref = _reference(arch, **kwargs)
    folder = save_snapshot(
        tmp_path / name, filename, ref.state_dict(), {"architecture": arch, "model_args": {}}
    )
    by_file, by_folder = load_both_ways(name, folder, filename)
    spec = get_spec(name)
    out = by_file(he_tile)
    assert out.shape == (1, spec.feature_dim) and torch.isfinite(out).all()
    assert torch.equal(out, by_folder(he_tile))
    with torch.inference_mode():
        expected = embed(ref(by_file.preprocess(he_tile)), ref)
    assert expected.shape == out.shape
    assert torch.allclose(out, expected, atol=1e-4, rtol=1e-4), (out - expected).abs().max()


@pytest.mark.parametrize("name", sorted(set(RECIPES) - HEAVY))
def test_published_checkpoint_loads_strictly_and_embeds_as_published(name, tmp_path, he_tile):
    _roundtrip(name, tmp_path, he_tile)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEAVY))
def test_heavy_published_checkpoint_loads_strictly(name, tmp_path, he_tile):
    _roundtrip(name, tmp_path, he_tile)


def test_published_resize_and_centre_crop(he_tile):
    """GigaPath's Resize(256, bicubic) + CenterCrop(224) and Virchow's Resize(224, bicubic),
    as torchvision applies them to the PIL tile, against our tensor preprocessing."""
    from PIL import Image
    from torchvision import transforms as T

    pil = Image.fromarray(he_tile[0].numpy())
    for name, published in (
        ("gigapath", [T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)]),
        ("virchow", [T.Resize(224, interpolation=T.InterpolationMode.BICUBIC)]),
    ):
        pre = get_spec(name).preprocessing
        ref = T.Compose([*published, T.ToTensor(), T.Normalize(pre.mean, pre.std)])(pil)
        from wsi.encoders.encoder import Preprocess

        ours = Preprocess(pre)(he_tile)[0]
        assert ours.shape == ref.shape == (3, 224, 224)
        # PIL resamples in uint8, torch in float: a grey level or so apart, never a shift
        assert float((ours - ref).abs().mean()) < 0.02, name
        assert float((ours - ref).abs().max()) < 0.15, name


def test_a_wrong_checkpoint_names_the_file_and_the_first_mismatches(tmp_path):
    """Kaiko ViT-S/16 weights given to h0_mini: missing register tokens, shapes that differ."""
    arch, kwargs, _, _ = RECIPES["kaiko_vits16"]
    path = tmp_path / "kaiko" / "model.safetensors"
    save_snapshot(path.parent, path.name, _reference(arch, **kwargs).state_dict(), None)
    with pytest.raises(WeightsError) as err:
        load_encoder("h0_mini", weights=path)
    msg = str(err.value)
    assert str(path) in msg and "missing" in msg and "reg_token" in msg
    assert "shape" in msg and "pos_embed: checkpoint (1, 197, 384), model (1, 256, 768)" in msg
    assert "--encoder" in msg


@pytest.mark.slow
def test_uni_weights_given_to_virchow2_are_refused(tmp_path):
    ref = _reference(
        "vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5, num_classes=0
    )
    path = tmp_path / "uni" / "pytorch_model.bin"
    save_snapshot(path.parent, path.name, ref.state_dict(), None)
    with pytest.raises(WeightsError) as err:
        load_encoder("virchow2", weights=path.parent)
    msg = str(err.value)
    assert str(path) in msg and "reg_token" in msg
    assert "pos_embed: checkpoint (1, 197, 1024), model (1, 261, 1280)" in msg


def test_a_snapshot_folder_without_the_weights_says_what_it_found(tmp_path):
    from wsi.errors import WeightsNotFoundError

    folder = tmp_path / "snap"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "README.md").write_text("")
    with pytest.raises(WeightsNotFoundError) as err:
        load_encoder("virchow2", weights=folder)
    msg = str(err.value)
    assert str(folder) in msg and "pytorch_model.bin" in msg and "config.json" in msg


def test_a_sharded_snapshot_loads_as_one_checkpoint(tmp_path, he_tile):
    """model.safetensors.index.json naming two shards: merged, and hashed over both shards."""
    import json

    from safetensors.torch import save_file

    from wsi.encoders.weights import weights_digest

    arch, kwargs, embed, _ = RECIPES["lunit_vits16"]
    sd = {k: v.contiguous() for k, v in _reference(arch, **kwargs).state_dict().items()}
    keys = sorted(sd)
    half = len(keys) // 2
    folder = tmp_path / "sharded"
    folder.mkdir()
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: sd[k] for k in part}, str(folder / shard))
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    enc = load_encoder("lunit_vits16", weights=folder)
    assert enc.weights_path.name == "model.safetensors.index.json"
    assert enc.weights_sha256 == weights_digest(folder / "model.safetensors.index.json")
    assert enc(he_tile).shape == (1, 384)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(Exception) as err:
        load_encoder("lunit_vits16", weights=folder)
    assert "model-00002-of-00002.safetensors" in str(err.value)


def test_wsi_encoders_lists_every_entry_and_finds_a_snapshot_folder(tmp_path, monkeypatch, capsys):
    """`wsi encoders`: dimension, input size, gating, licence, and weights found on disk."""
    import json

    from pipelines.cli import main

    arch, kwargs, _, filename = RECIPES["lunit_vits16"]
    save_snapshot(
        tmp_path / "weights" / "lunit_vits16", filename, _reference(arch, **kwargs).state_dict(), {}
    )
    monkeypatch.setenv("WSI_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["encoders"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    for spec in registered():
        row = lines[spec.name].split()
        assert row[1:4] == [
            str(spec.feature_dim),
            str(spec.preprocessing.input_size),
            "yes" if spec.gated else "no",
        ]
        found = spec.name in ("lunit_vits16", "efficientnet_lite0")
        assert row[4] == ("here" if found else "-"), spec.name
    assert main(["encoders", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["virchow2"]["gated"] is True and rows["virchow2"]["pooling"] == "cls+mean"
    assert rows["lunit_vits16"]["weights"].endswith("lunit_vits16/model.safetensors")
    assert "$WSI_WEIGHTS_DIR" not in rows["virchow2"]["how_to_get_weights"]
    assert str(tmp_path / "weights" / "virchow2") in rows["virchow2"]["how_to_get_weights"]
