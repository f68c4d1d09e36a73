"""Intensity robustness: Dice of lung-mask models when the X-rays' grey-level curve changes.

Target (issue 4, generality): a model's mean Dice stays within 0.01 of its own under every curve.
Another hospital's detector, processing and export (raw or "for presentation", window, gamma, log)
map the same anatomy to grey levels through a different increasing curve. This applies a set of
such curves to images that have manual masks (after decoding, at --size), predicts with each MODEL
as `lungssl predict` does (flip TTA, the usual clean-up) and prints mean / p10 / min Dice per curve.
The masks only measure.

  python benchmarks/intensity_robustness.py --match MCUCXR --model ../lungssl-dev/results/final/model.pt
"""
from __future__ import annotations

from pathlib import Path

import _common  # first: puts this checkout's lungssl on the path
import numpy as np
import pandas as pd
import torch
from lungssl.evaluation import dice
from lungssl.inference import lung_mask, predict_probs
from lungssl.ingest import Source, decode_shard, scan_sources
from lungssl.modeling import load_model

LEVELS = np.arange(256) / 255.0
# Each curve maps [0, 1] onto [0, 1], increasing: what another device or export could have done.
CURVES = {
    "identity": LEVELS,
    "gamma 0.5": LEVELS ** 0.5,
    "gamma 0.7": LEVELS ** 0.7,
    "gamma 1.4": LEVELS ** 1.4,
    "gamma 2.0": LEVELS ** 2.0,
    "log": np.log1p(9 * LEVELS) / np.log(10),
    "sigmoid window": 1 / (1 + np.exp(-10 * (LEVELS - 0.5))),
    "window 20-80%": np.clip((LEVELS - 0.2) / 0.6, 0, 1),
}


def lut(curve: np.ndarray) -> np.ndarray:
    span = curve.max() - curve.min()
    return np.round(255 * (curve - curve.min()) / span).astype(np.uint8)


def scores(model, spec, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    probs, _ = predict_probs(model, images, spec, torch.device("cpu"))
    return np.array([dice(lung_mask(p, im), m) for p, im, m in zip(probs, images, masks)])


def main() -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--model", required=True, nargs="+", help="one or more lungssl model files")
    ap.add_argument("--images", default=str(_common.DEV_IMAGES), help="an images_masks layout (images/ beside masks/)")
    ap.add_argument("--match", default="", help="only images whose id contains this (e.g. MCUCXR)")
    ap.add_argument("--size", type=int, default=512, help="working size the curves and Dice apply at")
    a = ap.parse_args()

    images, masks = load(Path(a.images), a.match, a.size)
    rows = []
    for path in a.model:
        model, spec, _ = load_model(path, torch.device("cpu"))
        for name, curve in CURVES.items():
            d = scores(model, spec, lut(curve)[images], masks)
            rows.append({"model": path, "curve": name, "mean": round(d.mean(), 4),
                         "p10": round(float(np.quantile(d, 0.1)), 3), "min": round(d.min(), 3)})
    table = pd.DataFrame(rows)
    by_curve = table.pivot(index="model", columns="curve", values="mean")  # one row per model: aligned
    worst, identity = by_curve.min(axis=1), by_curve["identity"]
    figures = {m: f"worst curve's mean Dice {worst[m]:.4f} (identity {identity[m]:.4f})" for m in worst.index}
    result = {"benchmark": "intensity_robustness", "target": "mean Dice within 0.01 of the identity's under every curve",
              "figures": figures, "meets_target": bool((worst >= identity - 0.01).all()), "machine": _common.machine(),
              "params": {"images": a.images, "match": a.match, "size": a.size, "n": len(images)}, "rows": rows}
    _common.emit(result, a.out, {"Dice per model and curve": table})


def load(root: Path, match: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, masks) of the layout's images that have a mask, decoded as the workflow decodes them."""
    files = scan_sources([Source(root, preset="images_masks")], shard_size=1_000_000)
    files = files[files["image_id"].str.contains(match, regex=False)].reset_index(drop=True)
    table, images, mask_ids, masks = decode_shard(files, size=size, progress=False)
    with_mask = table.set_index("image_id").loc[mask_ids, "row"].to_numpy()
    return images[with_mask], masks


if __name__ == "__main__":
    main()
