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


def test_weak_mask_dice_on_dev_set(dev_decoded, record_property):
    table, images, mask_ids, truths = dev_decoded
    preds = weak_masks(images, WeakMaskParams())
    row = {iid: i for i, iid in zip(table["row"], table["image_id"])}
    scores = np.array([dice(preds[row[iid]], t) for iid, t in zip(mask_ids, truths)])
    summary = {"mean": scores.mean(), "median": np.median(scores), "p10": np.quantile(scores, 0.1)}
    record_property("weak_dice", summary)
    print(f"\nbaseline weak masks on montgomery-shenzhen-512 (256 px): "
          + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    # Regression floor for the baseline recipe (measured 0.424 mean on 2026-11-26).
    assert summary["mean"] >= 0.40
