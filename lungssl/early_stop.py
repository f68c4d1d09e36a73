"""The label-free early-learning stop (ADELE rule, Liu et al., CVPR 2022).

Networks fit the clean part of noisy targets first and memorise the noise later. The training
Dice against the (noisy) targets follows a saturating curve; once its fitted slope falls to a
small share of its initial slope the network has learnt what is learnable and starts memorising.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import curve_fit


def saturating(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * (1 - np.exp(-b * np.power(t, c)))


def _derivative(t: float, a: float, b: float, c: float) -> float:
    return a * b * c * t ** (c - 1) * np.exp(-b * t**c)


def fit_curve(values: list[float]) -> tuple[float, float, float] | None:
    if len(values) < 3:
        return None
    t = np.arange(1, len(values) + 1, dtype=float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(saturating, t, np.asarray(values, float), p0=(max(values), 0.5, 1.0),
                                  bounds=([0, 1e-6, 0.1], [2.0, 50.0, 5.0]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return tuple(float(p) for p in params)


def slope_ratio(values: list[float]) -> float:
    """Fitted slope at the last epoch divided by the slope at epoch 1 (1.0 while it cannot be fitted)."""
    params = fit_curve(values)
    if params is None:
        return 1.0
    first = _derivative(1.0, *params)
    return float(_derivative(float(len(values)), *params) / first) if first > 0 else 0.0
