"""Shared fixtures. Real-data tests read ../shared/data and skip cleanly without it."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LUNGSSL_SHARED_DATA", REPO.parent / "shared" / "data"))
DEV_SET = SHARED_DATA / "montgomery-shenzhen-512"


def require_dev_set() -> Path:
    if not (DEV_SET / "images").is_dir():
        pytest.skip(f"real-data test: {DEV_SET} not found (only CI and developers have ../shared/data)")
    return DEV_SET


PNEUMONIA_SET = SHARED_DATA / "chest-xray-pneumonia-224"


def require_pneumonia_set() -> Path:
    if not (PNEUMONIA_SET / "test").is_dir():
        pytest.skip(f"real-data test: {PNEUMONIA_SET} not found (only CI and developers have ../shared/data)")
    return PNEUMONIA_SET


def toy_radiograph(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A minimal chest-like image (gray body, two dark lungs, bright mediastinum) and its lung mask."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.uint8)
    s = size / 256
    cv2.ellipse(img, (size // 2, size // 2 + int(10 * s)), (int(110 * s), int(125 * s)), 0, 0, 360, 170, -1)
    mask = np.zeros_like(img)
    for cx in (int(78 * s), int(178 * s)):
        cv2.ellipse(mask, (cx, int(125 * s)), (int(34 * s), int(75 * s)), 0, 0, 360, 255, -1)
    img[mask > 0] = 70
    noise = rng.normal(0, 6, img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    return img, mask > 0


@pytest.fixture
def toy() -> tuple[np.ndarray, np.ndarray]:
    return toy_radiograph()


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path
