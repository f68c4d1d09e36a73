"""Figures written by the workflow (PNG, headless)."""
from __future__ import annotations

import inspect
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # compute nodes have no display
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np

from lungssl.storage import atomic_path


def _save(fig, path: Path | str, dpi: int = 100) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def _score_hist(ax, scores: np.ndarray, threshold: float, title: str) -> None:
    """QC scores on [0, 1] with the pass threshold as a dashed line; the title says how many pass."""
    scores = np.asarray(scores, dtype=float)
    ax.hist(scores, bins=np.linspace(0, 1, 41), color="#4c72b0")
    ax.axvline(threshold, color="#c44e52", ls="--", label=f"threshold {threshold:.2f}")
    passed = float(np.mean(scores >= threshold)) if len(scores) else 0.0
    ax.set(xlabel="QC score", ylabel="masks", title=f"{title}: {passed:.0%} of {len(scores)} pass", xlim=(0, 1))
    ax.legend(loc="upper left")


def score_histogram(scores: np.ndarray, threshold: float, path: Path | str, title: str = "QC score") -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    _score_hist(ax, scores, threshold, title)
    _save(fig, path)


def stage_histograms(scores: dict[str, np.ndarray], threshold: float, path: Path | str, per_row: int = 3) -> None:
    """One QC-score histogram per stage (weak masks, then each round's pseudo-masks), per_row to a row."""
    cols = min(per_row, max(len(scores), 1))
    rows = max(1, -(-len(scores) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel()[len(scores):]:
        ax.set_axis_off()
    for ax, (title, values) in zip(axes.ravel(), scores.items()):
        _score_hist(ax, values, threshold, title)
    _save(fig, path)


def pass_fraction_plot(rounds, target: float, path: Path | str) -> None:
    """Training-split QC pass fraction per round (0 = weak masks), the loop's target, where it stopped."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x, y = rounds["round"].to_numpy(), rounds["pass_fraction"].to_numpy()
    ax.plot(x, y, "o-", color="#4c72b0", zorder=3)
    for r, frac, n_pass, n_train in rounds[["round", "pass_fraction", "n_pass", "n_train"]].itertuples(index=False):
        ax.annotate(f"{frac:.0%}\n({n_pass}/{n_train})", (r, frac), textcoords="offset points",
                    xytext=(0, -30 if frac > 0.25 else 12), ha="center", fontsize=9)
    ax.axhline(target, color="#c44e52", ls="--", label=f"target {target:.2f}")
    stops = rounds[rounds["stop"]]
    for r, frac, reason in stops[["round", "pass_fraction", "reason"]].itertuples(index=False):
        ax.plot([r], [frac], "s", ms=11, mfc="none", mec="#c44e52", mew=2, label=f"stop at round {r}: {reason}")
    ax.set(xlabel="round (0 = weak masks)", ylabel="training masks passing QC", ylim=(0, 1.05),
           xlim=(x.min() - 0.3, x.max() + 0.3), xticks=x, title="Self-learning: QC pass fraction per round")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


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
    ax.set(xlabel="epoch", ylabel="Dice", title=title, ylim=(0, 1),
           xlim=(0.7, metrics["epoch"].max() + 0.3))  # room for a stop line at the last epoch
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


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
                ha="center", va="center", bbox={"facecolor": "white", "edgecolor": "none"})
    _save(fig, path)


# matplotlib >= 3.10 says orientation=, older versions vert=False (now deprecated)
_HORIZONTAL = ({"orientation": "horizontal"} if "orientation" in inspect.signature(plt.Axes.boxplot).parameters
               else {"vert": False})


def dice_plot(dice, path: Path | str) -> None:
    """Per-image Dice per stage (box plots with the images as dots), all images and the val split;
    the supervised reference drawn apart in grey. `dice` is a long table: stage, split, dice."""
    from lungssl.report import REFERENCE_STAGES, stage_label

    stages = list(dict.fromkeys(dice["stage"]))
    panels = [("all images", dice), ("val split", dice[dice["split"] == "val"])]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * len(stages) + 1.5), sharey=True, sharex=True, squeeze=False)
    pos = np.arange(len(stages))[::-1]
    counts = []
    rng = np.random.default_rng(0)
    for ax, (title, part) in zip(axes[0], panels):
        values = [part.loc[part["stage"] == s, "dice"].dropna().to_numpy() for s in stages]
        counts.append([len(v) for v in values])
        drawn = [i for i, v in enumerate(values) if len(v)]
        if drawn:
            boxes = ax.boxplot([values[i] for i in drawn], positions=pos[drawn], widths=0.6, showfliers=False,
                               patch_artist=True, **_HORIZONTAL)
            for i, patch in zip(drawn, boxes["boxes"]):
                ref = stages[i].removesuffix("_qc_pass") in REFERENCE_STAGES
                patch.set(facecolor="#d9d9d9" if ref else "#c6d4ea", edgecolor="#555")
        for i in drawn:
            ax.scatter(values[i], pos[i] + rng.uniform(-0.18, 0.18, len(values[i])), s=7, color="#333", alpha=0.5,
                       zorder=3)
        ax.set(xlabel="Dice with the ground truth", title=title)
        ax.grid(axis="x", color="#eee")
    axes[0, 0].set_yticks(pos, [f"{stage_label(s)} (n={a}, val {v})" for s, a, v in zip(stages, *counts)])
    _save(fig, path)


def overlay_grid(panels: list[dict], path: Path | str, title: str, flag_z: float | None = None,
                 per_row: int = 2) -> None:
    """Images side by side, per_row to a row, each as: the X-ray, its weak mask and its final mask
    outlined on it and, where heatmaps are given (flag_z), the abnormality heatmap; labelled with the
    image id, split and the weak mask's QC. Wider than tall, so a report page shows it whole."""
    from lungssl.heatmaps import dequantise, draw_heat_overlay

    names = ["image", "weak mask", "final mask", *(["heatmap"] if flag_z is not None else [])]
    k, rows = len(names), max(1, -(-len(panels) // per_row))
    ratios = [r for b in range(per_row) for r in ([0.16] if b else []) + [1] * k]  # a gap for the labels
    size = 2.3
    fig, axes = plt.subplots(rows, len(ratios), figsize=(size * sum(ratios) + 0.4, (size + 0.2) * rows + 0.8),
                             squeeze=False, gridspec_kw={"width_ratios": ratios, "wspace": 0.04, "hspace": 0.08})
    for ax in axes.ravel():
        ax.set_axis_off()
    first = [b * (k + 1) for b in range(per_row)]  # column of each block's first panel
    for c0 in first:
        for c, name in enumerate(names):
            axes[0, c0 + c].set_title(name, fontsize=13, fontweight="bold")
    for i, p in enumerate(panels):
        r, c0 = divmod(i, per_row)
        c0 = first[c0]
        image = np.asarray(p["image"], np.uint8)
        cells = [np.stack([image] * 3, axis=-1), _outlined(image, p["weak"]), _outlined(image, p["final"])]
        if flag_z is not None:
            cells.append(None if p["heat"] is None else
                         draw_heat_overlay(image, dequantise(p["heat"]), flag_z)[..., ::-1])
        for c, cell in enumerate(cells):
            ax = axes[r, c0 + c]
            if cell is not None:
                ax.imshow(cell)
            else:
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        score = p["qc_score"]
        verdict = "no QC" if score is None or np.isnan(score) else f"QC {score:.2f} {'pass' if p['qc_pass'] else 'FAIL'}"
        image_id = p["image_id"] if len(p["image_id"]) <= 28 else "…" + p["image_id"][-27:]
        axes[r, c0].text(-0.03, 0.5, f"{image_id}\n{p['split']}, {verdict}", rotation=90, ha="right", va="center",
                         fontsize=10, transform=axes[r, c0].transAxes)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center", transform=axes[0, 0].transAxes)
    fig.suptitle(title, fontsize=15)
    fig.subplots_adjust(left=0.03, right=0.995, top=1 - 0.75 / fig.get_figheight(), bottom=0.01)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _outlined(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """The mask's outline on the image (inference.draw_overlay), as RGB; None without a mask."""
    from lungssl.inference import draw_overlay

    return None if mask is None else draw_overlay(np.asarray(image, np.uint8), mask)[..., ::-1]


def runtime_plot(table, path: Path | str) -> None:
    """Wall time per rule, summed over its jobs (from the benchmark files), longest first."""
    fig, ax = plt.subplots(figsize=(11, 0.24 * len(table) + 1.2))
    pos = np.arange(len(table))[::-1]
    ax.barh(pos, table["total_s"], height=0.75, color="#4c72b0")
    for y, total, jobs in zip(pos, table["total_s"], table["jobs"]):
        ax.text(total, y, f" {total:.0f} s ({jobs} job{'s' if jobs != 1 else ''})", va="center", fontsize=9)
    ax.set_yticks(pos, table["rule"], fontsize=9)
    ax.set_ylim(-0.6, len(table) - 0.4)
    ax.set(xlabel="wall time, summed over the rule's jobs (s)", title="Runtime per rule")
    ax.set_xlim(0, max(float(table["total_s"].max()) * 1.3, 1) if len(table) else 1)
    _save(fig, path)
