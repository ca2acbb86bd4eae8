"""Where a trained model's velocity error (mAVE) comes from, on the val split of its dataset.

    python benchmarks/velocity_errors.py RUN_DIR [--root data/benchmark] [--score 0.3] [--sweeps]

Reads ``RUN_DIR/eval_epoch_*/results_nusc.json`` (the last one), matches its detections above
``--score`` to the val ground truth of the same class within 2 m (highest score first, as the
devkit's TP matching does, in the global frame) and prints, per class with moving ground truth
(> 1 m/s): GT and predicted speed, the share of velocities pointing backwards (cosine < -0.5), of
headings off by more than 2.5 rad, and of both at once; and the predicted speed of static boxes.
``--sweeps`` also checks the data: for moving GT boxes, the sweep points inside the box moved back
by ``velocity * lag`` against those inside the unmoved box (more in the moved one: the sweeps
carry the annotated motion).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmdet3d.datasets.synthetic.rig import quaternion_to_yaw  # noqa: E402

STATIC_CLASSES = ("barrier", "traffic_cone")  # the devkit gives them no velocity


def matched_pairs(results: dict, ground_truth: dict, score: float) -> dict[str, list[tuple]]:
    """class -> [(gt speed, predicted speed, |v_gt - v_pred|, cosine, heading error)]."""
    pairs = defaultdict(list)
    for token, gts in ground_truth.items():
        used = set()
        for det in sorted(results.get(token, []), key=lambda d: -d["detection_score"]):
            if det["detection_score"] < score:
                continue
            best, best_dist = None, 2.0
            for i, gt in enumerate(gts):
                if i in used or gt["name"] != det["detection_name"]:
                    continue
                dist = float(np.hypot(*(np.asarray(gt["translation"][:2]) - det["translation"][:2])))
                if dist < best_dist:
                    best, best_dist = i, dist
            if best is None:
                continue
            used.add(best)
            gt = gts[best]
            v_gt, v_pred = np.asarray(gt["velocity"]), np.asarray(det["velocity"])
            if np.isnan(v_gt).any():
                continue
            speed, pred_speed = float(np.linalg.norm(v_gt)), float(np.linalg.norm(v_pred))
            cosine = float(v_gt @ v_pred / (speed * pred_speed + 1e-9))
            heading = abs((quaternion_to_yaw(det["rotation"]) - quaternion_to_yaw(gt["rotation"]) + np.pi) % (2 * np.pi) - np.pi)
            pairs[gt["name"]].append((speed, pred_speed, float(np.linalg.norm(v_gt - v_pred)), cosine, heading))
    return pairs


def load_val_ground_truth(root: str) -> dict[str, list[dict]]:
    """sample token -> GT boxes (devkit detection names, global frame, devkit velocities)."""
    from nuscenes import NuScenes
    from nuscenes.eval.common.loaders import load_gt
    from nuscenes.eval.detection.data_classes import DetectionBox

    nusc = NuScenes(version="v1.0-trainval", dataroot=root, verbose=False)
    boxes = load_gt(nusc, "val", DetectionBox, verbose=False)
    return {token: [dict(name=b.detection_name, translation=list(b.translation), rotation=list(b.rotation),
                         velocity=list(b.velocity)) for b in boxes[token]] for token in boxes.sample_tokens}


def sweep_check(root: str, every: int = 6) -> dict[str, tuple[float, float]]:
    """class -> mean sweep points per (moving box, lag) inside the moved / the unmoved box (each box
    padded by 0.2 m on x/y and 0.3 m on z, so that a point on its surface counts)."""
    import torch

    from mmdet3d.apis.runner import build_dataset_from_config
    from mmdet3d.core.bbox.structures import count_points_in_boxes
    from mmdet3d.utils.config import load_config

    cfg = load_config(str(ROOT / "configs/synthetic/det/centerhead/second/camera+lidar/convfuser.yaml"),
                      ["--dataset_root", root.rstrip("/") + "/"])
    dataset = build_dataset_from_config(cfg, "val")
    names = cfg["object_classes"]
    counts = defaultdict(list)
    for index in range(0, len(dataset), every):
        sample = dataset[index]
        points = torch.as_tensor(sample["points"])
        boxes = sample["gt_bboxes_3d"]
        boxes = (boxes.tensor if hasattr(boxes, "tensor") else torch.as_tensor(boxes))[:, :9].clone()
        labels = torch.as_tensor(sample["gt_labels_3d"])
        moving = boxes[:, 7:9].norm(dim=1) > 2.0
        boxes, labels = boxes[moving], labels[moving].tolist()
        if not len(boxes):
            continue
        boxes[:, 3:6] += boxes.new_tensor([0.4, 0.4, 0.6])
        for lag in points[:, 4].unique().tolist():
            if lag == 0:
                continue
            moved = boxes.clone()
            moved[:, :2] -= boxes[:, 7:9] * lag
            at_lag = points[(points[:, 4] - lag).abs() < 1e-3]
            inside = count_points_in_boxes(at_lag, torch.cat([moved, boxes])).view(2, -1).t().tolist()
            for label, pair in zip(labels, inside):
                counts[names[label]].append(pair)
    return {name: tuple(np.mean(v, axis=0)) for name, v in counts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--root", default="data/benchmark")
    parser.add_argument("--score", type=float, default=0.3)
    parser.add_argument("--sweeps", action="store_true", help="also check that the sweep points follow the GT velocity")
    args = parser.parse_args()
    evals = sorted(Path(args.run_dir).glob("eval_epoch_*/results_nusc.json"), key=lambda p: int(p.parent.name.split("_")[-1]))
    if not evals:
        raise SystemExit(f"velocity_errors.py: no eval_epoch_*/results_nusc.json under {args.run_dir}")
    results = json.loads(evals[-1].read_text())["results"]
    pairs = matched_pairs(results, load_val_ground_truth(args.root), args.score)
    print(f"{evals[-1]}: detections of score > {args.score} matched within 2 m\n")
    print("| class | matched | AVE | moving GT (> 1 m/s) | GT speed | predicted speed | backwards (cos < -0.5) "
          "| heading off > 2.5 rad | both | static GT: predicted speed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in sorted(pairs.items()):
        if name in STATIC_CLASSES:
            continue
        v = np.asarray(rows)
        moving = v[:, 0] > 1.0
        m = v[moving]
        share = (lambda mask: f"{mask.mean():.0%}") if moving.any() else (lambda mask: "-")
        static = f"{v[~moving, 1].mean():.2f}" if (~moving).any() else "-"
        print(f"| {name} | {len(v)} | {v[:, 2].mean():.2f} | {moving.sum()} | {m[:, 0].mean() if moving.any() else 0:.2f} | "
              f"{m[:, 1].mean() if moving.any() else 0:.2f} | {share(m[:, 3] < -0.5)} | {share(m[:, 4] > 2.5)} | "
              f"{share((m[:, 3] < -0.5) & (m[:, 4] > 2.5))} | {static} |")
    if args.sweeps:
        print("\n| class | sweep points in the box moved back by v * lag | in the unmoved box |\n|---|---|---|")
        for name, (moved, unmoved) in sorted(sweep_check(args.root).items()):
            print(f"| {name} | {moved:.1f} | {unmoved:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
