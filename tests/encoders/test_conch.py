"""CONCH v1 and v1.5: the published checkpoints' layouts load strictly, the math is the reference's.

``conch_v1``: the published ``pytorch_model.bin`` is the whole CoCa model. It is written
here with random weights under its names and shapes: the full image tower
(``visual.trunk.*`` as CONCH builds timm's ViT, both attentional poolers, both norms,
``visual.proj_contrast``), ``logit_scale``, and a representative subset of the text tower
(``text.token_embedding``, positions, ``cls_emb``, projection, final norm and two of its
twelve blocks, with their real shapes; the other ten blocks are left out to keep the file
small). The multimodal decoder is absent, as in the public weights (CONCH README).

``conch_v1_5``: ``pytorch_model_vision.bin`` holds ``trunk.*`` (ViT-L/16 with layer scale,
position table for 224 px), ``attn_pool_contrast.*`` (bias-free ``to_q`` / ``to_kv`` /
``to_out``) and ``ln_contrast.*``. ViT-L at 448 px is heavy on a CPU: its full load and
forward pass is marked slow; the default run checks its key layout on the meta device and
its pooler and position-embedding math on small tensors.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.encoders.conftest import load_both_ways, random_like, save_snapshot
from wsi.encoders import get_spec, load_encoder
from wsi.encoders.conch import (
    AttentionalPooler,
    BiasFreeAttentionalPooler,
    conch_v1_5_keys,
    conch_v1_5_pos_embed,
    conch_v1_keys,
    make_visual,
)
from wsi.encoders.weights import describe_mismatch
from wsi.errors import WeightsError

# -- the published layouts ------------------------------------------------------------


def conch_v1_trunk(device: str = "cpu") -> nn.Module:
    """CONCH's ``_build_vision_tower`` trunk: timm's VisionTransformer with these arguments."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.device(device):
        return VisionTransformer(
            embed_dim=768,
            depth=12,
            num_heads=12,
            mlp_ratio=4,
            img_size=448,
            patch_size=16,
            num_classes=0,
            dynamic_img_size=True,
            weight_init="skip",
        ).eval()


def conch_v1_5_trunk(device: str = "cpu") -> nn.Module:
    """CONCH v1.5's reference trunk (``vit_large(init_values=1.0)``: built at 224 px)."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.device(device):
        return VisionTransformer(
            embed_dim=1024,
            depth=24,
            num_heads=16,
            mlp_ratio=4,
            qkv_bias=True,
            init_values=1.0,
            img_size=224,
            patch_size=16,
            num_classes=0,
            weight_init="skip",
        ).eval()


def _mha_shapes(prefix: str, d: int, kv: int) -> dict[str, tuple[int, ...]]:
    """``nn.MultiheadAttention(d, kdim=kv, vdim=kv)`` parameter shapes."""
    if kv == d:
        proj = {"attn.in_proj_weight": (3 * d, d)}
    else:
        proj = {
            "attn.q_proj_weight": (d, d),
            "attn.k_proj_weight": (d, kv),
            "attn.v_proj_weight": (d, kv),
        }
    shapes = {
        **proj,
        "attn.in_proj_bias": (3 * d,),
        "attn.out_proj.weight": (d, d),
        "attn.out_proj.bias": (d,),
    }
    return {f"{prefix}{k}": s for k, s in shapes.items()}


def _pooler_shapes(prefix: str, d: int, kv: int, queries: int) -> dict[str, tuple[int, ...]]:
    """CONCH v1's AttentionalPooler (open_clip's layout)."""
    return {
        f"{prefix}query": (queries, d),
        **_mha_shapes(prefix, d, kv),
        f"{prefix}ln_q.weight": (d,),
        f"{prefix}ln_q.bias": (d,),
        f"{prefix}ln_k.weight": (kv,),
        f"{prefix}ln_k.bias": (kv,),
    }


def _text_block(prefix: str, w: int = 768) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}ln_1.weight": (w,),
        f"{prefix}ln_1.bias": (w,),
        f"{prefix}attn.in_proj_weight": (3 * w, w),
        f"{prefix}attn.in_proj_bias": (3 * w,),
        f"{prefix}attn.out_proj.weight": (w, w),
        f"{prefix}attn.out_proj.bias": (w,),
        f"{prefix}ln_2.weight": (w,),
        f"{prefix}ln_2.bias": (w,),
        f"{prefix}mlp.c_fc.weight": (4 * w, w),
        f"{prefix}mlp.c_fc.bias": (4 * w,),
        f"{prefix}mlp.c_proj.weight": (w, 4 * w),
        f"{prefix}mlp.c_proj.bias": (w,),
    }


def conch_v1_published_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of CONCH v1's pytorch_model.bin (conch_ViT-B-16.json: embed_dim 512,
    embed_dim_caption 768, 256 caption queries, text width 768, context 128, vocab 32007)."""
    trunk = conch_v1_trunk("meta")
    shapes = {f"visual.trunk.{k}": tuple(v.shape) for k, v in trunk.state_dict().items()}
    shapes.update(_pooler_shapes("visual.attn_pool_contrast.", 512, 768, 1))
    shapes.update({"visual.ln_contrast.weight": (512,), "visual.ln_contrast.bias": (512,)})
    shapes["visual.proj_contrast"] = (512, 512)
    shapes.update(_pooler_shapes("visual.attn_pool_caption.", 768, 768, 256))
    shapes.update({"visual.ln_caption.weight": (768,), "visual.ln_caption.bias": (768,)})
    shapes.update(
        {
            "text.text_projection": (768, 512),
            "text.cls_emb": (768,),
            "text.token_embedding.weight": (32007, 768),
            "text.positional_embedding": (128, 768),
            **_text_block("text.transformer.resblocks.0."),
            **_text_block("text.transformer.resblocks.11."),
            "text.ln_final.weight": (768,),
            "text.ln_final.bias": (768,),
            "logit_scale": (),
        }
    )
    return shapes


def conch_v1_5_published_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of CONCH v1.5's pytorch_model_vision.bin (TRIDENT's strict load)."""
    trunk = conch_v1_5_trunk("meta")
    shapes = {f"trunk.{k}": tuple(v.shape) for k, v in trunk.state_dict().items()}
    shapes.update(
        {
            "attn_pool_contrast.query": (1, 768),
            "attn_pool_contrast.ln_k.weight": (1024,),
            "attn_pool_contrast.ln_k.bias": (1024,),
            "attn_pool_contrast.ln_q.weight": (768,),
            "attn_pool_contrast.ln_q.bias": (768,),
            "attn_pool_contrast.to_q.weight": (768, 768),
            "attn_pool_contrast.to_kv.weight": (1536, 1024),
            "attn_pool_contrast.to_out.weight": (768, 768),
            "ln_contrast.weight": (768,),
            "ln_contrast.bias": (768,),
        }
    )
    return shapes


def published_weights(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for a layout, norm scales near 1 (so the norms' weights matter)."""
    sd = random_like(shapes, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for key, v in sd.items():
        if v.dim() == 1 and key.endswith(".weight") and ("norm" in key or ".ln_" in key):
            sd[key] = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
    return sd


def meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return make_visual(get_spec(name))


# -- CONCH v1 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conch_v1_published(tmp_path_factory):
    sd = published_weights(conch_v1_published_shapes())
    folder = save_snapshot(tmp_path_factory.mktemp("conch"), "pytorch_model.bin", sd, None)
    return folder, sd


def conch_v1_reference(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``VisualModel.forward_no_head``: CONCH's trunk, open_clip's pooler, ``ln_contrast``."""
    from open_clip.transformer import AttentionalPooler as OpenClipPooler

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

    trunk = conch_v1_trunk()
    trunk.load_state_dict(part("visual.trunk."), strict=True)
    pool = OpenClipPooler(512, 768, n_head=8, n_queries=1).eval()
    pool.load_state_dict(part("visual.attn_pool_contrast."), strict=True)
    ln = nn.LayerNorm(512)
    ln.load_state_dict(part("visual.ln_contrast."), strict=True)
    with torch.inference_mode():
        return ln(pool(trunk.forward_features(x))[:, 0])


def test_conch_v1_loads_the_published_checkpoint_both_ways(conch_v1_published, he_tile):
    folder, sd = conch_v1_published
    by_file, by_folder = load_both_ways("conch_v1", folder, "pytorch_model.bin")
    assert by_file.spec.preprocessing.input_size == 448 and by_file.spec.gated
    feats = by_file(he_tile)
    assert feats.shape == (1, 512) and torch.isfinite(feats).all()
    assert by_folder.weights_path == by_file.weights_path
    assert torch.equal(by_folder(he_tile), feats)
    with torch.inference_mode():
        x = by_file.preprocess(he_tile)
        assert x.shape == (1, 3, 448, 448)
        # the reference composition, compared on a 224 px crop to save CPU time (both trunks
        # take any size: CONCH builds them with dynamic_img_size=True)
        crop = x[..., 112:336, 112:336]
        ours = by_file.model(crop)
    torch.testing.assert_close(ours, conch_v1_reference(sd, crop), rtol=1e-4, atol=1e-4)
    assert float(ours.std()) > 0.05  # not a degenerate comparison


def test_conch_v1_keeps_the_image_tower_and_drops_the_rest_by_name():
    published = {k: torch.empty(s, device="meta") for k, s in conch_v1_published_shapes().items()}
    decoder = {"text_decoder.resblocks.0.ln_1.weight": torch.empty(768, device="meta")}
    for sd in (published, {**published, **decoder}):
        mapped = conch_v1_keys(sd)
        expected = meta_model("conch_v1").state_dict()
        assert describe_mismatch(expected, mapped) == ([], [], [])
    assert not any(k.startswith(("text", "visual.", "logit")) for k in mapped)


def test_attentional_pooler_matches_open_clip():
    from open_clip.transformer import AttentionalPooler as OpenClipPooler

    torch.manual_seed(0)
    ours = AttentionalPooler(512, 768, n_head=8, n_queries=1).eval()
    with torch.no_grad():
        ours.query.normal_()
        ours.attn.in_proj_bias.normal_(std=0.1)
    theirs = OpenClipPooler(512, 768, n_head=8, n_queries=1).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # the same parameter layout
    x = torch.randn(2, 785, 768)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
        assert ours(x).shape == (2, 1, 512)


def test_a_file_without_the_image_tower_fails(tmp_path):
    shapes = {k: s for k, s in conch_v1_published_shapes().items() if k.startswith("text.")}
    shapes.pop("text.token_embedding.weight")
    path = tmp_path / "pytorch_model.bin"
    torch.save(random_like(shapes), path)
    with pytest.raises(WeightsError) as err:
        load_encoder("conch_v1", weights=path)
    msg = str(err.value)
    assert str(path) in msg and "missing (" in msg and "unexpected" not in msg
    assert "trunk.cls_token" in msg


def test_ctranspath_weights_given_to_conch_v1_are_refused(tmp_path):
    from tests.encoders.test_ctranspath import new_net, old_layout

    shapes = old_layout(new_net("meta").state_dict())
    wrong = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}
    path = tmp_path / "ctranspath.pth"
    torch.save({"model": wrong}, path)
    with pytest.raises(WeightsError) as err:
        load_encoder("conch_v1", weights=path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing (" in msg and "trunk.cls_token" in msg
    assert "unexpected (" in msg and "patch_embed.proj.0.weight" in msg


# -- CONCH v1.5 -----------------------------------------------------------------------


def reference_pooler_v1_5(
    sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int = 8
) -> torch.Tensor:
    """TRIDENT's conchv1_5 AttentionalPooler.forward, written out without einops."""
    p = "attn_pool_contrast."
    b, n, _ = x.shape
    x = x[:, None]  # b 1 n d
    q = sd[p + "query"][None, None].expand(b, 1, -1, -1)  # b m n d
    x = F.layer_norm(x, x.shape[-1:], sd[p + "ln_k.weight"], sd[p + "ln_k.bias"])
    q = F.layer_norm(q, q.shape[-1:], sd[p + "ln_q.weight"], sd[p + "ln_q.bias"])
    q = F.linear(q, sd[p + "to_q.weight"])
    k, v = F.linear(x, sd[p + "to_kv.weight"]).chunk(2, dim=-1)

    def split(t: torch.Tensor) -> torch.Tensor:  # 'b t n (h d) -> b h t n d'
        bt, tt, nt, hd = t.shape
        return t.view(bt, tt, nt, heads, hd // heads).permute(0, 3, 1, 2, 4)

    q, k, v = split(q), split(k), split(v)
    q = q * (q.shape[-1] ** -0.5)
    sim = torch.einsum("...id,...jd->...ij", q, k)
    sim = sim - sim.amax(dim=-1, keepdim=True)
    out = torch.einsum("...ij,...jd->...id", sim.softmax(-1), v)
    out = out.permute(0, 2, 3, 1, 4).reshape(b, 1, -1, heads * out.shape[-1])  # b t n (h d)
    return F.linear(out, sd[p + "to_out.weight"]).squeeze(1)


def test_bias_free_pooler_matches_the_reference_and_open_clip():
    from open_clip.transformer import AttentionalPooler as OpenClipPooler

    torch.manual_seed(0)
    ours = BiasFreeAttentionalPooler(768, 1024, n_head=8, n_queries=1).eval()
    with torch.no_grad():
        ours.query.normal_()
        ours.ln_k.weight.normal_(1.0, 0.1)
        ours.ln_q.bias.normal_(0.0, 0.1)
    x = torch.randn(2, 785, 1024)
    sd = {f"attn_pool_contrast.{k}": v for k, v in ours.state_dict().items()}
    # the same attention as nn.MultiheadAttention without biases, projections renamed
    theirs = OpenClipPooler(768, 1024, n_head=8, n_queries=1).eval()
    own = ours.state_dict()
    k_w, v_w = own["to_kv.weight"].chunk(2, dim=0)
    theirs.load_state_dict(
        {
            "query": own["query"],
            "attn.q_proj_weight": own["to_q.weight"],
            "attn.k_proj_weight": k_w,
            "attn.v_proj_weight": v_w,
            "attn.in_proj_bias": torch.zeros(3 * 768),
            "attn.out_proj.weight": own["to_out.weight"],
            "attn.out_proj.bias": torch.zeros(768),
            **{k: v for k, v in own.items() if k.startswith(("ln_q", "ln_k"))},
        },
        strict=True,
    )
    with torch.inference_mode():
        out = ours(x)
        assert out.shape == (2, 1, 768)
        torch.testing.assert_close(out, reference_pooler_v1_5(sd, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, theirs(x), rtol=1e-5, atol=1e-5)


def reference_interpolate_pos_encoding(pos_embed: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """TRIDENT's conchv1_5 VisionTransformer.interpolate_pos_encoding for a (B, 3, w, h) input."""
    n = pos_embed.shape[1] - 1
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // 16 + 0.1, h // 16 + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)),
        mode="bicubic",
    )
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def test_conch_v1_5_position_embedding_follows_the_reference():
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    pos = torch.randn(1, 197, 1024)
    ours = conch_v1_5_pos_embed(pos, 28)
    assert ours.shape == (1, 785, 1024)
    assert torch.equal(ours, reference_interpolate_pos_encoding(pos, 448, 448))
    assert torch.equal(ours[:, 0], pos[:, 0])
    # the DINO scale-factor rule is not timm's size-based resize: the difference is real
    timm_way = resample_abs_pos_embed(pos, [28, 28], num_prefix_tokens=1)
    assert not torch.allclose(ours, timm_way, atol=1e-3)
    # a table for another grid is first brought to 14 x 14 as the reference's loader does
    big = torch.randn(1, 785, 1024)
    at14 = resample_abs_pos_embed(
        big, [14, 14], num_prefix_tokens=1, interpolation="bilinear", antialias=False
    )
    assert torch.equal(
        conch_v1_5_pos_embed(big, 28), reference_interpolate_pos_encoding(at14, 448, 448)
    )


def test_conch_v1_5_key_layout_fits_the_published_file():
    published = {k: torch.empty(s, device="meta") for k, s in conch_v1_5_published_shapes().items()}
    assert tuple(published["trunk.pos_embed"].shape) == (1, 197, 1024)
    assert tuple(published["trunk.blocks.23.ls2.gamma"].shape) == (1024,)
    model = meta_model("conch_v1_5")
    mapped = conch_v1_5_keys(published, int(model.trunk.patch_embed.grid_size[0]))
    assert describe_mismatch(model.state_dict(), mapped) == ([], [], [])
    assert tuple(mapped["trunk.pos_embed"].shape) == (1, 785, 1024)
    spec = get_spec("conch_v1_5")
    assert spec.weights.hf_filename == "pytorch_model_vision.bin" and spec.gated
    assert spec.preprocessing.input_size == 448 and spec.feature_dim == 768


@pytest.mark.slow
def test_conch_v1_5_loads_the_published_checkpoint_both_ways(tmp_path, he_tile):
    sd = published_weights(conch_v1_5_published_shapes())
    save_snapshot(tmp_path, "pytorch_model_vision.bin", sd, None)
    by_file, by_folder = load_both_ways("conch_v1_5", tmp_path, "pytorch_model_vision.bin")
    feats = by_file(he_tile)
    assert feats.shape == (1, 768) and torch.isfinite(feats).all()
    assert torch.equal(by_folder(he_tile), feats)
    # the reference: a 224-px trunk, its position table interpolated at run time
    trunk = conch_v1_5_trunk()
    trunk.load_state_dict({k[6:]: v for k, v in sd.items() if k.startswith("trunk.")})
    with torch.inference_mode():
        x = by_file.preprocess(he_tile)
        t = trunk.patch_embed.proj(x).flatten(2).transpose(1, 2)  # no 224-px size check
        t = torch.cat([trunk.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = t + reference_interpolate_pos_encoding(trunk.pos_embed, 448, 448)
        t = trunk.norm(trunk.blocks(t))
        pooled = reference_pooler_v1_5(sd, t)[:, 0]
        expected = F.layer_norm(pooled, (768,), sd["ln_contrast.weight"], sd["ln_contrast.bias"])
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-4)
