"""BEVFusion: camera and LiDAR encoders to BEV, a fuser, a BEV decoder and detection heads.

Composed exactly as the config says; a modality set to ``null`` removes its branch and the
fuser may be ``null`` when one modality is left. Channel counts flow downstream: the camera
neck reads the backbone's ``out_channels``, the view transform the neck's, the fuser the
encoders', the decoder the fuser's, the head the decoder neck's.
"""
from __future__ import annotations

import torch
from torch import nn

from ..builder import BACKBONES, FUSERS, FUSION_MODELS, HEADS, LIDAR_BACKBONES, LOSSES, NECKS, VOXELIZERS, VTRANSFORMS

__all__ = ["BEVFusion", "build_camera_encoder", "invert_lidar_augmentation"]

SUPPORTED_HEADS = ("object",)


def build_camera_encoder(camera: dict) -> nn.ModuleDict:
    """``{backbone, neck, vtransform}`` configs -> the camera encoder; widths flow backbone -> neck -> lift."""
    backbone = BACKBONES.build(camera["backbone"])
    neck = NECKS.build(camera["neck"], in_channels=backbone.out_channels)
    vtransform = VTRANSFORMS.build(camera["vtransform"], in_channels=neck.out_channels)
    return nn.ModuleDict({"backbone": backbone, "neck": neck, "vtransform": vtransform})


def invert_lidar_augmentation(boxes: torch.Tensor, lidar_aug_matrix: torch.Tensor) -> torch.Tensor:
    """(K, 9) boxes in the augmented LiDAR frame -> the original frame, given the (4, 4) matrix.

    ``point' = A @ point + t`` (rotation, uniform scale, flips): centres and velocities go
    through ``A^-1``, sizes are divided by the scale, the yaw follows the heading vector.
    """
    linear, translation = lidar_aug_matrix[:3, :3].to(boxes.dtype), lidar_aug_matrix[:3, 3].to(boxes.dtype)
    inverse = torch.linalg.inv(linear)
    scale = linear.det().abs().pow(1.0 / 3.0)
    centres = (boxes[:, :3] - translation) @ inverse.T
    heading = torch.stack([boxes[:, 6].cos(), boxes[:, 6].sin(), torch.zeros_like(boxes[:, 6])], dim=1) @ inverse.T
    velocity = torch.cat([boxes[:, 7:9], torch.zeros_like(boxes[:, :1])], dim=1) @ inverse.T
    yaw = torch.atan2(heading[:, 1], heading[:, 0])
    return torch.cat([centres, boxes[:, 3:6] / scale, yaw[:, None], velocity[:, :2]], dim=1)


@FUSION_MODELS.register_module()
class BEVFusion(nn.Module):
    """``model(batch)``: training -> ``{"loss/object/<name>": scalar}``; eval -> per sample
    ``{"boxes_3d": (K, 9), "scores_3d": (K,), "labels_3d": (K,)}`` in the LiDAR frame.

    encoders: ``{camera: {backbone, neck, vtransform} | null, lidar: {voxelize, backbone} | null}``
    fuser: a FUSERS config or null; decoder: ``{backbone, neck}``; heads: ``{object: CenterHead}``;
    depth_loss: optional ``DenseDepthLoss`` config supervising the camera depth logits with
    ``batch["depth_map"]`` (the ``DepthTargets`` pipeline step), reported as ``loss/depth/dense``.
    """

    def __init__(self, encoders: dict, fuser: dict | None, decoder: dict, heads: dict, depth_loss: dict | None = None):
        super().__init__()
        self.encoders = nn.ModuleDict()
        bev_channels = []
        camera = (encoders or {}).get("camera")
        if camera is not None:
            self.encoders["camera"] = build_camera_encoder(camera)
            bev_channels.append(self.encoders["camera"]["vtransform"].out_channels)
        lidar = (encoders or {}).get("lidar")
        if lidar is not None:
            voxelize = VOXELIZERS.build(lidar["voxelize"])
            backbone = LIDAR_BACKBONES.build(lidar["backbone"], in_channels=voxelize.out_channels)
            self.encoders["lidar"] = nn.ModuleDict({"voxelize": voxelize, "backbone": backbone})
            bev_channels.append(backbone.out_channels)
        unknown = sorted(set(encoders or {}) - {"camera", "lidar"})
        if unknown or not self.encoders:
            raise ValueError(f"BEVFusion needs encoders.camera and/or encoders.lidar; got {sorted(encoders or {})}")

        if fuser is None:
            if len(bev_channels) != 1:
                raise ValueError(f"BEVFusion: {len(bev_channels)} encoders ({list(self.encoders)}) need a fuser, got null")
            self.fuser, fused_channels = None, bev_channels[0]
        else:
            self.fuser = FUSERS.build(fuser, in_channels=bev_channels)
            fused_channels = self.fuser.out_channels

        self.build_decoder_and_heads(fused_channels, decoder, heads, depth_loss)
        self.feature_channels = {
            "camera_bev": bev_channels[0] if camera is not None else None,
            "lidar_bev": bev_channels[-1] if lidar is not None else None,
            "fused_bev": fused_channels,
            "decoder_out": self.decoder["neck"].out_channels,
        }

    def build_decoder_and_heads(self, fused_channels: int, decoder: dict, heads: dict, depth_loss: dict | None) -> None:
        """The stack after the fuser: ``decoder`` (backbone, neck), ``heads`` and the optional depth loss."""
        self.decoder = nn.ModuleDict()
        self.decoder["backbone"] = BACKBONES.build(decoder["backbone"], in_channels=fused_channels)
        self.decoder["neck"] = NECKS.build(decoder["neck"], in_channels=self.decoder["backbone"].out_channels)

        unsupported = sorted(k for k, v in heads.items() if v is not None and k not in SUPPORTED_HEADS)
        if unsupported:
            raise ValueError(f"BEVFusion supports heads {list(SUPPORTED_HEADS)}, got {unsupported}")
        self.heads = nn.ModuleDict(
            {name: HEADS.build(cfg, in_channels=self.decoder["neck"].out_channels) for name, cfg in heads.items() if cfg is not None}
        )
        self.depth_loss = None
        if depth_loss is not None:
            if "camera" not in self.encoders:
                raise ValueError("BEVFusion: depth_loss needs encoders.camera")
            self.depth_loss = LOSSES.build(depth_loss, dbound=self.encoders["camera"]["vtransform"].dbound)

    @property
    def reads_points(self) -> bool:
        """Whether any branch reads ``batch["points"]`` (a LiDAR encoder or a LiDAR-depth lift)."""
        camera = self.encoders["camera"] if "camera" in self.encoders else None
        return "lidar" in self.encoders or bool(camera is not None and getattr(camera["vtransform"], "reads_points", False))

    # ----------------------------------------------------------------------------------- encoders
    def extract_image_features(self, batch: dict) -> torch.Tensor:
        """batch["img"] (B, N, 3, H, W) -> camera neck features (B, N, C, fH, fW)."""
        camera = self.encoders["camera"]
        img = batch["img"]
        batch_size, num_cams = img.shape[:2]
        feats = camera["backbone"](img.flatten(0, 1))  # (B, N, 3, H, W) -> (B*N, 3, H, W)
        feats = camera["neck"](feats)
        feats = feats[0] if isinstance(feats, (list, tuple)) else feats
        return feats.view(batch_size, num_cams, *feats.shape[1:])  # (B*N, C, fH, fW) -> (B, N, C, fH, fW)

    def extract_camera_features(self, batch: dict, feats: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """batch["img"] (B, N, 3, H, W) (or its neck features ``feats``) -> camera BEV (B, C_cam, X, Y),
        depth logits (B, N, D, fH, fW)."""
        feats = self.extract_image_features(batch) if feats is None else feats
        bev, extras = self.encoders["camera"]["vtransform"](feats, batch)
        return bev, extras.get("depth_logits")

    @torch.no_grad()
    def voxelize(self, points: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B point clouds (P_i, C) -> voxels (V, M, C), num_points (V,), coords (V, 4) ``(b, x, y, z)``.

        A dynamic voxelizer gives points (P, C), None and per-point coords (P, 4) instead.
        """
        voxels, coords, num_points = self.encoders["lidar"]["voxelize"](points)
        # The voxelizer numbers cells (b, z, y, x) as mmcv; the BEV maps are laid out (x, y).
        return voxels, num_points, coords[:, [0, 3, 2, 1]].long()

    def extract_lidar_features(self, batch: dict) -> torch.Tensor:
        """batch["points"] list of B (P_i, C) -> LiDAR BEV (B, C_lidar, X, Y)."""
        voxels, num_points, coords = self.voxelize(batch["points"])
        return self.encoders["lidar"]["backbone"](voxels, num_points, coords, len(batch["points"]))

    def extract_features(self, batch: dict) -> dict[str, torch.Tensor | None]:
        """All intermediate maps, for heads and distillers.

        ``camera_bev`` (B, C_cam, X, Y) | None, ``lidar_bev`` (B, C_lidar, X, Y) | None,
        ``depth_logits`` (B, N, D, fH, fW) | None, ``fused_bev`` (B, C_fused, X, Y) (the single
        encoder's BEV without a fuser), ``decoder_out`` (B, C_dec, X', Y') (the head input).
        """
        features: dict[str, torch.Tensor | None] = {"camera_bev": None, "lidar_bev": None, "depth_logits": None}
        bevs = []
        if "camera" in self.encoders:
            features["camera_bev"], features["depth_logits"] = self.extract_camera_features(batch)
            bevs.append(features["camera_bev"])
        if "lidar" in self.encoders:
            features["lidar_bev"] = self.extract_lidar_features(batch)
            bevs.append(features["lidar_bev"])
        if len({tuple(b.shape[-2:]) for b in bevs}) != 1:
            raise ValueError(
                f"BEVFusion: encoder BEV grids differ: {dict(zip(self.encoders, [tuple(b.shape[-2:]) for b in bevs]))}; "
                "match the view transform's xbound/ybound/downsample with the LiDAR voxel grid"
            )
        features["fused_bev"] = bevs[0] if self.fuser is None else self.fuser(bevs)
        features["decoder_out"] = self.decoder["neck"](self.decoder["backbone"](features["fused_bev"]))
        return features

    # ----------------------------------------------------------------------------------- forward
    def forward_features(self, batch: dict) -> tuple[dict, dict]:
        """-> (``extract_features`` maps, head outputs ``{name: per-task dicts}``)."""
        features = self.extract_features(batch)
        preds = {name: head(features["decoder_out"]) for name, head in self.heads.items()}
        return features, preds

    def forward(self, batch: dict):
        features, preds = self.forward_features(batch)
        if self.training:
            return self.loss(batch, preds, features)
        return self.predict(batch, preds)

    def loss(self, batch: dict, preds: dict, features: dict | None = None) -> dict[str, torch.Tensor]:
        losses = {}
        for name, head in self.heads.items():
            for key, value in head.loss(batch["gt_bboxes_3d"], batch["gt_labels_3d"], preds[name]).items():
                losses[f"loss/{name}/{key}"] = value
        if self.depth_loss is not None:
            if "depth_map" not in batch:
                raise KeyError("BEVFusion depth_loss needs batch['depth_map']: add a DepthTargets step to the train pipeline")
            losses["loss/depth/dense"] = self.depth_loss(features["depth_logits"], batch["depth_map"])
        return losses

    def predict(self, batch: dict, preds: dict) -> list[dict[str, torch.Tensor]]:
        results = self.heads["object"].get_bboxes(preds["object"])
        aug = batch.get("lidar_aug_matrix")
        if aug is not None:
            for b, result in enumerate(results):
                if not torch.equal(aug[b], torch.eye(4, dtype=aug.dtype, device=aug.device)):
                    result["boxes_3d"] = invert_lidar_augmentation(result["boxes_3d"], aug[b])
        return results
