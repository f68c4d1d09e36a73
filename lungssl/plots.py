"""Figures written by the workflow (PNG, headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # compute nodes have no display
import matplotlib.pyplot as plt
import numpy as np

from lungssl.storage import atomic_path


def score_histogram(scores: np.ndarray, threshold: float, path: Path | str, title: str = "QC score") -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(scores, bins=np.linspace(0, 1, 41), color="#4c72b0")
    ax.axvline(threshold, color="#c44e52", ls="--", label=f"threshold {threshold:.2f}")
    passed = float(np.mean(scores >= threshold)) if len(scores) else 0.0
    ax.set(xlabel="QC score", ylabel="masks", title=f"{title}: {passed:.0%} of {len(scores)} pass")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
