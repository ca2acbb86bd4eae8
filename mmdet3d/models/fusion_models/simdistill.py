"""SimDistill's simulated multi-modal student (DESIGN.md 5.5): camera-only, BEVFusion-shaped.

One image backbone and neck feed two separate lifts (two view transforms, each with its own depth
net): ``L2`` is the camera branch (``camera_bev``, distilled from the teacher's camera BEV) and
``L1`` the simulated-LiDAR branch, refined by the geometry compensation module ``L1' = L1 +
GCM(L1)`` (``sim_camera_bev``) and mapped by ``T`` (a one-input ConvFuser to the teacher's LiDAR
width) to the simulated LiDAR BEV ``S`` (``lidar_bev``, distilled from the teacher's LiDAR BEV).
The student fuser takes ``[L1', L2]`` (``fused_bev``); decoder and head have the teacher's shape.
Neither lift reads LiDAR (the release's student lifts with projected LiDAR depth at test time).
"""
from __future__ import annotations

import torch
from torch import nn

from ..builder import BEV_LAYERS, FUSERS, FUSION_MODELS, VTRANSFORMS
from .bevfusion import BEVFusion, build_camera_encoder

__all__ = ["SimDistillStudent"]


@FUSION_MODELS.register_module()
class SimDistillStudent(BEVFusion):
    """``model(batch)`` as ``BEVFusion``; the named maps add ``sim_camera_bev`` (L1') and
    ``sim_depth_logits`` (L1's depth logits), and ``lidar_bev`` is the simulated LiDAR BEV ``S``.

    encoders: ``camera: {backbone, neck, vtransform}`` (the camera lift L2) and
    ``sim_lidar: {vtransform, compensation, adapter}``: the second lift L1 on the same neck
    features, a ``BEV_LAYERS`` config (``DeformableBEVAttention`` or ``ModulatedDeformConvBEV``)
    and the ConvFuser ``T`` whose ``out_channels`` is the teacher's LiDAR BEV width.
    fuser: over ``[L1', L2]``. depth_loss: the dense depth loss of both lifts, summed into
    ``loss/depth/dense``. ``S`` feeds only the distillation losses (``distill_only_parameters``).
    """

    distill_only_parameters = ("encoders.sim_lidar.adapter.",)

    def __init__(self, encoders: dict, fuser: dict, decoder: dict, heads: dict, depth_loss: dict | None = None):
        nn.Module.__init__(self)
        encoders = dict(encoders or {})
        camera, sim = encoders.get("camera"), encoders.get("sim_lidar")
        others = sorted(k for k, v in encoders.items() if v is not None and k not in ("camera", "sim_lidar"))
        if camera is None or sim is None or others:
            raise ValueError("SimDistillStudent needs encoders.camera and encoders.sim_lidar and no other encoder "
                             f"(a camera-only student); got {sorted(k for k, v in encoders.items() if v is not None)}")
        if fuser is None:
            raise ValueError("SimDistillStudent needs a fuser over [sim_camera_bev, camera_bev]")
        self.encoders = nn.ModuleDict({"camera": build_camera_encoder(camera)})
        neck_channels = self.encoders["camera"]["neck"].out_channels
        camera_lift = self.encoders["camera"]["vtransform"]
        lift = VTRANSFORMS.build(sim["vtransform"], in_channels=neck_channels)
        if lift.bev_size != camera_lift.bev_size:
            raise ValueError(f"SimDistillStudent: the two lifts give BEV grids {lift.bev_size} and {camera_lift.bev_size}")
        compensation = BEV_LAYERS.build(sim["compensation"], in_channels=lift.out_channels, bev_size=lift.bev_size)
        adapter = FUSERS.build(sim["adapter"], in_channels=[lift.out_channels])
        self.encoders["sim_lidar"] = nn.ModuleDict({"vtransform": lift, "compensation": compensation, "adapter": adapter})
        self.fuser = FUSERS.build(fuser, in_channels=[lift.out_channels, camera_lift.out_channels])
        self.build_decoder_and_heads(self.fuser.out_channels, decoder, heads, depth_loss)
        self.feature_channels = {
            "camera_bev": camera_lift.out_channels,
            "lidar_bev": adapter.out_channels,
            "sim_camera_bev": lift.out_channels,
            "fused_bev": self.fuser.out_channels,
            "decoder_out": self.decoder["neck"].out_channels,
        }

    @property
    def reads_points(self) -> bool:
        lifts = (self.encoders["camera"]["vtransform"], self.encoders["sim_lidar"]["vtransform"])
        return any(getattr(lift, "reads_points", False) for lift in lifts)

    def extract_features(self, batch: dict) -> dict[str, torch.Tensor]:
        """``camera_bev`` L2, ``sim_camera_bev`` L1', ``lidar_bev`` S (B, C, X, Y); ``depth_logits`` /
        ``sim_depth_logits`` (B, N, D, fH, fW) of L2 / L1; ``fused_bev``; ``decoder_out``."""
        feats = self.extract_image_features(batch)
        camera_bev, depth_logits = self.extract_camera_features(batch, feats)
        sim = self.encoders["sim_lidar"]
        sim_bev, extras = sim["vtransform"](feats, batch)
        sim_bev = sim["compensation"](sim_bev)  # L1' = L1 + GCM(L1)
        fused = self.fuser([sim_bev, camera_bev])
        return {
            "camera_bev": camera_bev,
            "lidar_bev": sim["adapter"]([sim_bev]),
            "sim_camera_bev": sim_bev,
            "depth_logits": depth_logits,
            "sim_depth_logits": extras.get("depth_logits"),
            "fused_bev": fused,
            "decoder_out": self.decoder["neck"](self.decoder["backbone"](fused)),
        }

    def loss(self, batch: dict, preds: dict, features: dict | None = None) -> dict[str, torch.Tensor]:
        losses = super().loss(batch, preds, features)
        if self.depth_loss is not None:
            losses["loss/depth/dense"] = losses["loss/depth/dense"] + self.depth_loss(features["sim_depth_logits"],
                                                                                    batch["depth_map"])
        return losses
