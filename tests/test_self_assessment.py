"""Self-assessment distillation (DESIGN.md 5.7, the paper's description): anchor tokens, cross-attention
of student queries over teacher keys applied to the student's tokens, identity term, sequence variant."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmdet3d.models.builder import DISTILL_LOSSES
from mmdet3d.models.distillers.losses import attention_distill, to_sequences


def test_to_sequences_layout():
    tokens = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    whole = to_sequences(tokens)
    assert whole.shape == (2, 24, 3)
    assert torch.equal(whole[1, 2 * 6 + 5], tokens[1, :, 2, 5])  # token x * Y + y
    patches = to_sequences(tokens, 2)  # 2 x 3 groups of 2 x 2 tokens per sample
    assert patches.shape == (12, 4, 3)
    for b in range(2):
        for x in range(4):
            for y in range(6):
                group = (b * 2 + x // 2) * 3 + y // 2
                assert torch.equal(patches[group, (x % 2) * 2 + y % 2], tokens[b, :, x, y])
    with pytest.raises(ValueError, match="patches"):
        to_sequences(tokens, 4)


def test_attention_distill_is_zero_when_the_attention_is_the_identity_and_the_tokens_agree():
    tokens = 30.0 * torch.eye(4).repeat(3, 1, 1)  # (S=3, L=4, d=4): orthogonal, large
    mse, identity, attention = attention_distill(tokens, tokens, tokens, tokens)
    torch.testing.assert_close(attention[:, 0], torch.eye(4).repeat(3, 1, 1))
    assert mse.item() == 0.0 and identity.item() == pytest.approx(0.0, abs=1e-12)


def test_attention_distill_by_hand():
    q = torch.tensor([[[1.0], [2.0]]])  # (S=1, L=2, d=1)
    k = torch.tensor([[[0.0], [1.0]]])
    v = torch.tensor([[[1.0], [3.0]]])
    target = torch.tensor([[[1.0], [2.0]]])
    e = math.e
    a = [[1 / (1 + e), e / (1 + e)], [1 / (1 + e**2), e**2 / (1 + e**2)]]  # softmax of (0, 1) and (0, 2)
    out = [a[0][0] * 1 + a[0][1] * 3, a[1][0] * 1 + a[1][1] * 3]
    mse, identity, attention = attention_distill(q, k, v, target)
    torch.testing.assert_close(attention[0, 0], torch.tensor(a))
    assert mse.item() == pytest.approx(((out[0] - 1) ** 2 + (out[1] - 2) ** 2) / 2, rel=1e-6)
    assert identity.item() == pytest.approx(((a[0][0] - 1) ** 2 + a[0][1] ** 2 + a[1][0] ** 2 + (a[1][1] - 1) ** 2) / 2, rel=1e-6)


def test_multi_head_attention_is_the_heads_side_by_side():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    v, target = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    mse, identity, attention = attention_distill(q, k, v, target, num_heads=2)
    outs, identities = [], []
    for h in range(2):
        qh, kh, vh = q[..., 4 * h:4 * h + 4], k[..., 4 * h:4 * h + 4], v[..., 3 * h:3 * h + 3]
        a = torch.softmax(qh @ kh.transpose(1, 2) / 2.0, dim=-1)  # sqrt(d / h) = 2
        torch.testing.assert_close(attention[:, h], a)
        outs.append(a @ vh)
        identities.append(((a - torch.eye(5)) ** 2).sum(-1).mean())
    torch.testing.assert_close(mse, F.mse_loss(torch.cat(outs, dim=-1), target))
    torch.testing.assert_close(identity, torch.stack(identities).mean())
    with pytest.raises(ValueError, match="heads"):
        attention_distill(q, k, v, target, num_heads=3)


def _loss(**kwargs):
    return DISTILL_LOSSES.build(dict(type="SelfAssessmentLoss", student_channels=kwargs.pop("cs", 4), teacher_channels=4,
                                     **kwargs))


def _identity_embeddings(loss):
    for embed in (loss.query_embed, loss.key_embed, loss.value_embed):
        conv, bn = embed
        with torch.no_grad():
            conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
        bn.eps = 0.0
    return loss.eval()  # BatchNorm with running statistics 0 / 1: identity embeddings


def test_module_is_zero_on_identical_maps_whose_anchor_tokens_attend_to_themselves():
    loss = _identity_embeddings(_loss(pool_size=2, embed_channels=4))
    # a 4 x 4 map pooled 2 x 2 into 4 anchor tokens, token k = 30 e_k (constant over its block)
    tokens = 30.0 * torch.eye(4).view(4, 2, 2)  # (C, X', Y')
    bev = tokens.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)[None]  # (1, 4, 4, 4)
    assert loss({"fused_bev": bev}, {"fused_bev": bev.clone()}, {}, {}).item() == pytest.approx(0.0, abs=1e-10)
    # the attention is applied to the student's tokens: a changed student map costs
    other = bev.clone()
    other[:, :, :2, :2] *= 0.5
    assert loss({"fused_bev": other}, {"fused_bev": bev}, {}, {}).item() > 1.0


def test_module_value_pools_embeds_and_weights_the_terms():
    torch.manual_seed(0)
    loss = _loss(cs=3, pool_size=2, embed_channels=8, num_heads=2, identity_weight=0.5, weight=3.0).eval()
    fs = torch.randn(2, 3, 4, 6)
    ft = torch.randn(2, 4, 4, 6)
    ps, pt = F.avg_pool2d(fs, 2), F.avg_pool2d(ft, 2)
    mse, identity, _ = attention_distill(to_sequences(loss.query_embed(ps)), to_sequences(loss.key_embed(pt)),
                                         to_sequences(loss.value_embed(ps)), to_sequences(pt), num_heads=2)
    value = loss({"fused_bev": fs}, {"fused_bev": ft}, {}, {})
    assert value.item() == pytest.approx(3.0 * mse.item() + 0.5 * identity.item(), rel=1e-6)


def test_sequence_variant_is_the_mean_of_per_patch_attentions():
    torch.manual_seed(0)
    seq = _loss(pool_size=1, embed_channels=4, num_heads=2, patch_size=2).eval()
    fs, ft = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    value = seq({"fused_bev": fs}, {"fused_bev": ft}, {}, {})
    q, k, v = seq.query_embed(fs), seq.key_embed(ft), seq.value_embed(fs)
    parts = []
    for x in (0, 2):
        for y in (0, 2):
            def cut(t):
                return to_sequences(t[:, :, x:x + 2, y:y + 2])
            mse, identity, _ = attention_distill(cut(q), cut(k), cut(v), cut(ft), num_heads=2)
            parts.append(mse + identity)
    assert value.item() == pytest.approx(torch.stack(parts).mean().item(), rel=1e-6)


def test_module_gradients_reach_the_student_and_the_embeddings_not_the_teacher():
    loss = _loss(pool_size=2, embed_channels=8, num_heads=4, patch_size=2).train()
    fs = torch.randn(2, 4, 8, 8, requires_grad=True)
    ft = torch.randn(2, 4, 8, 8, requires_grad=True)
    value = loss({"fused_bev": fs}, {"fused_bev": ft}, {}, {})
    value.backward()
    assert torch.isfinite(value) and fs.grad.abs().sum() > 0 and ft.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())
    with pytest.raises(ValueError, match="grid"):
        loss({"fused_bev": fs}, {"fused_bev": ft[..., :4]}, {}, {})
