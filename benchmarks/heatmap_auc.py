"""Heatmap score vs image labels on the Kermany pneumonia set, with any lung-mask model.

Predicts lung masks with MODEL for the `test` split (and, as more cohort for the normal lung
model, a seeded sample of `train`), learns the normal lung appearance label-free from that cohort,
and prints the ROC AUC of the heatmap score (PNEUMONIA vs NORMAL) on `test`. Folder labels are
used only to measure.

    python benchmarks/heatmap_auc.py --model ../lungssl-dev/results/final/model.pt \
        --data ../shared/data/chest-xray-pneumonia-224 --train-sample 600
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lungssl import heatmaps as hm
from lungssl.ingest import Source, decode_shard, scan_sources
from lungssl.inference import lung_mask, predict_probs
from lungssl.modeling import load_model


def decoded(root: Path, size: int, sample: int | None = None, seed: int = 0):
    files = scan_sources([Source(root, preset="kaggle_pneumonia")], shard_size=100_000)
    if sample is not None and sample < len(files):
        keep = np.sort(np.random.default_rng(seed).choice(len(files), sample, replace=False))
        files = files.iloc[keep].reset_index(drop=True)
    table, images, _, _ = decode_shard(files, size=size, progress=False)
    table = table[table["accepted"]].sort_values("row")
    labels = files.set_index("image_id")["label"].reindex(table["image_id"]).to_numpy()
    return images, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="../shared/data/chest-xray-pneumonia-224")
    ap.add_argument("--train-sample", type=int, default=600)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    test_images, test_labels = decoded(Path(args.data) / "test", args.size)
    train_images, _ = decoded(Path(args.data) / "train", args.size, args.train_sample, args.seed)
    images = np.concatenate([test_images, train_images])
    model, spec, _ = load_model(args.model)
    probs, _ = predict_probs(model, images, spec, torch.device("cpu"))
    masks = np.stack([lung_mask(p, im) for p, im in zip(probs, images)])

    p = hm.HeatmapParams()
    codes = [hm.image_code(im, m, p) for im, m in zip(images, masks)]
    ref = hm.choose_reference(np.array([c.deficit for c in codes]), p, args.seed)
    normal = hm.fit_normal_model(np.stack([codes[i].atlas for i in ref]), p)
    n = len(test_images)
    scores = [hm.heatmap_with_scores(im, m, normal, p)[1] for im, m in zip(images[:n], masks[:n])]
    positive = test_labels == "PNEUMONIA"
    flagged = np.array([s["flagged_fraction"] for s in scores])
    print(json.dumps({
        "test_images": n, "cohort": len(images), "reference": len(ref),
        "auc_score": round(hm.roc_curve(np.array([s["score"] for s in scores]), positive)[2], 4),
        "normal_flagged_median": round(float(np.nanmedian(flagged[~positive])), 4),
        "pneumonia_flagged_median": round(float(np.nanmedian(flagged[positive])), 4),
    }, indent=1))


if __name__ == "__main__":
    main()
