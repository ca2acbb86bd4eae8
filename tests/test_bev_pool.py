"""bev_pool: the sparse splat equals the materialising reference and a Python loop, values and gradients."""
import math

import pytest
import torch

from mmdet3d.ops.bev_pool import BEVPoolGeometry, bev_cell_index, bev_grid, bev_pool, bev_pool_reference

GRIDS = {
    "one_z": ([-4.0, 4.0, 1.0], [-3.0, 3.0, 0.5], [-2.0, 2.0, 4.0]),
    "two_z": ([-2.0, 3.0, 0.5], [-4.0, 4.0, 1.0], [-1.0, 1.0, 1.0]),
}
SIZES = [(1, 1, 3, 2, 2, 1), (2, 3, 4, 3, 5, 4), (1, 6, 7, 2, 3, 3)]  # (B, N, D, H, W, C)


def bev_pool_loop(depth_probs, feats, geometry, xbound, ybound, zbound):
    """Slow obvious reference: visit every frustum point and add its feature to its cell."""
    batch_size, num_cams, depth, height, width = depth_probs.shape
    channels = feats.shape[2]
    (nx, ny, nz) = bev_grid(xbound, ybound, zbound)[2]
    out = torch.zeros(batch_size, nz * channels, nx, ny, dtype=feats.dtype)
    for b in range(batch_size):
        for n in range(num_cams):
            for d in range(depth):
                for h in range(height):
                    for w in range(width):
                        x, y, z = geometry[b, n, d, h, w].tolist()
                        ix = math.floor((x - xbound[0]) / xbound[2])
                        iy = math.floor((y - ybound[0]) / ybound[2])
                        iz = math.floor((z - zbound[0]) / zbound[2])
                        if not (0 <= ix < nx and 0 <= iy < ny and 0 <= iz < nz):
                            continue
                        for c in range(channels):
                            out[b, iz * channels + c, ix, iy] += depth_probs[b, n, d, h, w] * feats[b, n, c, h, w]
    return out


def random_inputs(size, bounds, seed=0, dtype=torch.float64):
    batch_size, num_cams, depth, height, width, channels = size
    gen = torch.Generator().manual_seed(seed)
    lo = torch.tensor([b[0] for b in bounds], dtype=dtype)
    hi = torch.tensor([b[1] for b in bounds], dtype=dtype)
    # 20 % margin on each side so that some points fall outside the grid
    u = torch.rand(batch_size, num_cams, depth, height, width, 3, generator=gen, dtype=dtype) * 1.4 - 0.2
    geometry = lo + u * (hi - lo)
    probs = torch.rand(batch_size, num_cams, depth, height, width, generator=gen, dtype=dtype)
    feats = torch.randn(batch_size, num_cams, channels, height, width, generator=gen, dtype=dtype)
    return geometry, probs, feats


def ray_geometry(batch_size, num_cams, depth, height, width, dtype=torch.float64):
    """Straight rays from the origin (a frustum), many depth bins per cell along each ray."""
    d = torch.linspace(0.3, 5.5, depth, dtype=dtype)
    az = torch.linspace(-3.0, 3.0, num_cams * width, dtype=dtype).view(num_cams, 1, width)
    el = torch.linspace(-0.3, 0.3, height, dtype=dtype).view(1, height, 1)
    direction = torch.stack([torch.cos(az) * torch.cos(el), torch.sin(az) * torch.cos(el), torch.sin(el).expand_as(az * el)], -1)
    geom = d.view(1, depth, 1, 1, 1) * direction.view(num_cams, 1, height, width, 3)  # (N, D, H, W, 3)
    return geom.unsqueeze(0).expand(batch_size, -1, -1, -1, -1, -1).contiguous()


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("size", SIZES)
def test_values_match_loop_and_reference(size, grid):
    bounds = GRIDS[grid]
    geometry, probs, feats = random_inputs(size, bounds)
    expected = bev_pool_loop(probs, feats, geometry, *bounds)
    reference = bev_pool(probs, feats, geometry, *bounds, reference=True)
    fast = bev_pool(probs, feats, geometry, *bounds)
    assert fast.shape == expected.shape
    assert expected.abs().sum() > 0
    torch.testing.assert_close(reference, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("size", SIZES + [(2, 2, 9, 3, 4, 5)])
@pytest.mark.parametrize("kind", ["random", "rays"])
def test_gradients_match_reference(size, grid, kind):
    bounds = GRIDS[grid]
    geometry, probs, feats = random_inputs(size, bounds, seed=1)
    if kind == "rays":
        geometry = ray_geometry(*size[:5])
    results = []
    for reference in (True, False):
        p, f = probs.clone().requires_grad_(True), feats.clone().requires_grad_(True)
        out = bev_pool(p, f, geometry, *bounds, reference=reference)
        weight = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).view_as(out)
        (out * weight).sum().backward()
        results.append((out.detach(), p.grad, f.grad))
    for ref, fast in zip(*results):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    assert results[0][1].abs().sum() > 0 and results[0][2].abs().sum() > 0


def test_ray_geometry_collapses_depth_bins():
    bounds = GRIDS["one_z"]
    geometry = ray_geometry(1, 2, 40, 2, 3)
    structure = BEVPoolGeometry(geometry, *bounds)
    assert structure.num_pairs < structure.point_index.numel() / 2


def test_gradcheck_custom_function():
    bounds = GRIDS["two_z"]
    geometry, probs, feats = random_inputs((1, 2, 3, 2, 2, 2), bounds, seed=2)
    structure = BEVPoolGeometry(geometry, *bounds)
    probs.requires_grad_(True)
    feats.requires_grad_(True)
    assert torch.autograd.gradcheck(structure.pool, (probs, feats))


def test_cached_structure_reused_with_new_values():
    bounds = GRIDS["one_z"]
    geometry, probs, feats = random_inputs((2, 2, 5, 3, 4, 3), bounds, seed=3)
    structure = BEVPoolGeometry(geometry, *bounds)
    for seed in range(3):
        _, p, f = random_inputs((2, 2, 5, 3, 4, 3), bounds, seed=10 + seed)
        torch.testing.assert_close(
            bev_pool(p, f, geometry, *bounds, cache=structure), bev_pool_reference(p, f, geometry, *bounds)
        )
    with pytest.raises(ValueError):
        bev_pool(probs[:, :1], feats[:, :1], geometry[:, :1], *bounds, cache=structure)


def test_known_point_lands_in_its_cell():
    xbound, ybound, zbound = [-10.0, 10.0, 0.5], [-5.0, 5.0, 0.25], [-3.0, 3.0, 6.0]
    geometry = torch.full((1, 1, 2, 1, 1, 3), 100.0)  # second depth bin: outside the grid
    geometry[0, 0, 0, 0, 0] = torch.tensor([3.1, -1.1, 0.4])
    probs = torch.tensor([0.7, 0.3]).view(1, 1, 2, 1, 1)
    feats = torch.tensor([2.0, -1.0]).view(1, 1, 2, 1, 1)
    out = bev_pool(probs, feats, geometry, xbound, ybound, zbound)
    assert out.shape == (1, 2, 40, 40)
    ix, iy = int((3.1 + 10.0) // 0.5), int((-1.1 + 5.0) // 0.25)
    assert (ix, iy) == (26, 15)
    torch.testing.assert_close(out[0, :, ix, iy], torch.tensor([1.4, -0.7]))
    assert out.abs().sum().item() == pytest.approx(2.1)


def test_cell_index_bounds_are_half_open():
    xbound, ybound, zbound = [0.0, 2.0, 1.0], [0.0, 2.0, 1.0], [0.0, 1.0, 1.0]
    pts = torch.tensor([[0.0, 0.0, 0.0], [1.999, 0.5, 0.5], [2.0, 0.5, 0.5], [-1e-6, 0.5, 0.5], [1.0, 1.0, 0.99]])
    cells = bev_cell_index(pts, xbound, ybound, zbound)
    assert cells.tolist() == [0, 2, -1, -1, 3]


def test_all_points_outside_give_zeros_and_zero_grads():
    bounds = GRIDS["one_z"]
    geometry, probs, feats = random_inputs((1, 2, 3, 2, 2, 3), bounds)
    geometry = geometry + 1000.0
    probs.requires_grad_(True)
    feats.requires_grad_(True)
    out = bev_pool(probs, feats, geometry, *bounds)
    out.sum().backward()
    assert out.abs().sum() == 0 and probs.grad.abs().sum() == 0 and feats.grad.abs().sum() == 0
