"""Dynamic pillars: every point reaches the encoder, values equal a per-pillar loop, sweeps counted."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset
from mmdet3d.models.layers import fold_batchnorm
from mmdet3d.models.lidar import DynamicPillarFeatureNet, DynamicVoxelization, PointPillarsEncoder, Voxelization
from nuscenes_synthetic_data import synthetic_nuscenes

PC_RANGE = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
VOXEL = [0.8, 0.8, 8.0]


def _reference_pfn(net: DynamicPillarFeatureNet, points, coords, stats=None):
    """One pillar at a time, straight from the definition (eval mode: BN is a fixed affine map);
    ``stats``: per-pillar values appended to each point's decoration."""
    out = {}
    for key in sorted({tuple(c) for c in coords[:, :3].tolist()}):
        rows = (coords[:, :3] == torch.tensor(key)).all(1)
        p = points[rows]
        centre = (torch.tensor(key[1:3], dtype=p.dtype) + 0.5) * net.voxel_size + net.grid_origin
        x = torch.cat([p * net.point_scale, p[:, :3] - p[:, :3].mean(0), p[:, :2] - centre], dim=1)
        if net.with_distance:
            x = torch.cat([x, p[:, :3].norm(dim=1, keepdim=True)], dim=1)
        if stats is not None:
            x = torch.cat([x, stats[key].to(p.dtype).expand(len(p), -1)], dim=1)
        for i, (linear, norm) in enumerate(zip(net.linears, net.norms)):
            x = torch.relu(norm(linear(x)))
            pooled = x.max(0, keepdim=True).values
            x = torch.cat([x, pooled.expand_as(x)], 1) if i < len(net.linears) - 1 else pooled[0]
        out[key] = x
    return out


def _randomise_batchnorm(net: DynamicPillarFeatureNet) -> None:
    """Non-trivial BN statistics and affine weights of both signs, then eval mode."""
    for norm in net.norms:
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(-1.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    net.eval()


@pytest.mark.parametrize("feat_channels,with_distance,fold,point_scale", [
    ([8, 16], False, False, None), ([16], False, False, None), ([16], True, False, None), ([16], True, True, None),
    ([16], False, False, [0.5, 0.25, 2.0, 1.0, 3.0]), ([8, 16], False, False, [0.5, 0.25, 2.0, 1.0, 3.0])])
def test_dynamic_pillar_net_equals_a_per_pillar_loop(feat_channels, with_distance, fold, point_scale):
    """Two layers: the per-point path; one layer in eval: the affine shortcut (max before the ReLU),
    with negative BN scales so that a max taken before the norm would show; folded BN alike; with
    and without a scale per raw point feature."""
    torch.manual_seed(0)
    net = DynamicPillarFeatureNet(in_channels=5, feat_channels=feat_channels, point_cloud_range=[-4, -4, -5, 4, 4, 3],
                                  voxel_size=[1.0, 1.0, 8.0], with_distance=with_distance, point_scale=point_scale)
    _randomise_batchnorm(net)
    reference_net = copy.deepcopy(net)
    if fold:
        assert fold_batchnorm(net) == 1 and isinstance(net.norms[0], torch.nn.Identity)
    points = torch.cat([torch.rand(200, 3) * torch.tensor([8.0, 8.0, 4.0]) - torch.tensor([4.0, 4.0, 2.0]),
                        torch.rand(200, 2)], 1)
    voxelizer = DynamicVoxelization(voxel_size=[1.0, 1.0, 8.0], point_cloud_range=[-4, -4, -5, 4, 4, 3])
    kept, coords, _ = voxelizer([points[:120], points[120:]])
    coords = coords[:, [0, 3, 2, 1]]  # (b, z, y, x) -> (b, x, y, z), as BEVFusion.voxelize does
    with torch.no_grad():
        feats, pillars = net(kept, None, coords)
        expected = _reference_pfn(reference_net, kept, coords)
    assert len(expected) == len(pillars)
    for row, key in zip(feats, pillars[:, :3].tolist()):
        torch.testing.assert_close(row, expected[tuple(key)], rtol=1e-5, atol=1e-6)


def test_dynamic_encoder_bev_is_pillar_features_at_their_cells():
    torch.manual_seed(0)
    encoder = PointPillarsEncoder(dict(type="DynamicPillarFeatureNet", feat_channels=[4], point_cloud_range=PC_RANGE,
                                       voxel_size=VOXEL)).eval()
    points = torch.tensor([[0.1, 0.1, 0.0, 1.0, 0.0], [-51.0, 51.0, 1.0, 0.5, 0.1]])
    kept, coords, _ = DynamicVoxelization(voxel_size=VOXEL, point_cloud_range=PC_RANGE)([points])
    with torch.no_grad():
        bev = encoder(kept, None, coords[:, [0, 3, 2, 1]], 1)
    occupied = (bev.abs().sum(1)[0] > 0).nonzero().tolist()
    assert occupied == [[0, 127], [64, 64]]  # (x, y) cells of the two points


def _sweep_share(voxelizer, points: torch.Tensor) -> float:
    """Share of in-range sweep points (time lag > 0) among the points the encoder receives."""
    in_range = ((points[:, :3] >= torch.tensor(PC_RANGE[:3])) & (points[:, :3] < torch.tensor(PC_RANGE[3:]))).all(1)
    total = int((points[in_range, 4] > 0).sum())
    feats, _, sizes = voxelizer([points])
    if sizes is None:
        received = feats
    else:  # (V, M, F) padded: the real points are the first sizes[v] rows of each voxel
        valid = torch.arange(feats.shape[1])[None, :] < sizes[:, None]
        received = feats[valid]
    return int((received[:, 4] > 0).sum()) / total


def test_sweep_points_reach_the_encoder_with_dynamic_pillars(tmp_path_factory):
    data = synthetic_nuscenes(tmp_path_factory)
    pipeline = [dict(type="LoadPointsFromFile", coord_type="LIDAR", load_dim=5, use_dim=5),
                dict(type="LoadPointsFromMultiSweeps", sweeps_num=3, load_dim=5, use_dim=5)]
    dataset = NuScenesDataset(data["root"], "nuscenes_infos_train.pkl", pipeline=pipeline, test_mode=True)
    points = dataset[len(dataset) - 1]["points"]
    assert len(set(np.round(points[:, 4].numpy(), 2).tolist()) - {0.0}) == 3  # three sweeps loaded
    hard = Voxelization(voxel_size=VOXEL, point_cloud_range=PC_RANGE, max_num_points=10, max_voxels=16000)
    dynamic = DynamicVoxelization(voxel_size=VOXEL, point_cloud_range=PC_RANGE)
    hard_share, dynamic_share = _sweep_share(hard, points), _sweep_share(dynamic, points)
    print(f"sweep points reaching the encoder: hard pillars (10 points) {hard_share:.1%}, dynamic {dynamic_share:.1%}")
    assert hard_share < 0.4  # the keyframe's points come first and fill the pillars
    assert dynamic_share == 1.0


def _reference_sweep_stats(net: DynamicPillarFeatureNet, points, coords, edges):
    """Per pillar, per lag bin (lag <= edge), from the definition: share of the pillar's points, mean
    x/y offset to the pillar centre in pillar widths, zeros for an empty bin."""
    out = {}
    bounds = [-float("inf")] + list(edges) + [float("inf")]
    for key in sorted({tuple(c) for c in coords[:, :3].tolist()}):
        p = points[(coords[:, :3] == torch.tensor(key)).all(1)]
        centre = (torch.tensor(key[1:3], dtype=p.dtype) + 0.5) * net.voxel_size + net.grid_origin
        row = []
        for low, high in zip(bounds[:-1], bounds[1:]):
            q = p[(p[:, 4] > low) & (p[:, 4] <= high)]
            mean = (q[:, :2].mean(0) - centre) / net.voxel_size if len(q) else torch.zeros(2)
            row += [len(q) / len(p), float(mean[0]), float(mean[1])]
        if net.lag_velocity:  # least squares of xy on the lag, in float64
            lag, xy = p[:, 4].double(), p[:, :2].double()
            var = ((lag - lag.mean()) ** 2).mean()
            cov = ((lag - lag.mean())[:, None] * (xy - xy.mean(0))).mean(0)
            row += (-cov / var).tolist() if var > 1e-4 else [0.0, 0.0]
        out[key] = torch.tensor(row)
    return out


def _lagged_points(n: int = 300) -> torch.Tensor:
    lags = torch.tensor([0.0, 0.15, 0.3, 0.45])[torch.randint(0, 4, (n,))]
    return torch.cat([torch.rand(n, 3) * torch.tensor([8.0, 8.0, 4.0]) - torch.tensor([4.0, 4.0, 2.0]),
                      torch.rand(n, 1), lags[:, None]], 1)


@pytest.mark.parametrize("lag_velocity", [False, True])
def test_sweep_stats_equal_a_per_pillar_loop(lag_velocity):
    """A voxel size that is not square, so that an x/y swap shows."""
    torch.manual_seed(0)
    edges = [0.075, 0.225, 0.375]
    net = DynamicPillarFeatureNet(in_channels=5, feat_channels=[16], point_cloud_range=[-4, -4, -5, 4, 4, 3],
                                  voxel_size=[1.0, 2.0, 8.0], time_lag_bins=edges, lag_velocity=lag_velocity)
    points = _lagged_points()
    kept, coords, _ = DynamicVoxelization(voxel_size=[1.0, 2.0, 8.0], point_cloud_range=[-4, -4, -5, 4, 4, 3])(
        [points[:180], points[180:]])
    stats, pillars = net.sweep_stats(kept, coords[:, [0, 3, 2, 1]])
    expected = _reference_sweep_stats(net, kept, coords[:, [0, 3, 2, 1]], edges)
    assert stats.shape == (len(expected), 12 + 2 * lag_velocity)
    for row, key in zip(stats, pillars[:, :3].tolist()):
        torch.testing.assert_close(row, expected[tuple(key)], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("feat_channels,fold", [([16], False), ([16], True), ([8, 16], False)])
def test_sweep_stats_decorate_every_point(feat_channels, fold):
    """The statistics enter the PFN as per-point decorations on both paths (the one-layer eval
    shortcut, where they are a per-pillar constant, and the per-point path); the width stays
    ``feat_channels[-1]``."""
    torch.manual_seed(0)
    edges = [0.075, 0.225, 0.375]
    net = DynamicPillarFeatureNet(in_channels=5, feat_channels=feat_channels, point_cloud_range=[-4, -4, -5, 4, 4, 3],
                                  voxel_size=[1.0, 2.0, 8.0], time_lag_bins=edges)
    _randomise_batchnorm(net)
    reference_net = copy.deepcopy(net)
    if fold:
        fold_batchnorm(net)
    assert net.out_channels == feat_channels[-1] and net.linears[0].in_features == 10 + 12
    points = _lagged_points()
    kept, coords, _ = DynamicVoxelization(voxel_size=[1.0, 2.0, 8.0], point_cloud_range=[-4, -4, -5, 4, 4, 3])(
        [points[:180], points[180:]])
    coords = coords[:, [0, 3, 2, 1]]
    with torch.no_grad():
        feats, pillars = net(kept, None, coords)
        expected = _reference_pfn(reference_net, kept, coords, _reference_sweep_stats(net, kept, coords, edges))
    for row, key in zip(feats, pillars[:, :3].tolist()):
        torch.testing.assert_close(row, expected[tuple(key)], rtol=1e-5, atol=1e-5)


def test_sweep_stats_show_motion_inside_one_pillar():
    """A pedestrian-like cluster moving +x at 1.3 m/s (0.6 m over the sweeps, less than a pillar):
    the per-bin mean x offset falls with the lag, by v * lag / pillar width; y stays put; the
    least-squares velocity is (1.3, 0) m/s."""
    torch.manual_seed(0)
    net = DynamicPillarFeatureNet(in_channels=5, feat_channels=[4], point_cloud_range=PC_RANGE, voxel_size=VOXEL,
                                  time_lag_bins=[0.075, 0.225, 0.375], lag_velocity=True).eval()
    lags = torch.tensor([0.0, 0.15, 0.3, 0.45]).repeat_interleave(50)
    body = (torch.rand(200, 2) - 0.5) * 0.1 + torch.tensor([0.72, 0.4])  # the pillar [0, 0.8) m, at every lag
    xy = body - torch.stack([1.3 * lags, torch.zeros_like(lags)], 1)
    points = torch.cat([xy, torch.zeros(200, 1), torch.ones(200, 1), lags[:, None]], 1)
    kept, coords, _ = DynamicVoxelization(voxel_size=VOXEL, point_cloud_range=PC_RANGE)([points])
    stats, pillars = net.sweep_stats(kept, coords[:, [0, 3, 2, 1]])
    assert len(pillars) == 1
    velocity = stats[0, 12:]
    torch.testing.assert_close(velocity, torch.tensor([1.3, 0.0]), atol=0.05, rtol=0)
    stats = stats[0, :12].view(4, 3)
    torch.testing.assert_close(stats[:, 0], torch.full((4,), 0.25))
    torch.testing.assert_close(stats[:, 1] - stats[0, 1], -1.3 * torch.tensor([0.0, 0.15, 0.3, 0.45]) / 0.8,
                               atol=0.03, rtol=0)
    assert stats[:, 2].abs().max() < 0.05
