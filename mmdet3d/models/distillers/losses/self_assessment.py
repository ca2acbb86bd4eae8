"""Self-assessment distillation (DESIGN.md 5.7), following the paper's description: no public
implementation exists.

Both BEV maps are average-pooled to anchor tokens (``pool_size`` cells per side). Queries are
embedded student tokens, keys embedded teacher tokens (1x1 conv + BN each), and the attention
``A = softmax(Q K^T / sqrt(d))`` is applied to the embedded student tokens (``out = A V_s``, a
1x1 conv + BN to the teacher's width). Loss: ``MSE(out, teacher tokens)`` plus ``identity_weight``
times ``mean_rows sum_cols (A - I)^2`` (the paper finds the teacher's self-attention near the
identity). Sequence-level variant (``patch_size``): the anchor map is cut into ``patch_size x
patch_size`` groups and the cross-attention runs within each group, over ``num_heads`` heads.
S sequences, L tokens, d embedding width, C channels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...builder import DISTILL_LOSSES
from .base import DistillLoss

__all__ = ["to_sequences", "attention_distill", "SelfAssessmentLoss"]


def to_sequences(tokens: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
    """(B, C, X, Y) anchor tokens -> (S, L, C): the whole map as one sequence per sample
    (``S = B``, ``L = X*Y``, x-major), or one sequence per ``P x P`` patch (``S = B X Y / P^2``, ``L = P^2``)."""
    batch_size, channels, size_x, size_y = tokens.shape
    if patch_size is None:
        return tokens.flatten(2).transpose(1, 2)  # (B, C, X, Y) -> (B, X*Y, C)
    p = int(patch_size)
    if size_x % p or size_y % p:
        raise ValueError(f"self-assessment: a {size_x} x {size_y} anchor map does not split into {p} x {p} patches")
    # (B, C, X, Y) -> (B, C, X/P, P, Y/P, P) -> (B, X/P, Y/P, P, P, C) -> (S, P*P, C)
    patches = tokens.view(batch_size, channels, size_x // p, p, size_y // p, p).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(-1, p * p, channels)


def attention_distill(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, target: torch.Tensor,
                      num_heads: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """query / key (S, L, d), value / target (S, L, C) -> (MSE(out, target), identity term, A (S, h, L, L)).

    Per head ``A_h = softmax(Q_h K_h^T / sqrt(d / h))`` and ``out_h = A_h V_h`` on the head's
    ``C / h`` channels; the identity term is ``mean over (S, h, rows) of sum_cols (A - I)^2``.
    """
    seqs, length, dim = query.shape
    channels = value.shape[-1]
    if dim % num_heads or channels % num_heads:
        raise ValueError(f"self-assessment: widths {dim} (embedding) and {channels} (values) must divide by {num_heads} heads")

    def heads(x: torch.Tensor) -> torch.Tensor:  # (S, L, W) -> (S, h, L, W / h)
        return x.view(seqs, length, num_heads, -1).transpose(1, 2)

    q, k, v = heads(query), heads(key), heads(value)
    attention = (q @ k.transpose(-1, -2) / math.sqrt(dim // num_heads)).softmax(dim=-1)  # (S, h, L, L)
    out = (attention @ v).transpose(1, 2).reshape(seqs, length, channels)  # (S, h, L, C/h) -> (S, L, C)
    eye = torch.eye(length, dtype=attention.dtype, device=attention.device)
    identity = (attention - eye).pow(2).sum(dim=-1).mean()
    return F.mse_loss(out, target), identity, attention


def _embedding(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


@DISTILL_LOSSES.register_module()
class SelfAssessmentLoss(DistillLoss):
    """``weight * MSE(A V_s, teacher tokens) + identity_weight * |A - I|^2`` on anchor tokens.

    ``pool_size``: cells per anchor token side; ``embed_channels``: width of the query/key
    embeddings; ``num_heads``; ``patch_size``: ``None`` for one attention over the whole anchor
    map, an integer for the sequence-level (patch-group) variant.
    """

    needs_channels = True
    default_student = default_teacher = "fused_bev"
    default_name = "self_assessment"

    def __init__(self, *, student_channels: int, teacher_channels: int, pool_size: int = 4, embed_channels: int = 64,
                 num_heads: int = 1, patch_size: int | None = None, identity_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if pool_size < 1 or (patch_size is not None and patch_size < 1):
            raise ValueError(f"SelfAssessmentLoss: pool_size ({pool_size}) and patch_size ({patch_size}) must be >= 1")
        self.pool_size, self.num_heads = int(pool_size), int(num_heads)
        self.patch_size = None if patch_size is None else int(patch_size)
        self.identity_weight = float(identity_weight)
        self.query_embed = _embedding(student_channels, embed_channels)
        self.key_embed = _embedding(teacher_channels, embed_channels)
        self.value_embed = _embedding(student_channels, teacher_channels)

    def forward(self, student, teacher, batch, context):
        fs, ft = self.pick(student, self.student, "student"), self.pick(teacher, self.teacher, "teacher")
        if fs.shape[-2:] != ft.shape[-2:]:
            raise ValueError(f"SelfAssessmentLoss {self.name!r}: student grid {tuple(fs.shape[-2:])} differs from the "
                             f"teacher's {tuple(ft.shape[-2:])}")
        ps = F.avg_pool2d(fs, self.pool_size)  # (B, C, X, Y) -> (B, C, X/p, Y/p) anchor tokens
        pt = F.avg_pool2d(ft.detach(), self.pool_size)
        seq = self.patch_size
        mse, identity, _ = attention_distill(to_sequences(self.query_embed(ps), seq), to_sequences(self.key_embed(pt), seq),
                                             to_sequences(self.value_embed(ps), seq), to_sequences(pt, seq), self.num_heads)
        return self.weight * mse + self.identity_weight * identity
