"""The `lungssl` command: one subcommand per workflow step, usable with or without Snakemake.

Each handler only reads its inputs, calls the phase module's pure functions and writes its
outputs atomically; the science lives in the phase modules.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lungssl import __version__
from lungssl.storage import (read_image_stack, read_mask_stack, write_image_stack, write_json,
                             write_mask_stack, write_parquet)

log = logging.getLogger("lungssl")


# ---------------------------------------------------------------- handlers

def cmd_synth(a: argparse.Namespace) -> None:
    from lungssl.synthetic import write_dataset

    t0 = time.perf_counter()
    cases = write_dataset(Path(a.out), n=a.n, seed=a.seed, hard_fraction=a.hard_fraction,
                          min_size=a.min_size, max_size=a.max_size)
    log.info("wrote %d synthetic radiographs (%d hard) to %s in %.1f s", len(cases),
             int((cases["hard"].fillna("") != "").sum()), a.out, time.perf_counter() - t0)


def cmd_scan(a: argparse.Namespace) -> None:
    from lungssl.ingest import Source, scan_sources

    sources = [Source.from_config(s) for s in json.loads(a.sources)]
    files = scan_sources(sources, a.shard_size)
    write_parquet(files, a.out)
    write_json({"n_files": len(files), "shards": sorted(files["shard"].unique()),
                "with_masks": int((files["mask_paths"].str.len() > 0).sum())}, a.info)
    log.info("found %d image files in %d shard(s); %d with ground-truth masks", len(files),
             files["shard"].nunique(), int((files["mask_paths"].str.len() > 0).sum()))


def cmd_decode(a: argparse.Namespace) -> None:
    from lungssl.ingest import decode_shard

    files = pd.read_parquet(a.files)
    files = files[files["shard"] == a.shard]
    table, images, mask_ids, masks = decode_shard(files, a.size)
    write_image_stack(a.images, images)
    write_mask_stack(a.masks, mask_ids, masks)
    write_parquet(table, a.table)
    log.info("shard %s: %d accepted, %d rejected, %d with masks", a.shard, int(table["accepted"].sum()),
             int((~table["accepted"]).sum()), len(mask_ids))


def cmd_manifest(a: argparse.Namespace) -> None:
    from lungssl.ingest import build_manifest

    files = pd.read_parquet(a.files)
    decoded = pd.concat([pd.read_parquet(p) for p in a.decoded], ignore_index=True)
    manifest, rejected = build_manifest(files, decoded, a.val_fraction, a.seed)
    if manifest.empty:
        reasons = rejected["reason"].value_counts().head(5).to_dict()
        raise SystemExit(f"error: none of the {len(files)} input files could be used; reasons: {reasons}")
    write_parquet(rejected, a.rejected)
    write_parquet(manifest, a.out)
    summary = {"found": len(files), "accepted": len(manifest), "rejected": len(rejected),
               "rejected_reasons": rejected["reason"].value_counts().to_dict(),
               "with_masks": int(manifest["has_mask"].sum()),
               "split": manifest["split"].value_counts().to_dict(), "patients": int(manifest["group"].nunique())}
    write_json(summary, a.summary)
    log.info("manifest: %s", json.dumps(summary))


def cmd_weak_masks(a: argparse.Namespace) -> None:
    from lungssl.weak_masks import WeakMaskParams, weak_masks

    params = WeakMaskParams.from_config(json.loads(a.params))
    table = pd.read_parquet(a.table)
    table = table[table["accepted"]].sort_values("row")
    images = read_image_stack(a.images)
    t0 = time.perf_counter()
    masks = weak_masks(images, params, progress=True)
    dt = time.perf_counter() - t0
    ids = table["image_id"].tolist()
    write_mask_stack(a.out, ids, masks)
    stats = pd.DataFrame({"image_id": ids, "area_fraction": masks.reshape(len(masks), -1).mean(axis=1)
                          if len(masks) else []})
    write_parquet(stats, a.stats)
    log.info("weak masks for %d images in %.1f s (%.1f images/s)", len(ids), dt, len(ids) / max(dt, 1e-9))


def cmd_qc(a: argparse.Namespace) -> None:
    from lungssl.qc import QCParams, qc_table

    params = QCParams.from_config(json.loads(a.params))
    ids, masks = read_mask_stack(a.masks)
    table = qc_table(ids, masks, params)
    write_parquet(table, a.out)
    log.info("QC: %d of %d masks pass (threshold %.2f)", int(table["qc_pass"].sum()), len(table), params.threshold)


def cmd_qc_merge(a: argparse.Namespace) -> None:
    from lungssl.plots import score_histogram
    from lungssl.qc import summarize

    table = pd.concat([pd.read_parquet(p) for p in a.inputs], ignore_index=True)
    write_parquet(table, a.out)
    summary = summarize(table, a.threshold)
    write_json(summary, a.summary)
    score_histogram(table["qc_score"].to_numpy(), a.threshold, a.plot, title=a.title)
    log.info("QC merged: %s", json.dumps(summary))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from lungssl.evaluation import evaluate_masks, summary_row

    frames = []
    for pred_path, gt_path in zip(a.pred, a.gt, strict=True):
        pred_ids, preds = read_mask_stack(pred_path)
        gt_ids, truths = read_mask_stack(gt_path)
        frames.append(evaluate_masks(pred_ids, preds, gt_ids, truths, a.stage))
    table = pd.concat(frames, ignore_index=True)
    if a.qc:
        qc = pd.read_parquet(a.qc)[["image_id", "qc_score", "qc_pass"]]
        table = table.merge(qc, on="image_id", how="left")
    write_parquet(table, a.out)
    rows = [summary_row(table, a.stage)]
    if a.qc and len(table):
        rows.append(summary_row(table[table["qc_pass"].astype(bool)], f"{a.stage}_qc_pass"))
    pd.DataFrame(rows).to_csv(a.summary, index=False)
    log.info("evaluation: %s", pd.DataFrame(rows).to_string(index=False))


# ---------------------------------------------------------------- parser

def _add(sub, name: str, func, help_: str, epilog: str = "") -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungssl", description="Label-free lung segmentation of chest X-rays.")
    parser.add_argument("--version", action="version", version=f"lungssl {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _add(sub, "synth", cmd_synth, "write the seeded synthetic radiographs with true lung masks",
             "example: lungssl synth --out resources/synthetic --n 200 --seed 0")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard-fraction", type=float, default=0.2)
    p.add_argument("--min-size", type=int, default=256)
    p.add_argument("--max-size", type=int, default=512)

    p = _add(sub, "scan", cmd_scan, "list the X-ray files of the input sources and cut them into shards",
             "example: lungssl scan --sources '[{\"images\": \"data/images\", \"preset\": \"images_masks\"}]' "
             "--shard-size 256 --out results/ingest/files.parquet")
    p.add_argument("--sources", required=True, help="JSON list of sources {images, preset, name, masks, group_regex}")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--out", required=True)
    p.add_argument("--info", required=True, help="JSON with the shard list and counts")

    p = _add(sub, "decode", cmd_decode, "decode one shard: images at the working size, rejections with reasons")
    p.add_argument("--files", required=True)
    p.add_argument("--shard", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--table", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--masks", required=True, help="ground-truth mask stack (only for evaluation)")

    p = _add(sub, "manifest", cmd_manifest, "merge decoded shards into the manifest with a train/val split by patient")
    p.add_argument("--files", required=True)
    p.add_argument("--decoded", nargs="+", required=True)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--rejected", required=True)
    p.add_argument("--summary", required=True)

    p = _add(sub, "weak-masks", cmd_weak_masks, "classical weak lung masks for one shard")
    p.add_argument("--images", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--params", default="{}", help="JSON of weak-mask parameters")
    p.add_argument("--out", required=True)
    p.add_argument("--stats", required=True)

    p = _add(sub, "qc", cmd_qc, "shape-feature QC table for one stack of masks")
    p.add_argument("--masks", required=True)
    p.add_argument("--params", default="{}", help="JSON of QC parameters")
    p.add_argument("--out", required=True)

    p = _add(sub, "qc-merge", cmd_qc_merge, "merge per-shard QC tables; summary and score histogram")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--threshold", type=float, required=True)
    p.add_argument("--title", default="QC score")
    p.add_argument("--out", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--plot", required=True)

    p = _add(sub, "evaluate", cmd_evaluate, "Dice/IoU of predicted masks against ground truth (measuring only)")
    p.add_argument("--pred", nargs="+", required=True)
    p.add_argument("--gt", nargs="+", required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--qc", help="QC table to split the summary into all / QC-passed")
    p.add_argument("--out", required=True)
    p.add_argument("--summary", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
