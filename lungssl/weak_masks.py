"""Weak lung masks from classical vision: image in, mask out, no learning and no labels.

The baseline recipe, one small function per step, in the order the method describes:
CLAHE -> blur -> rib/line suppression -> inversion -> bilateral filter -> threshold ->
border removal -> morphology -> connected components -> small-object removal.
Sizes are given in pixels at a 256 px image side and scaled with the image, so one config
serves any working resolution.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import clear_border

REFERENCE_SIDE = 256


@dataclass(frozen=True)
class WeakMaskParams:
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

    @classmethod
    def from_config(cls, cfg: dict) -> "WeakMaskParams":
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known - {"method"}
        if unknown:
            raise ValueError(f"unknown weak-mask parameter(s): {', '.join(sorted(unknown))}")
        return cls(**{k: (str(v) if k == "threshold" else v) for k, v in cfg.items() if k in known})

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


def weak_mask(image: np.ndarray, params: WeakMaskParams = WeakMaskParams()) -> np.ndarray:
    """uint8 gray image (H x W) -> bool lung mask (H x W)."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"weak_mask needs a 2-D uint8 image, got {image.dtype} {image.shape}")
    x = equalize(image, params.clahe_clip, params.clahe_tiles)
    x = blur(x, params.blur_px)
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


def weak_masks(images: np.ndarray, params: WeakMaskParams, progress: bool = False) -> np.ndarray:
    """A stack of images (N x H x W) -> a stack of masks, one image at a time (memory stays flat)."""
    from tqdm import tqdm

    out = np.zeros(images.shape, dtype=bool)
    for i in tqdm(range(len(images)), disable=not progress, mininterval=5):
        out[i] = weak_mask(np.asarray(images[i]), params)
    return out
