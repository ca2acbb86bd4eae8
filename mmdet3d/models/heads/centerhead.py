"""CenterHead: CenterPoint's anchor-free BEV detection head, one heatmap per task of classes.

Input BEV features are laid out ``(B, C, X, Y)`` (index ``[x, y]``) over ``point_cloud_range``;
the cell size is read from the feature map, so no output stride is configured. Each task
predicts a class heatmap and the regression groups of ``common_heads``; the box code is
``CenterPointBoxCoder``'s. Training: Gaussian focal loss on heatmaps, L1 on the box code at
object centres. Test: top-k heatmap peaks, score threshold, post-centre range, circle or
rotated-BEV NMS per task.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mmdet3d.core.bbox.center_point_coder import CODE_SIZES, CenterPointBoxCoder
from mmdet3d.core.gaussian import draw_heatmap_gaussian, gaussian_radius
from mmdet3d.ops.nms import circle_nms, nms_bev

from ..builder import HEADS, LOSSES
from ..layers import conv_bn_relu

__all__ = ["CenterHead", "SeparateHead"]


class SeparateHead(nn.Module):
    """One small conv stack per output: (B, C, X, Y) -> {name: (B, channels, X, Y)}.

    ``heads = {name: (channels, num_conv)}``: ``num_conv - 1`` 3x3 conv-BN-ReLU layers of
    ``head_conv`` width then a 3x3 conv with bias. The ``heatmap`` output starts at
    ``init_bias`` (sigmoid ~ 0.1) as in CenterNet.
    """

    def __init__(self, in_channels: int, heads: dict, head_conv: int = 64, init_bias: float = -2.19):
        super().__init__()
        self.heads = dict(heads)
        self.branches = nn.ModuleDict()
        for name, (channels, num_conv) in self.heads.items():
            layers, width = [], in_channels
            for _ in range(num_conv - 1):
                layers.append(conv_bn_relu(width, head_conv, 3))
                width = head_conv
            layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=True))
            self.branches[name] = nn.Sequential(*layers)
        if "heatmap" in self.branches:
            nn.init.constant_(self.branches["heatmap"][-1].bias, init_bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: branch(x) for name, branch in self.branches.items()}


@HEADS.register_module()
class CenterHead(nn.Module):
    """(B, C_in, X, Y) -> per task ``{heatmap: (B, n_cls, X, Y), reg, height, dim, rot[, vel]}``.

    ``tasks``: list of ``dict(class_names=[...])``; a ground-truth label is the index of its
    class in ``object_classes`` and reaches the task naming that class (labels of classes in
    no task, or ``-1``, are ignored). Predicted labels are indices in ``object_classes``.

    Test: ``nms_type="circle"`` drops a centre within ``nms_radius[task]`` *squared* metres of a
    higher-scoring one (CenterPoint's ``min_radius``, e.g. 4 for cars, 0.175 for pedestrians);
    ``"rotate"`` drops boxes whose rotated BEV IoU with a kept one exceeds ``nms_iou_threshold``.
    """

    def __init__(
        self,
        in_channels: int,
        tasks: Sequence[dict],
        object_classes: Sequence[str],
        point_cloud_range: Sequence[float],
        common_heads: dict | None = None,
        share_conv_channel: int = 64,
        head_conv: int = 64,
        num_heatmap_convs: int = 2,
        loss_cls: dict | None = None,
        loss_bbox: dict | None = None,
        code_weights: Sequence[float] | None = None,
        gaussian_overlap: float = 0.1,
        min_radius: int = 2,
        score_threshold: float = 0.1,
        post_center_range: Sequence[float] | None = None,
        max_num: int = 500,
        nms_type: str | None = "circle",
        nms_radius: Sequence[float] | float = 1.0,
        nms_iou_threshold: float = 0.2,
        pre_max_size: int = 1000,
        post_max_size: int = 83,
    ):
        super().__init__()
        common_heads = dict(common_heads or {"reg": (2, 2), "height": (1, 2), "dim": (3, 2), "rot": (2, 2), "vel": (2, 2)})
        self.coder = CenterPointBoxCoder(point_cloud_range, code_names=list(common_heads))
        wrong = {n: c for n, (c, _) in common_heads.items() if c != CODE_SIZES[n]}
        if wrong:
            raise ValueError(f"CenterHead common_heads widths {wrong} differ from the box code {CODE_SIZES}")
        self.in_channels = in_channels
        self.object_classes = list(object_classes)
        self.task_classes = [list(t["class_names"]) for t in tasks]
        unknown = [c for names in self.task_classes for c in names if c not in self.object_classes]
        if unknown:
            raise ValueError(f"CenterHead task classes {unknown} are not in object_classes {self.object_classes}")
        # (num_object_classes,) -> task index / class index within the task (-1: no task).
        label_task = torch.full((len(self.object_classes),), -1, dtype=torch.long)
        label_in_task = torch.full((len(self.object_classes),), -1, dtype=torch.long)
        for t, names in enumerate(self.task_classes):
            for k, name in enumerate(names):
                label_task[self.object_classes.index(name)] = t
                label_in_task[self.object_classes.index(name)] = k
        self.register_buffer("label_task", label_task, persistent=False)
        self.register_buffer("label_in_task", label_in_task, persistent=False)

        self.shared_conv = conv_bn_relu(in_channels, share_conv_channel, 3)
        self.task_heads = nn.ModuleList(
            SeparateHead(share_conv_channel, {**common_heads, "heatmap": (len(names), num_heatmap_convs)}, head_conv)
            for names in self.task_classes
        )
        self.loss_cls = LOSSES.build(loss_cls or dict(type="GaussianFocalLoss", reduction="mean"))
        self.loss_bbox = LOSSES.build(loss_bbox or dict(type="L1Loss", reduction="mean", loss_weight=0.25))
        code_weights = list(code_weights) if code_weights is not None else [1.0] * self.coder.code_size
        if len(code_weights) != self.coder.code_size:
            raise ValueError(f"CenterHead: {len(code_weights)} code_weights for a box code of size {self.coder.code_size}")
        self.register_buffer("code_weights", torch.tensor(code_weights, dtype=torch.float32), persistent=False)
        self.gaussian_overlap, self.min_radius = gaussian_overlap, min_radius
        self.score_threshold, self.max_num = score_threshold, max_num
        self.post_center_range = list(post_center_range) if post_center_range is not None else None
        if nms_type not in (None, "circle", "rotate"):
            raise ValueError(f"CenterHead nms_type must be 'circle', 'rotate' or null, got {nms_type!r}")
        self.nms_type = nms_type
        radii = list(nms_radius) if isinstance(nms_radius, (list, tuple)) else [nms_radius] * len(self.task_classes)
        if len(radii) != len(self.task_classes):
            raise ValueError(f"CenterHead: {len(radii)} nms_radius values for {len(self.task_classes)} tasks")
        self.nms_radius = radii
        self.nms_iou_threshold = nms_iou_threshold
        self.pre_max_size, self.post_max_size = pre_max_size, post_max_size

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        x = self.shared_conv(x)
        return [head(x) for head in self.task_heads]

    # ----------------------------------------------------------------------------------- targets
    def get_targets_single(self, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, grid_size: Sequence[int]):
        """One sample -> per task ``(heatmap (n_cls, X, Y), cells (M_t, 2), codes (M_t, code_size))``.

        Boxes whose centre falls outside the grid, or whose class is in no task, are dropped.
        The Gaussian radius is ``max(min_radius, gaussian_radius((dy, dx) in cells, overlap))``.
        """
        num_x, num_y = grid_size
        device = gt_boxes.device
        gt_labels = gt_labels.long()
        known = (gt_labels >= 0) & (gt_labels < len(self.object_classes))
        gt_boxes, gt_labels = gt_boxes[known], gt_labels[known]
        cells, codes = self.coder.encode(gt_boxes.float(), grid_size)
        inside = (cells[:, 0] >= 0) & (cells[:, 0] < num_x) & (cells[:, 1] >= 0) & (cells[:, 1] < num_y)
        cell_x, cell_y = self.coder.cell_size(grid_size)
        targets = []
        for t, names in enumerate(self.task_classes):
            keep = inside & (self.label_task[gt_labels] == t)
            heatmap = torch.zeros(len(names), num_x, num_y, device=device)
            for box, cell, k in zip(gt_boxes[keep].tolist(), cells[keep].tolist(), self.label_in_task[gt_labels[keep]].tolist()):
                radius = gaussian_radius((box[4] / cell_y, box[3] / cell_x), self.gaussian_overlap)
                # heatmap[k] is (X, Y); its transpose is the (row=y, col=x) image the drawer expects.
                draw_heatmap_gaussian(heatmap[k].T, (cell[0], cell[1]), max(self.min_radius, int(radius)))
            targets.append((heatmap, cells[keep], codes[keep]))
        return targets

    def loss(self, gt_bboxes_3d: Sequence[torch.Tensor], gt_labels_3d: Sequence[torch.Tensor],
             preds: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Per task ``heatmap_task{t}`` (Gaussian focal, averaged over centres) and
        ``bbox_task{t}`` (code-weighted L1 summed over the code, averaged over objects)."""
        grid_size = tuple(preds[0]["heatmap"].shape[-2:])
        per_sample = [self.get_targets_single(b, l, grid_size) for b, l in zip(gt_bboxes_3d, gt_labels_3d)]
        losses = {}
        for t, pred in enumerate(preds):
            heatmap = torch.stack([s[t][0] for s in per_sample])
            probs = pred["heatmap"].float().sigmoid().clamp(1e-4, 1 - 1e-4)
            num_pos = float(heatmap.eq(1).sum())
            losses[f"heatmap_task{t}"] = self.loss_cls(probs, heatmap, avg_factor=max(num_pos, 1.0))

            batch_idx = torch.cat([torch.full((len(s[t][1]),), i, dtype=torch.long) for i, s in enumerate(per_sample)])
            cells = torch.cat([s[t][1] for s in per_sample]).to(heatmap.device)
            codes = torch.cat([s[t][2] for s in per_sample])
            regression = torch.cat([pred[n] for n in self.coder.code_names], dim=1).float()
            # (B, code, X, Y) gathered at each object's centre cell -> (M, code)
            predicted = regression[batch_idx.to(heatmap.device), :, cells[:, 0], cells[:, 1]]
            weight = self.code_weights.expand_as(codes)
            losses[f"bbox_task{t}"] = self.loss_bbox(predicted, codes, weight, avg_factor=len(codes) + 1e-4)
        return losses

    # ----------------------------------------------------------------------------------- decoding
    def get_bboxes(self, preds: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Per sample ``{boxes_3d: (K, 9), scores_3d: (K,), labels_3d: (K,)}`` over all tasks."""
        batch_size = preds[0]["heatmap"].shape[0]
        results = [[] for _ in range(batch_size)]
        for t, pred in enumerate(preds):
            for i, detections in enumerate(self.decode_task(pred, t)):
                results[i].append(detections)
        return [
            {key: torch.cat([d[key] for d in sample]) for key in ("boxes_3d", "scores_3d", "labels_3d")}
            for sample in results
        ]

    def decode_task(self, pred: dict[str, torch.Tensor], task: int) -> list[dict[str, torch.Tensor]]:
        heat = pred["heatmap"].float().sigmoid()
        batch_size, num_cls, num_x, num_y = heat.shape
        regression = torch.cat([pred[n] for n in self.coder.code_names], dim=1).float()
        k = min(self.max_num, num_cls * num_x * num_y)
        # (B, n_cls, X, Y) -> (B, n_cls * X * Y): flat index = (cls * X + x) * Y + y
        scores, flat = heat.reshape(batch_size, -1).topk(k, dim=1)
        classes, cell_flat = flat // (num_x * num_y), flat % (num_x * num_y)
        cells = torch.stack([cell_flat // num_y, cell_flat % num_y], dim=-1)
        task_labels = torch.tensor([self.object_classes.index(n) for n in self.task_classes[task]], device=heat.device)
        outputs = []
        for i in range(batch_size):
            codes = regression[i, :, cells[i, :, 0], cells[i, :, 1]].T  # (code, k) -> (k, code)
            boxes = self.coder.decode(codes, cells[i], (num_x, num_y))
            keep = scores[i] > self.score_threshold
            if self.post_center_range is not None:
                lo = boxes.new_tensor(self.post_center_range[:3])
                hi = boxes.new_tensor(self.post_center_range[3:])
                keep &= ((boxes[:, :3] >= lo) & (boxes[:, :3] <= hi)).all(dim=1)
            boxes, task_scores, labels = boxes[keep], scores[i][keep], task_labels[classes[i][keep]]
            order = self.nms(boxes, task_scores, task)
            outputs.append({"boxes_3d": boxes[order], "scores_3d": task_scores[order], "labels_3d": labels[order]})
        return outputs

    def nms(self, boxes: torch.Tensor, scores: torch.Tensor, task: int) -> torch.Tensor:
        """Indices of the kept boxes, highest score first (at most ``post_max_size``)."""
        order = scores.argsort(descending=True)[: self.pre_max_size]
        if self.nms_type is None or len(order) == 0:
            return order[: self.post_max_size]
        if self.nms_type == "circle":
            keep = circle_nms(boxes[order, :2], scores[order], self.nms_radius[task])
        else:
            keep = nms_bev(boxes[order, :7], scores[order], self.nms_iou_threshold)
        return order[keep][: self.post_max_size]
