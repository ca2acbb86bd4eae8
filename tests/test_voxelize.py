"""voxelize: pure PyTorch hard voxelization against a Python loop with mmcv's semantics."""
import math

import pytest
import torch

from mmdet3d.models.builder import VOXELIZERS
from mmdet3d.models.lidar.voxelization import Voxelization
from mmdet3d.ops.voxelize import voxel_grid_size, voxelize


def voxelize_loop(points, voxel_size, pc_range, max_num_points, max_voxels):
    """mmcv's CPU hard voxelization, one point at a time."""
    nx, ny, nz = voxel_grid_size(voxel_size, pc_range)
    voxel_of_cell, voxels, coords = {}, [], []
    for p in points.tolist():
        ijk = [math.floor((p[i] - pc_range[i]) / voxel_size[i]) for i in range(3)]
        if not all(0 <= ijk[i] < (nx, ny, nz)[i] for i in range(3)):
            continue
        key = (ijk[2], ijk[1], ijk[0])
        if key not in voxel_of_cell:
            if max_voxels > 0 and len(voxels) >= max_voxels:
                continue
            voxel_of_cell[key] = len(voxels)
            voxels.append([])
            coords.append(key)
        members = voxels[voxel_of_cell[key]]
        if max_num_points <= 0 or len(members) < max_num_points:
            members.append(p)
    return voxels, coords


def random_points(num, seed, num_feats=5):
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.rand(num, 3, generator=gen, dtype=torch.float64) * torch.tensor([12.0, 10.0, 5.0]) - torch.tensor([6.0, 5.0, 3.0])
    xyz = torch.round(xyz * 4) / 4 if seed % 2 else xyz  # on voxel borders for odd seeds
    return torch.cat([xyz, torch.rand(num, num_feats - 3, generator=gen, dtype=torch.float64)], dim=1)


CASES = [  # (num points, voxel size, range, max_num_points, max_voxels)
    (200, [1.0, 1.0, 2.0], [-4.0, -4.0, -2.0, 4.0, 4.0, 2.0], 3, 20),
    (300, [0.5, 0.75, 1.0], [-5.0, -3.0, -2.0, 5.0, 3.0, 1.0], 5, 10000),
    (150, [2.0, 2.0, 4.0], [-6.0, -5.0, -3.0, 6.0, 5.0, 1.0], 1, 7),
    (250, [1.0, 1.0, 1.0], [-3.0, -3.0, -2.0, 3.0, 3.0, 2.0], -1, -1),
    (0, [1.0, 1.0, 1.0], [-3.0, -3.0, -2.0, 3.0, 3.0, 2.0], 4, 10),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("seed", [0, 1])
def test_hard_voxelization_matches_loop(case, seed):
    num, voxel_size, pc_range, max_pts, max_voxels = CASES[case]
    points = random_points(num, seed)
    voxels, coords, num_points = voxelize(points, voxel_size, pc_range, max_pts, max_voxels)
    ref_voxels, ref_coords = voxelize_loop(points, voxel_size, pc_range, max_pts, max_voxels)
    assert coords.tolist() == [list(c) for c in ref_coords]
    assert num_points.tolist() == [len(v) for v in ref_voxels]
    width = max_pts if max_pts > 0 else max((len(v) for v in ref_voxels), default=0)
    assert voxels.shape == (len(ref_voxels), width, 5)
    for v, members in enumerate(ref_voxels):
        torch.testing.assert_close(voxels[v, : len(members)], torch.tensor(members, dtype=torch.float64))
        assert voxels[v, len(members):].abs().sum() == 0


@pytest.mark.parametrize("case", range(len(CASES)))
def test_mean_reduction(case):
    num, voxel_size, pc_range, max_pts, max_voxels = CASES[case]
    points = random_points(num, seed=3)
    means, coords, num_points = voxelize(points, voxel_size, pc_range, max_pts, max_voxels, reduce="mean")
    ref_voxels, ref_coords = voxelize_loop(points, voxel_size, pc_range, max_pts, max_voxels)
    assert means.shape == (len(ref_voxels), 5)
    assert coords.tolist() == [list(c) for c in ref_coords]
    for v, members in enumerate(ref_voxels):
        torch.testing.assert_close(means[v], torch.tensor(members, dtype=torch.float64).mean(0))


def test_voxelization_module_batches_with_batch_index():
    cfg = dict(type="Voxelization", voxel_size=[1.0, 1.0, 2.0], point_cloud_range=[-4.0, -4.0, -2.0, 4.0, 4.0, 2.0],
               max_num_points=4, max_voxels=(30, 12))
    layer = VOXELIZERS.build(cfg)
    assert isinstance(layer, Voxelization) and layer.grid_size == (8, 8, 2) and layer.out_channels == 5
    clouds = [random_points(120, 0).float(), random_points(80, 1).float()]
    for training, max_voxels in ((True, 30), (False, 12)):
        layer.train(training)
        feats, coords, sizes = layer(clouds)
        expected = [voxelize(c, cfg["voxel_size"], cfg["point_cloud_range"], 4, max_voxels) for c in clouds]
        assert coords.shape[1] == 4
        assert coords[:, 0].tolist() == [b for b, e in enumerate(expected) for _ in range(e[1].shape[0])]
        torch.testing.assert_close(feats, torch.cat([e[0] for e in expected]))
        torch.testing.assert_close(coords[:, 1:], torch.cat([e[1] for e in expected]))
        torch.testing.assert_close(sizes, torch.cat([e[2] for e in expected]))


def test_unlimited_points_pads_to_largest_voxel_across_batch():
    layer = Voxelization(voxel_size=[10.0, 10.0, 10.0], point_cloud_range=[-5.0, -5.0, -5.0, 5.0, 5.0, 5.0],
                         max_num_points=-1, max_voxels=-1)
    clouds = [torch.zeros(3, 5), torch.zeros(7, 5)]
    feats, coords, sizes = layer(clouds)
    assert feats.shape == (2, 7, 5) and sizes.tolist() == [3, 7]
    assert coords.tolist() == [[0, 0, 0, 0], [1, 0, 0, 0]]
