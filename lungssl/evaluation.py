"""Measuring masks against ground truth: used only to measure, never to train the label-free path."""
from __future__ import annotations

import numpy as np
import pandas as pd


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    return float(2.0 * inter / total) if total else 1.0  # both empty: perfect agreement


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else 1.0


def evaluate_masks(pred_ids: list[str], preds: np.ndarray, gt_ids: list[str], truths: np.ndarray,
                   stage: str) -> pd.DataFrame:
    """Per-image metrics for every image that has both a prediction and a ground-truth mask."""
    index = {iid: i for i, iid in enumerate(pred_ids)}
    rows = [{"image_id": iid, "stage": stage, "dice": dice(preds[index[iid]], truth), "iou": iou(preds[index[iid]], truth)}
            for iid, truth in zip(gt_ids, truths) if iid in index]
    return pd.DataFrame(rows, columns=["image_id", "stage", "dice", "iou"])


def summary_row(table: pd.DataFrame, stage: str) -> dict:
    d = table["dice"]
    return {"stage": stage, "n": int(len(d)), "dice_mean": float(d.mean()) if len(d) else float("nan"),
            "dice_median": float(d.median()) if len(d) else float("nan"),
            "dice_p10": float(d.quantile(0.1)) if len(d) else float("nan"),
            "dice_min": float(d.min()) if len(d) else float("nan"),
            "iou_mean": float(table["iou"].mean()) if len(d) else float("nan")}
