"""Deformable sampling ops and SimDistill's geometry compensation layers (DESIGN.md 5.5)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmdet3d.models.bev_layers import DeformableBEVAttention, ModulatedDeformConvBEV
from mmdet3d.ops.deformable import (bilinear_sample_reference, deformable_attention_sampling,
                                    deformable_attention_sampling_reference, modulated_deform_conv2d,
                                    modulated_deform_conv2d_reference)


def test_bilinear_reference_by_hand():
    value = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)  # (1, 2, 2)
    rows = torch.tensor([0.0, 0.5, 0.25, 1.0, -1.0, 1.5], dtype=torch.float64)
    cols = torch.tensor([1.0, 0.5, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    # (0, 1) -> 2; centre -> 2.5; (0.25, 0) -> 1 + 0.25 * 2; (1, 1) -> 4; off the map -> 0;
    # half a cell below the last row -> half of row 1
    expected = torch.tensor([[2.0, 2.5, 1.5, 4.0, 0.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(bilinear_sample_reference(value, rows, cols), expected)


@pytest.mark.parametrize("sizes", [(1, 1, 2, 3, 4, 5, 1), (2, 4, 3, 6, 5, 7, 3), (1, 8, 2, 9, 4, 4, 20)])
def test_deformable_attention_sampling_matches_the_reference(sizes):
    batch, heads, channels, size_x, size_y, queries, points = sizes
    g = torch.Generator().manual_seed(0)
    value = torch.randn(batch, heads, channels, size_x, size_y, generator=g, dtype=torch.float64, requires_grad=True)
    # locations spill off the map on every side; weights arbitrary (not normalised)
    scale = torch.tensor([size_x + 2.0, size_y + 2.0], dtype=torch.float64)
    locations = (torch.rand(batch, queries, heads, points, 2, generator=g, dtype=torch.float64) * scale - 1.5).requires_grad_()
    weights = torch.rand(batch, queries, heads, points, generator=g, dtype=torch.float64, requires_grad=True)
    out = deformable_attention_sampling(value, locations, weights)
    ref = deformable_attention_sampling_reference(value, locations, weights)
    torch.testing.assert_close(out, ref)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, (value, locations, weights), grad)
    want = torch.autograd.grad(ref, (value, locations, weights), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_deformable_attention_at_integer_locations_picks_cells():
    value = torch.arange(12.0).view(1, 1, 1, 3, 4)  # cell (x, y) holds 4 x + y
    locations = torch.tensor([[2.0, 1.0], [0.0, 3.0]]).view(1, 1, 1, 2, 2)
    weights = torch.tensor([0.25, 0.75]).view(1, 1, 1, 2)
    out = deformable_attention_sampling(value, locations, weights)
    assert out.item() == pytest.approx(0.25 * 9 + 0.75 * 3, abs=1e-5)


def _attention_layer(channels=16, size=(6, 5), heads=8, points=20):
    torch.manual_seed(0)
    return DeformableBEVAttention(in_channels=channels, bev_size=size, num_heads=heads, num_points=points).double()


def test_deformable_attention_with_zero_offsets_attends_at_the_reference_points():
    """At initialisation (zero offsets, uniform weights) every head samples its own cell 20 times:
    the layer is ``x + out_proj(value_proj(x))`` cell by cell, whatever the position embedding."""
    layer = _attention_layer()
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    tokens = x.flatten(2).transpose(1, 2)  # (B, X*Y, C)
    fixed = layer.output_proj(layer.value_proj(tokens)).transpose(1, 2).reshape_as(x)
    torch.testing.assert_close(layer(x), x + fixed)
    # Non-uniform attention weights change nothing while all points sit at the reference cell
    torch.nn.init.normal_(layer.attention_weights.weight)
    torch.testing.assert_close(layer(x), x + fixed)


def test_deformable_attention_layer_with_offsets_matches_the_reference_sampling():
    layer = _attention_layer(heads=4, points=3)
    torch.nn.init.normal_(layer.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(layer.sampling_offsets.bias, std=2.0)
    torch.nn.init.normal_(layer.attention_weights.weight)
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    tokens = x.flatten(2).transpose(1, 2)
    query = tokens + layer.position_embedding()
    offsets = layer.sampling_offsets(query).view(2, 30, 4, 3, 2)
    weights = layer.attention_weights(query).view(2, 30, 4, 3).softmax(-1)
    xs, ys = torch.meshgrid(torch.arange(6.0), torch.arange(5.0), indexing="ij")
    locations = torch.stack([xs, ys], -1).reshape(1, 30, 1, 1, 2).double() + offsets
    value = layer.value_proj(tokens).transpose(1, 2).reshape(2, 4, 4, 6, 5)
    ref = deformable_attention_sampling_reference(value, locations, weights)
    expected = x + layer.output_proj(ref).transpose(1, 2).reshape_as(x)
    torch.testing.assert_close(layer(x), expected)


def test_deformable_attention_position_embedding_is_learned_and_offsets_get_gradients():
    layer = _attention_layer(heads=2, points=4)
    x = torch.randn(1, 16, 6, 5, dtype=torch.float64)
    layer(x).pow(2).sum().backward()
    assert layer.sampling_offsets.weight.grad.abs().sum() > 0  # offsets start at 0 but do learn
    # the embedding of cell (x, y) is row_embed[x] ++ col_embed[y]
    pos = layer.position_embedding().view(6, 5, 16)
    torch.testing.assert_close(pos[4, 3], torch.cat([layer.row_embed[4], layer.col_embed[3]]))
    with pytest.raises(ValueError, match="built for"):
        layer(torch.randn(1, 16, 5, 6, dtype=torch.float64))


def _conv_inputs(batch=2, channels=3, height=5, width=7, out_channels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    weight = torch.randn(out_channels, channels, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(out_channels, generator=g, dtype=torch.float64)
    return x, weight, bias


def test_deform_conv_with_zero_offsets_and_unit_masks_is_a_plain_convolution():
    x, weight, bias = _conv_inputs()
    offset = torch.zeros(2, 18, 5, 7, dtype=torch.float64)
    mask = torch.ones(2, 9, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(modulated_deform_conv2d(x, offset, mask, weight, bias), F.conv2d(x, weight, bias, padding=1))
    # dilation 2 as well
    torch.testing.assert_close(modulated_deform_conv2d(x, offset, mask, weight, bias, dilation=2),
                               F.conv2d(x, weight, bias, padding=2, dilation=2))


@pytest.mark.parametrize("shift", [(1, 2), (-2, 1), (0, -3)])
def test_deform_conv_with_a_constant_integer_offset_is_the_shifted_convolution(shift):
    """Every tap moved by (dy, dx): out[i, j] = conv(x)[i + dy, j + dx] on the zero-padded input."""
    x, weight, bias = _conv_inputs()
    dy, dx = shift
    offset = torch.tensor([float(dy), float(dx)], dtype=torch.float64).repeat(9).view(1, 18, 1, 1).expand(2, 18, 5, 7)
    mask = torch.ones(2, 9, 5, 7, dtype=torch.float64)
    pad = 4  # wider than any shift plus the kernel radius
    wide = F.conv2d(F.pad(x, (pad, pad, pad, pad)), weight, bias)  # conv(x) at rows -pad + 1 .. H + pad - 2
    top, left = pad - 1 + dy, pad - 1 + dx
    expected = wide[:, :, top:top + 5, left:left + 7]
    torch.testing.assert_close(modulated_deform_conv2d(x, offset.contiguous(), mask, weight, bias), expected)


def test_deform_conv_matches_the_reference_with_fractional_offsets_and_masks():
    x, weight, bias = _conv_inputs(batch=2, channels=2, height=4, width=6, out_channels=3, seed=1)
    g = torch.Generator().manual_seed(2)
    x.requires_grad_()
    offset = (torch.randn(2, 18, 4, 6, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    mask = torch.rand(2, 9, 4, 6, generator=g, dtype=torch.float64).requires_grad_()
    weight.requires_grad_()
    out = modulated_deform_conv2d(x, offset, mask, weight, bias)
    ref = modulated_deform_conv2d_reference(x, offset, mask, weight, bias)
    torch.testing.assert_close(out, ref)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(out, (x, offset, mask, weight), grad),
                    torch.autograd.grad(ref, (x, offset, mask, weight), grad)):
        torch.testing.assert_close(a, b)


def test_deform_conv_layer_starts_as_a_half_modulated_plain_convolution():
    """Offset/mask convs start at zero: offsets 0 and masks sigmoid(0) = 1/2 (DCNv2)."""
    torch.manual_seed(0)
    layer = ModulatedDeformConvBEV(in_channels=4, num_layers=1).double().eval()
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    dcn, bn = layer.layers[0], layer.layers[1]
    expected = x + bn(F.conv2d(x, dcn.weight, padding=1) * 0.5)
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(ValueError, match="num_layers"):
        ModulatedDeformConvBEV(in_channels=4, num_layers=0)
