"""Heatmaps of suspicious opacities inside the lungs, without pixel labels.

Idea: air-filled lung is dark; consolidation, infiltrates and effusion make it whiter. Each image's
lung field is mapped to a common atlas grid, its intensity standardised against the image's own
aerated lung and field, and compared cell by cell with a robust model of NORMAL lung appearance.
The normal model is learned from the cohort itself: the images whose expected lung field the lung
mask fills most completely (a consolidated lung is not recognised as lung, so a mask that falls
short of its field is the cheapest label-free sign of disease), or from images the user marks as
normal.

Lung field: the predicted mask misses exactly the opaque parts we want to find, so the field is
the convex hull of each lung united with its mirror image about the pair's midline: a lung half
lost to consolidation gets its extent back from the other side.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lungssl.qc import bbox_slices, split_lungs
from lungssl.storage import atomic_path
from lungssl.weak_masks import convex_hull

SCORE_COLUMNS = ("field_fraction", "lung_deficit", "mean_z", "max_z", "flagged_fraction",
                 "left_mean_z", "right_mean_z", "left_flagged", "right_flagged", "score")


@dataclass(frozen=True)
class HeatmapParams:
    grid: int = 64  # atlas cells per side
    blur: float = 0.02  # Gaussian sigma as a fraction of the image side: the scale of an opacity
    dark_percentile: float = 5.0  # aerated lung: this percentile of the mask's intensity
    bright_percentile: float = 95.0  # bone and soft tissue: this percentile of the field's box
    reference_fraction: float = 0.25  # normal model from this most completely segmented fraction
    max_reference: int = 5000  # a robust median needs no more; bounds memory on huge cohorts
    min_scale: float = 0.02  # floor of the normal model's spread (standardised units)
    flag_z: float = 2.0  # a pixel is flagged at this many robust SDs above normal

    @classmethod
    def from_config(cls, cfg: dict) -> "HeatmapParams":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in cfg.items() if k in known})


def lung_field(mask: np.ndarray) -> np.ndarray:
    """Bool field where lungs are expected: each lung's convex hull united with its mirror image
    about the pair's midline (the image's centre column when only one lung was found)."""
    pair, left, right = split_lungs(np.asarray(mask, dtype=bool))
    hulls = convex_hull(left) | convex_hull(right)
    if not hulls.any():
        return hulls
    h, w = mask.shape
    if left.any() and right.any():
        cols = np.flatnonzero(pair.any(axis=0))
        midline = (cols[0] + cols[-1]) / 2
    else:
        # A lone lung tells nothing about the midline; frontal films are centred on the patient.
        midline = (w - 1) / 2
    mirror = cv2.warpAffine(hulls.astype(np.uint8), np.float32([[-1, 0, 2 * midline], [0, 1, 0]]),
                            (w, h), flags=cv2.INTER_NEAREST).astype(bool)
    if left.any() and right.any():
        # Never mirror into the mediastinum between the two lungs: spine and heart are bright.
        inner = slice(np.flatnonzero(left.any(axis=0))[-1] + 1, np.flatnonzero(right.any(axis=0))[0])
        mirror[:, inner] = False
    return hulls | mirror


def lung_deficit(mask: np.ndarray, field: np.ndarray) -> float:
    """Fraction of the lung field the mask does not cover (1 when no field was found)."""
    n = np.count_nonzero(field)
    return 1.0 - np.count_nonzero(mask & field) / n if n else 1.0


def standardise(image: np.ndarray, mask: np.ndarray, field: np.ndarray, p: HeatmapParams) -> np.ndarray:
    """Blurred intensity with 0 = the image's aerated lung and 1 = its bright structures.

    Relative to the image itself, so exposure, detector and windowing drop out."""
    f = cv2.GaussianBlur(image.astype(np.float32), (0, 0), max(p.blur * image.shape[0], 0.5))
    box = f[bbox_slices(field)] if field.any() else f
    dark = f[mask & field] if np.count_nonzero(mask & field) >= 50 else box
    lo, hi = np.percentile(dark, p.dark_percentile), np.percentile(box, p.bright_percentile)
    return (f - lo) / max(hi - lo, 1.0)


def to_atlas(values: np.ndarray, field: np.ndarray, grid: int) -> np.ndarray:
    """Field's bounding box resized to grid x grid; NaN where the cell is mostly outside the field."""
    if not field.any():
        return np.full((grid, grid), np.nan, np.float32)
    box = bbox_slices(field)
    v = cv2.resize(values[box].astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
    inside = cv2.resize(field[box].astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
    return np.where(inside >= 0.5, v, np.nan).astype(np.float32)


def from_atlas(atlas: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Atlas grid back onto the image's field (0 outside it)."""
    out = np.zeros(field.shape, np.float32)
    if field.any():
        box = bbox_slices(field)
        h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
        filled = np.nan_to_num(atlas, nan=0.0)
        out[box] = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
        out[~field] = 0
    return out


@dataclass(frozen=True)
class ImageCode:
    """What the normal model needs from one image: its atlas and how complete its mask is."""
    atlas: np.ndarray
    deficit: float


def image_code(image: np.ndarray, mask: np.ndarray, p: HeatmapParams) -> ImageCode:
    mask = np.asarray(mask, dtype=bool)
    field = lung_field(mask)
    return ImageCode(to_atlas(standardise(image, mask, field, p), field, p.grid), lung_deficit(mask, field))


@dataclass(frozen=True)
class NormalModel:
    median: np.ndarray  # grid x grid, standardised intensity of normal lung per cell
    scale: np.ndarray  # grid x grid, robust SD (1.4826 MAD), floored
    n_reference: int
    params: HeatmapParams  # those it was learned with: heatmaps elsewhere must standardise alike

    def save(self, path: Path | str) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, median=self.median, scale=self.scale, n_reference=self.n_reference,
                         params=json.dumps(asdict(self.params), sort_keys=True))

    @classmethod
    def load(cls, path: Path | str) -> "NormalModel":
        try:
            with np.load(path, allow_pickle=False) as z:
                params = HeatmapParams.from_config(json.loads(str(z["params"])))
                return cls(z["median"], z["scale"], int(z["n_reference"]), params)
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{path} is not a lungssl normal lung model ({err})") from None


def choose_reference(deficits: np.ndarray, p: HeatmapParams, seed: int = 0) -> np.ndarray:
    """Indices of the most completely segmented fraction, seeded-subsampled to max_reference."""
    n = len(deficits)
    if n == 0:
        raise ValueError("no images to learn the normal lung appearance from")
    k = max(1, int(round(n * p.reference_fraction)))
    ranked = np.argsort(deficits, kind="stable")[:k]
    if k > p.max_reference:
        ranked = np.sort(np.random.default_rng(seed).choice(ranked, p.max_reference, replace=False))
    return np.sort(ranked)


def fit_normal_model(atlases: np.ndarray, p: HeatmapParams) -> NormalModel:
    """Robust per-cell median and spread of the reference atlases (N x grid x grid, NaN = outside)."""
    if not np.isfinite(atlases).any():
        raise ValueError("the reference images have no lung field: are the lung masks empty?")
    cell_has_data = np.isfinite(atlases).any(axis=0)
    safe = np.where(cell_has_data, atlases, 0.0)  # silences all-NaN cells; filled below anyway
    median = np.nanmedian(safe, axis=0)
    scale = 1.4826 * np.nanmedian(np.abs(safe - median), axis=0)
    fallback = np.nanmedian(median[cell_has_data])
    median = np.where(cell_has_data, median, fallback)
    scale = np.maximum(np.where(cell_has_data, scale, p.min_scale), p.min_scale)
    return NormalModel(median.astype(np.float32), scale.astype(np.float32), int(len(atlases)), p)


def heatmap(image: np.ndarray, mask: np.ndarray, model: NormalModel, p: HeatmapParams) -> np.ndarray:
    """Abnormality in robust SDs above normal lung (>= 0), on the image grid, 0 outside the lung field."""
    mask = np.asarray(mask, dtype=bool)
    return _heatmap_on(image, mask, lung_field(mask), model, p)


def heatmap_with_scores(image: np.ndarray, mask: np.ndarray, model: NormalModel, p: HeatmapParams
                        ) -> tuple[np.ndarray, dict[str, float]]:
    """heatmap() and heatmap_scores() of one image, its lung field found once."""
    mask = np.asarray(mask, dtype=bool)
    field = lung_field(mask)
    z = _heatmap_on(image, mask, field, model, p)
    return z, _scores_on(z, mask, field, p)


def _heatmap_on(image: np.ndarray, mask: np.ndarray, field: np.ndarray, model: NormalModel,
                p: HeatmapParams) -> np.ndarray:
    atlas = to_atlas(standardise(image, mask, field, p), field, model.median.shape[0])
    return from_atlas(np.clip((atlas - model.median) / model.scale, 0, None), field)


def heatmap_scores(z: np.ndarray, mask: np.ndarray, p: HeatmapParams) -> dict[str, float]:
    """Per-image scores; `score` (mean abnormality over the field) ranks images for review."""
    mask = np.asarray(mask, dtype=bool)
    return _scores_on(z, mask, lung_field(mask), p)


def _scores_on(z: np.ndarray, mask: np.ndarray, field: np.ndarray, p: HeatmapParams) -> dict[str, float]:
    if not field.any():
        # No lung found at all is itself the strongest sign that something is wrong.
        nan = float("nan")
        return {"field_fraction": 0.0, "lung_deficit": 1.0, "mean_z": nan, "max_z": nan,
                "flagged_fraction": nan, "left_mean_z": nan, "right_mean_z": nan,
                "left_flagged": nan, "right_flagged": nan, "score": float("inf")}
    cols = np.flatnonzero(field.any(axis=0))
    midline = (cols[0] + cols[-1] + 1) // 2
    sides = {"left": field.copy(), "right": field.copy()}
    sides["left"][:, midline:] = False  # left = the image's left half
    sides["right"][:, :midline] = False
    out = {"field_fraction": float(field.mean()), "lung_deficit": lung_deficit(mask, field),
           "mean_z": float(z[field].mean()), "max_z": float(z[field].max()),
           "flagged_fraction": float((z[field] > p.flag_z).mean())}
    for name, side in sides.items():
        vals = z[side]
        out[f"{name}_mean_z"] = float(vals.mean()) if vals.size else float("nan")
        out[f"{name}_flagged"] = float((vals > p.flag_z).mean()) if vals.size else float("nan")
    out["score"] = out["mean_z"]
    return out


HEAT_STEP = 1 / 32  # stored heatmaps: uint8 in steps of 1/32 SD, so 0-8 SD, mostly zeros, compress well


def quantise(z: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(z / HEAT_STEP), 0, 255).astype(np.uint8)


def dequantise(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * HEAT_STEP


def heatmap_any_size(image: np.ndarray, mask: np.ndarray, model: NormalModel, p: HeatmapParams,
                     work_size: int = 256) -> tuple[np.ndarray, dict[str, float]]:
    """(heatmap at the image's size, scores) for an image of any size, computed at the working size
    the normal model was learned at, so that scores do not depend on the input's resolution."""
    h, w = image.shape
    small = cv2.resize(image, (work_size, work_size), interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.uint8), (work_size, work_size), interpolation=cv2.INTER_NEAREST) > 0
    z, scores = heatmap_with_scores(small, small_mask, model, p)
    return cv2.resize(z, (w, h), interpolation=cv2.INTER_LINEAR), scores


def draw_heat_overlay(image: np.ndarray, z: np.ndarray, flag_z: float, z_max: float = 6.0) -> np.ndarray:
    """BGR overlay: the X-ray in grey, abnormality from flag_z/2 up in a hot colour map."""
    grey = cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_GRAY2BGR)
    heat = cv2.applyColorMap(np.clip(z / z_max * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    alpha = np.clip((z - flag_z / 2) / flag_z, 0, 0.6)[..., None]
    return (grey * (1 - alpha) + heat * alpha).astype(np.uint8)


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(false positive rates, true positive rates, area under the curve); ties count half."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs both positive and negative images")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tpr = np.r_[0, np.cumsum(y)[last_of_tie] / n_pos]
    fpr = np.r_[0, np.cumsum(~y)[last_of_tie] / n_neg]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def labelled_subsets(scores: pd.DataFrame, manifest: pd.DataFrame, positive: str, negative: str):
    """(subset, n, n_positive, (fpr, tpr, auc)) for all labelled images and for each top folder
    (e.g. test) that holds both labels. Labels only measure, they never train."""
    t = scores.merge(manifest[["image_id", "label", "rel_path"]], on="image_id")
    t = t[t["label"].isin([positive, negative])]
    subset = t["rel_path"].map(lambda r: r.split("/")[0] if "/" in r else "")
    for name, part in [("all", t), *((s, g) for s, g in t.groupby(subset) if s)]:
        y = part["label"].eq(positive).to_numpy()
        if y.any() and not y.all():
            yield name, len(part), int(y.sum()), roc_curve(part["score"].to_numpy(), y)


def auc_table(scores: pd.DataFrame, manifest: pd.DataFrame, positive: str, negative: str) -> pd.DataFrame:
    """ROC AUC of `score` for positive vs negative image labels, overall and per top folder."""
    rows = [{"subset": name, "n": n, "n_positive": n_pos, "auc": round(curve[2], 4)}
            for name, n, n_pos, curve in labelled_subsets(scores, manifest, positive, negative)]
    return pd.DataFrame(rows, columns=["subset", "n", "n_positive", "auc"])
