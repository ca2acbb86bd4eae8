"""Greedy centre-distance matching of predictions to ground truth, as the nuScenes devkit does.

The devkit (``nuscenes.eval.detection.algo.accumulate``) takes the predictions of a class in
order of decreasing score and gives each the nearest not yet matched GT box of that class whose
BEV centre distance is below the threshold (strictly); each such prediction is a true positive.
Here it is applied to one sample in any frame (the distance does not depend on the frame), without
the devkit's class-range filter.
"""
from __future__ import annotations

import numpy as np

__all__ = ["center_distance_matches"]


def center_distance_matches(gt_boxes, gt_labels, pred_boxes, pred_scores, pred_labels, threshold: float = 2.0) -> np.ndarray:
    """(M, >=2) GT, (M,) labels; (K, >=2) predictions, (K,) scores, (K,) labels -> (K,) int64:
    the index of the GT box each prediction matched, -1 for a false positive."""
    gt_labels, pred_labels = np.asarray(gt_labels).reshape(-1), np.asarray(pred_labels).reshape(-1)
    gt_xy = np.asarray(gt_boxes, dtype=np.float64).reshape(len(gt_labels), -1)[:, :2] if len(gt_labels) else np.zeros((0, 2))
    pred_xy = np.asarray(pred_boxes, dtype=np.float64).reshape(len(pred_labels), -1)[:, :2] if len(pred_labels) else np.zeros((0, 2))
    matched = np.full(len(pred_labels), -1, dtype=np.int64)
    taken = np.zeros(len(gt_labels), dtype=bool)
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    # the devkit's order: sorted by (score, index), reversed (equal scores: the later one first)
    for k in np.lexsort((np.arange(len(scores)), scores))[::-1]:
        candidates = np.flatnonzero((gt_labels == pred_labels[k]) & ~taken)
        if len(candidates) == 0:
            continue
        distances = np.linalg.norm(gt_xy[candidates] - pred_xy[k], axis=1)
        best = int(np.argmin(distances))
        if distances[best] < threshold:
            matched[k] = candidates[best]
            taken[candidates[best]] = True
    return matched
