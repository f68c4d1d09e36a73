"""Quality control of lung masks from their shape alone (no labels).

Per mask: shape features of the two largest objects -> each mapped to [0, 1] by a desirability
ramp around its anatomically plausible range -> QC score (their mean) -> pass/fail.
The same QC serves weak masks and every round's pseudo-masks.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import cv2
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
    # Cohort-aware score (used when qc_table gets a ShapePrior); see the section below.
    z_soft: float = 4.0  # robust SDs from the cohort's self-consistent masks that are still fine
    z_hard: float = 6.0  # ... and at which the gate has fallen to 0
    # Fixed level with a meaning, not fitted: the mask and each lung overlap the cohort's typical
    # shape with IoU >= 3/4 (geometric mean) and nothing about its placement or size is a gross
    # outlier. A fixed level keeps scores comparable between cohorts and self-training rounds.
    cohort_threshold: float = 0.75
    # Agreement signal from the --stats table of the masks (see combine_agreement): the weak masks'
    # "stability", a prediction's "tta_dice" or "confidence"; None: shape alone.
    agreement: str | None = "stability"

    @classmethod
    def from_config(cls, cfg: dict) -> "QCParams":
        ranges = dict(cls().ranges)
        for name, r in cfg.get("features", {}).items():
            if name not in FEATURES:
                raise ValueError(f"unknown QC feature {name!r}; known: {', '.join(FEATURES)}")
            ranges[name] = Range(float(r["lo"]), float(r["hi"]), float(r["tolerance"]))
        p = cls(ranges=ranges, threshold=float(cfg.get("threshold", cls.threshold)),
                z_soft=float(cfg.get("z_soft", cls.z_soft)), z_hard=float(cfg.get("z_hard", cls.z_hard)),
                cohort_threshold=float(cfg.get("cohort_threshold", cls.cohort_threshold)),
                agreement=cfg.get("agreement", cls.agreement) or None)
        if not 0 <= p.z_soft < p.z_hard:
            raise ValueError(f"need 0 <= z_soft < z_hard, got {p.z_soft} and {p.z_hard}")
        return p


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


AGREEMENT_COLUMNS = ("f_stability", "q_stability", "q_shape")


def combine_agreement(shape_score: float, agreement: float) -> float:
    """Geometric mean of the shape score and the agreement (both in [0, 1]); the shape score alone
    where the agreement is missing (NaN).

    The agreement says how much the mask stays the same when it is derived again slightly
    differently (weak masks: perturbed re-derivations, IoU; predictions: flip-TTA Dice). A mask
    passes at the same level as before: sqrt(shape x agreement) >= threshold, e.g. shape IoU 0.8
    needs an agreement of at least 0.70 to pass at 0.75."""
    if agreement is None or not np.isfinite(agreement):
        return float(shape_score)
    return float(np.sqrt(shape_score * float(np.clip(agreement, 0.0, 1.0))))


def qc_table(ids: list[str], masks: np.ndarray, params: QCParams, prior: "ShapePrior | None" = None,
             agreement: "np.ndarray | list[float] | None" = None,
             films: "list[Film] | None" = None) -> pd.DataFrame:
    """One row per mask. Without a prior: the fixed-range shape score. With one: the cohort score
    (prior IoU x z-gate) replaces qc_score / qc_pass; the fixed-range columns stay for reference.

    With `agreement` (one value per mask, NaN where unknown, e.g. the weak masks' stability or a
    prediction's TTA Dice), qc_score = sqrt(shape score x agreement) (see combine_agreement); the
    shape score stays as q_shape, the raw value as f_stability and its [0, 1] clip as q_stability.
    `films` (one box per mask, see films_for): the cohort's placement features are measured in it."""
    if agreement is not None and len(agreement) != len(ids):
        raise ValueError(f"agreement has {len(agreement)} values for {len(ids)} masks")
    if films is not None and len(films) != len(ids):
        raise ValueError(f"films has {len(films)} boxes for {len(ids)} masks")
    threshold = params.threshold if prior is None else params.cohort_threshold
    rows = []
    for i, (image_id, mask) in enumerate(zip(ids, masks)):
        feats = shape_features(mask)
        row = {"image_id": image_id, **{f"f_{k}": v for k, v in feats.items()}, **score_features(feats, params)}
        if prior is not None:
            row.update(cohort_scores(np.asarray(mask, dtype=bool), prior, params,
                                     films[i] if films is not None else FULL_FILM))
        if agreement is not None:
            a = float(agreement[i]) if agreement[i] is not None else float("nan")
            score = combine_agreement(row["qc_score"], a)
            row.update(f_stability=a, q_stability=float(np.clip(a, 0.0, 1.0)) if np.isfinite(a) else float("nan"),
                       q_shape=row["qc_score"], qc_score=score, qc_pass=bool(score >= threshold))
        rows.append(row)
    columns = ["image_id", *[f"f_{k}" for k in FEATURES], *[f"q_{k}" for k in FEATURES]]
    if prior is not None:
        columns += [*COHORT_COLUMNS]
    if agreement is not None:
        columns += [*AGREEMENT_COLUMNS]
    return pd.DataFrame(rows, columns=[*columns, "qc_score", "qc_pass"])


def model_agreement(ids: list[str], masks: np.ndarray, ref_ids: list[str], refs: np.ndarray,
                    threshold: float) -> pd.DataFrame:
    """A second QC of the weak masks, once the early-learning model exists: each mask's Dice with the
    model's prediction for the same image (`refs`), and pass where it is >= `threshold`.

    The model has learnt what the cohort's weak masks agree on and stopped before memorising the
    rest, so where a weak mask parts from the model, the weak mask is the likely culprit. Masks
    without a prediction get NaN and do not pass. Columns as a QC table's: qc_score, qc_pass."""
    from lungssl.evaluation import dice

    index = {iid: i for i, iid in enumerate(ref_ids)}
    scores = [dice(np.asarray(m, bool), np.asarray(refs[index[iid]], bool)) if iid in index else float("nan")
              for iid, m in zip(ids, masks)]
    table = pd.DataFrame({"image_id": list(ids), "qc_score": np.asarray(scores, dtype=float)})
    table["qc_pass"] = table["qc_score"] >= threshold  # NaN compares False
    return table


def percentile_ranks(values) -> np.ndarray:
    """Each value's percentile rank in (0, 1] among `values` (ties share their mean rank); a missing
    value (NaN) ranks below every other."""
    return pd.Series(np.asarray(values, dtype=float)).fillna(-np.inf).rank(pct=True).to_numpy()


def rank_mean(*scores) -> np.ndarray:
    """The mean of each mask's percentile ranks under several scores of the same masks.

    QC signals live on different scales (a shape score spreads over 0.7-0.95, a Dice with a model or
    with the mirrored image over 0.9-0.98), so a geometric mean lets the widest one decide the order;
    ranks give each an equal say. Relative to the masks ranked together: it orders, it has no level."""
    return np.mean([percentile_ranks(s) for s in scores], axis=0)


def combine_ranks(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One QC of the same masks from several QC tables (name -> image_id, qc_score, qc_pass): the
    mean of the scores' percentile ranks in the cohort (rank_mean), and pass only where every table
    passes, so a mask still has to satisfy each QC's own fixed level. A mask missing from a table,
    or with no score there (NaN), ranks last in it and does not pass."""
    if not tables:
        raise ValueError("no QC tables to combine")
    merged = None
    for name, table in tables.items():
        part = table.drop_duplicates("image_id").set_index("image_id")[["qc_score", "qc_pass"]]
        part = part.rename(columns={"qc_score": f"score_{name}", "qc_pass": f"pass_{name}"})
        merged = part if merged is None else merged.join(part, how="outer")
    out = pd.DataFrame(index=merged.index)
    for name in tables:
        out[f"rank_{name}"] = percentile_ranks(merged[f"score_{name}"])
        out[f"pass_{name}"] = merged[f"pass_{name}"].astype("boolean").fillna(False).astype(bool)
    out["qc_score"] = out[[f"rank_{n}" for n in tables]].mean(axis=1)
    out["qc_pass"] = out[[f"pass_{n}" for n in tables]].all(axis=1)
    return out.reset_index()


def agreement_for(ids: list[str], stats: pd.DataFrame, column: str) -> np.ndarray:
    """The `column` of a per-image stats table, in the order of `ids` (NaN for ids it lacks)."""
    if column not in stats.columns:
        raise ValueError(f"stats table has no column {column!r}; it has {', '.join(map(str, stats.columns))}")
    values = stats.drop_duplicates("image_id").set_index("image_id")[column].astype(float)
    return values.reindex(list(ids)).to_numpy(dtype=float)


FILM_COLUMNS = ("film_top", "film_bottom", "film_left", "film_right")


def films_for(ids: list[str], stats: pd.DataFrame) -> list[Film]:
    """The film box of each of `ids` from a per-image stats table with FILM_COLUMNS (the weak
    masks' stats: image fractions of weak_masks.find_film)."""
    missing = [c for c in FILM_COLUMNS if c not in stats.columns]
    if missing:
        raise ValueError(f"stats table has no film column(s) {', '.join(missing)}; rerun the weak masks")
    boxes = stats.drop_duplicates("image_id").set_index("image_id")[list(FILM_COLUMNS)].astype(float)
    lacking = [i for i in ids if i not in boxes.index]
    if lacking:
        raise ValueError(f"no film box for {len(lacking)} mask(s), e.g. {lacking[0]!r}")
    return [tuple(row) for row in boxes.loc[list(ids)].to_numpy()]


def summarize(table: pd.DataFrame, threshold: float | None) -> dict:
    return {
        "n": int(len(table)),
        "n_pass": int(table["qc_pass"].sum()),
        "pass_rate": float(table["qc_pass"].mean()) if len(table) else 0.0,
        "threshold": threshold,
        "score_quantiles": {str(q): float(table["qc_score"].quantile(q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}
        if len(table) else {},
    }


# ---------------------------------------------------------------- cohort-aware QC
#
# Fixed plausible ranges cannot tell a good mask from a plausible-looking bad one, and they
# encode one dataset's framing. The cohort-aware score instead asks "does this mask look like the
# self-consistent majority of its own cohort?":
#   1. shape: the mask, and each of its two lungs, cropped to the bounding box and resized to a
#      fixed grid (so position and scale drop out) is compared by IoU with the cohort's prior
#      for the pair, the left and the right lung. The per-lung terms keep a stray speck or a tail,
#      which stretches the pair's box, from ruining an otherwise good mask; the pair term keeps
#      the lungs' arrangement. q_prior = sqrt(pair IoU x mean per-lung IoU).
#   2. placement and size: robust z-scores (median / MAD over the same self-consistent masks) of
#      where the mask sits in the image, how large it is and how alike its two lungs are; they
#      catch what the bounding-box normalisation hides (a well-shaped mask at the wrong scale).
# qc_score = q_prior x z-gate: the gate is 1 while every |z| <= z_soft and 0 at |z| >= z_hard.
# No labels are used anywhere.

GEOMETRY = ("area_fraction", "bbox_height", "bbox_width", "bbox_cx", "bbox_cy", "height_ratio", "area_ratio")
PARTS = ("pair", "left", "right")  # left / right as seen in the image
COHORT_COLUMNS = (*[f"f_{k}" for k in GEOMETRY], "f_prior_iou", "f_lung_iou", "f_max_abs_z",
                  "q_prior", "q_gate", "qc_outlier")
MAD_TO_SD = 1.4826  # MAD x this = SD for normal data, so z reads as "robust SDs from typical"
MIN_SCALE = 0.01  # floor on a feature's spread (features are fractions): a cohort of near-identical
#                   masks must not turn a one-pixel difference into a huge z


@dataclass(frozen=True)
class ShapePrior:
    """The cohort's typical lung-pair shape and the robust spread of its geometry features."""
    maps: np.ndarray  # 3 x grid x grid float32 in [0, 1] (PARTS order): share of kept masks per cell
    median: dict[str, float]
    scale: dict[str, float]  # MAD x 1.4826, floored at MIN_SCALE
    n_masks: int = 0  # distinct non-empty masks seen
    n_kept: int = 0  # masks the maps and statistics were computed on
    n_duplicates: int = 0  # exact copies of a mask already seen, left out (not saved)
    # How the run judged masks against this prior (QC parameters, film-finder tolerance), saved with
    # it so that `lungssl predict --qc` judges a new hospital's masks as the run judged its own.
    judging: dict = field(default_factory=dict, compare=False)

    @property
    def grid(self) -> int:
        return int(self.maps.shape[-1])

    @property
    def prior(self) -> np.ndarray:
        """The pair map."""
        return self.maps[0]

    @property
    def binary(self) -> np.ndarray:
        # Cells most self-consistent masks cover: the "typical" shape, one per part.
        return self.maps >= 0.5

    def z_scores(self, features: dict[str, float]) -> dict[str, float]:
        return {k: (features[k] - self.median[k]) / self.scale[k] for k in GEOMETRY}


def bbox_slices(mask: np.ndarray) -> tuple[slice, slice]:
    """Row and column slices of a non-empty mask's bounding box."""
    rows, cols = np.flatnonzero(np.any(mask, axis=1)), np.flatnonzero(np.any(mask, axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def normalize_to_bbox(mask: np.ndarray, grid: int = 64) -> np.ndarray:
    """Crop to the mask's bounding box and resize to grid x grid (bool); all False if empty.

    Removes position and scale, so the comparison with the prior is about shape alone."""
    if not np.any(mask):
        return np.zeros((grid, grid), bool)
    crop = np.asarray(mask[bbox_slices(mask)], dtype=np.float32)
    # INTER_AREA averages the pixels falling into each cell; >= 0.5 is a majority vote.
    return cv2.resize(crop, (grid, grid), interpolation=cv2.INTER_AREA) >= 0.5


def split_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(two largest objects, left one, right one). A lone object goes to the side of the image
    its centre lies on and leaves the other side empty, so a half mask scores half."""
    labels, n = ndi.label(mask)
    empty = np.zeros(mask.shape, bool)
    if n == 0:
        return empty, empty, empty
    areas = np.bincount(labels.ravel())[1:]
    objs = [labels == i + 1 for i in np.argsort(areas)[::-1][:2]]
    cx = [np.flatnonzero(o.any(axis=0)).mean() for o in objs]
    if len(objs) == 2:
        left, right = (objs[0], objs[1]) if cx[0] <= cx[1] else (objs[1], objs[0])
    else:
        left, right = (objs[0], empty) if cx[0] < mask.shape[1] / 2 else (empty, objs[0])
    return left | right, left, right


Film = tuple[float, float, float, float]  # (top, bottom, left, right) of the exposed film, image fractions
FULL_FILM: Film = (0.0, 1.0, 0.0, 1.0)


def geometry_features(mask: np.ndarray, film: Film = FULL_FILM) -> dict[str, float]:
    """Placement, size and left/right balance as fractions of the film box, so they depend neither
    on the resolution nor on how much padding an export put around the film."""
    h, w = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return dict.fromkeys(GEOMETRY, 0.0)
    cols = np.flatnonzero(mask.any(axis=0))
    # A letterboxed or off-centre film shifts and shrinks the lungs in image coordinates, not in
    # the film's: measured in the image, a padded export looked like a misplaced mask to the QC.
    top, left = film[0] * h, film[2] * w
    fh, fw = max((film[1] - film[0]) * h, 1.0), max((film[3] - film[2]) * w, 1.0)
    _, left_lung, right_lung = split_lungs(mask)
    heights = [np.count_nonzero(x.any(axis=1)) for x in (left_lung, right_lung)]
    areas = [np.count_nonzero(x) for x in (left_lung, right_lung)]
    return {
        "area_fraction": float(np.count_nonzero(mask) / (fh * fw)),
        "bbox_height": float((rows[-1] - rows[0] + 1) / fh),
        "bbox_width": float((cols[-1] - cols[0] + 1) / fw),
        "bbox_cx": float(((cols[0] + cols[-1] + 1) / 2 - left) / fw),
        "bbox_cy": float(((rows[0] + rows[-1] + 1) / 2 - top) / fh),
        # Two lungs of similar height and size; a lone object scores 0 on both.
        "height_ratio": float(min(heights) / max(heights)),
        "area_ratio": float(min(areas) / max(areas)),
    }


def shape_codes(mask: np.ndarray, grid: int = 64) -> np.ndarray:
    """3 x grid x grid bool: the pair, left and right lung, each normalised to its own box."""
    return np.stack([normalize_to_bbox(part, grid) for part in split_lungs(np.asarray(mask, dtype=bool))])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU over the last axis (bool cells); 0 where both are empty."""
    inter = np.count_nonzero(a & b, axis=-1)
    union = np.count_nonzero(a | b, axis=-1)
    return inter / np.maximum(union, 1)


def _combine(ious: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3) IoUs with the pair / left / right prior -> (mean per-lung IoU, q_prior).

    Geometric mean: both the arrangement and the single lungs must look right."""
    lung = ious[..., 1:].mean(axis=-1)
    return lung, np.sqrt(ious[..., 0] * lung)


def _as_masks(masks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    # Accept single masks or whole shard stacks, so a caller can stream shard after shard.
    for m in masks:
        m = np.asarray(m)
        if m.ndim == 3:
            yield from (np.asarray(x, dtype=bool) for x in m)
        else:
            yield m.astype(bool, copy=False)


def build_shape_prior(masks: Iterable[np.ndarray], grid: int = 64, keep_fraction: float = 0.5,
                      max_iter: int = 20, films: Iterable[Film] | None = None) -> ShapePrior:
    """Cohort shape prior from the most self-consistent `keep_fraction` of the non-empty masks.

    Iterate: mean of the kept masks -> score of every mask against its majority shape -> keep the
    top fraction -> repeat until the kept set stops changing. Trimming to the self-consistent part
    makes the prior robust to the failures it is meant to catch, without any labels.
    `films`: one film box per mask, in the order the masks stream (see find_film); none: whole images.
    Exact duplicate masks (one study exported several times, in several formats) count once:
    a cohort dominated by copies would otherwise make them the whole kept half, its spread zero,
    and every other mask an outlier.
    Streams: keeps each mask only as 3 x grid^2 bits plus a few floats."""
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    packed, feats, seen, duplicates = [], [], set(), 0
    film_iter = iter(films) if films is not None else None
    for m in _as_masks(masks):
        film = next(film_iter) if film_iter is not None else FULL_FILM
        if not m.any():
            continue
        key = hashlib.blake2b(np.packbits(m).tobytes() + str(m.shape).encode(), digest_size=16).digest()
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        packed.append(np.packbits(shape_codes(m, grid).ravel()))
        feats.append([geometry_features(m, film)[k] for k in GEOMETRY])
    if not packed:
        raise ValueError("cannot build a shape prior: every mask is empty")
    cells = grid * grid
    x = np.unpackbits(np.stack(packed), axis=1, count=3 * cells).astype(bool).reshape(-1, 3, cells)
    n_keep = max(1, int(np.ceil(keep_fraction * len(x))))
    keep = np.ones(len(x), bool)
    for _ in range(max_iter):
        typical = x[keep].mean(axis=0) >= 0.5
        _, score = _combine(_iou(x, typical[None]))
        new_keep = np.zeros(len(x), bool)
        new_keep[np.argsort(-score, kind="stable")[:n_keep]] = True
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    f = np.asarray(feats, dtype=float)[keep]
    median = np.median(f, axis=0)
    scale = np.maximum(MAD_TO_SD * np.median(np.abs(f - median), axis=0), MIN_SCALE)
    return ShapePrior(maps=x[keep].mean(axis=0).reshape(3, grid, grid).astype(np.float32),
                      median=dict(zip(GEOMETRY, map(float, median))),
                      scale=dict(zip(GEOMETRY, map(float, scale))),
                      n_masks=len(x), n_kept=int(keep.sum()), n_duplicates=duplicates)


def save_prior(prior: ShapePrior, path: Path | str) -> None:
    from lungssl.storage import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file handle: np.savez would append ".npz" to a bare path
            np.savez(fh, maps=prior.maps, features=np.array(GEOMETRY),
                     median=np.array([prior.median[k] for k in GEOMETRY]),
                     scale=np.array([prior.scale[k] for k in GEOMETRY]),
                     counts=np.array([prior.n_masks, prior.n_kept]),
                     judging=np.array(json.dumps(prior.judging, sort_keys=True)))


def load_prior(path: Path | str) -> ShapePrior:
    with np.load(path) as z:
        names = [str(k) for k in z["features"]]
        if sorted(names) != sorted(GEOMETRY):
            raise ValueError(f"{path}: prior features {names} do not match this version's {list(GEOMETRY)}")
        return ShapePrior(maps=z["maps"].astype(np.float32),
                          median=dict(zip(names, map(float, z["median"]))),
                          scale=dict(zip(names, map(float, z["scale"]))),
                          n_masks=int(z["counts"][0]), n_kept=int(z["counts"][1]),
                          judging=json.loads(str(z["judging"])) if "judging" in z else {})


def prior_ious(mask: np.ndarray, prior: ShapePrior) -> np.ndarray:
    """IoU of the pair, left and right lung with the prior's typical shapes (3 values)."""
    codes = shape_codes(mask, prior.grid).reshape(3, -1)
    return _iou(codes, prior.binary.reshape(3, -1))


def worst_z(prior: ShapePrior, geo: dict[str, float]) -> tuple[str, float]:
    """The placement or size feature furthest from the cohort, and its robust z-score."""
    z = prior.z_scores(geo)
    name = max(z, key=lambda k: abs(z[k]))
    return name, float(z[name])


def z_gate(max_abs_z: float, params: QCParams) -> float:
    """1 while the worst feature is within z_soft robust SDs of the cohort, 0 from z_hard on."""
    return float(np.clip((params.z_hard - max_abs_z) / (params.z_hard - params.z_soft), 0.0, 1.0))


def cohort_scores(mask: np.ndarray, prior: ShapePrior, params: QCParams,
                  film: Film = FULL_FILM) -> dict[str, float]:
    geo = geometry_features(mask, film)
    ious = prior_ious(mask, prior)
    lung, q_prior = _combine(ious)
    # An empty mask has nothing to judge: infinitely far from the cohort.
    max_z = abs(worst_z(prior, geo)[1]) if mask.any() else float("inf")
    gate = z_gate(max_z, params)
    score = float(q_prior) * gate
    return {**{f"f_{k}": v for k, v in geo.items()}, "f_prior_iou": float(ious[0]), "f_lung_iou": float(lung),
            "f_max_abs_z": max_z, "q_prior": float(q_prior), "q_gate": gate,
            "qc_outlier": bool(max_z > params.z_soft),
            "qc_score": score, "qc_pass": bool(score >= params.cohort_threshold)}
