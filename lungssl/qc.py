"""Quality control of lung masks from their shape alone (no labels).

Per mask: shape features of the two largest objects -> each mapped to [0, 1] by a desirability
ramp around its anatomically plausible range -> QC score (their mean) -> pass/fail.
The same QC serves weak masks and every round's pseudo-masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.measure import regionprops

FEATURES = ("area_top2", "eccentricity", "extent", "solidity", "aspect_ratio", "n_objects")


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    tolerance: float  # distance outside [lo, hi] at which desirability reaches 0


@dataclass(frozen=True)
class QCParams:
    # Defaults describe two frontal lungs: together 12-40% of the image, each taller than wide,
    # elongated, compact and convex-ish, exactly two objects.
    ranges: dict[str, Range] = field(default_factory=lambda: {
        "area_top2": Range(0.12, 0.40, 0.10),
        "eccentricity": Range(0.70, 0.97, 0.25),
        "extent": Range(0.45, 0.85, 0.25),
        "solidity": Range(0.80, 1.00, 0.30),
        "aspect_ratio": Range(1.2, 3.2, 1.0),
        "n_objects": Range(2, 2, 2),
    })
    threshold: float = 0.8

    @classmethod
    def from_config(cls, cfg: dict) -> "QCParams":
        ranges = dict(cls().ranges)
        for name, r in cfg.get("features", {}).items():
            if name not in FEATURES:
                raise ValueError(f"unknown QC feature {name!r}; known: {', '.join(FEATURES)}")
            ranges[name] = Range(float(r["lo"]), float(r["hi"]), float(r["tolerance"]))
        return cls(ranges=ranges, threshold=float(cfg.get("threshold", cls.threshold)))


def shape_features(mask: np.ndarray) -> dict[str, float]:
    """Raw features; per-object ones are averaged over the two largest objects."""
    labels, n = ndi.label(mask)
    if n == 0:
        return {"area_top2": 0.0, "eccentricity": 0.0, "extent": 0.0, "solidity": 0.0,
                "aspect_ratio": 0.0, "n_objects": 0.0}
    props = sorted(regionprops(labels), key=lambda p: p.area, reverse=True)[:2]
    heights = [p.bbox[2] - p.bbox[0] for p in props]
    widths = [p.bbox[3] - p.bbox[1] for p in props]
    return {
        "area_top2": float(sum(p.area for p in props) / mask.size),
        "eccentricity": float(np.mean([p.eccentricity for p in props])),
        "extent": float(np.mean([p.extent for p in props])),
        "solidity": float(np.mean([p.solidity for p in props])),
        "aspect_ratio": float(np.mean([h / max(w, 1) for h, w in zip(heights, widths)])),
        "n_objects": float(n),
    }


def desirability(value: float, r: Range) -> float:
    """1 inside [lo, hi], falling linearly to 0 at `tolerance` outside it."""
    gap = max(r.lo - value, value - r.hi, 0.0)
    return float(max(0.0, 1.0 - gap / r.tolerance)) if r.tolerance > 0 else float(gap == 0)


def score_features(features: dict[str, float], params: QCParams) -> dict[str, float]:
    norm = {f"q_{k}": desirability(features[k], params.ranges[k]) for k in FEATURES}
    score = float(np.mean(list(norm.values())))
    return {**norm, "qc_score": score, "qc_pass": bool(score >= params.threshold)}


def qc_table(ids: list[str], masks: np.ndarray, params: QCParams) -> pd.DataFrame:
    rows = []
    for image_id, mask in zip(ids, masks):
        feats = shape_features(mask)
        rows.append({"image_id": image_id, **{f"f_{k}": v for k, v in feats.items()},
                     **score_features(feats, params)})
    columns = ["image_id", *[f"f_{k}" for k in FEATURES], *[f"q_{k}" for k in FEATURES], "qc_score", "qc_pass"]
    return pd.DataFrame(rows, columns=columns)


def summarize(table: pd.DataFrame, threshold: float) -> dict:
    return {
        "n": int(len(table)),
        "n_pass": int(table["qc_pass"].sum()),
        "pass_rate": float(table["qc_pass"].mean()) if len(table) else 0.0,
        "threshold": threshold,
        "score_quantiles": {str(q): float(table["qc_score"].quantile(q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}
        if len(table) else {},
    }
