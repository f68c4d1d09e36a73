"""Real chest X-rays with manual masks (../shared/data): masks only MEASURE the label-free path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungssl.evaluation import dice
from lungssl.ingest import Source, decode_shard, scan_sources
from lungssl.weak_masks import WeakMaskParams, weak_masks
from tests.conftest import require_dev_set

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def dev_decoded():
    root = require_dev_set()
    files = scan_sources([Source(root / "images", preset="images_masks")], shard_size=1000)
    table, images, mask_ids, masks = decode_shard(files, size=256, progress=False)
    return table, images, mask_ids, masks


def test_dev_set_ingests_completely(dev_decoded):
    table, images, mask_ids, _ = dev_decoded
    assert len(table) == 704 and table["accepted"].all()
    assert len(mask_ids) == 704 and images.shape == (704, 256, 256)


def _dev_dice(dev_decoded, params: WeakMaskParams) -> np.ndarray:
    table, images, mask_ids, truths = dev_decoded
    preds = weak_masks(images, params)
    row = {iid: i for i, iid in zip(table["row"], table["image_id"])}
    return np.array([dice(preds[row[iid]], t) for iid, t in zip(mask_ids, truths)])


@pytest.mark.parametrize("method,floor_mean,floor_p10", [("pair", 0.925, 0.88), ("baseline", 0.40, 0.0)])
def test_weak_mask_dice_on_dev_set(dev_decoded, method, floor_mean, floor_p10):
    scores = _dev_dice(dev_decoded, WeakMaskParams(method=method))
    summary = {"mean": scores.mean(), "median": np.median(scores), "p10": np.quantile(scores, 0.1)}
    print(f"\n{method} weak masks on montgomery-shenzhen-512 (256 px): "
          + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    # Regression floors, just under what was measured on 2026-11-29: pair 0.931 mean / 0.889 p10
    # (0.921 / 0.878 before the lateral convex hull, 0.893 / 0.851 before the gentle CLAHE clip and
    # the gradient watershed), baseline 0.424 mean.
    assert summary["mean"] >= floor_mean and summary["p10"] >= floor_p10


def test_qc_knows_the_quality_of_the_weak_masks(dev_decoded):
    """Cohort QC + stability on the dev set: ranking and pass/fail against the true Dice."""
    from scipy.stats import spearmanr

    from lungssl.qc import QCParams, build_shape_prior, qc_table
    from lungssl.weak_masks import weak_masks_with_stability

    table, images, mask_ids, truths = dev_decoded
    masks, stability = weak_masks_with_stability(images, WeakMaskParams())
    ids = table.loc[table["accepted"]].sort_values("row")["image_id"].tolist()
    qc = qc_table(ids, masks, QCParams(), build_shape_prior(masks), agreement=stability).set_index("image_id")
    truth = dict(zip(mask_ids, truths))
    true_dice = np.array([dice(m, truth[i]) for i, m in zip(ids, masks)])
    rho = spearmanr(qc.loc[ids, "qc_score"], true_dice).statistic
    passed = qc.loc[ids, "qc_pass"].to_numpy(bool)
    precision = float(np.mean(true_dice[passed] >= 0.85))
    recall = float(np.mean(passed[true_dice >= 0.85]))
    print(f"\nQC on dev weak masks: Spearman {rho:.3f}, precision {precision:.3f}, recall {recall:.3f}, "
          f"pass rate {passed.mean():.3f}")
    # Floors just under what was measured on 2026-11-29 (0.572 / 0.975 / 0.925); the issue's
    # Spearman target of 0.6 is met only by the second QC, after early learning (docs/results.md).
    assert rho >= 0.56 and precision >= 0.92 and recall >= 0.90


def test_heatmap_score_separates_pneumonia_from_normal():
    """Kermany test split (folder labels used only to measure). Lung masks here are the classical
    weak masks, so the test needs no trained model; the pipeline's final-model masks do better
    (docs/results.md). Normal lung appearance is learned label-free from the cohort itself."""
    from lungssl import heatmaps as hm
    from lungssl.weak_masks import weak_masks
    from tests.conftest import require_pneumonia_set

    root = require_pneumonia_set()
    files = scan_sources([Source(root / "test", preset="kaggle_pneumonia")], shard_size=1000)
    table, images, _, _ = decode_shard(files, size=256, progress=False)
    table = table[table["accepted"]].sort_values("row")
    masks = weak_masks(images, WeakMaskParams())
    p = hm.HeatmapParams()
    codes = [hm.image_code(im, m, p) for im, m in zip(images, masks)]
    ref = hm.choose_reference(np.array([c.deficit for c in codes]), p)
    model = hm.fit_normal_model(np.stack([codes[i].atlas for i in ref]), p)
    scores = [hm.heatmap_with_scores(im, m, model, p)[1] for im, m in zip(images, masks)]
    labels = files.set_index("image_id")["label"]
    pneumonia = labels.reindex(table["image_id"]).eq("PNEUMONIA").to_numpy()
    _, _, auc = hm.roc_curve(np.array([s["score"] for s in scores]), pneumonia)
    flagged = np.array([s["flagged_fraction"] for s in scores])
    normal_flagged = float(np.nanmedian(flagged[~pneumonia]))
    print(f"\nheatmap score on kermany test ({len(table)} images, weak masks): ROC AUC {auc:.3f}, "
          f"median flagged fraction NORMAL {normal_flagged:.3f}, PNEUMONIA {np.nanmedian(flagged[pneumonia]):.3f}")
    # Measured 2026-11-27: AUC 0.840, NORMAL median flagged 0.031 (PNEUMONIA 0.160); 0.858 with
    # the previous weak masks, which QC passed for 47% of these NORMAL films against 80% now.
    assert len(table) == 624 and auc >= 0.82
    assert normal_flagged < 0.05  # healthy lungs come out mostly cold
