"""Measuring masks against ground truth: used only to measure, never to train the label-free path."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    return float(2.0 * inter / total) if total else 1.0  # both empty: perfect agreement


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else 1.0


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask)


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """95th percentile of the symmetric surface distance, in pixels (NaN when either mask is empty)."""
    if not pred.any() or not truth.any():
        return float("nan")
    sp, st = _surface(pred), _surface(truth)
    d_to_truth = ndi.distance_transform_edt(~st)[sp]
    d_to_pred = ndi.distance_transform_edt(~sp)[st]
    return float(np.percentile(np.concatenate([d_to_truth, d_to_pred]), 95))


def evaluate_masks(pred_ids: list[str], preds: np.ndarray, gt_ids: list[str], truths: np.ndarray,
                   stage: str) -> pd.DataFrame:
    """Per-image metrics for every image that has both a prediction and a ground-truth mask."""
    index = {iid: i for i, iid in enumerate(pred_ids)}
    rows = []
    for iid, truth in zip(gt_ids, truths):
        if iid in index:
            p = preds[index[iid]]
            rows.append({"image_id": iid, "stage": stage, "dice": dice(p, truth), "iou": iou(p, truth),
                         "hd95": hd95(p, truth)})
    return pd.DataFrame(rows, columns=["image_id", "stage", "dice", "iou", "hd95"])


def summary_row(table: pd.DataFrame, stage: str, split: str = "all") -> dict:
    d = table["dice"]
    empty = not len(d)
    return {"stage": stage, "split": split, "n": int(len(d)),
            "dice_mean": np.nan if empty else float(d.mean()),
            "dice_median": np.nan if empty else float(d.median()),
            "dice_p10": np.nan if empty else float(d.quantile(0.1)),
            "dice_min": np.nan if empty else float(d.min()),
            "iou_mean": np.nan if empty else float(table["iou"].mean()),
            "hd95_median": np.nan if empty else float(table["hd95"].median())}


def summary_rows(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per stage and split (all images, and the val split that no model trained on)."""
    rows = []
    for table in tables:
        if table.empty:
            continue
        stage = str(table["stage"].iloc[0])
        for split, part in (("all", table), ("val", table[table["split"] == "val"])):
            rows.append(summary_row(part, stage, split))
            if "qc_pass" in part:
                rows.append(summary_row(part[part["qc_pass"].fillna(False).astype(bool)], f"{stage}_qc_pass", split))
    return pd.DataFrame(rows)


GOOD_DICE = 0.85  # a mask at least this close to the manual one counts as good for training


def qc_quality(table: pd.DataFrame, good: float = GOOD_DICE) -> dict:
    """How well a QC score knows the true quality of its masks: Spearman correlation of qc_score with
    the true Dice, and, taking Dice >= `good` as positive, the precision and recall of qc_pass."""
    t = table.dropna(subset=["dice", "qc_score"])
    positive, passed = t["dice"].to_numpy() >= good, t["qc_pass"].astype(bool).to_numpy()
    return {"n": int(len(t)),
            "spearman": float(t["qc_score"].corr(t["dice"], method="spearman")) if len(t) > 1 else np.nan,
            "pass_rate": float(passed.mean()) if len(t) else np.nan,
            "precision": float(positive[passed].mean()) if passed.any() else np.nan,
            "recall": float(passed[positive].mean()) if positive.any() else np.nan}
