"""Predictions in the LiDAR frame -> nuScenes result json -> the devkit's ``DetectionEval``.

A prediction is ``{"boxes_3d": (K, 9), "scores_3d": (K,), "labels_3d": (K,)}`` with gravity-centre
boxes ``(x, y, z, l, w, h, yaw, vx, vy)`` in the keyframe LiDAR frame (docs/data_format.md); an
optional ``"attrs_3d"`` (K,) of attribute names replaces the speed rule of ``default_attribute``.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Mapping, Sequence

import numpy as np
from pyquaternion import Quaternion

__all__ = [
    "write_results",
    "default_attribute",
    "lidar_boxes_to_global",
    "format_nuscenes_results",
    "split_sample_tokens",
    "check_prediction_tokens",
    "run_detection_eval",
    "summarize_metrics",
    "devkit_summary_table",
]

_MOVING_SPEED = 0.2  # m/s; above it a box counts as moving (mmdet3d's rule)
_ERR_NAMES = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"}


def default_attribute(name: str, velocity: Sequence[float]) -> str:
    """The attribute a detector without an attribute head reports for class ``name``."""
    moving = float(np.hypot(velocity[0], velocity[1])) > _MOVING_SPEED
    if name == "bus":  # a static bus waits at a stop with its driver (mmdetection3d's rule)
        return "vehicle.moving" if moving else "vehicle.stopped"
    if name in ("car", "truck", "trailer", "construction_vehicle"):
        return "vehicle.moving" if moving else "vehicle.parked"
    if name in ("bicycle", "motorcycle"):
        return "cycle.with_rider" if moving else "cycle.without_rider"
    if name == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    return ""


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def lidar_boxes_to_global(boxes, lidar2ego: np.ndarray, ego2global: np.ndarray) -> dict[str, np.ndarray]:
    """(K, 7 or 9) LiDAR-frame boxes -> nuScenes global boxes.

    Returns ``translation`` (K, 3), ``size`` (K, 3) as ``[w, l, h]``, ``rotation`` (K, 4) quaternions
    ``[w, x, y, z]``, ``velocity`` (K, 2) global vx, vy, and ``ego_xy`` (K, 2) centres in the ego frame.
    """
    boxes = _to_numpy(boxes).astype(np.float64)
    boxes = boxes.reshape(-1, boxes.shape[-1] if boxes.ndim == 2 else 9)
    lidar2global = ego2global @ lidar2ego
    centers = np.concatenate([boxes[:, :3], np.ones((len(boxes), 1))], axis=1)  # (K, 4) homogeneous
    velocity = np.zeros((len(boxes), 3))
    if boxes.shape[1] >= 9:
        velocity[:, :2] = boxes[:, 7:9]
    frame = Quaternion(matrix=lidar2global[:3, :3], atol=1e-6)
    rotation = [(frame * Quaternion(axis=[0.0, 0.0, 1.0], radians=yaw)).elements for yaw in boxes[:, 6]]
    return {
        "translation": (centers @ lidar2global.T)[:, :3],
        "size": boxes[:, [4, 3, 5]],
        "rotation": np.array(rotation).reshape(-1, 4),
        "velocity": (velocity @ lidar2global[:3, :3].T)[:, :2],
        "ego_xy": (centers @ lidar2ego.T)[:, :2],
    }


def format_nuscenes_results(
    results: Sequence[Mapping],
    samples: Sequence[Mapping],
    class_names: Sequence[str],
    class_range: Mapping[str, float],
    modality: Mapping[str, bool],
) -> dict:
    """Predictions and their samples (``token``, float64 ``lidar2ego``, ``ego2global``) -> result json.

    Boxes of a class outside ``class_names``' devkit classes or beyond ``class_range`` (xy distance
    from the ego vehicle) are dropped, as the devkit would drop them anyway.
    """
    if len(results) != len(samples):
        raise ValueError(f"{len(results)} predictions for {len(samples)} samples")
    out = {}
    for res, sample in zip(results, samples):
        boxes = _to_numpy(res["boxes_3d"])
        scores = _to_numpy(res["scores_3d"]).reshape(-1)
        labels = _to_numpy(res["labels_3d"]).reshape(-1).astype(np.int64)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(
                f"sample {sample['token']}: boxes_3d ({len(boxes)}), scores_3d ({len(scores)}) and labels_3d "
                f"({len(labels)}) differ in length"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(f"sample {sample['token']}: labels_3d outside [0, {len(class_names)}): {labels}")
        attrs = res.get("attrs_3d")
        glob = lidar_boxes_to_global(boxes, sample["lidar2ego"], sample["ego2global"])
        dets = []
        for k, label in enumerate(labels):
            name = class_names[label]
            if name not in class_range or np.linalg.norm(glob["ego_xy"][k]) > class_range[name]:
                continue
            velocity = glob["velocity"][k]
            dets.append({
                "sample_token": sample["token"],
                "translation": glob["translation"][k].tolist(),
                "size": glob["size"][k].tolist(),
                "rotation": glob["rotation"][k].tolist(),
                "velocity": velocity.tolist(),
                "detection_name": name,
                "detection_score": float(scores[k]),
                "attribute_name": str(attrs[k]) if attrs is not None else default_attribute(name, velocity),
            })
        out.setdefault(sample["token"], []).extend(dets)
    meta = {
        "use_camera": bool(modality.get("use_camera", False)),
        "use_lidar": bool(modality.get("use_lidar", False)),
        "use_radar": bool(modality.get("use_radar", False)),
        "use_map": bool(modality.get("use_map", False)),
        "use_external": bool(modality.get("use_external", False)),
    }
    return {"meta": meta, "results": out}


def split_sample_tokens(nusc, eval_set: str) -> set[str]:
    """Tokens of the samples of ``nusc`` whose scene is in the devkit split ``eval_set``."""
    from nuscenes.utils.splits import create_splits_scenes

    names = set(create_splits_scenes()[eval_set])
    scenes = {s["token"] for s in nusc.scene if s["name"] in names}
    return {s["token"] for s in nusc.sample if s["scene_token"] in scenes}


def check_prediction_tokens(pred_tokens: Iterable[str], split_tokens: set[str], eval_set: str) -> None:
    """The devkit asserts that predictions cover exactly the split; say what is wrong instead."""
    pred_tokens = set(pred_tokens)
    missing = sorted(split_tokens - pred_tokens)
    extra = sorted(pred_tokens - split_tokens)
    if missing:
        raise ValueError(
            f"predictions are missing {len(missing)} of the {len(split_tokens)} sample tokens of split "
            f"{eval_set!r} (first missing: {missing[0]}); every sample of the split needs an entry, "
            f"possibly with no boxes"
        )
    if extra:
        raise ValueError(
            f"{len(extra)} predicted sample tokens are not in split {eval_set!r} (first: {extra[0]})"
        )


def run_detection_eval(nusc, result_path: str, eval_set: str, output_dir: str,
                       eval_version: str = "detection_cvpr_2019", verbose: bool = False) -> dict:
    """Run ``DetectionEval`` (no plots); it prints its summary table and writes metrics_summary.json."""
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    with open(result_path) as f:
        results = json.load(f)["results"]
    check_prediction_tokens(results, split_sample_tokens(nusc, eval_set), eval_set)
    if not any(results.values()):
        # The devkit cannot score an empty submission (it reads the box type off the first box);
        # its own outcome would be AP 0 for every class and every TP error at its cap of 1.
        return empty_metrics_summary(config_factory(eval_version), output_dir)
    evaluator = DetectionEval(nusc, config=config_factory(eval_version), result_path=result_path,
                              eval_set=eval_set, output_dir=output_dir, verbose=verbose)
    return evaluator.main(plot_examples=0, render_curves=False)


def empty_metrics_summary(config, output_dir: str) -> dict:
    """metrics_summary.json of a submission without a single box, in the devkit's layout."""
    classes = list(config.class_names)
    summary = {
        "label_aps": {c: {str(d): 0.0 for d in config.dist_ths} for c in classes},
        "mean_dist_aps": {c: 0.0 for c in classes},
        "mean_ap": 0.0,
        "label_tp_errors": {c: {err: 1.0 for err in _ERR_NAMES} for c in classes},
        "tp_errors": {err: 1.0 for err in _ERR_NAMES},
        "tp_scores": {err: 0.0 for err in _ERR_NAMES},
        "nd_score": 0.0,
        "eval_time": 0.0,
        "cfg": config.serialize(),
    }
    with open(os.path.join(output_dir, "metrics_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("no predicted boxes in the submission: every AP is 0 and every TP error 1\n" + devkit_summary_table(summary))
    return summary


def summarize_metrics(metrics_summary: Mapping) -> dict[str, float]:
    """The devkit's metrics_summary -> flat dict: ``mAP``, ``NDS``, ``mATE`` ... and ``object/...`` details."""
    out = {"mAP": float(metrics_summary["mean_ap"]), "NDS": float(metrics_summary["nd_score"])}
    for err, short in _ERR_NAMES.items():
        out[short] = float(metrics_summary["tp_errors"][err])
    out["object/map"], out["object/nds"] = out["mAP"], out["NDS"]
    for name, aps in metrics_summary["label_aps"].items():
        for dist, ap in aps.items():
            out[f"object/{name}_ap_dist_{float(dist)}"] = float(ap)
        out[f"object/{name}_ap"] = float(metrics_summary["mean_dist_aps"][name])
        for err, value in metrics_summary["label_tp_errors"][name].items():
            out[f"object/{name}_{err}"] = float(value)
    for err, short in _ERR_NAMES.items():
        out[f"object/{short}"] = out[short]
    return out


def devkit_summary_table(metrics_summary: Mapping) -> str:
    """The summary the devkit prints after ``DetectionEval.main``, as one string."""
    lines = [f"mAP: {metrics_summary['mean_ap']:.4f}"]
    lines += [f"{_ERR_NAMES[k]}: {v:.4f}" for k, v in metrics_summary["tp_errors"].items()]
    lines += [f"NDS: {metrics_summary['nd_score']:.4f}", f"Eval time: {metrics_summary['eval_time']:.1f}s", "",
              "Per-class results:"]
    lines.append("%-20s\t%-6s\t%-6s\t%-6s\t%-6s\t%-6s\t%-6s" % ("Object Class", "AP", "ATE", "ASE", "AOE", "AVE", "AAE"))
    tps = metrics_summary["label_tp_errors"]
    for name, ap in metrics_summary["mean_dist_aps"].items():
        t = tps[name]
        lines.append("%-20s\t%-6.3f\t%-6.3f\t%-6.3f\t%-6.3f\t%-6.3f\t%-6.3f" % (
            name, ap, t["trans_err"], t["scale_err"], t["orient_err"], t["vel_err"], t["attr_err"]))
    return "\n".join(lines)


def write_results(nusc_results: dict, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results_nusc.json")
    with open(path, "w") as f:
        json.dump(nusc_results, f)
    return path
