"""View transforms: frustum geometry with augmentations, splat location, gradients, depth input, cache."""
import math
import pickle

import numpy as np
import pytest
import torch

from keyframe_paths import PKL, needs_keyframe
from mmdet3d.models.builder import VTRANSFORMS
from mmdet3d.models.vtransforms import (DepthLSSTransform, LSSTransform, depth_bin_centers, points_to_depth_image,
                                      share_pool_structures)

IMAGE, FEATURE = (32, 64), (8, 16)
DBOUND = [1.0, 21.0, 1.0]
GRID = dict(xbound=[-20.0, 20.0, 0.5], ybound=[-20.0, 20.0, 0.5], zbound=[-6.0, 6.0, 12.0])


def rot_z(angle):
    c, s = math.cos(angle), math.sin(angle)
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    return m


def camera_matrices(yaw, seed):
    """A camera looking along ``yaw`` in the LiDAR frame (camera z forward, x right, y down)."""
    rng = np.random.default_rng(seed)
    k = np.eye(4)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = 40.0 + 5 * rng.random(), 42.0, 31.5 + rng.random(), 15.5
    cam_axes = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # camera -> LiDAR axes
    camera2lidar = np.eye(4)
    camera2lidar[:3, :3] = rot_z(yaw)[:3, :3] @ cam_axes
    camera2lidar[:3, 3] = rng.normal(size=3) * 0.5
    aug = np.eye(4)  # resize, rotate, flip and crop of the image plane, acting on (u, v, d, 1)
    angle, scale = 0.2 * rng.random() - 0.1, 0.9 + 0.2 * rng.random()
    aug[:2, :2] = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    aug[0, :2] *= -1 if seed % 2 else 1  # horizontal flip
    aug[:2, 3] = [IMAGE[1] - 1 if seed % 2 else 1.5, -2.0]
    return k, camera2lidar, aug


def make_batch(batch_size=2, num_cams=2, seed=0):
    mats = {key: [] for key in ("camera_intrinsics", "camera2lidar", "img_aug_matrix", "lidar2image")}
    lidar_aug = []
    for b in range(batch_size):
        row = {key: [] for key in mats}
        for n in range(num_cams):
            k, c2l, aug = camera_matrices(2 * math.pi * n / num_cams + 0.3 * b, seed + 7 * b + n)
            for key, value in zip(("camera_intrinsics", "camera2lidar", "img_aug_matrix", "lidar2image"),
                                  (k, c2l, aug, k @ np.linalg.inv(c2l))):
                row[key].append(value)
        for key in mats:
            mats[key].append(np.stack(row[key]))
        la = rot_z(0.4 * (b + 1)) @ np.diag([1.05, 1.05, 1.05, 1.0])
        la[:3, 3] = [1.0, -0.5 * b, 0.2]
        if b % 2:
            la[1] *= -1  # flip y
        lidar_aug.append(la)
    batch = {key: torch.tensor(np.stack(v), dtype=torch.float32) for key, v in mats.items()}
    batch["lidar_aug_matrix"] = torch.tensor(np.stack(lidar_aug), dtype=torch.float32)
    return batch


def frustum_point(batch, b, n, d, h, w):
    """Augmented-LiDAR xyz (float64) of frustum cell (d, h, w) of camera (b, n), by direct algebra."""
    u = (w + 0.5) * IMAGE[1] / FEATURE[1] - 0.5
    v = (h + 0.5) * IMAGE[0] / FEATURE[0] - 0.5
    return pixel_point(batch, b, n, u, v, float(depth_bin_centers(DBOUND)[d]))


def pixel_point(batch, b, n, u, v, depth):
    """Augmented-LiDAR xyz (float64) seen at pixel (u, v) of camera (b, n) at ``depth`` metres."""
    m = {key: batch[key][b].double().numpy() for key in batch}
    raw = np.linalg.solve(m["img_aug_matrix"][n], [u, v, depth, 1.0])
    cam = np.linalg.solve(m["camera_intrinsics"][n], [raw[0] * depth, raw[1] * depth, depth, 1.0])
    return (m["lidar_aug_matrix"] @ m["camera2lidar"][n] @ cam)[:3], (u, v, depth)


def build(cls=LSSTransform, **kwargs):
    cfg = dict(in_channels=6, out_channels=4, image_size=IMAGE, feature_size=FEATURE, dbound=DBOUND, **GRID)
    cfg.update(kwargs)
    return cls(**cfg)


def test_frustum_and_depth_bins():
    vt = build()
    assert vt.frustum.shape == (20, 8, 16, 3)
    torch.testing.assert_close(depth_bin_centers([1.0, 60.0, 0.5])[[0, -1]], torch.tensor([1.25, 59.75]))
    assert depth_bin_centers([1.0, 60.0, 0.5]).numel() == 118
    torch.testing.assert_close(vt.frustum[3, 2, 5], torch.tensor([5.5 * 4 - 0.5, 2.5 * 4 - 0.5, 4.5]))


@pytest.mark.parametrize("cell", [(0, 0, 0, 0, 0), (1, 1, 7, 3, 9), (0, 1, 19, 7, 15), (1, 0, 12, 5, 2)])
def test_geometry_matches_algebra_and_projection(cell):
    batch = make_batch()
    vt = build()
    geometry = vt.get_geometry(batch["camera2lidar"], batch["camera_intrinsics"], batch["img_aug_matrix"],
                               batch["lidar_aug_matrix"])
    assert geometry.shape == (2, 2, 20, 8, 16, 3)
    b, n, d, h, w = cell
    expected, (u, v, depth) = frustum_point(batch, b, n, d, h, w)
    np.testing.assert_allclose(geometry[b, n, d, h, w].double().numpy(), expected, rtol=1e-5, atol=1e-4)
    # the point projects back to its pixel and depth through lidar2image (the DepthLSS path)
    m = {key: batch[key][b].double().numpy() for key in batch}
    raw = m["lidar2image"][n] @ np.linalg.solve(m["lidar_aug_matrix"], [*expected, 1.0])
    pix = m["img_aug_matrix"][n] @ [raw[0] / raw[2], raw[1] / raw[2], raw[2], 1.0]
    np.testing.assert_allclose(pix[:3], [u, v, depth], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cell", [(0, 1, 7, 3, 9), (1, 0, 12, 5, 2), (1, 1, 4, 0, 15)])
def test_one_hot_depth_feature_lands_in_known_cell(cell):
    batch = make_batch()
    b, n, d, h, w = cell
    point, _ = frustum_point(batch, b, n, d, h, w)
    # grid centred on the point's cell so that float round-off cannot move it across a border
    grid = {axis: [float(point[i]) - 10.25, float(point[i]) + 9.75, 0.5] for i, axis in enumerate(("xbound", "ybound"))}
    vt = build(**grid)
    probs = torch.zeros(2, 2, 20, 8, 16)
    probs[b, n, d, h, w] = 1.0
    context = torch.zeros(2, 2, 4, 8, 16)
    context[b, n, :, h, w] = torch.tensor([1.0, -2.0, 3.0, 0.5])
    for reference in (False, True):
        vt.reference_pool = reference
        bev = vt.splat(probs, context, batch)
        assert bev.shape == (2, 4, 40, 40)
        nonzero = bev.abs().sum(1).nonzero().tolist()
        assert nonzero == [[b, 20, 20]]
        torch.testing.assert_close(bev[b, :, 20, 20], context[b, n, :, h, w])


@pytest.mark.parametrize("cls", [LSSTransform, DepthLSSTransform])
def test_forward_shapes_and_gradients(cls):
    torch.manual_seed(0)
    batch = make_batch()
    batch["points"] = [torch.randn(200, 5) * 6, torch.randn(150, 5) * 6]
    vt = build(cls, downsample=2)
    vt.train()
    feats = torch.randn(2, 2, 6, 8, 16, requires_grad=True)
    bev, aux = vt(feats, batch)
    assert vt.out_channels == 4 and bev.shape == (2, 4, 40, 40)
    assert aux["depth_logits"].shape == (2, 2, 20, 8, 16)
    (bev.square().mean() + aux["depth_logits"].mean()).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    for name, param in vt.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_depth_branch_gradient_through_splat_only():
    """The depth logits get a gradient from the BEV loss alone (through the softmax and the splat)."""
    torch.manual_seed(1)
    vt = build()
    batch = make_batch()
    feats = torch.randn(2, 2, 6, 8, 16)
    bev, _ = vt(feats, batch)
    bev.square().sum().backward()
    weight_grad = vt.depthnet.weight.grad
    assert weight_grad[:20].abs().sum() > 0 and weight_grad[20:].abs().sum() > 0


def test_depth_image_projection():
    batch = make_batch(batch_size=1, num_cams=2)
    # on the ray through a pixel centre: feature-cell centres lie on pixel borders at stride 4,
    # where float round-off alone picks the pixel
    b, n, u, v = 0, 1, 37.0, 13.0
    point, (_, _, depth) = pixel_point(batch, b, n, u, v, 6.5)
    nearer, _ = pixel_point(batch, b, n, u, v, 3.5)
    points = torch.tensor(np.stack([point, nearer, point + 1000.0]), dtype=torch.float32)
    points = torch.cat([points, torch.zeros(3, 2)], dim=1)
    image = points_to_depth_image([points], batch["lidar2image"], batch["img_aug_matrix"], batch["lidar_aug_matrix"], IMAGE)
    assert image.shape == (1, 2, 32, 64)
    row, col = math.floor(v + 0.5), math.floor(u + 0.5)
    assert image[0, n, row, col].item() == pytest.approx(3.5, rel=1e-5)
    assert (image > 0).sum() == 1  # the farther point hides behind the nearer one


def test_depth_lss_uses_lidar_points():
    torch.manual_seed(2)
    batch = make_batch()
    vt = build(DepthLSSTransform).eval()
    feats = torch.randn(2, 2, 6, 8, 16)
    points = [torch.randn(300, 5) * 8, torch.randn(300, 5) * 8]
    with torch.no_grad():
        out_a, aux_a = vt(feats, dict(batch, points=points))
        out_b, aux_b = vt(feats, dict(batch, points=[p * 0.5 for p in points]))
        out_c, _ = vt(feats, dict(batch, points=points))
    assert not torch.allclose(aux_a["depth_logits"], aux_b["depth_logits"])
    assert not torch.allclose(out_a, out_b)
    torch.testing.assert_close(out_a, out_c)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_structure_cache_reused_while_matrices_fixed(mode):
    torch.manual_seed(3)
    batch = make_batch()
    vt = build().train(mode == "train")
    feats = torch.randn(2, 2, 6, 8, 16)
    with torch.no_grad():
        first = vt(feats, batch)[0]
        structure = vt.structure_cache.entry[2]
        second = vt(feats * 2, {k: v.clone() for k, v in batch.items()})[0]
        assert vt.structure_cache.entry[2] is structure
        moved = dict(batch, lidar_aug_matrix=batch["lidar_aug_matrix"].flip(0))
        third = vt(feats, moved)[0]
        assert vt.structure_cache.entry[2] is not structure
        vt.reference_pool = True
        torch.testing.assert_close(vt(feats, moved)[0], third)
        torch.testing.assert_close(vt(feats, batch)[0], first)
        torch.testing.assert_close(vt(feats * 2, batch)[0], second)


def test_shared_structure_cache_only_between_equal_geometries():
    torch.manual_seed(3)
    batch = make_batch()
    a, b, other = build(), build(), build(dbound=[1.0, 9.0, 2.0])
    assert share_pool_structures(a, b, other) == 1
    assert a.structure_cache is b.structure_cache and other.structure_cache is not a.structure_cache
    feats = torch.randn(2, 2, 6, 8, 16)
    with torch.no_grad():
        a(feats, batch)
        structure = a.structure_cache.entry[2]
        out_b = b(feats, batch)[0]
        assert b.structure_cache.entry[2] is structure  # b reused what a built
        other(torch.randn(2, 2, 6, 8, 16), batch)
        assert a.structure_cache.entry[2] is structure
        b.reference_pool = True
        torch.testing.assert_close(b(feats, batch)[0], out_b)


def test_build_from_config_and_z_cells():
    vt = VTRANSFORMS.build(dict(type="LSSTransform", in_channels=6, out_channels=4, image_size=list(IMAGE),
                                feature_size=list(FEATURE), dbound=DBOUND, xbound=GRID["xbound"],
                                ybound=GRID["ybound"], zbound=[-6.0, 6.0, 4.0]))
    assert vt.out_channels == 12
    bev, _ = vt(torch.randn(1, 3, 6, 8, 16), make_batch(batch_size=1, num_cams=3))
    assert bev.shape == (1, 12, 80, 80)
    with pytest.raises(ValueError):
        build(DepthLSSTransform, feature_size=(7, 16))


def test_frustum_bev_masks_cover_each_camera_view():
    batch = make_batch(batch_size=1, num_cams=2)
    batch["lidar_aug_matrix"] = torch.eye(4)[None]
    batch["camera2lidar"][:, :, :3, 3] = 0.0  # cameras at the origin: 0 looks along +x, 1 along -x
    vt = build()
    masks = vt.frustum_bev_masks(batch)
    assert masks.shape == (1, 2, 80, 80) and masks.dtype == torch.bool
    ahead, behind = 61, 19  # x rows of +-10.5 m, a depth-bin centre on the optical axes
    assert masks[0, 0, ahead, 38:42].any() and not masks[0, 0, behind].any()
    assert masks[0, 1, behind, 38:42].any() and not masks[0, 1, ahead].any()
    probs = torch.rand(1, 2, 20, 8, 16)
    bev = vt.splat(probs, torch.ones(1, 2, 4, 8, 16), batch)
    assert torch.equal(bev[0, 0] > 0, masks[0].any(0))


@needs_keyframe
def test_real_rig_frustums_cover_the_ring_around_the_car():
    """nuScenes keyframe calibration, 256x704 after resize 0.48 + crop: six views tile 360 degrees."""
    with open(PKL, "rb") as f:
        cams = pickle.load(f)["data_list"][0]["images"].values()
    k = np.tile(np.eye(4), (6, 1, 1))
    k[:, :3, :3] = [np.asarray(c["cam2img"]) for c in cams]
    c2l = np.stack([np.linalg.inv(np.asarray(c["lidar2cam"])) for c in cams])
    aug = np.eye(4)
    aug[0, 0] = aug[1, 1] = 0.48
    aug[:2, 3] = [-32.0, -176.0]
    batch = {"camera_intrinsics": torch.tensor(k[None], dtype=torch.float32),
             "camera2lidar": torch.tensor(c2l[None], dtype=torch.float32),
             "img_aug_matrix": torch.tensor(np.tile(aug, (1, 6, 1, 1)), dtype=torch.float32),
             "lidar_aug_matrix": torch.eye(4)[None]}
    vt = LSSTransform(in_channels=8, out_channels=8, image_size=(256, 704), feature_size=(32, 88),
                      xbound=[-54.0, 54.0, 0.6], ybound=[-54.0, 54.0, 0.6], zbound=[-10.0, 10.0, 20.0],
                      dbound=[1.0, 60.0, 0.5])
    masks = vt.frustum_bev_masks(batch)[0]  # (6, 180, 180)
    angles = torch.linspace(-math.pi, math.pi, 721)[:-1]
    for radius in (10.0, 30.0):
        ix = ((radius * torch.cos(angles) + 54.0) / 0.6).long()
        iy = ((radius * torch.sin(angles) + 54.0) / 0.6).long()
        assert masks.any(0)[ix, iy].float().mean() > 0.97
    # each camera sees 20 m along its optical axis (camera +z in the LiDAR frame), not behind it
    for n, axis in enumerate(c2l[:, :2, 2]):
        ahead = np.floor((20.0 * axis / np.linalg.norm(axis) + 54.0) / 0.6).astype(int)
        behind = np.floor((-20.0 * axis / np.linalg.norm(axis) + 54.0) / 0.6).astype(int)
        assert masks[n, ahead[0], ahead[1]] and not masks[n, behind[0], behind[1]]


def axis_camera_batch():
    """B=2, N=2 cameras whose geometry is known in closed form (for ``forward`` tests).

    Camera 0 looks along LiDAR +x (image right = -y, image down = -z), camera 1 along +y (right = +x,
    down = -z); both sit at ``POSITIONS[n]``. The original 64x128 images (focal 40, centre (63.5, 31.5))
    are halved to the 32x64 input; camera 1's image is also flipped left-right. Sample 1 carries a
    LiDAR augmentation: a quarter turn counter-clockwise, then a shift by (1, -2).
    """
    forward = [np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])]
    right = [np.array([0.0, -1.0, 0.0]), np.array([1.0, 0.0, 0.0])]
    down = np.array([0.0, 0.0, -1.0])
    k = np.eye(4)
    k[0, 0] = k[1, 1] = 40.0
    k[0, 2], k[1, 2] = 63.5, 31.5
    cams, augs = [], []
    for n in range(2):
        c2l = np.eye(4)
        c2l[:3, 0], c2l[:3, 1], c2l[:3, 2], c2l[:3, 3] = right[n], down, forward[n], AXIS_POSITIONS[n]
        cams.append(c2l)
        aug = np.diag([0.5, 0.5, 1.0, 1.0])
        aug[:2, 3] = -0.25  # pixel centres: u' + 0.5 = (u + 0.5) / 2
        if n == 1:
            aug = np.array([[-1.0, 0, 0, IMAGE[1] - 1.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) @ aug
        augs.append(aug)
    quarter_turn = rot_z(math.pi / 2)
    quarter_turn[:3, 3] = [1.0, -2.0, 0.0]
    batch = {"camera_intrinsics": np.stack([k, k]), "camera2lidar": np.stack(cams), "img_aug_matrix": np.stack(augs)}
    batch = {key: torch.tensor(np.stack([v, v]), dtype=torch.float32) for key, v in batch.items()}
    batch["lidar_aug_matrix"] = torch.tensor(np.stack([np.eye(4), quarter_turn]), dtype=torch.float32)
    return batch


AXIS_POSITIONS = [np.array([0.3, 0.2, 1.6]), np.array([-0.4, 0.1, 1.5])]


def axis_camera_point(b, n, d, h, w):
    """Closed-form augmented-LiDAR point of frustum cell (d, h, w) of camera n in ``axis_camera_batch``."""
    u, v = (w + 0.5) * IMAGE[1] / FEATURE[1] - 0.5, (h + 0.5) * IMAGE[0] / FEATURE[0] - 0.5
    if n == 1:
        u = IMAGE[1] - 1.0 - u  # undo the flip
    u0, v0 = 2 * u + 0.5, 2 * v + 0.5  # undo the halving
    depth = DBOUND[0] + (d + 0.5) * DBOUND[2]
    right, down = (u0 - 63.5) / 40.0 * depth, (v0 - 31.5) / 40.0 * depth
    x0, y0, z0 = AXIS_POSITIONS[n]
    x, y, z = (x0 + depth, y0 - right, z0 - down) if n == 0 else (x0 + right, y0 + depth, z0 - down)
    return (x, y, z) if b == 0 else (1.0 - y, x - 2.0, z)


@pytest.mark.parametrize("cell", [(1, 0, 6, 2, 11), (0, 1, 9, 5, 3), (1, 1, 13, 6, 12), (0, 0, 4, 1, 6)])
@pytest.mark.parametrize("mode", ["train", "eval", "reference"])
def test_one_hot_depth_logit_lands_in_known_cell_through_forward(cell, mode):
    """A pixel whose depth net output is one-hot in bin d puts its context in the BEV cell of that
    frustum point, computed in closed form; nothing else in the map moves."""
    b, n, d, h, w = cell
    x, y, _ = axis_camera_point(b, n, d, h, w)
    expected = ((x + 20.0) / 0.5, (y + 20.0) / 0.5)
    assert all(0.05 < c % 1 < 0.95 for c in expected), "the test point must not sit on a cell border"
    vt = build(reference_pool=mode == "reference").train(mode == "train")
    context = torch.tensor([1.0, -2.0, 3.0, 0.5])
    with torch.no_grad():
        vt.depthnet.weight.zero_()
        vt.depthnet.bias.zero_()
        vt.depthnet.weight[d, 0, 0, 0] = 40.0  # feature channel 0 -> depth logit of bin d
        vt.depthnet.weight[20:, 0, 0, 0] = context  # ... and the context
        feats = torch.zeros(2, 2, 6, 8, 16)
        feats[b, n, 0, h, w] = 1.0
        bev, aux = vt(feats, axis_camera_batch())
    assert aux["depth_logits"][b, n, :, h, w].argmax() == d
    assert (bev.abs().sum(1) > 1e-6).nonzero().tolist() == [[b, int(expected[0]), int(expected[1])]]
    torch.testing.assert_close(bev[b, :, int(expected[0]), int(expected[1])], context, atol=1e-5, rtol=1e-5)


def test_depth_lss_reads_each_cameras_own_depth_image():
    """A LiDAR point seen by camera (b, n) alone changes the depth logits of that camera alone."""
    batch = make_batch(batch_size=2, num_cams=2)
    vt = build(DepthLSSTransform).eval()
    feats = torch.randn(2, 2, 6, 8, 16, generator=torch.Generator().manual_seed(4))
    base = [torch.zeros(0, 5), torch.zeros(0, 5)]
    with torch.no_grad():
        _, before = vt(feats, dict(batch, points=base))
        for b, n in [(1, 0), (0, 1)]:
            point, _ = frustum_point(batch, b, n, 5, 3, 9)
            points = [p.clone() for p in base]
            points[b] = torch.tensor([[*point, 0.0, 0.0]], dtype=torch.float32)
            image = points_to_depth_image(points, batch["lidar2image"], batch["img_aug_matrix"], batch["lidar_aug_matrix"], IMAGE)
            assert (image.flatten(2) > 0).any(2).nonzero().tolist() == [[b, n]]
            _, after = vt(feats, dict(batch, points=points))
            changed = (after["depth_logits"] - before["depth_logits"]).abs().flatten(2).amax(2) > 1e-6
            assert changed.nonzero().tolist() == [[b, n]]


def test_depth_image_equals_a_per_point_reference():
    """``points_to_depth_image`` against a float64 loop over points and cameras (undo the LiDAR
    augmentation, project, apply the image augmentation, round, keep the nearest); pixels whose
    reference projection lies within 1e-3 px of a pixel border may round either way in float32."""
    batch = make_batch(batch_size=2, num_cams=2)
    rng = np.random.default_rng(7)
    points = [torch.tensor(np.concatenate([rng.uniform(-15, 15, (400, 2)), rng.uniform(-2, 2, (400, 1)), np.zeros((400, 2))], 1),
                           dtype=torch.float32) for _ in range(2)]
    image = points_to_depth_image(points, batch["lidar2image"], batch["img_aug_matrix"], batch["lidar_aug_matrix"], IMAGE)
    expected = np.zeros(image.shape)
    ambiguous = np.zeros(image.shape, dtype=bool)
    for b in range(2):
        m = {key: batch[key][b].double().numpy() for key in batch}
        for p in points[b].double().numpy():
            raw = np.linalg.solve(m["lidar_aug_matrix"], [*p[:3], 1.0])
            for n in range(2):
                cam = m["lidar2image"][n] @ raw
                if cam[2] <= 1e-3:
                    continue
                u, v = (m["img_aug_matrix"][n] @ [cam[0] / cam[2], cam[1] / cam[2], cam[2], 1.0])[:2]
                col, row = math.floor(u + 0.5), math.floor(v + 0.5)
                if not (0 <= col < IMAGE[1] and 0 <= row < IMAGE[0]):
                    continue
                if min(abs(u + 0.5 - round(u + 0.5)), abs(v + 0.5 - round(v + 0.5))) < 1e-3:
                    ambiguous[b, n, row, col] = True
                if expected[b, n, row, col] == 0 or cam[2] < expected[b, n, row, col]:
                    expected[b, n, row, col] = cam[2]
    assert (expected > 0).sum() > 100  # the points reach both cameras of both samples
    clear = ~ambiguous
    np.testing.assert_allclose(image.numpy()[clear], expected[clear], rtol=1e-5, atol=1e-5)
