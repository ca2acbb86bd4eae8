"""The README's worked example of a distillation loss runs as printed."""
from __future__ import annotations

import os
import re

import torch

from model_inputs import make_batch, tiny_model_cfg
from tool_runner import REPO, isolated_registries

IMAGE, EXTENT = (32, 48), 8.0


def _example_code() -> str:
    text = open(os.path.join(REPO, "README.md")).read()
    section = text[text.index("### Adding a distillation loss"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_distillation_loss_example_trains_and_masks_to_the_boxes():
    from mmdet3d.models import build_model

    with isolated_registries():
        exec(compile(_example_code(), "README.md", "exec"), {})
        torch.manual_seed(0)
        student = tiny_model_cfg(image_size=IMAGE, extent=EXTENT, lidar=False, fuser=None)
        model = build_model(dict(type="BEVDistiller", teacher=tiny_model_cfg(image_size=IMAGE, extent=EXTENT),
                                 student=student, teacher_checkpoint=None,
                                 distill_losses=[dict(type="BoxFeatureMimic", weight=2.0)])).train()
        batch = make_batch(batch_size=2, num_cams=2, image_size=IMAGE, num_boxes=(3, 1), extent=EXTENT, num_points=2000)
        losses = model(batch)
        value = losses["loss/distill/box_mimic"]
        assert torch.isfinite(value) and value > 0
        value.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.encoders["camera"].parameters())
        # The loss reads only the cells inside boxes: no boxes, no loss.
        empty = dict(batch, gt_bboxes_3d=[b[:0] for b in batch["gt_bboxes_3d"]], gt_labels_3d=[lab[:0] for lab in batch["gt_labels_3d"]])
        loss = model.distill_losses[0]
        with torch.no_grad():
            from mmdet3d.models.distillers import named_tensors
            s = named_tensors(*model.student.forward_features(batch))
            t = named_tensors(model.teacher.extract_features(batch), None)
            assert loss(s, t, empty, model.context) == 0
            assert loss(s, s, batch, model.context) == 0
