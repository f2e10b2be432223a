"""Attention-MIL heads: one slide's bag of tile features in, slide logits and tile scores out.

Every head is an ``nn.Module`` whose ``forward(bag, label=None)`` takes ``bag`` float
``(N, D)`` (one slide, ``N`` tiles of ``D`` features; ``N`` may be 1 or 100,000) and returns
:class:`MILOutput`:

- ``logits`` ``(C,)``: slide logits (``softmax`` gives class probabilities);
- ``attention`` ``(N,)`` or ``(N, C)``: per-tile scores for heatmaps, *before* any softmax
  (see each head for what they are);
- ``instance_loss``: CLAM's instance clustering loss (a scalar) in training mode when a
  label is given, else ``None``;
- ``contributions`` ``(N, C)``: each tile's additive share of the slide logits, from heads
  whose logits are linear in attention-pooled (or averaged) tile terms: ``abmil``,
  ``clam_sb``, ``clam_mb``, ``additive`` and ``mean``; ``None`` for ``transmil`` and ``max``
  (not additive). They sum over tiles to ``logits - head.logit_offset()``: the slide
  classifier's bias is a slide-level prior, not any tile's evidence, so it is left out of
  the tiles' shares (never spread over them, which would make a tile's share depend on the
  number of tiles). ``head.gives_contributions`` says whether a head fills them.

Heads: ``abmil`` (gated attention, Ilse et al. 2018), ``clam_sb`` / ``clam_mb`` (Lu et al.
2021), ``transmil`` (Shao et al. 2021, own Nystrom attention), ``additive`` (Additive MIL,
Javed et al. 2022), ``mean`` / ``max`` (per-tile linear classifier baselines).
``build_head(name, in_dim, n_classes, **hparams)`` builds one; ``head.hparams`` holds the
keyword arguments that rebuild the same architecture.

Modules do no I/O and hold no device: move them with ``.to(device)`` like any module.
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi.errors import ConfigError

__all__ = [
    "MILOutput",
    "MILHead",
    "GatedAttention",
    "ABMIL",
    "CLAMSB",
    "CLAMMB",
    "TransMIL",
    "AdditiveMIL",
    "MeanPool",
    "MaxPool",
    "HEADS",
    "build_head",
    "smooth_top1_svm_loss",
    "nystrom_attention",
]


class MILOutput(NamedTuple):
    """What every head returns for one bag."""

    logits: Tensor  #: (C,) slide logits
    attention: Tensor  #: (N,) or (N, C) raw per-tile scores, before any softmax
    instance_loss: Tensor | None  #: scalar, CLAM in training mode with a label; else None
    #: (N, C) per-tile additive shares of ``logits`` (they sum to ``logits`` less the head's
    #: ``logit_offset()``) from heads with ``gives_contributions``; else None
    contributions: Tensor | None = None


# --------------------------------------------------------------------------- base class


class MILHead(nn.Module):
    """Common base: input checks and the record of hyper-parameters.

    Subclasses set ``name`` and call ``super().__init__(in_dim, n_classes, **hparams)`` with
    every keyword argument they accept, so ``build_head(name, in_dim, n_classes,
    **head.hparams)`` rebuilds the same architecture.
    """

    name: ClassVar[str] = ""
    #: whether ``forward`` fills ``MILOutput.contributions``
    gives_contributions: ClassVar[bool] = False

    def __init__(self, in_dim: int, n_classes: int, **hparams: Any) -> None:
        super().__init__()
        if int(in_dim) < 1:
            raise ConfigError(f"{type(self).__name__}: in_dim must be >= 1, got {in_dim}")
        if int(n_classes) < 1:  # 1: one value (regression); 2 or more: classes or time bins
            raise ConfigError(f"{type(self).__name__}: n_classes must be >= 1, got {n_classes}")
        dropout = hparams.get("dropout", 0.0)
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"{type(self).__name__}: dropout must be in [0, 1), got {dropout}")
        self.in_dim = int(in_dim)
        self.n_classes = int(n_classes)
        self.hparams: dict[str, Any] = dict(hparams)

    def _check_bag(self, bag: Tensor) -> None:
        if bag.ndim != 2 or bag.shape[0] < 1 or bag.shape[1] != self.in_dim:
            raise ValueError(
                f"{type(self).__name__} expects one bag of shape (N >= 1, {self.in_dim}), "
                f"got {tuple(bag.shape)}"
            )

    def forward(self, bag: Tensor, label: int | Tensor | None = None) -> MILOutput:
        """``bag`` (N, D) -> :class:`MILOutput`; ``label`` is used by CLAM only."""
        raise NotImplementedError

    def logit_offset(self) -> Tensor:
        """(C,): the part of the slide logits no tile contributes (the slide classifier's
        bias), so ``contributions.sum(0) + logit_offset() == logits``; zeros for heads
        without one. Only meaningful where ``gives_contributions``."""
        param = next(self.parameters())
        return torch.zeros(self.n_classes, dtype=param.dtype, device=param.device)


def _positive_class(head: str, positive_class: int | None, n_classes: int) -> int:
    """The output whose per-tile score is the attention: ``positive_class``, or by default
    output 1 (the positive class of two), output 0 of a one-output head."""
    if positive_class is None:
        return min(1, n_classes - 1)
    if not 0 <= int(positive_class) < n_classes:
        raise ConfigError(
            f"{head}: positive_class must be in [0, {n_classes - 1}], got {positive_class}"
        )
    return int(positive_class)


# --------------------------------------------------------------------------- building blocks


def _fc_block(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Linear + ReLU + Dropout: (N, in_dim) -> (N, out_dim)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Dropout(dropout))


class GatedAttention(nn.Module):
    """Gated attention scores ``w^T (tanh(V h) * sigmoid(U h))`` (Ilse et al. 2018).

    ``forward(h)``: ``h`` (N, in_dim) -> raw scores (N, n_branches), before the softmax.
    """

    def __init__(self, in_dim: int, attn_dim: int, n_branches: int = 1, dropout: float = 0.0):
        super().__init__()
        self.V = nn.Sequential(nn.Linear(in_dim, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.U = nn.Sequential(nn.Linear(in_dim, attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.w = nn.Linear(attn_dim, n_branches)

    def forward(self, h: Tensor) -> Tensor:
        return self.w(self.V(h) * self.U(h))


def attention_pool(scores: Tensor, h: Tensor) -> Tensor:
    """Softmax over tiles, then weighted sums: scores (N, B), h (N, E) -> (B, E)."""
    return torch.softmax(scores, dim=0).transpose(0, 1) @ h


def _pooled_shares(scores: Tensor, h: Tensor, classifier: nn.Linear) -> Tensor:
    """Per-tile shares of ``classifier(softmax(scores) @ h)`` for one attention branch:
    scores (N, 1), h (N, E) -> (N, C) ``softmax(scores)_i * (W h_i)``, the bias left out."""
    return torch.softmax(scores[:, 0], dim=0)[:, None] * (h @ classifier.weight.T)


def _label_index(label: int | Tensor, n_classes: int) -> int:
    value = int(label.reshape(-1)[0].item()) if isinstance(label, Tensor) else int(label)
    if not 0 <= value < n_classes:
        raise ValueError(f"label {value} is outside [0, {n_classes - 1}]")
    return value


# --------------------------------------------------------------------------- ABMIL


class ABMIL(MILHead):
    """Gated attention MIL (Ilse et al. 2018).

    ``h = dropout(relu(fc(bag)))`` (N, hidden); raw attention ``a`` (N,); slide embedding
    ``softmax(a) @ h`` (hidden,); ``logits = classifier(embedding)`` (C,).
    ``attention`` is ``a`` (N,), before the softmax. ``instance_loss`` is always None.

    ``contributions`` (N, C): ``softmax(a)_i * (W h_i)`` with ``W`` the classifier's
    weight; their sum over tiles is ``logits - b`` (``logit_offset()``, the bias).
    """

    name = "abmil"
    gives_contributions = True

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 2,
        *,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(in_dim, n_classes, hidden=hidden, attn_dim=attn_dim, dropout=dropout)
        self.fc = _fc_block(in_dim, hidden, dropout)
        self.attention = GatedAttention(hidden, attn_dim, 1, dropout)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, bag: Tensor, label: int | Tensor | None = None) -> MILOutput:
        self._check_bag(bag)
        h = self.fc(bag)
        scores = self.attention(h)  # (N, 1)
        logits = self.classifier(attention_pool(scores, h)[0])
        return MILOutput(logits, scores[:, 0], None, _pooled_shares(scores, h, self.classifier))

    def logit_offset(self) -> Tensor:
        return self.classifier.bias.detach()


# --------------------------------------------------------------------------- CLAM


def smooth_top1_svm_loss(
    logits: Tensor, target: Tensor, alpha: float = 1.0, tau: float = 1.0
) -> Tensor:
    """Smooth top-1 multi-class SVM loss (Berrada et al. 2018), CLAM's instance loss.

    ``logits`` (M, K), ``target`` (M,) int64 -> scalar mean of
    ``tau * logsumexp((logits + alpha * [k != y] - logits_y) / tau)``.
    """
    margin = alpha * (1.0 - F.one_hot(target, logits.shape[1]).to(logits.dtype))
    true = logits.gather(1, target[:, None])
    return (tau * torch.logsumexp((logits + margin - true) / tau, dim=1)).mean()


class CLAMInstanceLoss(nn.Module):
    """CLAM's instance-level clustering loss with one 2-way instance classifier per class.

    For a slide of label ``c``, the ``k`` most and ``k`` least attended tiles (by the attention
    branch of class ``c``; CLAM-SB has one branch for all) are pseudo-labelled positive /
    negative for classifier ``c`` (in-class loss). With ``subtyping``, the ``k`` most attended
    tiles of each other class ``i`` are pseudo-labelled negative for classifier ``i``
    (out-of-class loss) and the sum is divided by ``C``; without it (CLAM's default for
    binary tasks) only the in-class term counts. ``k`` is clamped to ``N // 2``.

    ``forward(scores, h, label)``: scores (N, B) raw attention, B in {1, C}; h (N, E) -> scalar.
    """

    def __init__(self, dim: int, n_classes: int, k: int, subtyping: bool, loss: str) -> None:
        super().__init__()
        self.classifiers = nn.ModuleList(nn.Linear(dim, 2) for _ in range(n_classes))
        self.k = k
        self.subtyping = subtyping
        self.loss = loss

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.loss == "svm":
            return smooth_top1_svm_loss(logits, target)
        return F.cross_entropy(logits, target)

    def _term(self, scores: Tensor, h: Tensor, cls: int, k: int, in_class: bool) -> Tensor:
        top = torch.topk(scores, k).indices
        if in_class:
            bottom = torch.topk(-scores, k).indices
            ids = torch.cat([top, bottom])
            target = torch.cat([h.new_ones(k), h.new_zeros(k)]).long()
        else:
            ids = top
            target = h.new_zeros(k).long()
        return self._loss(self.classifiers[cls](h[ids]), target)

    def forward(self, scores: Tensor, h: Tensor, label: int) -> Tensor:
        k = min(self.k, h.shape[0] // 2)
        if k < 1:  # a bag of one tile has no top and bottom: a zero that still has a graph
            return scores.sum() * 0.0
        total = scores.new_zeros(())
        for cls in range(len(self.classifiers)):
            branch = scores[:, cls if scores.shape[1] > 1 else 0]
            if cls == label:
                total = total + self._term(branch, h, cls, k, in_class=True)
            elif self.subtyping:
                total = total + self._term(branch, h, cls, k, in_class=False)
        if self.subtyping:
            total = total / len(self.classifiers)
        return total


class _CLAMBase(MILHead):
    """Shared CLAM parts: fc, gated attention with one branch per ``_branches(n_classes)``,
    the instance loss, and the classifier made by ``_make_classifier``.

    Hyper-parameters: ``hidden`` (512) and ``attn_dim`` (256), CLAM's "small" size;
    ``dropout`` (0.25); ``k_sample`` (8, clamped to N // 2); ``subtyping`` (False);
    ``inst_loss`` ("svm": smooth top-1 SVM as in CLAM, or "ce").
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 2,
        *,
        hidden: int = 512,
        attn_dim: int = 256,
        dropout: float = 0.25,
        k_sample: int = 8,
        subtyping: bool = False,
        inst_loss: str = "svm",
    ) -> None:
        super().__init__(
            in_dim,
            n_classes,
            hidden=hidden,
            attn_dim=attn_dim,
            dropout=dropout,
            k_sample=k_sample,
            subtyping=subtyping,
            inst_loss=inst_loss,
        )
        if inst_loss not in ("svm", "ce"):
            raise ConfigError(f"{type(self).__name__}: inst_loss must be 'svm' or 'ce'")
        if int(k_sample) < 1:
            raise ConfigError(f"{type(self).__name__}: k_sample must be >= 1, got {k_sample}")
        self.fc = _fc_block(in_dim, hidden, dropout)
        self.attention = GatedAttention(hidden, attn_dim, self._branches(n_classes), dropout)
        self.clustering = CLAMInstanceLoss(
            hidden, n_classes, int(k_sample), bool(subtyping), inst_loss
        )
        self._make_classifier(hidden, n_classes)

    @staticmethod
    def _branches(n_classes: int) -> int:
        """Attention branches: 1 (single-branch) or one per class."""
        raise NotImplementedError

    def _make_classifier(self, hidden: int, n_classes: int) -> None:
        raise NotImplementedError

    def _slide_logits(self, pooled: Tensor) -> Tensor:
        """pooled (B, hidden) -> logits (C,)."""
        raise NotImplementedError

    def _shares(self, scores: Tensor, h: Tensor) -> Tensor:
        """scores (N, B), h (N, hidden) -> per-tile shares (N, C) of the logits, bias out."""
        raise NotImplementedError

    def forward(self, bag: Tensor, label: int | Tensor | None = None) -> MILOutput:
        self._check_bag(bag)
        h = self.fc(bag)
        scores = self.attention(h)  # (N, B)
        logits = self._slide_logits(attention_pool(scores, h))
        inst = None
        if self.training and label is not None:
            inst = self.clustering(scores, h, _label_index(label, self.n_classes))
        attention = scores[:, 0] if scores.shape[1] == 1 else scores
        return MILOutput(logits, attention, inst, self._shares(scores, h))


class CLAMSB(_CLAMBase):
    """CLAM single-branch (Lu et al. 2021): one attention branch, one linear classifier.

    ``attention`` (N,) raw scores; ``logits`` (C,); ``instance_loss`` scalar in training
    mode with a label (see :class:`CLAMInstanceLoss`), else None. ``contributions`` (N, C):
    ``softmax(a)_i * (W h_i)``, summing to ``logits - b`` as in :class:`ABMIL`.
    Hyper-parameters: see :class:`_CLAMBase`.
    """

    name = "clam_sb"
    gives_contributions = True

    @staticmethod
    def _branches(n_classes: int) -> int:
        return 1

    def _make_classifier(self, hidden: int, n_classes: int) -> None:
        self.classifier = nn.Linear(hidden, n_classes)

    def _slide_logits(self, pooled: Tensor) -> Tensor:
        return self.classifier(pooled[0])

    def _shares(self, scores: Tensor, h: Tensor) -> Tensor:
        return _pooled_shares(scores, h, self.classifier)

    def logit_offset(self) -> Tensor:
        return self.classifier.bias.detach()


class CLAMMB(_CLAMBase):
    """CLAM multi-branch (Lu et al. 2021): one attention branch and one classifier per class.

    Class ``c``'s logit is ``w_c . (softmax(a_c) @ h) + b_c``. ``attention`` (N, C) raw
    scores, column ``c`` for class ``c``; ``instance_loss`` as in :class:`CLAMSB`.
    ``contributions`` (N, C): column ``c`` is ``softmax(a_c)_i * (w_c . h_i)``, each class
    pooling with its own attention; they sum to ``logits - b``. Hyper-parameters: see
    :class:`_CLAMBase`.
    """

    name = "clam_mb"
    gives_contributions = True

    @staticmethod
    def _branches(n_classes: int) -> int:
        return n_classes

    def _make_classifier(self, hidden: int, n_classes: int) -> None:
        # one Linear(hidden, 1) per class, stored as one weight matrix
        bound = 1.0 / math.sqrt(hidden)
        self.class_weight = nn.Parameter(torch.empty(n_classes, hidden).uniform_(-bound, bound))
        self.class_bias = nn.Parameter(torch.empty(n_classes).uniform_(-bound, bound))

    def _slide_logits(self, pooled: Tensor) -> Tensor:
        return (pooled * self.class_weight).sum(dim=1) + self.class_bias

    def _shares(self, scores: Tensor, h: Tensor) -> Tensor:
        return torch.softmax(scores, dim=0) * (h @ self.class_weight.T)

    def logit_offset(self) -> Tensor:
        return self.class_bias.detach()


# --------------------------------------------------------------------------- TransMIL


def _iterative_pinv(x: Tensor, iters: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of ``x`` (..., m, m) by Newton-Schulz-type iterations.

    The iteration of Razavi et al. (2014) used by Nystromformer; converges for the
    row-stochastic softmax matrices used here.
    """
    abs_x = x.abs()
    col = abs_x.sum(dim=-1).amax(dim=-1)[..., None, None]
    row = abs_x.sum(dim=-2).amax(dim=-1)[..., None, None]
    z = x.transpose(-1, -2) / (col * row)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


def _landmarks(x: Tensor, m: int) -> Tensor:
    """Means of consecutive groups of ``ceil(n / m)`` rows: x (..., n, d) -> (..., <= m, d)."""
    n = x.shape[-2]
    size = math.ceil(n / m)
    groups = math.ceil(n / size)
    pad = groups * size - n
    sums = F.pad(x, (0, 0, 0, pad)).unflatten(-2, (groups, size)).sum(dim=-2)
    counts = torch.full((groups, 1), float(size), dtype=x.dtype, device=x.device)
    counts[-1] = size - pad
    return sums / counts


def nystrom_attention(
    q: Tensor, k: Tensor, v: Tensor, n_landmarks: int, pinv_iters: int = 6, query_row: int = -1
) -> tuple[Tensor, Tensor | None]:
    """Nystrom approximation of ``softmax(q k^T) v`` (Xiong et al. 2021), batched over heads.

    ``q``, ``k``, ``v`` (..., n, d), ``q`` already scaled; landmarks are means of consecutive
    segments (at most ``n_landmarks``). Returns ``(out (..., n, d), row)`` where ``row``
    (..., n) is the approximated attention of query ``query_row`` to every key (None when
    ``query_row < 0``). Memory is O(n * landmarks): the (n, n) matrix is never formed.
    """
    q_l, k_l = _landmarks(q, n_landmarks), _landmarks(k, n_landmarks)
    kernel_1 = torch.softmax(q @ k_l.transpose(-1, -2), dim=-1)  # (..., n, m)
    kernel_2 = _iterative_pinv(torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1), pinv_iters)
    kernel_3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)  # (..., m, n)
    out = kernel_1 @ (kernel_2 @ (kernel_3 @ v))
    if query_row < 0:
        return out, None
    row = (kernel_1[..., query_row : query_row + 1, :] @ kernel_2) @ kernel_3
    return out, row[..., 0, :]


class NystromAttention(nn.Module):
    """Multi-head Nystrom self-attention with a depthwise residual conv over the values.

    ``forward(x, cls_row)``: x (n, dim) -> (out (n, dim), attention of token 0 to every
    token averaged over heads (n,) when ``cls_row`` else None). Heads run in groups small
    enough that their (n, landmarks) matrices hold about ``chunk_elements`` numbers, so a
    no-grad forward of a 100,000-tile bag holds one head's matrices at a time.
    """

    chunk_elements: ClassVar[int] = 1 << 24

    def __init__(
        self,
        dim: int,
        heads: int,
        n_landmarks: int,
        pinv_iters: int,
        residual_kernel: int,
        dropout: float,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"TransMIL: dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.n_landmarks, self.pinv_iters = n_landmarks, pinv_iters
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        pad = residual_kernel // 2
        self.res_conv = nn.Conv2d(
            heads, heads, (residual_kernel, 1), padding=(pad, 0), groups=heads, bias=False
        )

    def forward(self, x: Tensor, cls_row: bool = False) -> tuple[Tensor, Tensor | None]:
        n = x.shape[0]
        w_q, w_k, w_v = self.to_qkv.weight.chunk(3, dim=0)
        q, k, v = (  # three (heads, n, head_dim) views; the scale folded into w_q
            F.linear(x, w).view(n, self.heads, self.head_dim).transpose(0, 1)
            for w in (w_q * self.head_dim**-0.5, w_k, w_v)
        )
        step = max(1, self.chunk_elements // (n * min(n, self.n_landmarks)))
        out = self.res_conv(v[None])[0]  # (heads, n, head_dim): the residual path
        rows = []
        for start in range(0, self.heads, step):
            part = slice(start, start + step)
            attended, row = nystrom_attention(
                q[part], k[part], v[part], self.n_landmarks, self.pinv_iters, 0 if cls_row else -1
            )
            out[part] += attended
            if row is not None:
                rows.append(row)
        del q, k, v, attended
        out = self.to_out(out.transpose(0, 1).reshape(n, -1))
        return out, (torch.cat(rows).mean(dim=0) if rows else None)


class _TransLayer(nn.Module):
    """Pre-norm Nystrom attention with a residual: x (n, dim) -> (n, dim)."""

    def __init__(self, dim: int, **attn: Any) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, **attn)

    def forward(self, x: Tensor, cls_row: bool = False) -> tuple[Tensor, Tensor | None]:
        out, row = self.attn(self.norm(x), cls_row)
        return x + out, row


class PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise 7/5/3 convs over the square of tokens.

    ``forward(x, side)``: x (1 + side**2, dim), token 0 the class token -> same shape.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, size, padding=size // 2, groups=dim) for size in (7, 5, 3)
        )

    def forward(self, x: Tensor, side: int) -> Tensor:
        cls, feat = x[:1], x[1:]
        grid = feat.transpose(0, 1).reshape(1, -1, side, side)
        out = grid
        for conv in self.convs:
            out = out + conv(grid)
        grid = out
        return torch.cat([cls, grid.flatten(2)[0].transpose(0, 1)])


class TransMIL(MILHead):
    """TransMIL (Shao et al. 2021) with Nystrom attention, for one bag.

    ``bag`` (N, D) -> relu(fc) (N, dim) -> tokens padded to a square ``side**2`` by repeating
    the first ones -> class token prepended -> Nystrom layer -> PPEG -> Nystrom layer ->
    LayerNorm -> ``logits`` (C,) from the class token.

    ``attention`` (N,): the last layer's attention of the class token to each tile (Nystrom
    approximation, mean over heads; a padding copy's share is added to its tile). Unlike the
    other heads these are softmax-normalised weights (they sum to about 1 over tokens), not
    logits; the approximation can make a few slightly negative. Not permutation invariant:
    PPEG sees the tile order. Memory O(N * n_landmarks).

    Hyper-parameters: ``dim`` (512), ``heads`` (8), ``n_landmarks`` (256), ``pinv_iters`` (6),
    ``residual_kernel`` (33), ``dropout`` (0.25, on the attention outputs).
    """

    name = "transmil"

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 2,
        *,
        dim: int = 512,
        heads: int = 8,
        n_landmarks: int = 256,
        pinv_iters: int = 6,
        residual_kernel: int = 33,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(
            in_dim,
            n_classes,
            dim=dim,
            heads=heads,
            n_landmarks=n_landmarks,
            pinv_iters=pinv_iters,
            residual_kernel=residual_kernel,
            dropout=dropout,
        )
        if n_landmarks < 1 or pinv_iters < 1 or residual_kernel < 1:
            raise ConfigError("TransMIL: n_landmarks, pinv_iters, residual_kernel must be >= 1")
        attn = dict(
            heads=heads,
            n_landmarks=n_landmarks,
            pinv_iters=pinv_iters,
            residual_kernel=residual_kernel,
            dropout=dropout,
        )
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, dim))
        self.layer1 = _TransLayer(dim, **attn)
        self.ppeg = PPEG(dim)
        self.layer2 = _TransLayer(dim, **attn)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_classes)

    def _tokens(self, bag: Tensor, extra: int) -> Tensor:
        """bag (N, D) -> (1 + N + extra, dim): class token, tiles, copies of the first tiles."""
        h = self.fc(bag)
        return torch.cat([self.cls_token, h, h[:extra]])

    def forward(self, bag: Tensor, label: int | Tensor | None = None) -> MILOutput:
        self._check_bag(bag)
        n = bag.shape[0]
        side = math.ceil(math.sqrt(n))
        extra = side * side - n  # < n for n >= 2, 0 for n == 1
        x = self._tokens(bag, extra)
        x, _ = self.layer1(x)
        x = self.ppeg(x, side)
        x, row = self.layer2(x, cls_row=True)
        logits = self.classifier(self.norm(x[0]))
        assert row is not None
        tiles = row[1:]
        attention = tiles[:n].clone()
        attention[:extra] += tiles[n:]
        return MILOutput(logits, attention, None)


# --------------------------------------------------------------------------- Additive MIL


class AdditiveMIL(MILHead):
    """Additive MIL (Javed et al. 2022): slide logits are a sum of per-tile contributions.

    ``h = dropout(relu(fc(bag)))`` (N, hidden); gated attention scores ``s`` (N,) and
    weights ``a = softmax(s)`` as in :class:`ABMIL`; each tile's attended features
    ``m_i = a_i h_i`` go through a per-tile classifier ``g`` (Linear, ReLU, Dropout,
    Linear: hidden -> ``tile_hidden`` -> C), and ``logits = sum_i g(m_i)`` (C,).

    ``g``'s biases are scaled by the tile's attention (``a_i b`` rather than ``b``), so a
    tile of no attention contributes nothing; as ReLU is positively homogeneous this is
    ``g(m_i) = a_i f(h_i)`` with ``f`` the same MLP with plain biases, which is how it is
    computed. With plain biases (the paper's code) ``g(0) != 0`` adds ``N g(0)`` to the
    logits, which then change with the number of tiles (a bag subsampled for training
    against the whole bag at prediction).

    ``contributions`` (N, C): ``g(m_i)``, tile i's additive share of each logit; their sum
    over tiles is ``logits``. ``attention`` (N,): the raw scores ``s``, before the softmax
    (``softmax(attention)`` is ``a``). ``instance_loss`` is always None.
    """

    name = "additive"
    gives_contributions = True

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 2,
        *,
        hidden: int = 256,
        attn_dim: int = 128,
        tile_hidden: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(
            in_dim,
            n_classes,
            hidden=hidden,
            attn_dim=attn_dim,
            tile_hidden=tile_hidden,
            dropout=dropout,
        )
        if int(tile_hidden) < 1:
            raise ConfigError(f"AdditiveMIL: tile_hidden must be >= 1, got {tile_hidden}")
        self.fc = _fc_block(in_dim, hidden, dropout)
        self.attention = GatedAttention(hidden, attn_dim, 1, dropout)
        self.tile_classifier = nn.Sequential(
            _fc_block(hidden, int(tile_hidden), dropout), nn.Linear(int(tile_hidden), n_classes)
        )

    def forward(self, bag: Tensor, label: int | Tensor | None = None) -> MILOutput:
        self._check_bag(bag)
        h = self.fc(bag)
        scores = self.attention(h)[:, 0]  # (N,)
        contributions = torch.softmax(scores, dim=0)[:, None] * self.tile_classifier(h)
        return MILOutput(contributions.sum(dim=0), scores, None, contributions)


# --------------------------------------------------------------------------- baselines


def _log_odds(tile_logits: Tensor, cls: int) -> Tensor:
    """Per-tile log-odds of class ``cls`` against the rest: (N, C) -> (N,).

    For C = 2 and cls = 1 this is ``logit_1 - logit_0``.
    """
    if tile_logits.shape[1] == 1:  # one output (a value): its per-tile value
        return tile_logits[:, 0]
    others = torch.cat([tile_logits[:, :cls], tile_logits[:, cls + 1 :]], dim=1)
    return tile_logits[:, cls] - torch.logsumexp(others, dim=1)


class MeanPool(MILHead):
    """Mean pooling baseline: a linear classifier per tile, slide logits = mean tile logits.

    ``attention`` (N,): each tile's log-odds of ``positive_class`` against the rest from the
    shared classifier (``logit_1 - logit_0`` for two classes). ``contributions`` (N, C):
    ``(W x_i) / N``, summing to ``logits - b``.
    """

    name = "mean"
    gives_contributions = True

    def __init__(
        self, in_dim: int, n_classes: int = 2, *, positive_class: int | None = None
    ) -> None:
        super().__init__(in_dim, n_classes, positive_class=positive_class)
        self.positive_class = _positive_class("MeanPool", positive_class, n_classes)
        self.classifier = nn.Linear(in_dim, n_classes)

    def forward(self, bag: Tensor, label: int | Tensor | None = None) -> MILOutput:
        self._check_bag(bag)
        tile_logits = self.classifier(bag)  # (N, C)
        shares = (tile_logits - self.classifier.bias) / bag.shape[0]
        return MILOutput(
            tile_logits.mean(dim=0), _log_odds(tile_logits, self.positive_class), None, shares
        )

    def logit_offset(self) -> Tensor:
        return self.classifier.bias.detach()


class MaxPool(MILHead):
    """Max pooling baseline: a linear classifier per tile, slide logit c = max over tiles.

    ``attention`` (N,): each tile's ``positive_class`` logit; its max is that class's slide
    logit.
    """

    name = "max"

    def __init__(
        self, in_dim: int, n_classes: int = 2, *, positive_class: int | None = None
    ) -> None:
        super().__init__(in_dim, n_classes, positive_class=positive_class)
        self.positive_class = _positive_class("MaxPool", positive_class, n_classes)
        self.classifier = nn.Linear(in_dim, n_classes)

    def forward(self, bag: Tensor, label: int | Tensor | None = None) -> MILOutput:
        self._check_bag(bag)
        tile_logits = self.classifier(bag)  # (N, C)
        return MILOutput(tile_logits.amax(dim=0), tile_logits[:, self.positive_class], None)


# --------------------------------------------------------------------------- registry

HEADS: dict[str, type[MILHead]] = {
    cls.name: cls for cls in (ABMIL, CLAMSB, CLAMMB, TransMIL, AdditiveMIL, MeanPool, MaxPool)
}


def _accepted(cls: type[MILHead]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def build_head(name: str, in_dim: int, n_classes: int = 2, **hparams: Any) -> MILHead:
    """Build the head registered as ``name`` (see ``HEADS``) for ``in_dim`` features.

    ``build_head(name, in_dim, n_classes, **head.hparams)`` rebuilds ``head``'s architecture.
    Raises ``ConfigError`` for an unknown name or hyper-parameter.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in HEADS:
        close = difflib.get_close_matches(key, list(HEADS), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown MIL head {name!r}.{hint} Known heads: {', '.join(HEADS)}.")
    cls = HEADS[key]
    accepted = _accepted(cls)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise ConfigError(
            f"MIL head {key!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted)}."
        )
    return cls(in_dim, n_classes, **hparams)
