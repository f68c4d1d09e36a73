"""Weak-mask throughput: decode + weak mask + write, per image, with 1 and N worker processes.

Target (issue 6): >= 50 images/s per core at 512 px input for the default weak-mask method (with
the stability signal the QC uses, exactly what the workflow runs), decode and write included;
2 cores give >= 1.8x the throughput of 1.

Each shard goes through the same two commands as the workflow's `decode` and `weak_masks` rules
(`lungssl decode`, `lungssl weak-masks`, called in-process so that interpreter start-up, which a
256-image shard amortises, is left out), with the weak-mask parameters of config/config.yaml.
Shards are handed to a pool of 1 or N single-threaded processes; images/s = images / wall time.
images per CPU-second is also given: it holds up when other work shares the machine.
With ground-truth masks (preset images_masks), the mean Dice of the weak masks is printed too, to
show that nothing was traded for speed.

  python benchmarks/weak_masks_throughput.py                      # the dev set, 1 vs 2 workers
  python benchmarks/weak_masks_throughput.py --images DIR --preset generic --n 500 --workers 1 2 4
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import _common

import pandas as pd
import yaml

import lungssl.weak_masks  # noqa: F401  (imported before the workers fork: no import cost in the figures)
from lungssl import cli
from lungssl.evaluation import evaluate_masks
from lungssl.ingest import Source, scan_sources, shard_name
from lungssl.storage import read_mask_stack, write_parquet


def _worker_init(log: Path) -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker: the figure is per core
    sys.stderr = open(log, "a")  # the commands' progress bars and errors


def _lungssl(*args: str) -> None:
    if cli.main(["-q", *args]) != 0:
        raise RuntimeError(f"lungssl {args[0]} failed; see the log in the work folder")


def run_shard(job: tuple[str, Path, str, int, Path]) -> dict:
    shard, files, params, size, out = job
    c0, t0 = time.process_time(), time.perf_counter()
    _lungssl("decode", "--files", str(files), "--shard", shard, "--size", str(size),
             "--table", f"{out}/{shard}.parquet", "--images", f"{out}/{shard}.npy", "--masks", f"{out}/{shard}.gt.npz")
    t1 = time.perf_counter()
    _lungssl("weak-masks", "--images", f"{out}/{shard}.npy", "--table", f"{out}/{shard}.parquet", "--params", params,
             "--out", f"{out}/{shard}.npz", "--stats", f"{out}/{shard}.stats.parquet")
    return {"shard": shard, "decode_s": t1 - t0, "weak_s": time.perf_counter() - t1, "cpu_s": time.process_time() - c0}


def run(files: Path, shards: list[str], params: str, size: int, workers: int, out: Path) -> dict:
    out.mkdir(parents=True)
    jobs = [(s, files, params, size, out) for s in shards]
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers, _worker_init, (out / "worker.log",)) as pool:
        rows = pool.map(run_shard, jobs, chunksize=1)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "rows": rows}


def accuracy(out: Path, shards: list[str]) -> dict:
    frames, stability = [], []
    for s in shards:
        ids, masks = read_mask_stack(out / f"{s}.npz")
        gt_ids, truths = read_mask_stack(out / f"{s}.gt.npz")
        frames.append(evaluate_masks(ids, masks, gt_ids, truths, "weak"))
        stability.append(pd.read_parquet(out / f"{s}.stats.parquet")["stability"])
    table = pd.concat(frames)
    return {"n_with_gt": len(table), "mean_dice": round(float(table["dice"].mean()), 4) if len(table) else None,
            "mean_stability": round(float(pd.concat(stability).mean()), 4)}


def main() -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--images", type=Path, default=_common.DEV_IMAGES, help="folder of X-rays (default: the dev set)")
    ap.add_argument("--preset", default="images_masks", help="input preset (images_masks: also Dice vs masks)")
    ap.add_argument("--n", type=int, help="use the first N images (default: all)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker process counts to compare")
    ap.add_argument("--shard-size", type=int, default=32,
                    help="images per job (small, so that N workers get equal work on a small set)")
    a = ap.parse_args()
    if not a.images.is_dir():
        ap.error(f"{a.images} not found: give --images")
    cfg = yaml.safe_load((_common.REPO / "config/config.yaml").read_text())
    params, size = cfg["weak_masks"], cfg["ingest"]["size"]
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")

    files = scan_sources([Source(images=a.images, preset=a.preset)], a.shard_size)
    files = files.iloc[:a.n].copy() if a.n else files
    files["shard"] = [shard_name(i // a.shard_size) for i in range(len(files))]
    shards = sorted(files["shard"].unique())
    with tempfile.TemporaryDirectory(prefix="lungssl-weakbench-") as tmp:
        tmp = Path(tmp)
        write_parquet(files, tmp / "files.parquet")
        runs = {w: run(tmp / "files.parquet", shards, json.dumps(params), size, w, tmp / f"w{w}") for w in a.workers}
        acc = accuracy(tmp / f"w{a.workers[0]}", shards) if a.preset != "generic" else {}
        widths = pd.concat([pd.read_parquet(tmp / f"w{a.workers[0]}/{s}.parquet")["width"] for s in shards])

    n = len(files)
    rows = []
    for w, r in runs.items():
        t = pd.DataFrame(r["rows"])
        rows.append({"workers": w, "wall_s": round(r["wall_s"], 2), "images_per_s": round(n / r["wall_s"], 1),
                     "images_per_s_per_core": round(n / r["wall_s"] / w, 1),
                     "images_per_cpu_s": round(n / t["cpu_s"].sum(), 1),
                     "decode_share": round(t["decode_s"].sum() / (t["decode_s"].sum() + t["weak_s"].sum()), 3)})
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    table["speedup"] = (table["images_per_s"] / base["images_per_s"]).round(2)
    best = table.iloc[-1]
    figures = {"images": n, "input_px_median_width": int(widths.median()), "working_px": size,
               "method": params["method"], "stability": params["stability"],
               f"images_per_s_per_core_{int(base.workers)}w": base.images_per_s_per_core,
               "images_per_cpu_s": base.images_per_cpu_s,
               f"speedup_{int(best.workers)}w_vs_{int(base.workers)}w": best.speedup, **acc}
    meets = None
    if int(base.workers) == 1 and 2 in a.workers:
        meets = bool(base.images_per_s_per_core >= 50 and table.set_index("workers").loc[2, "speedup"] >= 1.8)
    result = {"benchmark": "weak_masks_throughput", "target": ">= 50 images/s/core (512 px in, default method), "
              "2 cores >= 1.8x", "figures": figures, "meets_target": meets, "machine": _common.machine(),
              "params": {"images": str(a.images), "preset": a.preset, "shard_size": a.shard_size},
              "rows": table.to_dict("records")}
    _common.emit(result, a.out, {"by worker count": table})


if __name__ == "__main__":
    main()
