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


def learning_curve(metrics, path: Path | str, title: str) -> None:
    """Train/val Dice per epoch with the fitted saturating curve and the chosen (stop) epoch."""
    from lungssl.early_stop import fit_curve, saturating

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(metrics["epoch"], metrics["train_dice"], "o-", label="train Dice (vs targets)")
    if metrics["val_dice"].notna().any():
        ax.plot(metrics["epoch"], metrics["val_dice"], "s-", label="val Dice (vs targets)")
    params = fit_curve(metrics["train_dice"].tolist())
    if params is not None:
        t = np.linspace(1, metrics["epoch"].max(), 100)
        ax.plot(t, saturating(t, *params), "--", color="gray", label="saturating fit")
    chosen = metrics.loc[metrics["chosen"], "epoch"]
    if len(chosen):
        ax.axvline(int(chosen.iloc[0]), color="#c44e52", ls=":", label=f"chosen epoch {int(chosen.iloc[0])}")
    ax.set(xlabel="epoch", ylabel="Dice", title=title, ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def roc_plot(scores, manifest, positive: str, negative: str, path: Path | str) -> None:
    """ROC curve of the heatmap score, one line per labelled subset; a note where there are no labels."""
    from lungssl.heatmaps import labelled_subsets

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    drawn = 0
    for subset, n, _, (fpr, tpr, auc) in labelled_subsets(scores, manifest, positive, negative):
        ax.plot(fpr, tpr, label=f"{subset}: AUC {auc:.3f} (n={n})")
        drawn += 1
    ax.plot([0, 1], [0, 1], color="grey", ls=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title=f"heatmap score: {positive} vs {negative}")
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no images labelled {positive} and {negative}:\nnothing to measure",
                ha="center", va="center")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
