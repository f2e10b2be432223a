"""Encoders load their real or user-given weights strictly, and never run checkpoint code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi.encoders import get_spec, load_encoder, registered
from wsi.encoders.weights import find_weights
from wsi.errors import UnknownEncoderError, WeightsError, WeightsNotFoundError

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _square(img: np.ndarray) -> torch.Tensor:
    h, w, _ = img.shape
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return torch.from_numpy(np.ascontiguousarray(img[y : y + s, x : x + s]))[None]


@pytest.fixture(scope="module")
def lite0():
    return load_encoder("efficientnet_lite0", device="cpu")


def test_default_encoder_weights_ship_with_the_install():
    spec = get_spec("efficientnet_lite0")
    path = find_weights(spec)
    assert path is not None and path.name == "efficientnet-lite0-57934424.pth"


def test_efficientnet_lite0_classifies_real_photos(lite0):
    """The mapped ImageNet weights, with the original head, recognise a cat and an espresso."""
    from skimage import data

    with torch.inference_mode():
        cat = lite0.model.logits(lite0.preprocess(_square(data.chelsea()))).softmax(-1)[0]
        coffee = lite0.model.logits(lite0.preprocess(_square(data.coffee()))).softmax(-1)[0]
    assert int(cat.argmax()) in CAT_CLASSES
    assert sum(float(cat[i]) for i in CAT_CLASSES) > 0.5
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.5


def test_embedding_is_the_pooled_pre_logits(lite0):
    tiles = torch.randint(0, 256, (3, 256, 256, 3), dtype=torch.uint8)
    feats = lite0(tiles)
    assert feats.shape == (3, 1280) and feats.dtype == torch.float32
    with torch.inference_mode():
        x = lite0.preprocess(tiles)
        logits = lite0.model.net.classifier(feats)
        assert torch.allclose(logits, lite0.model.logits(x), atol=1e-4)


def test_preprocess_normalises_and_resizes():
    enc_spec = get_spec("resnet50_trunc")
    from wsi.encoders.encoder import Preprocess

    pre = Preprocess(enc_spec.preprocessing)
    grey = torch.full((2, 256, 256, 3), 128, dtype=torch.uint8)
    x = pre(grey)
    assert x.shape == (2, 3, 224, 224) and x.is_contiguous(memory_format=torch.channels_last)
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    assert torch.allclose(x[0, :, 100, 100], expected, atol=1e-5)


def _torchvision_resnet50_state() -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50().state_dict()


def test_resnet50_trunc_loads_a_torchvision_checkpoint_strictly(tmp_path):
    sd = _torchvision_resnet50_state()
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(sd, path)
    enc = load_encoder("resnet50_trunc", weights=path, device="cpu")
    assert enc.model.net.conv1.weight.equal(sd["conv1.weight"])
    assert enc.model.net.layer3[5].bn3.running_var.equal(sd["layer3.5.bn3.running_var"])
    assert not hasattr(enc.model.net.layer4, "0")  # cut after layer 3
    feats = enc(torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8))
    assert feats.shape == (2, 1024)
    # a checkpoint already cut (no layer4 / fc) loads too, to the same features
    cut = {k: v for k, v in sd.items() if not k.startswith(("layer4.", "fc."))}
    torch.save(cut, tmp_path / "cut.pth")
    again = load_encoder("resnet50_trunc", weights=tmp_path / "cut.pth", device="cpu")
    tiles = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    assert torch.equal(enc(tiles), again(tiles))


def test_uni_architecture_matches_the_published_checkpoint(tmp_path):
    """UNI's released pytorch_model.bin: 303,350,784 parameters under timm ViT-L/16 names."""
    import timm
    from safetensors.torch import save_file

    from wsi.encoders.builders import _timm_kwargs

    spec = get_spec("uni")
    net = timm.create_model(
        spec.architecture, pretrained=False, num_classes=0, **_timm_kwargs(spec)
    )
    sd = net.state_dict()
    published = {
        "cls_token": (1, 1, 1024),
        "pos_embed": (1, 197, 1024),
        "patch_embed.proj.weight": (1024, 3, 16, 16),
        "blocks.0.ls1.gamma": (1024,),
        "blocks.23.attn.qkv.weight": (3072, 1024),
        "blocks.23.mlp.fc1.weight": (4096, 1024),
        "blocks.23.ls2.gamma": (1024,),
        "norm.weight": (1024,),
    }
    for key, shape in published.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("head") for k in sd)
    assert sum(v.numel() for k, v in sd.items()) == 303_350_784
    path = tmp_path / "uni.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    enc = load_encoder("uni", weights=path, device="cpu")
    tiles = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        expected = net.eval()(enc.preprocess(tiles))
    assert torch.allclose(enc(tiles), expected, atol=1e-5)
    assert enc(tiles).shape == (2, spec.feature_dim)


@pytest.mark.slow
def test_uni2_h_architecture_loads_strictly(tmp_path):
    import timm

    from wsi.encoders.builders import _timm_kwargs

    spec = get_spec("uni2_h")
    net = timm.create_model(
        spec.architecture, pretrained=False, num_classes=0, **_timm_kwargs(spec)
    )
    sd = net.state_dict()
    assert tuple(sd["reg_token"].shape) == (1, 8, 1536)
    assert tuple(sd["pos_embed"].shape) == (1, 256, 1536)  # no class/register positions
    torch.save(sd, tmp_path / "uni2.bin")
    enc = load_encoder("uni2_h", weights=tmp_path / "uni2.bin", device="cpu")
    assert enc(torch.zeros(1, 224, 224, 3, dtype=torch.uint8)).shape == (1, 1536)


def test_any_timm_name_with_weights_with_or_without_its_head(tmp_path):
    import timm

    net = timm.create_model("resnet18", pretrained=False)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
        tmp_path / "wrapped.pth",
    )
    enc = load_encoder("resnet18", weights=tmp_path / "wrapped.pth", device="cpu")
    assert enc.spec.feature_dim == 512 and enc.spec.weights.kind == "file"
    headless = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save(headless, tmp_path / "headless.pth")
    enc2 = load_encoder("resnet18", weights=tmp_path / "headless.pth", device="cpu")
    tiles = torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8)
    assert torch.equal(enc(tiles), enc2(tiles))


def test_wrong_keys_and_shapes_are_listed(tmp_path):
    sd = _torchvision_resnet50_state()
    sd.pop("layer2.0.conv1.weight")
    sd["extra.weight"] = torch.zeros(3)
    sd["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as err:
        load_encoder("resnet50_trunc", weights=path, device="cpu")
    msg = str(err.value)
    assert str(path) in msg
    assert "missing (1): layer2.0.conv1.weight" in msg
    assert "unexpected (1): extra.weight" in msg
    assert "layer1.0.conv1.weight: checkpoint (1, 1, 1, 1), model (64, 64, 1, 1)" in msg


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    import timm

    path = tmp_path / "whole_model.pth"
    torch.save(timm.create_model("resnet18", pretrained=False), path)  # a pickled module
    with pytest.raises(WeightsError, match="could run code"):
        load_encoder("resnet18", weights=path, device="cpu")


def test_missing_and_truncated_weight_files(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nope.safetensors"):
        load_encoder("uni", weights=tmp_path / "nope.safetensors", device="cpu")
    good = tmp_path / "r18.pth"
    import timm

    torch.save(timm.create_model("resnet18").state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="cut.pth"):
        load_encoder("resnet18", weights=cut, device="cpu")


def test_registered_encoder_without_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("WSI_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match=r"--weights PATH.*weights/uni/.*MahmoodLab/UNI"):
        load_encoder("uni", device="cpu")


def test_weights_found_in_the_user_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WSI_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "resnet50_trunc").mkdir()
    torch.save(_torchvision_resnet50_state(), tmp_path / "resnet50_trunc" / "r50.pth")
    assert find_weights(get_spec("resnet50_trunc")) == tmp_path / "resnet50_trunc" / "r50.pth"


def test_unknown_encoder_suggests_names():
    with pytest.raises(UnknownEncoderError, match="Did you mean: resnet50_trunc"):
        get_spec("resnet50_trnc")


def test_registry_names_are_unique_and_complete():
    names = [s.name for s in registered()]
    assert names[0] == "efficientnet_lite0" and len(set(names)) == len(names)
    for spec in registered():
        assert spec.feature_dim > 0 and spec.preprocessing.input_size > 0 and spec.licence


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from wsi.errors import ConfigError

    with pytest.raises(ConfigError, match="no CUDA GPU.*--device cpu"):
        load_encoder("efficientnet_lite0", device="cuda")


def test_encoder_docs_table_is_generated_from_the_registry():
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[2] / "tools" / "gen_encoder_docs.py"
    res = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
