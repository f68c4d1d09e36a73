"""Seeded synthetic frontal chest radiographs with their true lung masks.

This is the embedded default dataset: a user who runs the workflow without
data gets these. The images are built so the classical weak-mask recipe
(CLAHE, blur, rib suppression, Otsu, ...) works on most of them but fails on
a tagged share of hard cases, which gives quality control and self-learning
something real to do. Anatomy is drawn in film coordinates normalised to
[0, 1] so that a patient's second view can reuse it at another size.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

HARD_KINDS: tuple[str, ...] = ("consolidation", "effusion", "low_contrast")
SECOND_VIEW_RATE = 0.15
_MARKERS = ("L", "R", "PORTABLE", "AP", "SUPINE", "ERECT")


@dataclass(frozen=True)
class SyntheticCase:
    image: np.ndarray  # uint8 HxW
    mask: np.ndarray  # uint8 HxW, 0/255
    hard: str  # "" for normal cases, else one of HARD_KINDS


@dataclass(frozen=True)
class LungShape:
    """One lung; distances are from the body midline, as film fractions."""

    medial: float  # medial edge distance at mid height
    lateral: float  # lateral edge distance at the costophrenic angle
    y_apex: float
    y_cp: float  # costophrenic angle (lowest lateral point)
    y_cm: float  # medial end of the diaphragm
    dome: float  # diaphragm dome height above the chord
    cap_k: float  # >1 gives a broader, blunter apex
    wiggle: float
    phase: float


@dataclass(frozen=True)
class Anatomy:
    cx: float
    body_w: float
    neck_y: float
    shoulder_y: float
    arms: bool
    arm_gap: float
    lungs: tuple[LungShape, LungShape]  # image-left (patient right), image-right
    heart: tuple[float, float, float, float, float]  # cx, cy, ax, ay, angle deg
    med_top: float
    med_bottom: float
    rib_y0: float
    rib_dy: float
    rib_w: float
    clav_y: float
    tissue: float
    lung_dark: float
    edge: float  # blur of the lung edge: partial volume at the pleura
    texture_seed: int


@dataclass(frozen=True)
class Acquisition:
    height: int
    width: int
    box: tuple[int, int, int, int]  # y0, x0, h, w of the film inside the canvas
    angle: float
    gamma: float
    contrast: float
    offset: float
    noise: float
    blur: float
    markers: tuple[str, ...]


# ---------------------------------------------------------------- sampling


def _sample_lung(rng: np.random.Generator, right_patient: bool) -> LungShape:
    # The patient's right lung is wider and its hemidiaphragm sits higher (liver).
    widen = 0.02 if right_patient else 0.0
    lift = 0.025 if right_patient else 0.0
    y_cp = rng.uniform(0.70, 0.84) - lift
    return LungShape(
        medial=rng.uniform(0.035, 0.06),
        lateral=rng.uniform(0.28, 0.34) + widen,
        y_apex=rng.uniform(0.10, 0.17),
        y_cp=y_cp,
        y_cm=y_cp - rng.uniform(0.03, 0.09),
        dome=rng.uniform(0.05, 0.11),
        cap_k=rng.uniform(1.6, 3.0),
        wiggle=rng.uniform(0.0, 0.012),
        phase=rng.uniform(0, 2 * np.pi),
    )


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy (shared by all views of that patient)."""
    cx = 0.5 + rng.normal(0, 0.015)
    lungs = (_sample_lung(rng, True), _sample_lung(rng, False))
    body_w = max(lu.lateral for lu in lungs) + rng.uniform(0.08, 0.16)
    ay = rng.uniform(0.10, 0.14)
    # the heart rests on the left hemidiaphragm
    hy = lungs[1].y_cm - ay * rng.uniform(0.55, 0.8)
    heart = (cx + rng.uniform(0.03, 0.07), hy, rng.uniform(0.13, 0.18), ay, rng.uniform(-35, -15))
    return Anatomy(
        cx=cx,
        body_w=body_w,
        neck_y=rng.uniform(0.0, 0.04),
        shoulder_y=rng.uniform(0.07, 0.13),
        arms=bool(rng.random() < 0.5),
        arm_gap=rng.uniform(0.0, 0.03),
        lungs=lungs,
        heart=heart,
        med_top=rng.uniform(0.035, 0.05),
        med_bottom=rng.uniform(0.06, 0.08),
        rib_y0=rng.uniform(0.13, 0.17),
        rib_dy=rng.uniform(0.062, 0.075),
        rib_w=rng.uniform(0.016, 0.024),
        clav_y=rng.uniform(0.17, 0.22),
        tissue=rng.uniform(0.62, 0.72),
        lung_dark=rng.uniform(0.34, 0.44),
        edge=rng.uniform(0.006, 0.02),
        texture_seed=int(rng.integers(2**31)),
    )


def _film_box(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    # Films are close to square or portrait; other canvases get black bars,
    # as when a scanner pads a non-square film. Some square-ish ones get bars too.
    lo, hi = 0.85, 1.25
    aspect = h / w
    fh, fw = h, w
    if aspect < lo:
        fw = int(round(h / rng.uniform(lo, min(hi, 1.1))))
    elif aspect > hi:
        fh = int(round(w * rng.uniform(max(lo, 1.0), hi)))
    elif rng.random() < 0.2:
        if rng.random() < 0.5:
            fw = int(round(w * rng.uniform(0.75, 0.92)))
        else:
            fh = int(round(h * rng.uniform(0.75, 0.92)))
    fh, fw = min(fh, h), min(fw, w)
    return int(rng.integers(0, h - fh + 1)), int(rng.integers(0, w - fw + 1)), fh, fw


def sample_acquisition(rng: np.random.Generator, height: int, width: int, hard: str) -> Acquisition:
    """Draw one exposure of a patient: size, padding, pose, exposure, noise, text."""
    low = hard == "low_contrast"
    n_markers = int(rng.choice([0, 0, 1, 2]))
    markers = tuple(str(m) for m in rng.choice(_MARKERS, size=n_markers, replace=False))
    return Acquisition(
        height=height,
        width=width,
        box=_film_box(rng, height, width),
        angle=rng.uniform(-5, 5),
        gamma=rng.uniform(0.75, 1.35),
        contrast=rng.uniform(0.18, 0.28) if low else rng.uniform(0.8, 1.05),
        offset=rng.uniform(0.30, 0.45) if low else rng.uniform(0.02, 0.08),
        noise=rng.uniform(0.06, 0.10) if low else rng.uniform(0.01, 0.03),
        blur=rng.uniform(0.6, 1.6),
        markers=markers,
    )


# ---------------------------------------------------------------- geometry


def lung_polygon(lung: LungShape, cx: float, side: int, n: int = 48) -> np.ndarray:
    """Closed outline (x, y) in film fractions; side -1 = image left, +1 = image right."""
    s = np.linspace(0.0, 1.0, n)
    apex_c = lung.medial + 0.35 * (lung.lateral - lung.medial)
    # sqrt-like growth from the apex gives a rounded cap; the power law keeps
    # the lateral wall nearly vertical at the bottom, so the angle is pointed.
    lat = apex_c + (lung.lateral - apex_c) * np.sqrt(1 - (1 - s) ** (2 * lung.cap_k))
    lat = lat + lung.wiggle * np.sin(3 * np.pi * s + lung.phase) * 4 * s * (1 - s)
    med = apex_c - (apex_c - lung.medial) * np.sqrt(np.clip(s / 0.18, 0, 1))
    y_side = lung.y_apex + s * (lung.y_cp - lung.y_apex)
    y_med = lung.y_apex + s * (lung.y_cm - lung.y_apex)
    u = np.linspace(0.0, 1.0, n)
    d_dia = lung.lateral + u * (lung.medial - lung.lateral)
    y_dia = lung.y_cp + u * (lung.y_cm - lung.y_cp) - lung.dome * np.sin(np.pi * u**0.8)
    d = np.concatenate([lat, d_dia[1:], med[::-1][1:]])
    y = np.concatenate([y_side, y_dia[1:], y_med[::-1][1:]])
    return np.stack([cx + side * d, y], axis=1)


def _to_px(pts: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.round(pts * [w, h]).astype(np.int32)


def _fill(pts: np.ndarray, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [_to_px(pts, h, w)], 1, cv2.LINE_8)
    return m


def _ellipse(
    h: int, w: int, c: tuple[float, float], ax: tuple[float, float], angle: float = 0.0
) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    center = (int(round(c[0] * w)), int(round(c[1] * h)))
    axes = (max(1, int(round(ax[0] * w))), max(1, int(round(ax[1] * h))))
    cv2.ellipse(m, center, axes, angle, 0, 360, 1, -1)
    return m


def _half_width(a: Anatomy, h: int) -> np.ndarray:
    """Body half-width per row: neck, sloping shoulders, then the chest wall."""
    y = np.arange(h, dtype=np.float32) / h
    t = np.clip((y - a.neck_y) / (a.shoulder_y - a.neck_y), 0, 1)
    shoulder = 0.09 + (a.body_w + 0.02 - 0.09) * t * t * (3 - 2 * t)
    # chest wall bows out at mid height and narrows towards the waist
    chest = a.body_w + 0.02 - 0.08 * np.clip((y - 0.45) / 0.55, 0, 1) ** 2
    return np.where(y < a.shoulder_y, shoulder, chest)


def _body(a: Anatomy, h: int, w: int) -> np.ndarray:
    dx = np.abs(np.arange(w, dtype=np.float32) / w - a.cx)[None, :]
    body = (dx < _half_width(a, h)[:, None]).astype(np.uint8)
    if a.arms:
        for side in (-1, 1):
            c = (a.cx + side * (a.body_w + 0.02 + a.arm_gap + 0.06), 0.72)
            body |= _ellipse(h, w, c, (0.06, 0.6))
    return body


def _mediastinum(a: Anatomy, h: int, w: int) -> np.ndarray:
    pts = np.array(
        [
            [a.cx - a.med_top, 0.0],
            [a.cx + a.med_top, 0.0],
            [a.cx + a.med_bottom, a.heart[1]],
            [a.heart[0], a.heart[1]],
            [a.heart[0], 1.0],
            [a.cx - a.med_bottom, 1.0],
        ]
    )
    med = _fill(pts, h, w)
    hx, hy, ax, ay, ang = a.heart
    med |= _ellipse(h, w, (hx, hy), (ax, ay), ang)
    # aortic knob bulges into the image-right lung
    med |= _ellipse(h, w, (a.cx + a.med_top + 0.015, 0.30), (0.035, 0.03))
    return med


def _curve(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _bones(a: Anatomy, h: int, w: int) -> np.ndarray:
    """Ribs, clavicles and spine as an additive density map."""
    out = np.zeros((h, w), np.float32)
    thick = max(2, int(round(a.rib_w * h)))
    for side in (-1, 1):
        for i in range(10):
            y = a.rib_y0 + i * a.rib_dy
            back = _curve(
                np.array([a.cx + side * 0.03, y]),
                np.array([a.cx + side * 0.22, y - 0.07]),
                np.array([a.cx + side * (a.body_w - 0.01), y + 0.11]),
            )
            cv2.polylines(out, [_to_px(back, h, w)], False, 0.06, thick, cv2.LINE_AA)
            front = _curve(
                np.array([a.cx + side * (a.body_w - 0.03), y - 0.03]),
                np.array([a.cx + side * 0.18, y + 0.0]),
                np.array([a.cx + side * 0.07, y + 0.10]),
            )
            cv2.polylines(out, [_to_px(front, h, w)], False, 0.03, max(2, thick - 1), cv2.LINE_AA)
        clav = _curve(
            np.array([a.cx + side * 0.04, a.clav_y + 0.01]),
            np.array([a.cx + side * 0.18, a.clav_y + 0.02]),
            np.array([a.cx + side * 0.33, a.clav_y - 0.06]),
        )
        cv2.polylines(out, [_to_px(clav, h, w)], False, 0.09, int(round(thick * 1.4)), cv2.LINE_AA)
    spine = np.zeros((h, w), np.float32)
    x0, x1 = int((a.cx - 0.035) * w), int((a.cx + 0.035) * w)
    spine[:, x0:x1] = 0.05
    # vertebral end plates: faint periodic stripes
    rows = np.arange(h) / h
    spine *= (1 + 0.35 * (np.sin(2 * np.pi * rows / (a.rib_dy * 0.5)) > 0.6))[:, None]
    return out + spine


# ---------------------------------------------------------------- rendering


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int = 4) -> np.ndarray:
    grid = rng.normal(size=(cells, cells)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(sigma, 0.5))


def _lesion(rng: np.random.Generator, hard: str, side_mask: np.ndarray, lung: LungShape) -> np.ndarray:
    """Opacity (0..1) inside one lung for consolidation/effusion, zeros otherwise."""
    h, w = side_mask.shape
    if not side_mask.any():
        return np.zeros((h, w), np.float32)
    if hard == "consolidation":
        ys, xs = np.nonzero(side_mask)
        blob = np.zeros((h, w), np.uint8)
        k = rng.integers(4, 8)
        centre = rng.integers(len(ys))
        for _ in range(k):
            j = (centre + rng.integers(-len(ys) // 4, len(ys) // 4)) % len(ys)
            ax = (int(rng.uniform(0.10, 0.18) * w), int(rng.uniform(0.10, 0.18) * h))
            cv2.ellipse(blob, (int(xs[j]), int(ys[j])), ax, rng.uniform(0, 180), 0, 360, 1, -1)
        return _soft(blob & side_mask, 0.02 * h) * rng.uniform(0.85, 1.1)
    if hard == "effusion":
        ys, xs = np.nonzero(side_mask)
        top, bottom = ys.min(), ys.max()
        lat_x = xs.min() if xs.mean() < w / 2 else xs.max()
        level = top + (bottom - top) * rng.uniform(0.2, 0.5)
        # fluid climbs the lateral wall: meniscus highest laterally, concave up
        d = np.abs(np.arange(w) - lat_x) / (lung.lateral * w)
        surface = level + (bottom - level) * 0.45 * (1 - np.exp(-d / 0.35))
        fluid = (np.arange(h)[:, None] > surface[None, :]).astype(np.uint8) & side_mask
        # fluid layering behind the lung also veils the whole hemithorax
        veil = rng.uniform(0.2, 0.45) * _soft(side_mask, 0.01 * h)
        return np.maximum(_soft(fluid, 0.015 * h) * rng.uniform(1.0, 1.15), veil)
    return np.zeros((h, w), np.float32)


def _soft_tissue(a: Anatomy, body: np.ndarray) -> np.ndarray:
    h, w = body.shape
    dx = np.arange(w, dtype=np.float32)[None, :] / w - a.cx
    # the body thins towards its edge, so the film darkens there
    r = np.clip(np.abs(dx) / _half_width(a, h)[:, None], 0, 1)
    return body * (a.tissue * (0.8 + 0.2 * np.sqrt(1 - r**2)))


def _lung_darkness(a: Anatomy, h: int, w: int) -> np.ndarray:
    # lungs are darkest laterally and apically, greyer at the hila and bases;
    # the texture is anatomy, so it is seeded by the patient, not the view
    tex = np.random.default_rng(a.texture_seed)
    dx = np.abs(np.arange(w, dtype=np.float32)[None, :] / w - a.cx)
    yy = np.arange(h, dtype=np.float32)[:, None] / h
    hilum = np.exp(-((dx - 0.09) ** 2) / 0.004 - (yy - 0.45) ** 2 / 0.01)
    texture = 1 + 0.08 * _smooth_field(tex, h, w, 12) + 0.05 * _smooth_field(tex, h, w, 5)
    return a.lung_dark * (1 - 0.35 * hilum - 0.15 * np.clip(yy - 0.5, 0, 1)) * texture


def _trachea(a: Anatomy, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    tx = int(round((a.cx + 0.005) * w))
    cv2.line(m, (tx, 0), (tx, int(0.33 * h)), 1, max(2, int(0.035 * w)))
    return m


def _density(a: Anatomy, hard: str, rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, ...]:
    """Film density (bright = dense), true lung mask and body mask at film size."""
    body = _body(a, h, w)
    med = _mediastinum(a, h, w)
    sides = [_fill(lung_polygon(lu, a.cx, s), h, w) & (1 - med) & body for lu, s in zip(a.lungs, (-1, 1))]
    lungs = sides[0] | sides[1]
    # the mask is the sharp polygon; the film sees a pleural edge blurred by partial volume
    d = _soft_tissue(a, body) - _lung_darkness(a, h, w) * _soft(lungs, a.edge * h)
    d += 0.12 * _soft(med & body, 0.01 * h)
    d -= 0.12 * _soft(_trachea(a, h, w) & body, 0.008 * h)
    # bones show best against aerated lung; soft tissue blurs them out
    d += (_soft(body, 1.0) * (0.5 + 0.5 * _soft(lungs, 0.01 * h))) * _bones(a, h, w)
    if hard in ("consolidation", "effusion"):
        side = int(rng.integers(2))
        d += a.lung_dark * _lesion(rng, hard, sides[side], a.lungs[side])
    return d.astype(np.float32), lungs, body


def _expose(d: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    h, w = d.shape
    d = cv2.GaussianBlur(d, (0, 0), acq.blur * h / 512)
    d = d * (1 + 0.07 * _smooth_field(rng, h, w, 3))
    x = np.clip(acq.offset + acq.contrast * d, 0, 1) ** acq.gamma
    x = x + rng.normal(0, 1, x.shape).astype(np.float32) * acq.noise * np.sqrt(x + 0.05)
    return np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)


def _rotate(img: np.ndarray, mask: np.ndarray, body: np.ndarray, angle: float) -> tuple[np.ndarray, ...]:
    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    flags = cv2.INTER_LINEAR
    img = cv2.warpAffine(img, m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    # masks rotate with the image; linear + threshold keeps the outline smooth
    mask = cv2.warpAffine(mask * 255, m, (w, h), flags=flags, borderValue=0) >= 128
    body = cv2.warpAffine(body * 255, m, (w, h), flags=flags, borderValue=0) >= 128
    return img, mask.astype(np.uint8), body.astype(np.uint8)


def _drop_specks(mask: np.ndarray) -> np.ndarray:
    # resampling during rotation can leave single-pixel islands at the rim
    _, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= 0.01 * max(1, int(mask.sum()))
    keep[0] = False
    return keep[lab].astype(np.uint8)


def _burn_text(img: np.ndarray, markers: tuple[str, ...], rng: np.random.Generator) -> None:
    h, w = img.shape
    corners = rng.permutation(4)
    for text, corner in zip(markers, corners):
        scale = h / 512 * rng.uniform(0.7, 1.3)
        thick = max(1, int(round(2 * h / 512)))
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        x = int(0.03 * w) if corner % 2 == 0 else w - tw - int(0.03 * w)
        y = int(0.03 * h) + th if corner < 2 else h - int(0.03 * h)
        cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)


def render(
    a: Anatomy, acq: Acquisition, hard: str, rng: np.random.Generator
) -> tuple[SyntheticCase, np.ndarray]:
    """Render one view; also returns the body mask (0/1) for checks."""
    y0, x0, fh, fw = acq.box
    d, lungs, body = _density(a, hard, rng, fh, fw)
    film, lungs, body = _rotate(_expose(d, acq, rng), lungs, body, acq.angle)
    image = np.zeros((acq.height, acq.width), np.uint8)
    mask = np.zeros_like(image)
    body_full = np.zeros_like(image)
    image[y0 : y0 + fh, x0 : x0 + fw] = film
    mask[y0 : y0 + fh, x0 : x0 + fw] = _drop_specks(lungs) * 255
    body_full[y0 : y0 + fh, x0 : x0 + fw] = body
    _burn_text(image, acq.markers, rng)
    return SyntheticCase(image=image, mask=mask, hard=hard), body_full


# ---------------------------------------------------------------- public API


def _check_hard(hard: str) -> None:
    if hard not in ("",) + HARD_KINDS:
        raise ValueError(f"hard must be '' or one of {HARD_KINDS}, got {hard!r}")


def make_case(
    rng: np.random.Generator, hard: str = "", height: int | None = None, width: int | None = None
) -> SyntheticCase:
    """One synthetic radiograph with its true lung mask (sizes default to 256..512)."""
    _check_hard(hard)
    height = int(rng.integers(256, 513)) if height is None else int(height)
    width = int(rng.integers(256, 513)) if width is None else int(width)
    if min(height, width) < 64:
        raise ValueError(f"image must be at least 64x64, got {height}x{width}")
    anatomy = sample_anatomy(rng)
    acq = sample_acquisition(rng, height, width, hard)
    return render(anatomy, acq, hard, rng)[0]


def _check_args(n: int, hard_fraction: float, min_size: int, max_size: int) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    if min_size < 64:
        raise ValueError(f"min_size must be >= 64, got {min_size}")
    if min_size > max_size:
        raise ValueError(f"min_size ({min_size}) must be <= max_size ({max_size})")


def plan_dataset(n: int, seed: int, hard_fraction: float) -> pd.DataFrame:
    """Which image belongs to which patient/view and which are hard (no pixels)."""
    rng = np.random.default_rng([seed, 0])
    rows: list[tuple[int, int]] = []
    patient = 0
    while len(rows) < n:
        views = 2 if (rng.random() < SECOND_VIEW_RATE and n - len(rows) >= 2) else 1
        rows.extend((patient, v) for v in range(views))
        patient += 1
    hard = np.array([""] * n, dtype=object)
    n_hard = int(round(n * hard_fraction))
    idx = rng.choice(n, size=n_hard, replace=False)
    hard[idx] = rng.choice(HARD_KINDS, size=n_hard)
    return pd.DataFrame(
        {
            "name": [f"p{p:04d}_{v:02d}" for p, v in rows],
            "patient": [f"p{p:04d}" for p, _ in rows],
            "view": [v for _, v in rows],
            "hard": [str(x) for x in hard],
        }
    )


def _png(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


def _generate(out: Path, plan: pd.DataFrame, seed: int, min_size: int, max_size: int) -> pd.DataFrame:
    (out / "images").mkdir()
    (out / "masks").mkdir()
    anatomies: dict[str, Anatomy] = {}
    sizes: list[tuple[int, int]] = []
    for i, row in enumerate(plan.itertuples(index=False)):
        rng = np.random.default_rng([seed, 1, i])
        if row.patient not in anatomies:
            # all views of a patient share one anatomy, seeded by the patient
            pid = int(row.patient[1:])
            anatomies[row.patient] = sample_anatomy(np.random.default_rng([seed, 2, pid]))
        h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        acq = sample_acquisition(rng, h, w, row.hard)
        case, _ = render(anatomies[row.patient], acq, row.hard, rng)
        _png(out / "images" / f"{row.name}.png", case.image)
        _png(out / "masks" / f"{row.name}.png", case.mask)
        sizes.append((w, h))
    table = pd.DataFrame(
        {
            "name": plan["name"],
            "patient": plan["patient"],
            "width": [s[0] for s in sizes],
            "height": [s[1] for s in sizes],
            "hard": plan["hard"],
        }
    )
    table.to_csv(out / "cases.csv", index=False)
    return table


def _sibling(out_dir: Path, tag: str) -> Path:
    # plain mkdir (not mkdtemp) so the final dataset gets umask permissions, not 0700
    while True:
        path = out_dir.parent / f"{out_dir.name}.{tag}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def write_dataset(
    out_dir: Path,
    n: int = 200,
    seed: int = 0,
    hard_fraction: float = 0.2,
    min_size: int = 256,
    max_size: int = 512,
) -> pd.DataFrame:
    """Write images/, masks/ and cases.csv under out_dir atomically; return the table.

    Everything is built in a temporary sibling and renamed into place, so an
    interrupted run never leaves a dataset that looks complete.
    """
    _check_args(n, hard_fraction, min_size, max_size)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out_dir, "tmp")
    try:
        table = _generate(tmp, plan_dataset(n, seed, hard_fraction), seed, min_size, max_size)
        if out_dir.exists():
            old = _sibling(out_dir, "old")
            os.replace(out_dir, old / "previous")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return table
