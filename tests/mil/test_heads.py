"""Attention-MIL heads: shapes, invariances, learning a toy problem, CLAM loss, Additive MIL
contributions, registry, memory."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from wsi.errors import ConfigError
from wsi.mil.heads import (
    ABMIL,
    CLAMMB,
    CLAMSB,
    HEADS,
    AdditiveMIL,
    MILHead,
    MILOutput,
    build_head,
)

NAMES = ["abmil", "clam_sb", "clam_mb", "transmil", "additive", "mean", "max"]
INVARIANT = [name for name in NAMES if name != "transmil"]  # PPEG sees the tile order
ATTENTIVE = ["abmil", "clam_sb", "clam_mb", "additive"]
#: heads whose logits are linear in pooled tile terms: per-tile contributions
CONTRIBUTING = ["abmil", "clam_sb", "clam_mb", "additive", "mean"]


def _bag(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _head(name: str, d: int, c: int = 2, **hparams: Any) -> MILHead:
    torch.manual_seed(0)
    return build_head(name, d, c, **hparams)


def test_registry_names() -> None:
    assert sorted(HEADS) == sorted(NAMES)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("c", [2, 3])
@pytest.mark.parametrize("d", [64, 1280])
@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name: str, n: int, d: int, c: int) -> None:
    head = _head(name, d, c).eval()
    with torch.no_grad():
        out = head(_bag(n, d))
    assert isinstance(out, MILOutput)
    assert out.logits.shape == (c,)
    assert torch.isfinite(out.logits).all()
    expected = (n, c) if name == "clam_mb" else (n,)
    assert out.attention.shape == expected
    assert torch.isfinite(out.attention).all()
    assert out.instance_loss is None
    assert head.gives_contributions == (name in CONTRIBUTING)
    if name in CONTRIBUTING:
        assert out.contributions is not None and out.contributions.shape == (n, c)
    else:
        assert out.contributions is None


@pytest.mark.parametrize("c", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 7, 500])
@pytest.mark.parametrize("name", CONTRIBUTING)
def test_contributions_sum_to_the_logits_less_the_bias(name: str, n: int, c: int) -> None:
    """In eval mode every contributing head's tile shares sum to the slide logits less
    ``logit_offset()`` (the classifier bias, a slide-level prior), within 1e-5."""
    head = _head(name, 32, c).eval()
    with torch.no_grad():
        out = head(_bag(n, 32, seed=n + c))
    assert out.contributions is not None
    total = out.contributions.sum(dim=0) + head.logit_offset()
    torch.testing.assert_close(total, out.logits, atol=1e-5, rtol=0)
    if name in ("abmil", "clam_sb", "clam_mb", "mean"):  # a bias, not zeros
        assert head.logit_offset().abs().sum() > 0


def test_clam_mb_contributions_pool_with_each_class_branch() -> None:
    head = _head("clam_mb", 16, 3).eval()
    bag = _bag(9, 16)
    with torch.no_grad():
        out = head(bag)
        h = head.fc(bag)
        weights = torch.softmax(out.attention, dim=0)  # (N, C): one branch per class
    assert out.contributions is not None
    torch.testing.assert_close(out.contributions, weights * (h @ head.class_weight.T))


@pytest.mark.parametrize("name", INVARIANT)
def test_permutation_invariance(name: str) -> None:
    head = _head(name, 64, 3).eval()
    bag = _bag(500, 64)
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, shuffled = head(bag), head(bag[perm])
    torch.testing.assert_close(shuffled.logits, out.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(shuffled.attention, out.attention[perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_seed(name: str) -> None:
    bag = _bag(40, 16)
    first, second = _head(name, 16).eval(), _head(name, 16).eval()
    with torch.no_grad():
        a, b = first(bag), second(bag)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.attention, b.attention)


def test_bad_bag_shape() -> None:
    head = _head("abmil", 16)
    with pytest.raises(ValueError, match=r"\(N >= 1, 16\)"):
        head(torch.randn(1, 5, 16))
    with pytest.raises(ValueError):
        head(torch.randn(5, 8))
    with pytest.raises(ValueError):
        head(torch.randn(0, 16))


# --------------------------------------------------------------------------- tile scores


def test_abmil_attention_is_raw_scores() -> None:
    head = _head("abmil", 32).eval()
    assert isinstance(head, ABMIL)
    bag = _bag(30, 32)
    with torch.no_grad():
        out = head(bag)
        pooled = torch.softmax(out.attention, dim=0) @ head.fc(bag)
        torch.testing.assert_close(head.classifier(pooled), out.logits)
    assert not torch.allclose(out.attention.sum(), torch.tensor(1.0))


def test_mean_and_max_tile_scores() -> None:
    bag = _bag(30, 32)
    with torch.no_grad():
        mean = _head("mean", 32).eval()(bag)
        mx = _head("max", 32).eval()(bag)
    # mean of per-tile log-odds == slide logit difference (the classifier is linear)
    torch.testing.assert_close(mean.attention.mean(), mean.logits[1] - mean.logits[0])
    assert mx.attention.max() == mx.logits[1]


@pytest.mark.parametrize("c", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_additive_logits_are_the_sum_of_contributions(n: int, c: int) -> None:
    head = _head("additive", 64, c)
    assert isinstance(head, AdditiveMIL)
    bag = _bag(n, 64, seed=n)
    for training in (False, True):  # dropout keeps the sum exact too
        head.train(training)
        out = head(bag, label=0)
        assert out.contributions is not None and out.contributions.shape == (n, c)
        torch.testing.assert_close(out.contributions.sum(dim=0), out.logits)
    assert out.contributions.requires_grad and out.instance_loss is None


def test_additive_contributions_are_attention_weighted_tile_logits() -> None:
    """g(a_i h_i) with attention-scaled biases: a_i f(h_i); attention is the raw scores."""
    head = _head("additive", 32, 3).eval()
    assert isinstance(head, AdditiveMIL)
    bag = _bag(30, 32)
    with torch.no_grad():
        out = head(bag)
        h = head.fc(bag)
        torch.testing.assert_close(out.attention, head.attention(h)[:, 0])
        weights = torch.softmax(out.attention, dim=0)
        assert out.contributions is not None
        torch.testing.assert_close(out.contributions, weights[:, None] * head.tile_classifier(h))
    assert not torch.allclose(out.attention.sum(), torch.tensor(1.0))


def test_additive_logits_do_not_grow_with_the_bag() -> None:
    """A bag repeated k times gives the same logits: no per-tile bias is summed N times."""
    head = _head("additive", 32).eval()
    bag = _bag(20, 32)
    with torch.no_grad():
        once, thrice = head(bag), head(bag.repeat(3, 1))
    torch.testing.assert_close(thrice.logits, once.logits, atol=1e-5, rtol=1e-5)
    assert thrice.contributions is not None and once.contributions is not None
    torch.testing.assert_close(thrice.contributions[:20] * 3, once.contributions)


def test_transmil_attention_is_cls_weights() -> None:
    head = _head("transmil", 32).eval()
    with torch.no_grad():
        out = head(_bag(30, 32))
    # class-token attention weights over tiles: a share of a softmax row
    assert 0.0 < float(out.attention.sum()) <= 1.0 + 1e-3


# --------------------------------------------------------------------------- learning


def _toy(seed: int = 0, n_bags: int = 32, n: int = 50, d: int = 32, k: int = 5, shift: float = 6.0):
    """Bags of Gaussian tiles; odd bags are positive, with ``k`` tiles shifted along one axis."""
    gen = torch.Generator().manual_seed(seed)
    direction = F.normalize(torch.randn(d, generator=gen), dim=0)
    bags, labels, shifted = [], [], []
    for i in range(n_bags):
        bag = torch.randn(n, d, generator=gen)
        idx = torch.randperm(n, generator=gen)[:k]
        if i % 2:
            bag[idx] += shift * direction
        bags.append(bag)
        labels.append(i % 2)
        shifted.append(set(idx.tolist()))
    return bags, labels, shifted


LEARN = {  # name: (learning rate, bags per step)
    "abmil": (1e-3, 8),
    "clam_sb": (1e-3, 8),
    "clam_mb": (1e-3, 8),
    "transmil": (2e-4, 1),
    "additive": (1e-3, 8),
    "mean": (1e-2, 8),
    "max": (1e-2, 8),
}


@pytest.mark.parametrize("name", NAMES)
def test_learns_toy_problem(name: str) -> None:
    lr, per_step = LEARN[name]
    bags, labels, shifted = _toy()
    head = _head(name, 32)
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    head.train()
    for step in range(60):
        loss = torch.zeros(())
        for j in range(per_step):
            i = (step * per_step + j) % len(bags)
            out = head(bags[i], label=labels[i])
            bag_loss = F.cross_entropy(out.logits[None], torch.tensor([labels[i]]))
            if out.instance_loss is not None:  # CLAM's weighting
                bag_loss = 0.7 * bag_loss + 0.3 * out.instance_loss
            loss = loss + bag_loss / per_step
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    correct, hits, shares = 0, [], []
    with torch.no_grad():
        for bag, y, idx in zip(bags, labels, shifted, strict=True):
            out = head(bag)
            correct += int(out.logits.argmax()) == y
            if y:
                scores = out.attention[:, 1] if out.attention.ndim == 2 else out.attention
                hits.append(len(set(scores.topk(5).indices.tolist()) & idx) / 5)
                if out.contributions is not None:  # the positive class's share per tile
                    top = out.contributions[:, 1].topk(5).indices.tolist()
                    shares.append(len(set(top) & idx) / 5)
    assert correct / len(bags) >= 0.9
    if name in ATTENTIVE:
        assert sum(hits) / len(hits) >= 0.8
    if name == "additive":
        assert sum(shares) / len(shares) >= 0.8


# --------------------------------------------------------------------------- CLAM loss


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb"])
@pytest.mark.parametrize("n", [1, 3, 100])
@pytest.mark.parametrize("subtyping", [False, True])
def test_clam_instance_loss(name: str, n: int, subtyping: bool) -> None:
    head = _head(name, 16, 3, subtyping=subtyping)
    bag = _bag(n, 16)
    head.train()
    out = head(bag, label=2)
    assert out.instance_loss is not None
    assert out.instance_loss.ndim == 0 and out.instance_loss.requires_grad
    assert torch.isfinite(out.instance_loss)
    out.instance_loss.backward()
    if n >= 2:
        assert isinstance(head, CLAMSB | CLAMMB)
        grads = dict(head.clustering.classifiers.named_parameters())
        in_class = grads["2.weight"].grad
        assert in_class is not None and in_class.abs().sum() > 0
        # out-of-class terms (on the other classes' classifiers) only with subtyping
        assert (grads["0.weight"].grad is not None) == subtyping
    assert head(bag, label=torch.tensor([1])).instance_loss is not None
    assert head(bag).instance_loss is None
    head.eval()
    assert head(bag, label=1).instance_loss is None


def test_clam_ce_instance_loss() -> None:
    head = _head("clam_sb", 16, inst_loss="ce").train()
    loss = head(_bag(40, 16), label=0).instance_loss
    assert loss is not None and loss.requires_grad and loss.item() > 0


def test_clam_bad_label() -> None:
    head = _head("clam_sb", 16).train()
    with pytest.raises(ValueError, match="label"):
        head(_bag(10, 16), label=5)


# --------------------------------------------------------------------------- registry


CUSTOM: dict[str, dict[str, Any]] = {
    "abmil": {"hidden": 64, "attn_dim": 32, "dropout": 0.1},
    "clam_sb": {"hidden": 64, "attn_dim": 32, "k_sample": 4, "subtyping": True, "inst_loss": "ce"},
    "clam_mb": {"hidden": 64, "attn_dim": 16, "dropout": 0.0},
    "transmil": {"dim": 64, "heads": 4, "n_landmarks": 16, "pinv_iters": 4},
    "additive": {"hidden": 64, "attn_dim": 32, "tile_hidden": 16, "dropout": 0.1},
    "mean": {"positive_class": 2},
    "max": {"positive_class": 0},
}


@pytest.mark.parametrize("name", NAMES)
def test_build_head_round_trip(name: str) -> None:
    head = _head(name, 24, 3, **CUSTOM[name])
    assert head.hparams == {**_head(name, 24, 3).hparams, **CUSTOM[name]}
    rebuilt = _head(name, 24, 3, **head.hparams)
    assert type(rebuilt) is type(head) and rebuilt.hparams == head.hparams
    a, b = head.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    bag = _bag(20, 24)
    with torch.no_grad():
        assert torch.equal(head.eval()(bag).logits, rebuilt.eval()(bag).logits)


def test_build_head_normalises_name() -> None:
    assert type(build_head("CLAM-SB", 8)) is HEADS["clam_sb"]


def test_unknown_head_name() -> None:
    with pytest.raises(ConfigError, match="Did you mean: abmil") as err:
        build_head("abmill", 16)
    assert all(name in str(err.value) for name in NAMES)
    with pytest.raises(ConfigError, match="Known heads"):
        build_head("xyz", 16)


def test_one_output_heads_give_a_value_and_a_score_per_tile() -> None:
    """Regression heads have one output; the baselines' attention is its per-tile value."""
    import torch

    bag = torch.randn(7, 16)
    for name in NAMES:
        m = build_head(name, 16, 1).eval()
        out = m(bag)
        assert out.logits.shape == (1,)
        assert torch.isfinite(out.attention).all() and out.attention.shape[0] == 7
        if name in CONTRIBUTING:
            assert out.contributions is not None and out.contributions.shape == (7, 1)
            torch.testing.assert_close(out.contributions.sum(dim=0) + m.logit_offset(), out.logits)


def test_bad_hparams() -> None:
    with pytest.raises(ConfigError, match="hiden"):
        build_head("abmil", 16, hiden=32)
    with pytest.raises(ConfigError, match="dropout"):
        build_head("abmil", 16, dropout=1.5)
    with pytest.raises(ConfigError, match="n_classes"):
        build_head("abmil", 16, 0)
    with pytest.raises(ConfigError, match="positive_class"):
        build_head("mean", 16, 2, positive_class=2)
    with pytest.raises(ConfigError, match="tile_hidden"):
        build_head("additive", 16, tile_hidden=0)


# --------------------------------------------------------------------------- memory


def _big(name: str, n: int) -> None:
    head = _head(name, 1280).eval()
    bag = _bag(n, 1280)
    with torch.inference_mode():
        out = head(bag)
    assert out.logits.shape == (2,) and torch.isfinite(out.logits).all()
    assert out.attention.shape[0] == n and torch.isfinite(out.attention).all()
    if out.contributions is not None:
        total = out.contributions.sum(dim=0) + head.logit_offset()
        torch.testing.assert_close(total, out.logits)


@pytest.mark.parametrize("name", ["abmil", "clam_mb", "additive"])
def test_100k_tiles(name: str) -> None:
    _big(name, 100_000)


def test_transmil_20k_tiles() -> None:
    _big("transmil", 20_000)


@pytest.mark.slow
def test_transmil_100k_tiles() -> None:
    _big("transmil", 100_000)
