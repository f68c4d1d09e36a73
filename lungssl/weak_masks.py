"""Weak lung masks from classical vision: image in, mask out, no learning and no labels.

The baseline recipe, one small function per step, in the order the method describes:
CLAHE -> blur -> rib/line suppression -> inversion -> bilateral filter -> threshold ->
border removal -> morphology -> connected components -> small-object removal.
Sizes are given in pixels at a 256 px image side and scaled with the image, so one config
serves any working resolution.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import sobel
from skimage.segmentation import clear_border, watershed

REFERENCE_SIDE = 256


@dataclass(frozen=True)
class WeakMaskParams:
    method: str = "pair"  # "baseline" (single Otsu level) or "pair" (threshold sweep + lung-pair choice)
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    blur_px: int = 5
    rib_px: int = 15
    bilateral_d: int = 9
    bilateral_sigma_color: float = 50.0
    bilateral_sigma_space: float = 50.0
    threshold: str = "otsu"  # "otsu" or a fixed level 0..255 given as a string of digits
    threshold_offset: float = 0.0
    border_buffer_px: int = 1
    morph_px: int = 13
    min_object_fraction: float = 0.005
    keep_largest: int = 2
    # --- "pair" method (sizes in px at a 256 px side, everything else fractions) ---
    # CLAHE clips tried in order; the first that gives a plausible lung pair is kept. Gentle
    # equalisation leaves the heart and diaphragm brighter than lung (strong local equalisation
    # darkens them into the lung's grey range); the stronger clip rescues flat, low-contrast films.
    pair_clahe_clips: tuple[float, ...] = (0.5, 2.0)
    pair_percentiles: tuple[float, ...] = (10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60)  # of the central film
    pair_padding_tolerance: int = 8  # grey-level range below which an edge row/column is padding
    pair_midline_search: float = 0.2  # midline searched within +-this fraction of the film width
    pair_border_px: int = 4  # a lung stays this far from the film's side edges
    pair_min_lung_fraction: float = 0.01  # of the film area
    pair_max_midline_offset: float = 0.4  # lung centre to midline, fraction of film width
    pair_max_medial_gap: float = 0.2  # lung's inner edge to midline, fraction of film width
    pair_same_level: bool = True  # False: each lung may take its own level of the sweep
    pair_area_range: tuple[float, float] = (0.08, 0.45)  # both lungs together, fraction of film area
    pair_full_fill: float = 0.6  # share of its bounding box a whole lung fills
    pair_max_cross: float = 0.1  # lung overlap across the midline (fraction of width) that scores 0
    pair_marker_erode_px: int = 4
    pair_marker_dilate_px: int = 14
    pair_smooth_px: int = 11  # closing: fills the bays vessels and nodules leave at the edge
    pair_open_px: int = 11  # opening: cuts thin leaks; larger also blunts the costophrenic angles
    pair_lateral_hull: bool = True  # fill each lung's outer border out to its convex hull
    # --- stability of the mask under small perturbations (a label-free QC signal, "pair" only) ---
    # marker: the watershed re-run from tighter markers (erosion x scale, background band / scale);
    # contrast: the whole method re-run at 1/downscale of the side with the CLAHE clip x scale.
    stability: tuple[str, ...] = ("marker", "contrast")  # () = off (stability is NaN)
    stability_marker_scale: float = 2.0
    stability_contrast_scale: float = 0.5
    stability_downscale: int = 2

    @classmethod
    def from_config(cls, cfg: dict) -> "WeakMaskParams":
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"unknown weak-mask parameter(s): {', '.join(sorted(unknown))}")
        values = {k: (str(v) if k == "threshold" else v) for k, v in cfg.items()}
        # YAML gives lists; tuples keep the params hashable and immutable.
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
        if values.get("method", "baseline") not in METHODS:
            raise ValueError(f"unknown weak-mask method {values['method']!r}; choose one of {sorted(METHODS)}")
        if "pair_clahe_clips" in values and not values["pair_clahe_clips"]:
            raise ValueError("pair_clahe_clips needs at least one CLAHE clip")
        unknown = set(values.get("stability", ())) - set(PERTURBATIONS)
        if unknown:
            raise ValueError(f"unknown stability perturbation(s) {sorted(unknown)}; choose from {list(PERTURBATIONS)}")
        return cls(**values)

    def as_dict(self) -> dict:
        return asdict(self)


def _px(value: float, side: int, odd: bool = False) -> int:
    n = max(1, int(round(value * side / REFERENCE_SIDE)))
    return n + 1 - n % 2 if odd else n


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def equalize(image: np.ndarray, clip: float, tiles: int) -> np.ndarray:
    # Local equalisation evens out exposure differences between devices before any threshold.
    return cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(image)


def blur(image: np.ndarray, px: int) -> np.ndarray:
    k = _px(px, image.shape[0], odd=True)
    return cv2.GaussianBlur(image, (k, k), 0)


def suppress_ribs(image: np.ndarray, px: int) -> np.ndarray:
    # Ribs and lines are bright structures thinner than the lungs: a grey opening removes them
    # and leaves the dark lung field in one piece.
    return cv2.morphologyEx(image, cv2.MORPH_OPEN, _disk(_px(px, image.shape[0]) // 2))


def invert(image: np.ndarray) -> np.ndarray:
    return 255 - image


def smooth_edges(image: np.ndarray, d: int, sigma_color: float, sigma_space: float) -> np.ndarray:
    # Edge-preserving smoothing: flattens texture inside the lungs but keeps their boundary sharp.
    return cv2.bilateralFilter(image, _px(d, image.shape[0]), sigma_color, sigma_space)


def threshold(image: np.ndarray, method: str, offset: float) -> np.ndarray:
    if method == "otsu":
        level, _ = cv2.threshold(image, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    else:
        level = float(method)
    return image > level + offset


def remove_border_objects(mask: np.ndarray, buffer_px: int) -> np.ndarray:
    # Air outside the body and black padding reach the image edge; lungs do not.
    return clear_border(mask, buffer_size=_px(buffer_px, mask.shape[0]))


def open_mask(mask: np.ndarray, px: int) -> np.ndarray:
    kernel = _disk(_px(px, mask.shape[0]) // 2)
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel) > 0


def close_and_fill(mask: np.ndarray, px: int) -> np.ndarray:
    kernel = _disk(_px(px, mask.shape[0]) // 2)
    return ndi.binary_fill_holes(cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel) > 0)


def keep_largest_objects(mask: np.ndarray, keep: int, min_fraction: float) -> np.ndarray:
    """Keep the `keep` largest connected components that are not negligibly small."""
    labels, n = ndi.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    areas = np.bincount(labels.ravel())[1:]
    order = np.argsort(areas)[::-1][:keep]
    big = [i + 1 for i in order if areas[i] >= min_fraction * mask.size]
    return np.isin(labels, big)


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"weak_mask needs a 2-D uint8 image, got {image.dtype} {image.shape}")


def baseline_mask(image: np.ndarray, params: WeakMaskParams = WeakMaskParams()) -> np.ndarray:
    """The baseline recipe: uint8 gray image (H x W) -> bool lung mask (H x W)."""
    _check_image(image)
    x = normalise(image, params, params.clahe_clip)
    x = suppress_ribs(x, params.rib_px)
    x = invert(x)
    x = smooth_edges(x, params.bilateral_d, params.bilateral_sigma_color, params.bilateral_sigma_space)
    m = threshold(x, params.threshold, params.threshold_offset)
    # Opening first: the lungs often touch the outside air through a thin dark bridge, which
    # border removal would otherwise follow and delete the lung with the air.
    m = open_mask(m, params.morph_px)
    m = remove_border_objects(m, params.border_buffer_px)
    m = close_and_fill(m, params.morph_px)
    return keep_largest_objects(m, params.keep_largest, params.min_object_fraction)


# ---------------------------------------------------------------- the "pair" method
# Instead of one global level, sweep a few levels and keep the one at which the largest plausible
# dark component on each side of the midline looks most like a left/right lung pair; then snap
# the boundary to the image edges with a marker-based watershed, and smooth each lung.
# normalise -> find_film -> find_midline -> best_pair (sweep_levels, side_candidates, pair_score)
# -> refine_watershed -> smooth_lungs.

_LEFT, _RIGHT = 1, 2  # labels in image coordinates: 1 = left half of the image, 2 = right half
_BACKGROUND = 3  # watershed marker of the sure background


@dataclass(frozen=True)
class Candidate:
    """The lung candidate of one side at one threshold level (cheap statistics only)."""

    level: int
    label: int
    area: int
    left: int
    top: int
    width: int
    height: int
    cx: float

    @property
    def fill(self) -> float:
        return self.area / max(1, self.width * self.height)


def normalise(image: np.ndarray, params: WeakMaskParams, clip: float) -> np.ndarray:
    # CLAHE evens out exposure between devices; the blur removes noise and fine lung texture
    # so that a threshold gives solid lung components rather than speckle.
    return blur(equalize(image, clip, params.clahe_tiles), params.blur_px)


def _longest_run(flags: np.ndarray) -> tuple[int, int]:
    """(start, stop) of the longest run of True in a 1-D bool array; (0, 0) if there is none."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if len(starts) == 0:
        return 0, 0
    k = int(np.argmax(stops - starts))
    return int(starts[k]), int(stops[k])


def find_film(image: np.ndarray, tolerance: int = 8) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the exposed film: the box left after cutting uniform padding."""
    # Scanned or exported films are often framed by black (or white) padding; it is not image
    # content, and the edge of the film plays the role of the image border. A row or column is
    # content when it is not uniform; the film is the longest run of content, so a label or
    # marker burnt into the padding, apart from the film, does not stretch the box.
    top, bottom = _longest_run(np.ptp(image, axis=1) > tolerance)
    left, right = _longest_run(np.ptp(image, axis=0) > tolerance)
    if bottom - top < image.shape[0] // 4 or right - left < image.shape[1] // 4:
        return 0, image.shape[0], 0, image.shape[1]
    return top, bottom, left, right


def film_fractions(image: np.ndarray, tolerance: int = 8) -> tuple[float, float, float, float]:
    """find_film as fractions of the image's height and width: the film box the QC measures in."""
    top, bottom, left, right = find_film(image, tolerance)
    h, w = image.shape[:2]
    return top / h, bottom / h, left / w, right / w


def find_midline(x: np.ndarray, film: tuple[int, int, int, int], search: float = 0.2) -> int:
    """Column of the bright mediastinum/spine: the brightest column near the film centre."""
    # Both lungs are dark and the mediastinum between them is bright, so the (smoothed) column
    # mean of the chest rows peaks at the midline; searching only the central band keeps the
    # bright body edges and arms out.
    top, bottom, left, right = film
    h, w = bottom - top, right - left
    profile = x[top + h // 5: top + 4 * h // 5, left:right].mean(axis=0)
    k = max(1, w // 32)
    profile = np.convolve(profile, np.ones(k) / k, mode="same")
    lo, hi = int(w * (0.5 - search)), int(w * (0.5 + search)) + 1
    band = profile[lo:hi]
    # The mediastinum is a flat-topped band: take the centre of the plateau around the peak,
    # not its first column.
    peak = int(np.argmax(band))
    plateau = band >= band[peak] - 0.5
    start, stop = peak, peak
    while start > 0 and plateau[start - 1]:
        start -= 1
    while stop < len(band) - 1 and plateau[stop + 1]:
        stop += 1
    return left + lo + (start + stop) // 2


def sweep_levels(x: np.ndarray, film: tuple[int, int, int, int], percentiles: tuple[float, ...]) -> list[int]:
    # Levels are percentiles of the central film (mostly chest), not fixed grey values: the share
    # of the chest taken by lung is far more stable between hospitals than its grey level.
    top, bottom, left, right = film
    dh, dw = (bottom - top) // 10, (right - left) // 10
    values = x[top + dh: bottom - dh, left + dw: right - dw]
    return sorted({int(v) for v in np.percentile(values, percentiles)})


def side_candidates(x: np.ndarray, level: int, film: tuple[int, int, int, int], midline: int,
                    params: WeakMaskParams) -> tuple[np.ndarray, Candidate | None, Candidate | None]:
    """Labels of the dark components at `level`, and the largest plausible one on each side."""
    top, bottom, left_edge, right_edge = film
    h, w = bottom - top, right_edge - left_edge
    n, labels, stats, cents = cv2.connectedComponentsWithStats((x <= level).astype(np.uint8), connectivity=4)
    left, ctop, cw, ch, area = (stats[:, i] for i in range(5))
    b = _px(params.pair_border_px, x.shape[0])
    ok = area >= params.pair_min_lung_fraction * h * w
    # Outside air, arm-to-chest air and padding reach the side edges of the film; a PA film is
    # collimated to include the whole chest width, so a lung never does (it may be cut at the
    # top or bottom, so those edges are allowed).
    ok &= (left >= left_edge + b) & (left + cw <= right_edge - b)
    # A lung borders the mediastinum: its centre is not far out, and its medial edge is near the
    # midline; arm gaps and skin folds lie far lateral.
    ok &= np.abs(cents[:, 0] - midline) <= params.pair_max_midline_offset * w
    medial_gap = np.where(cents[:, 0] < midline, midline - (left + cw), left - midline)
    ok &= medial_gap <= params.pair_max_medial_gap * w
    ok[0] = False
    # The lung of each side is the largest remaining component whose centre is on that side.
    picks = []
    for on_side in (cents[:, 0] < midline, cents[:, 0] >= midline):
        idx = np.flatnonzero(ok & on_side)
        if len(idx) == 0:
            picks.append(None)
            continue
        i = int(idx[np.argmax(area[idx])])
        picks.append(Candidate(level, i, int(area[i]), int(left[i]), int(ctop[i]), int(cw[i]), int(ch[i]),
                               float(cents[i, 0])))
    return labels, picks[0], picks[1]


def pair_score(a: Candidate | None, b: Candidate | None, midline: int, film: tuple[int, int, int, int],
               params: WeakMaskParams) -> float:
    """How much two components look like a left/right lung pair (0 = not at all, larger = better)."""
    if a is None or b is None:
        return 0.0
    h, w = film[1] - film[0], film[3] - film[2]
    total = (a.area + b.area) / (h * w)
    if not params.pair_area_range[0] <= total <= params.pair_area_range[1]:
        return 0.0
    # Two lungs have similar size and height, and each fills its bounding box well; a lung that
    # has leaked into the abdomen, the trachea or the other side loses on all three counts.
    size = min(a.area, b.area) / max(a.area, b.area)
    height = min(a.height, b.height) / max(a.height, b.height)
    fill = min(1.0, min(a.fill, b.fill) / params.pair_full_fill)
    # A lung stays on its own side of the midline.
    cross = max(0, a.left + a.width - midline) + max(0, midline - b.left)
    side = max(0.0, 1.0 - cross / (params.pair_max_cross * w))
    # Among equally plausible pairs prefer the larger: the lungs grow with the level until they leak.
    return float(np.sqrt(size) * height * fill * side * total)


def best_pair(x: np.ndarray, film: tuple[int, int, int, int], midline: int, params: WeakMaskParams) -> np.ndarray:
    """Label image (0 / 1 left / 2 right) of the most plausible lung pair over the threshold sweep."""
    sweep = [side_candidates(x, lv, film, midline, params) for lv in sweep_levels(x, film, params.pair_percentiles)]
    # By default both lungs share one level (the pair is judged as a whole); with
    # pair_same_level=False each side may take its own, for a lung darker or more diseased than
    # the other - it rescues some lopsided films but lets mismatched leaks pair up more easily.
    best, choice = 0.0, None
    for i, (_, a, _) in enumerate(sweep):
        for j, (_, _, b) in enumerate(sweep):
            if params.pair_same_level and i != j:
                continue
            s = pair_score(a, b, midline, film, params)
            if s > best:
                best, choice = s, (i, j)
    out = np.zeros(x.shape, np.int8)
    if choice is not None:
        i, j = choice
        out[sweep[i][0] == sweep[i][1].label] = _LEFT
        out[(sweep[j][0] == sweep[j][2].label) & (out == 0)] = _RIGHT
    return out


def refine_watershed(x: np.ndarray, lungs: np.ndarray, erode_px: int, dilate_px: int) -> np.ndarray:
    """Snap a rough lung label image to the nearest strong edges with a marker-based watershed."""
    # Markers: the eroded lungs are surely lung, far outside the dilated lungs is surely not;
    # the band between goes to whichever marker it reaches first when flooding the gradient
    # magnitude, so the two floods meet on the edge's ridge - its centre, not its dark foot
    # (flooding the grey levels themselves left the boundary 1-2 px inside the lung).
    if not lungs.any():
        return lungs
    side = x.shape[0]
    markers = np.zeros(x.shape, np.int32)
    er, di = _disk(_px(erode_px, side)), _disk(_px(dilate_px, side))
    for lab in (_LEFT, _RIGHT):
        m = (lungs == lab).astype(np.uint8)
        core = cv2.erode(m, er)
        markers[(core if core.any() else m) > 0] = lab
    markers[cv2.dilate((lungs > 0).astype(np.uint8), di) == 0] = _BACKGROUND
    # Only the undecided band (and the markers touching it) takes part: the same result as
    # flooding the whole image, at a third of the cost.
    band = cv2.dilate((markers == 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    rows, cols = np.flatnonzero(band.any(axis=1)), np.flatnonzero(band.any(axis=0))
    if len(rows):
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        grad = sobel(x.astype(np.float32) / 255.0)[box]
        flooded = watershed(grad, markers[box], mask=band[box])
        markers[box] = np.where(band[box], flooded, markers[box])
    return np.where(markers == _BACKGROUND, 0, markers).astype(np.int8)


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """Bool mask of the filled convex hull of a mask's pixels (empty for an empty mask)."""
    out = np.zeros(mask.shape, np.uint8)
    points = cv2.findNonZero(np.asarray(mask).astype(np.uint8))
    if points is not None:
        cv2.fillConvexPoly(out, cv2.convexHull(points), 1)
    return out.astype(bool)


def fill_lateral_notches(lung: np.ndarray, lateral_is_left: bool) -> np.ndarray:
    """One lung (bool or 0/1, one component) with its outer border filled out to its convex hull.

    The outer border of a lung on a frontal film follows the inside of the rib cage, which is convex
    from apex to costophrenic angle; a notch there is where a breast or soft-tissue shadow or a rib
    crossing pushed the threshold inwards, not lung missing. Only pixels outside the lung on its
    lateral side of each row are added: the medial border (heart, hila) and the diaphragm's dome
    are concave by anatomy and stay as they are."""
    lung = np.asarray(lung, bool)
    seen = lung if lateral_is_left else lung[:, ::-1]
    outside = np.cumsum(seen, axis=1) == 0  # no lung pixel yet, coming in from the lateral side
    if not lateral_is_left:
        outside = outside[:, ::-1]
    return lung | (convex_hull(lung) & outside)


def smooth_lungs(lungs: np.ndarray, px: int, open_px: int | None = None, lateral_hull: bool = False) -> np.ndarray:
    """One solid, smooth component per lung: largest piece, holes filled, notches closed.

    px: the closing's diameter; open_px: the opening's (px when None), both at a 256 px side;
    lateral_hull: fill each lung's outer border out to its convex hull (fill_lateral_notches)."""
    # Vessels, nodules and consolidation leave holes and bays in a threshold mask; a lung is a
    # single simply connected region with a smooth outline.
    out = np.zeros(lungs.shape, np.uint8)
    close_k = _disk(max(1, _px(px, lungs.shape[0]) // 2))
    open_k = _disk(max(1, _px(px if open_px is None else open_px, lungs.shape[0]) // 2))
    for lab in (_LEFT, _RIGHT):
        m = cv2.morphologyEx((lungs == lab).astype(np.uint8), cv2.MORPH_CLOSE, close_k)
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, open_k)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if contours:
            filled = np.zeros_like(m)
            cv2.drawContours(filled, [max(contours, key=cv2.contourArea)], -1, 1, -1)
            if lateral_hull:
                filled = fill_lateral_notches(filled, lab == _LEFT)
            out[(filled > 0) & (out == 0)] = lab
    return out.astype(np.int8)


def _smooth(lungs: np.ndarray, params: WeakMaskParams) -> np.ndarray:
    """smooth_lungs with the closing, opening and lateral-hull settings of `params`."""
    return smooth_lungs(lungs, params.pair_smooth_px, params.pair_open_px, params.pair_lateral_hull)


def snap_to_edges(image: np.ndarray, mask: np.ndarray, params: WeakMaskParams = WeakMaskParams(),
                  erode_px: int = 3, dilate_px: int = 6) -> np.ndarray:
    """A model's lung mask (bool, image-sized) with its boundary moved onto the image's nearest edges.

    A network trained on pseudo-masks draws smooth, consistent outlines that sit a pixel or two off
    the anatomy's edges (blurred by downsampling, and biased the way its targets were); the
    marker-based watershed of the weak masks, run in a narrow band (erode_px inside to dilate_px
    outside, px at a 256 px side) around the model's boundary, puts it on the gradient's ridge while
    the model keeps deciding what is lung. The same normalisation as the weak masks' first pass."""
    from lungssl.qc import split_lungs

    _check_image(image)
    if mask.shape != image.shape:
        raise ValueError(f"mask {mask.shape} and image {image.shape} differ in shape")
    if not mask.any():
        return np.zeros(mask.shape, bool)
    _, left, right = split_lungs(np.asarray(mask, bool))
    lungs = np.where(left, _LEFT, np.where(right, _RIGHT, 0)).astype(np.int8)
    x = normalise(image, params, params.pair_clahe_clips[0])
    return _smooth(refine_watershed(x, lungs, erode_px, dilate_px), params) > 0


def _pair_stages(image: np.ndarray, params: WeakMaskParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised image, rough pair from the sweep, final label image) of the "pair" method."""
    _check_image(image)
    film = find_film(image, params.pair_padding_tolerance)
    for clip in params.pair_clahe_clips:
        x = normalise(image, params, clip)
        rough = best_pair(x, film, find_midline(x, film, params.pair_midline_search), params)
        if rough.any():
            break
    lungs = refine_watershed(x, rough, params.pair_marker_erode_px, params.pair_marker_dilate_px)
    return x, rough, _smooth(lungs, params)


def weak_lungs(image: np.ndarray, params: WeakMaskParams = WeakMaskParams(method="pair")) -> np.ndarray:
    """uint8 gray image (H x W) -> int8 label image: 0 background, 1 lung on the image's left, 2 right."""
    return _pair_stages(image, params)[2]


# ---------------------------------------------------------------- stability (label-free QC signal)
# A reliable mask sits on strong, unambiguous edges: re-deriving it under a small change of the
# method gives almost the same mask. A wrong one (a leak into the mediastinum, a lung cut at a
# faint edge, a pair chosen between two similar candidates) moves. stability = mean IoU of the
# mask with its re-derivations; each costs a fraction of the method (a watershed, or a run at
# half the side), not a second full run.

def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0  # empty: nothing stable to judge


def _marker_rerun(image: np.ndarray, x: np.ndarray, rough: np.ndarray, params: WeakMaskParams) -> np.ndarray:
    # The watershed from tighter markers: lung cores eroded `scale` times deeper, the sure
    # background brought `scale` times closer. Strong edges catch the flood either way.
    s = params.stability_marker_scale
    erode = max(1, int(round(params.pair_marker_erode_px * s)))
    dilate = max(1, int(round(params.pair_marker_dilate_px / s)))
    return _smooth(refine_watershed(x, rough, erode, dilate), params) > 0


def _contrast_rerun(image: np.ndarray, x: np.ndarray, rough: np.ndarray, params: WeakMaskParams) -> np.ndarray:
    # The whole method (sweep, pair choice, watershed) on a coarser, less contrast-equalised copy:
    # a different exposure normalisation and sampling; an ambiguous pair choice flips.
    h, w = image.shape
    k = max(1, int(params.stability_downscale))
    small = cv2.resize(image, (max(8, w // k), max(8, h // k)), interpolation=cv2.INTER_AREA)
    clips = tuple(c * params.stability_contrast_scale for c in params.pair_clahe_clips)
    alt = weak_lungs(small, replace(params, pair_clahe_clips=clips))
    return cv2.resize((alt > 0).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5


PERTURBATIONS = {"marker": _marker_rerun, "contrast": _contrast_rerun}


def pair_lungs_with_stability(image: np.ndarray, params: WeakMaskParams = WeakMaskParams()
                              ) -> tuple[np.ndarray, float]:
    """(label image as weak_lungs, stability in [0, 1]; NaN when params.stability is empty)."""
    x, rough, lungs = _pair_stages(image, params)
    if not params.stability:
        return lungs, float("nan")
    mask = lungs > 0
    return lungs, float(np.mean([_iou(mask, PERTURBATIONS[p](image, x, rough, params)) for p in params.stability]))


def pair_mask_with_stability(image: np.ndarray, params: WeakMaskParams = WeakMaskParams()
                             ) -> tuple[np.ndarray, float]:
    """The "pair" mask (bool H x W) and its stability: mean IoU with its perturbed re-derivations."""
    lungs, stability = pair_lungs_with_stability(image, params)
    return lungs > 0, stability


def pair_mask(image: np.ndarray, params: WeakMaskParams = WeakMaskParams(method="pair")) -> np.ndarray:
    """The "pair" method: uint8 gray image (H x W) -> bool lung mask (H x W)."""
    return weak_lungs(image, params) > 0


METHODS = {"baseline": baseline_mask, "pair": pair_mask}


def weak_mask(image: np.ndarray, params: WeakMaskParams = WeakMaskParams()) -> np.ndarray:
    """uint8 gray image (H x W) -> bool lung mask (H x W), by the method named in `params.method`."""
    try:
        method = METHODS[params.method]
    except KeyError:
        raise ValueError(f"unknown weak-mask method {params.method!r}; choose one of {sorted(METHODS)}") from None
    return method(image, params)


def weak_mask_with_stability(image: np.ndarray, params: WeakMaskParams = WeakMaskParams()
                             ) -> tuple[np.ndarray, float]:
    """(mask as weak_mask, stability); the stability is NaN for methods without one ("baseline")."""
    if params.method == "pair":
        return pair_mask_with_stability(image, params)
    return weak_mask(image, params), float("nan")


def weak_masks_with_stability(images: np.ndarray, params: WeakMaskParams, progress: bool = False
                              ) -> tuple[np.ndarray, np.ndarray]:
    """A stack of images (N x H x W) -> (stack of masks, N stabilities)."""
    from lungssl.progress import Progress

    out = np.zeros(images.shape, dtype=bool)
    stability = np.full(len(images), np.nan)
    with Progress(len(images) if progress else 0, "weak masks") as bar:
        for i in range(len(images)):
            out[i], stability[i] = weak_mask_with_stability(np.asarray(images[i]), params)
            bar.update()
    return out, stability


def weak_masks(images: np.ndarray, params: WeakMaskParams, progress: bool = False) -> np.ndarray:
    """A stack of images (N x H x W) -> a stack of masks, one image at a time (memory stays flat)."""
    from lungssl.progress import Progress

    out = np.zeros(images.shape, dtype=bool)
    with Progress(len(images) if progress else 0, "weak masks") as bar:
        for i in range(len(images)):
            out[i] = weak_mask(np.asarray(images[i]), params)
            bar.update()
    return out
