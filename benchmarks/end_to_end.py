"""End to end: the whole workflow, weak masks to final model, timed under `/usr/bin/time -v`.

Target (issue 6): wall time of the whole pipeline on the 6,544 real images of ../shared/data at the
CPU preset on this machine, and on one GPU when lent (< 10 minutes there).

Runs `snakemake --cores C --configfile ... --directory DIR [targets]` with the workflow of this
checkout and reports its wall time, CPU time and peak RSS (of the largest process: getrusage's
maximum, not a sum over parallel jobs), then a per-rule summary of the Snakemake `benchmark:` files
(jobs, seconds, peak RSS, CPU seconds) and, where the run evaluated against ground truth, the final
model's Dice on the validation split. Start from an empty DIR for a meaningful wall time (reported
as fresh: false otherwise).

  # the 6,544 real images (dev set + pneumonia set) at the CPU preset, from the repository root:
  python benchmarks/end_to_end.py --configfile config/dev.yaml config/dev_pneumonia.yaml --directory ../lungssl-e2e
  # ... on one GPU:
  python benchmarks/end_to_end.py --configfile config/dev.yaml config/dev_pneumonia.yaml config/dev_gpu.yaml \\
      --directory ../lungssl-e2e-gpu -- --resources gpu=1
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import _common

import pandas as pd

TRAINING_RULES = ("early_learning", "train_round", "final_model", "supervised_model")


def main() -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--configfile", type=Path, nargs="+", default=[Path("config/config.yaml")],
                    help="config files, in order (relative paths: to the current folder, else the repository)")
    ap.add_argument("--directory", type=Path, required=True, help="working directory of the run")
    ap.add_argument("--cores", default="all")
    ap.add_argument("--targets", nargs="*", default=[], help="targets (default: the workflow's `all`)")
    ap.add_argument("snakemake_args", nargs="*", help="more Snakemake arguments, after --")
    a = ap.parse_args()

    configs = [str(c.resolve() if c.exists() else (_common.REPO / c).resolve()) for c in a.configfile]
    a.directory.mkdir(parents=True, exist_ok=True)
    fresh = not (a.directory / "results").exists()
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(_common.REPO / "Snakefile"), "--directory",
           str(a.directory.resolve()), "--cores", str(a.cores), "--configfile", *configs, *a.snakemake_args, "--",
           *a.targets]
    run = _common.timed(cmd)
    steps = re.findall(r"(\d+) of (\d+) steps", run["stderr"])
    if run["returncode"] != 0:
        print(run["stderr"][-5000:], file=sys.stderr)
        raise SystemExit(f"snakemake failed ({run['returncode']})")

    rules = _common.per_rule(_common.benchmark_table(a.directory))
    training = rules[rules["rule"].isin(TRAINING_RULES)]
    h, rem = divmod(run["wall_s"], 3600)
    figures = {"wall": f"{int(h)}:{int(rem // 60):02d}:{rem % 60:04.1f}", "wall_s": run["wall_s"],
               "cpu_s": run.get("cpu_s"), "peak_rss_mb": run.get("max_rss_mb"),
               "jobs_done": int(steps[-1][0]) if steps else 0, "fresh": fresh,
               "training_peak_rss_mb": float(training["max_rss_mb"].max()) if len(training) else None}
    summary = a.directory / "results/eval/summary.csv"
    if summary.is_file():
        ev = pd.read_csv(summary).set_index(["stage", "split"])
        if ("final", "val") in ev.index:
            figures["final_val_dice"] = round(float(ev.loc[("final", "val"), "dice_mean"]), 4)
    m = _common.machine(gpu=True)
    meets = bool(run["wall_s"] < 600) if m.get("gpu") else None
    result = {"benchmark": "end_to_end", "target": "whole pipeline wall time (CPU preset; < 10 min on one GPU)",
              "figures": figures, "meets_target": meets, "machine": m,
              "params": {"configfiles": configs, "directory": str(a.directory), "cores": a.cores,
                         "targets": a.targets, "snakemake_args": a.snakemake_args},
              "rows": rules.to_dict("records")}
    _common.emit(result, a.out, {"per rule (Snakemake benchmark files)": rules})


if __name__ == "__main__":
    main()
