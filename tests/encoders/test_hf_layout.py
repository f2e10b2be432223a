"""Encoders published in the transformers layout, proved against transformers itself.

For every entry a transformers reference model is built with the published
configuration, every tensor is given seeded random values (biases, norms, layer scales
and tokens included, so that no mapping error can hide behind a zero or a one), and it
is saved as the published snapshot folder (config.json + the published weight file, in
the key layout ``save_pretrained`` writes). The encoder is then loaded through the
user's path (``--weights FILE`` and ``--weights FOLDER``), run on a real H&E tile, and its
embedding compared with the one the reference computes from the same preprocessed input.
transformers is a dev-only reference here; ``wsi`` never imports it.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.encoders.conftest import load_both_ways, save_checkpoint
from wsi.encoders import get_spec, load_encoder
from wsi.errors import WeightsError

transformers = pytest.importorskip("transformers")

# Hibou-B's published config.json (histai/hibou-b, commit 5cc6343), as read on the hub.
HIBOU_B_CONFIG: dict[str, Any] = {
    "apply_layernorm": True,
    "architectures": ["Dinov2ModelWithRegisters"],
    "attention_probs_dropout_prob": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_dinov2.Dinov2Config",
        "AutoModel": "modeling_dinov2.Dinov2ModelWithRegisters",
    },
    "drop_path_rate": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 768,
    "image_size": 224,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-06,
    "layerscale_value": 1.0,
    "mlp_ratio": 4,
    "model_type": "dinov2",
    "num_attention_heads": 12,
    "num_channels": 3,
    "num_hidden_layers": 12,
    "num_register_tokens": 4,
    "patch_size": 14,
    "qkv_bias": True,
    "torch_dtype": "float32",
    "use_swiglu_ffn": True,
}
# Hibou-L's config.json was not read; Hibou-B's with ViT-L sizes (an assumption).
HIBOU_L_CONFIG = {
    **HIBOU_B_CONFIG,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
}
_REGISTER_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size")


def _dinov2_with_registers(config: dict[str, Any]) -> Any:
    """transformers' Dinov2WithRegistersModel set up as Hibou's remote-code config says."""
    keep = _REGISTER_KEYS + (
        "patch_size",
        "layer_norm_eps",
        "mlp_ratio",
        "num_register_tokens",
        "use_swiglu_ffn",
        "qkv_bias",
        "layerscale_value",
    )
    cfg = transformers.Dinov2WithRegistersConfig(**{k: config[k] for k in keep})
    return transformers.Dinov2WithRegistersModel(cfg)


def _cls(out: Any) -> torch.Tensor:
    return out.last_hidden_state[:, 0]


def _pooler(out: Any) -> torch.Tensor:
    return out.pooler_output


def _cls_mean(out: Any) -> torch.Tensor:
    tokens = out.last_hidden_state
    return torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)


# name -> (make the reference model, published weight file, reference embedding,
#          published key shapes, parameters of the published file)
CASES: dict[str, tuple[Callable[[], Any], str, Callable[[Any], torch.Tensor], dict, int]] = {
    "phikon": (
        # owkin/phikon config.json (layer_norm_eps 1e-6 since the hub's PR #1, "to match
        # timm"; 1e-12 before). The 346 MB file holds ViTModel's pooler (85.8 M + 0.59 M).
        lambda: transformers.ViTModel(
            transformers.ViTConfig(
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                intermediate_size=3072,
                image_size=224,
                patch_size=16,
                layer_norm_eps=1e-6,
                qkv_bias=True,
                encoder_stride=16,
            ),
            add_pooling_layer=True,
        ),
        "pytorch_model.bin",  # the original upload (model.safetensors was added later)
        _cls,  # model card / HistoSSLscaling: last_hidden_state[:, 0]
        {
            "embeddings.position_embeddings": (1, 197, 768),
            "encoder.layer.11.attention.attention.query.weight": (768, 768),
            "encoder.layer.0.intermediate.dense.weight": (3072, 768),
            "pooler.dense.weight": (768, 768),
        },
        85_798_656 + 590_592,  # model card: "Params (M): 85.8", plus the pooler
    ),
    "phikon_v2": (
        lambda: transformers.Dinov2Model(
            transformers.Dinov2Config(
                hidden_size=1024,
                num_hidden_layers=24,
                num_attention_heads=16,
                patch_size=16,
                image_size=224,
                mlp_ratio=4,
                use_swiglu_ffn=False,
                layer_norm_eps=1e-6,
            )
        ),
        "model.safetensors",
        _cls,
        {
            "embeddings.position_embeddings": (1, 197, 1024),
            "embeddings.mask_token": (1, 1024),
            "encoder.layer.23.mlp.fc1.weight": (4096, 1024),
            "encoder.layer.0.layer_scale1.lambda1": (1024,),
        },
        303_351_808,  # 1.21 GB at float32, the published file size
    ),
    "hibou_b": (
        lambda: _dinov2_with_registers(HIBOU_B_CONFIG),
        "model.safetensors",
        _pooler,  # HistAI: pooler_output (= the class token after the final norm)
        {
            "embeddings.register_tokens": (1, 4, 768),
            "embeddings.position_embeddings": (1, 257, 768),
            "encoder.layer.0.mlp.weights_in.weight": (4096, 768),
            "encoder.layer.0.mlp.weights_out.weight": (768, 2048),
        },
        85_741_056,  # 343 MB at float32, the published file size
    ),
    "hibou_l": (
        lambda: _dinov2_with_registers(HIBOU_L_CONFIG),
        "model.safetensors",
        _pooler,
        {
            "embeddings.register_tokens": (1, 4, 1024),
            "encoder.layer.23.mlp.weights_in.weight": (5472, 1024),
            "encoder.layer.23.mlp.weights_out.weight": (1024, 2736),
        },
        303_659_264,  # (Hibou-L's file size was not read)
    ),
    "midnight_12k": (
        # kaiko-ai/midnight: Dinov2Model ViT-g/14, SwiGLU, a 518 px (37 x 37) position grid
        lambda: transformers.Dinov2Model(
            transformers.Dinov2Config(
                hidden_size=1536,
                num_hidden_layers=40,
                num_attention_heads=24,
                patch_size=14,
                image_size=518,
                mlp_ratio=4,
                use_swiglu_ffn=True,
                layer_norm_eps=1e-6,
            )
        ),
        "model.safetensors",
        _cls_mean,  # model card: cat(class token, mean of the patch tokens)
        {
            "embeddings.position_embeddings": (1, 1370, 1536),
            "encoder.layer.39.mlp.weights_in.weight": (8192, 1536),
            "encoder.layer.39.mlp.weights_out.weight": (1536, 4096),
        },
        1_136_480_768,
    ),
}


def _fill(model: Any, seed: int) -> Any:
    """Every tensor of ``model`` set to seeded random values of a sensible scale."""
    g = torch.Generator().manual_seed(seed)
    assert not list(model.buffers()), "a buffer would not be randomised"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                p.uniform_(0.05, 0.5, generator=g)
            elif p.ndim == 1 and name.endswith("weight"):  # a LayerNorm's scale
                p.normal_(1.0, 0.1, generator=g)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02, generator=g)
            elif "token" in name or "position" in name:
                p.normal_(0.0, 0.2, generator=g)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model.eval()


def _reference(name: str, seed: int = 0) -> Any:
    """The transformers model of entry ``name``, randomised, on the CPU (made uninitialised)."""
    make = CASES[name][0]
    with torch.device("meta"):
        model = make()
    return _fill(model.to_empty(device="cpu"), seed)


def _published(
    model: Any, folder: Path, filename: str, config: dict[str, Any] | None = None
) -> tuple[Path, dict[str, tuple[int, ...]]]:
    """``model`` saved as its hub snapshot (``save_pretrained``), the weights as ``filename``.

    ``config`` replaces the config.json transformers writes (Hibou's remote-code config).
    Returns the folder and the {key: shape} of the weight file as published.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    if filename != "model.safetensors":  # e.g. Phikon's original pytorch_model.bin
        save_checkpoint(folder / filename, load_file(str(folder / "model.safetensors")))
        (folder / "model.safetensors").unlink()
        sd = torch.load(folder / filename, map_location="cpu", weights_only=True)
        return folder, {k: tuple(v.shape) for k, v in sd.items()}
    with safe_open(str(folder / filename), framework="pt") as f:
        return folder, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _expected(name: str, ref: Any, tile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The preprocessed tile (the encoder's own ``Preprocess``) and the reference embedding."""
    from wsi.encoders.encoder import Preprocess

    with torch.inference_mode():
        x = Preprocess(get_spec(name).preprocessing)(tile)
        return x, CASES[name][2](ref(pixel_values=x))


def _check_entry(name: str, folder: Path, tile: torch.Tensor) -> float:
    """Publish, load both ways, compare with transformers; the max abs difference."""
    _, filename, _, shapes, n_published = CASES[name]
    spec = get_spec(name)
    assert spec.layout == "transformers" and spec.weights.hf_repo
    ref = _reference(name)
    config = {"hibou_b": HIBOU_B_CONFIG, "hibou_l": HIBOU_L_CONFIG}.get(name)
    folder, published = _published(ref, folder, filename, config)
    x, expected = _expected(name, ref, tile)
    del ref  # the reference is done with: free its memory before loading the encoders
    gc.collect()
    for key, shape in shapes.items():
        assert published[key] == shape, key
    assert sum(math.prod(s) for s in published.values()) == n_published

    by_file, by_folder = load_both_ways(name, folder, filename)
    assert by_folder.weights_path == by_file.weights_path == (folder / filename).resolve()
    with torch.inference_mode():
        assert torch.equal(by_file.preprocess(tile), x)
        got = by_file(tile)
    assert got.shape == expected.shape == (1, spec.feature_dim)
    diff = float((got - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    assert diff <= 1e-4 * scale, f"{name}: max |timm - transformers| = {diff:.3g}"
    print(f"{name}: max |timm - transformers| = {diff:.2e} (embedding max |x| {scale:.2f})")
    folder_sd = by_folder.model.state_dict()
    assert all(torch.equal(v, folder_sd[k]) for k, v in by_file.model.state_dict().items())

    # the timm module holds every published tensor but the dropped ones (mask token,
    # pooler), the class position folded into the class token (registers), and the
    # positions the resampling to 224 px removes (Midnight-12k)
    net = by_file.model.net
    n_timm = sum(p.numel() for p in net.parameters())
    unused = sum(
        math.prod(s)
        for k, s in published.items()
        if k == "embeddings.mask_token" or k.startswith("pooler.")
    )
    published_pos = math.prod(published["embeddings.position_embeddings"])
    assert n_timm == n_published - unused - published_pos + net.pos_embed.numel()
    return diff


@pytest.mark.parametrize("name", ["phikon", "phikon_v2", "hibou_b"])
def test_matches_transformers_on_a_real_tile(name, tmp_path, he_tile):
    _check_entry(name, tmp_path / name, he_tile)


@pytest.mark.slow
def test_hibou_l_matches_transformers_on_a_real_tile(tmp_path, he_tile):
    """Hibou-B's code path at ViT-L width (SwiGLU hidden 2736); slow only to keep the
    default run short (Phikon-v2 already runs a ViT-L there)."""
    _check_entry("hibou_l", tmp_path / "hibou_l", he_tile)


@pytest.mark.slow
def test_midnight_12k_matches_transformers_on_a_real_tile(tmp_path, he_tile):
    """ViT-g/14 (1.1 B parameters): cls + mean of patches, 518 px grid resampled to 224."""
    _check_entry("midnight_12k", tmp_path / "midnight_12k", he_tile)


def test_catalogue_entries():
    facts = {
        "phikon": (768, "cls", False, "owkin/phikon"),
        "phikon_v2": (1024, "cls", False, "owkin/phikon-v2"),
        "hibou_b": (768, "cls", False, "histai/hibou-b"),
        "hibou_l": (1024, "cls", True, "histai/hibou-L"),
        "midnight_12k": (3072, "cls+mean", False, "kaiko-ai/midnight"),
    }
    for name, (dim, pooling, gated, repo) in facts.items():
        spec = get_spec(name)
        assert (spec.feature_dim, spec.pooling, spec.gated) == (dim, pooling, gated), name
        assert spec.weights.hf_repo == repo and spec.licence and spec.reference
        assert spec.preprocessing.input_size == 224
    assert get_spec("hibou_b").preprocessing.mean == (0.7068, 0.5755, 0.7220)
    assert get_spec("midnight_12k").preprocessing.std == (0.5, 0.5, 0.5)


def test_midnight_grid_resample_matches_transformers_small(tmp_path, he_tile):
    """The Midnight layout at a small width (fast): SwiGLU, 37 x 37 positions, cls + mean.

    Same builder and preprocessing as ``midnight_12k``; only the sizes are cut, so the
    one-off 518 -> 224 px position resampling is proved against transformers' own.
    """
    from dataclasses import replace

    from wsi.encoders.encoder import Preprocess
    from wsi.encoders.hf_layout import _swiglu_ratio
    from wsi.encoders.registry import build
    from wsi.encoders.weights import read_state_dict

    config = transformers.Dinov2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=14,
        image_size=518,
        use_swiglu_ffn=True,
    )
    ref = _fill(transformers.Dinov2Model(config), seed=3)
    folder, published = _published(ref, tmp_path / "tiny", "model.safetensors")
    assert published["embeddings.position_embeddings"] == (1, 1370, 64)
    spec = replace(
        get_spec("midnight_12k"),
        name="tiny_midnight",
        feature_dim=128,
        timm_kwargs={
            "img_size": 224,
            "patch_size": 14,
            "embed_dim": 64,
            "depth": 2,
            "num_heads": 4,
            "init_values": 1e-5,
            "mlp_ratio": _swiglu_ratio(64),
        },
    )
    model = build(spec, read_state_dict(folder / "model.safetensors"), folder)
    with torch.inference_mode():
        x = Preprocess(spec.preprocessing)(he_tile)
        got = model(x)
        expected = _cls_mean(ref(pixel_values=x))
    assert got.shape == expected.shape == (1, 128)
    assert float((got - expected).abs().max()) <= 1e-4 * max(1.0, float(expected.abs().max()))


def test_wrong_checkpoint_names_the_file_and_the_keys(tmp_path):
    """Phikon's weights given to phikon_v2 (another layout and width) fail strictly."""
    folder, _ = _published(_reference("phikon"), tmp_path / "phikon", "model.safetensors")
    path = folder / "model.safetensors"
    with pytest.raises(WeightsError) as err:
        load_encoder("phikon_v2", weights=path, device="cpu")
    msg = str(err.value)
    assert str(path) in msg
    # DINOv2 blocks: norm1/norm2, ls1/ls2, mlp.fc1/fc2 under names Phikon does not have
    assert "missing (288): blocks.0.norm1.weight" in msg and "blocks.0.ls1.gamma" in msg
    # 12 layers x 8 ViT block tensors, and the pooler, which only the ViT layout drops
    assert "unexpected (98): encoder.layer.0.intermediate.dense" in msg
    assert "cls_token: checkpoint (1, 1, 768), model (1, 1, 1024)" in msg


def test_unused_keys_are_dropped_by_name_only():
    """Only the named unused keys are dropped; unknown keys and an incomplete query/key/value
    triple stay under their published names (so that strict loading reports them)."""
    from wsi.encoders.hf_layout import hf_dinov2_keys, hf_vit_keys, resample_grid

    sd = {
        "embeddings.mask_token": torch.zeros(1, 8),
        "pooler.dense.weight": torch.zeros(8, 8),
        "encoder.layer.0.attention.attention.query.weight": torch.ones(8, 8),
        "encoder.layer.0.attention.attention.key.weight": 2 * torch.ones(8, 8),
        "encoder.layer.0.attention.attention.value.weight": 3 * torch.ones(8, 8),
        "encoder.layer.0.attention.attention.query.bias": torch.ones(8),
        "encoder.layer.0.mystery.weight": torch.ones(8),
    }
    vit = hf_vit_keys(sd)
    assert "pooler.dense.weight" not in vit and "embeddings.mask_token" not in vit
    assert "pooler.dense.weight" in hf_dinov2_keys(sd)  # a DINOv2 has no pooler to drop
    assert vit["blocks.0.attn.qkv.weight"][:, 0].tolist() == [1.0] * 8 + [2.0] * 8 + [3.0] * 8
    # an incomplete query/key/value triple and an unknown key stay as published (reported)
    assert "encoder.layer.0.attention.attention.query.bias" in vit
    assert "encoder.layer.0.mystery.weight" in vit
    dino = hf_dinov2_keys(
        {
            "embeddings.cls_token": torch.ones(1, 1, 8),
            "embeddings.position_embeddings": torch.arange(5.0).view(1, 5, 1).expand(1, 5, 8),
            "embeddings.register_tokens": torch.zeros(1, 4, 8),
        },
        no_embed_class=True,
    )
    assert torch.equal(dino["cls_token"], torch.ones(1, 1, 8))  # + position 0 (= 0)
    assert dino["pos_embed"][0, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert dino["reg_token"].shape == (1, 4, 8)
    # resampling keeps the class position and the grid it is asked for
    pos = torch.randn(1, 1 + 37 * 37, 8)
    out = resample_grid(pos, (16, 16), prefix=1, antialias=False)
    assert out.shape == (1, 257, 8) and torch.equal(out[:, :1], pos[:, :1])
    assert resample_grid(out, (16, 16), prefix=1, antialias=False) is out
    assert math.isclose(float(out[0, 1:].mean()), float(pos[0, 1:].mean()), abs_tol=0.1)
