"""Memory per rule at two data-set sizes: the peak RSS of a per-shard job must be set by the shard
size, not by the number of images.

Target (issue 6): at 1,000 vs 8,000 images the peak RSS of the weak-mask, QC, pseudo-mask and merge
rules differs by < 20%; training peak RSS at 6,500 images < 4 GB on CPU.

For each N the workflow of this checkout runs for real in a temp folder on N images: a pool of
distinct synthetic radiographs (lungssl.synthetic) hard-linked N times, preset generic, every
other key from config/config.yaml (shard size, working size, the CPU model and batch). With
--stage round1 (default) it goes through one early-learning epoch and the first self-learning
round (pseudo-masks, their QC, the round's status: a merge); --stage weak stops after the weak
masks' QC. Peaks come from the Snakemake `benchmark:` files every rule writes under
results/benchmarks/ (max_rss, sampled by Snakemake every 0.5 s for a job's first 15 s, then every
30 s: a peak shorter than that can be missed).

  python benchmarks/shard_memory.py                          # 1,000 vs 8,000 images, to round 1
  python benchmarks/shard_memory.py --n 1000 6500 --stage weak
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import _common

import pandas as pd

from lungssl.synthetic import write_dataset
from tests.workflow_utils import snakemake, write_config

TARGETS = {"weak": ["results/manifest.parquet", "results/qc/weak.parquet"],
           "round1": ["results/rounds/1/status.json"]}
# The rules the target names: per-shard (weak mask, QC, pseudo-mask) and merge rules.
CHECKED = ("weak_masks", "qc_weak", "qc_round", "predict_round", "decode", "qc_weak_merge", "manifest", "round_status")
TRAINING = "early_learning"


def linked_folder(pool: Path, dest: Path, n: int, per_dir: int = 1000) -> Path:
    """N input files, hard links to the pool's images in turn (no disk cost, real decoding)."""
    sources = sorted(pool.glob("*.png"))
    for i in range(n):
        d = dest / f"{i // per_dir:04d}"
        d.mkdir(parents=True, exist_ok=True)
        os.link(sources[i % len(sources)], d / f"s{i:07d}.png")
    return dest


def measure(n: int, pool: Path, work: Path, stage: str, overrides: dict) -> tuple[pd.DataFrame, float]:
    images = linked_folder(pool, work / "xrays", n)
    cfg = {"input": {"images": str(images), "preset": "generic"},
           "early_learning": {"min_epochs": 1, "max_epochs": 1},
           "self_learning": {"min_rounds": 1, "max_rounds": 1}}
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    write_config(work, cfg)
    t0 = time.perf_counter()
    snakemake(work, *TARGETS[stage], timeout=24 * 3600)
    return _common.per_rule(_common.benchmark_table(work)), time.perf_counter() - t0


def main() -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--n", type=int, nargs=2, default=[1000, 8000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--stage", choices=sorted(TARGETS), default="round1")
    ap.add_argument("--pool", type=int, default=64, help="distinct synthetic images the inputs link to")
    ap.add_argument("--image-size", type=int, nargs=2, default=[448, 512], help="min, max side of the inputs")
    ap.add_argument("--config", type=json.loads, default={},
                    help='JSON of config sections to override, e.g. \'{"ingest": {"shard_size": 128}}\'')
    ap.add_argument("--keep", type=Path, help="run in this (new) folder and keep it")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lungssl-membench-") as tmp:
        root = a.keep or Path(tmp)
        write_dataset(root / "pool", n=a.pool, seed=1, min_size=a.image_size[0], max_size=a.image_size[1])
        runs = {n: measure(n, root / "pool/images", root / f"n{n}", a.stage, a.config) for n in a.n}

    small, large = a.n
    peaks = pd.concat({f"peak_mb_{n}": t.set_index("rule")["max_rss_mb"] for n, (t, _) in runs.items()}, axis=1)
    peaks["change_pct"] = (100 * (peaks[f"peak_mb_{large}"] / peaks[f"peak_mb_{small}"] - 1)).round(1)
    peaks["jobs"] = pd.concat({n: t.set_index("rule")["jobs"] for n, (t, _) in runs.items()}, axis=1).astype(str).agg(
        " / ".join, axis=1)
    checked = peaks.loc[[r for r in CHECKED if r in peaks.index]]
    worst = checked["change_pct"].abs().idxmax()
    figures = {f"wall_s_{n}": round(s, 1) for n, (_, s) in runs.items()}
    figures["worst_per_shard_or_merge_change"] = f"{worst}: {checked.loc[worst, 'change_pct']}%"
    meets = bool((checked["change_pct"].abs() < 20).all())
    if TRAINING in peaks.index:
        figures[f"training_peak_mb_{large}"] = peaks.loc[TRAINING, f"peak_mb_{large}"]
        if large >= 6500:
            meets = meets and bool(peaks.loc[TRAINING, f"peak_mb_{large}"] < 4000)
    result = {"benchmark": "shard_memory", "target": "per-shard and merge rules: peak RSS differs < 20% between "
              f"{small} and {large} images; training < 4 GB at 6,500", "figures": figures, "meets_target": meets,
              "machine": _common.machine(), "params": {"stage": a.stage, "config": a.config, "pool": a.pool},
              "rows": peaks.reset_index().to_dict("records")}
    _common.emit(result, a.out, {"peak RSS per rule (MB, Snakemake benchmark files)": peaks.reset_index()})


if __name__ == "__main__":
    main()
