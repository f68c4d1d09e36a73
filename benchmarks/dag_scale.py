"""DAG scale: how long `snakemake -n` takes, and how many jobs it plans, as the input folder grows.

Target (issue 6): on 40,992 images (the full pneumonia set) `snakemake -n` finishes in < 30 s and
plans <= 300 jobs; on 409,920 images in < 5 min. Checkpoint re-evaluation between rounds must not
grow with the number of images.

For each N, N tiny identical PNG files (64 px; a dry run never decodes them) are written to a temp
folder, 1,000 per subfolder, and the workflow of this checkout is pointed at it (preset generic,
every other key from config/config.yaml). Then, timed separately:
  dry_fresh_s    `snakemake -n` before anything ran: it can only plan up to the `scan` checkpoint;
  scan_s         the `scan` checkpoint itself (a real job: it lists the files and cuts the shards);
  dry_planned_s  `snakemake -n` after the scan: the whole plan, every shard known, up to the first
                 self-learning checkpoint (round 1's status); jobs_planned counts it, per rule too.
Snakemake rebuilds the same DAG after each checkpoint of a real run, so dry_planned_s is also what
one re-evaluation between rounds costs; with several --n its growth with N is printed.

  python benchmarks/dag_scale.py --n 40992
  python benchmarks/dag_scale.py --n 4099 40992 409920 --out benchmarks/out/dag.json
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _common

import cv2
import numpy as np
import pandas as pd
import yaml

from tests.workflow_utils import planned_jobs, snakemake, write_config


def tiny_folder(root: Path, n: int, per_dir: int = 1000) -> Path:
    ok, png = cv2.imencode(".png", np.full((64, 64), 128, np.uint8))
    data = png.tobytes()
    for i in range(n):
        d = root / f"{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True)
        (d / f"x{i:07d}.png").write_bytes(data)
    return root


def timed_snakemake(workdir: Path, *args: str, timeout: int) -> tuple[float, dict[str, int]]:
    t0 = time.perf_counter()
    proc = snakemake(workdir, *args, timeout=timeout)
    return round(time.perf_counter() - t0, 2), planned_jobs(proc) if "-n" in args else {}


def measure(n: int, shard_size: int, timeout: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="lungssl-dagbench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        images = tiny_folder(work / "xrays", n)
        gen_s = round(time.perf_counter() - t0, 1)
        write_config(work, {"input": {"images": str(images), "preset": "generic"},
                            "ingest": {"shard_size": shard_size}})
        dry_fresh_s, _ = timed_snakemake(work, "-n", timeout=timeout)
        scan_s, _ = timed_snakemake(work, "results/ingest/scan.json", timeout=timeout)
        dry_planned_s, jobs = timed_snakemake(work, "-n", timeout=timeout)
    return {"images": n, "shards": -(-n // shard_size), "files_written_s": gen_s, "dry_fresh_s": dry_fresh_s,
            "scan_s": scan_s, "dry_planned_s": dry_planned_s, "jobs_planned": sum(jobs.values()), "jobs_by_rule": jobs}


def main() -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--n", type=int, nargs="+", default=[40992], help="input folder sizes to measure")
    default_shard = yaml.safe_load((_common.REPO / "config/config.yaml").read_text())["ingest"]["shard_size"]
    ap.add_argument("--shard-size", type=int, default=default_shard, help="ingest.shard_size (default: the config's)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds allowed per snakemake call")
    a = ap.parse_args()

    rows = [measure(n, a.shard_size, a.timeout) for n in a.n]
    table = pd.DataFrame(rows).drop(columns="jobs_by_rule")
    figures = {f"n={r['images']}": f"dry run {max(r['dry_fresh_s'], r['dry_planned_s'])} s, "
               f"{r['jobs_planned']} jobs planned" for r in rows}
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        figures["dry_planned_growth"] = (f"x{last['dry_planned_s'] / first['dry_planned_s']:.2f} time for "
                                         f"x{last['images'] / first['images']:.1f} images")
    limits = {40992: (30, 300), 409920: (300, None)}
    checks = [max(r["dry_fresh_s"], r["dry_planned_s"]) < limits[r["images"]][0]
              and (limits[r["images"]][1] is None or r["jobs_planned"] <= limits[r["images"]][1])
              for r in rows if r["images"] in limits]
    by_rule = pd.DataFrame({f"n={r['images']}": r["jobs_by_rule"] for r in rows}).fillna(0).astype(int)
    result = {"benchmark": "dag_scale", "target": "40,992 images: dry run < 30 s, <= 300 jobs; 409,920: < 5 min",
              "figures": figures, "meets_target": all(checks) if checks else None, "machine": _common.machine(),
              "params": {"shard_size": a.shard_size}, "rows": rows}
    _common.emit(result, a.out, {"per size": table, "jobs planned per rule": by_rule.reset_index(names="rule")})


if __name__ == "__main__":
    main()
