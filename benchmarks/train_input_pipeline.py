"""Training input pipeline: does data loading keep up with the model?

Target (issue 6): with DataLoader workers on, a training epoch takes <= 1.25x the pure
forward/backward time measured on the same batches held in memory (CPU here; GPU when lent).

One epoch of the workflow's own `run_epoch` (lungssl.training: memory-mapped shard stacks,
bit-packed targets, albumentations augmentation, Dice + BCE, Adam) is timed three ways, on the
same seeded batches:
  pure       the epoch's batches built beforehand and held in memory (the DataLoader only collates);
  workers=W  the real input pipeline with W DataLoader worker processes (0: in the training process).
The pure epoch is timed before and after the others and the faster kept. loader_images_per_s is
the input pipeline alone (no model), per worker count; that pass also starts the persistent
workers, which a training job starts once, not per epoch.
Data: synthetic radiographs at the working size (default), or --results DIR, a finished workflow
run (DIR/results/...), whose QC-passed weak masks of the training split are used as the workflow does.

  python benchmarks/train_input_pipeline.py                  # CPU preset: resnet18 UNet at 128 px, batch 32
  python benchmarks/train_input_pipeline.py --device cuda --model-size 256 --encoder resnet34 --workers 0 4 8
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import _common

import numpy as np
import pandas as pd
import torch
import yaml

from lungssl.ingest import resize_image, resize_mask, shard_name
from lungssl.modeling import ModelSpec, build_model, pick_device
from lungssl.storage import write_image_stack
from lungssl.synthetic import make_case
from lungssl.training import (Feed, MaskDataset, TrainingSet, TrainParams, build_augment, collect_targets,
                              epoch_keys, run_epoch)

EPOCH = 1


def synthetic_set(root: Path, n: int, size: int, model_size: int, shard_size: int, distinct: int = 32) -> TrainingSet:
    """n training items at the working size, `distinct` synthetic radiographs repeated, in shard stacks."""
    cases = [make_case(np.random.default_rng([7, i])) for i in range(min(distinct, n))]
    images = np.stack([resize_image(c.image, size) for c in cases])
    masks = [np.packbits(resize_mask(c.mask > 0, size)) for c in cases]
    rows, stacks, packed = [], {}, {}
    for s, start in enumerate(range(0, n, shard_size)):
        shard = shard_name(s)
        idx = [i % len(cases) for i in range(start, min(n, start + shard_size))]
        stacks[shard] = root / f"{shard}.npy"
        write_image_stack(stacks[shard], images[idx])
        for row, k in enumerate(idx):
            iid = f"img{start + row:07d}"
            rows.append({"image_id": iid, "shard": shard, "row": row, "source": "", "qc_score": 1.0})
            packed[iid] = masks[k]
    return TrainingSet(table=pd.DataFrame(rows), stacks=stacks, packed=packed, size=model_size)


def workflow_set(results: Path, model_size: int) -> TrainingSet:
    manifest = pd.read_parquet(results / "manifest.parquet")
    stacks = {p.stem: p for p in sorted((results / "images").glob("*.npy"))}
    qc = pd.read_parquet(results / "qc/weak.parquet")
    targets = sorted((results / "weak").glob("*.npz"))
    return collect_targets(manifest, stacks, targets, ("train",), model_size, qc)["train"]


class InMemory(MaskDataset):
    """The epoch's items, computed once by the real dataset, served from memory."""

    def __init__(self, ds: MaskDataset, p: TrainParams):
        super().__init__(ds.ts, None)
        self.items = {k: ds[k] for k in epoch_keys(len(ds), p, EPOCH, augmented=True)}

    def __getitem__(self, key):
        return self.items[key]


def timed_epoch(model, feed: Feed, p, device, optimizer) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run_epoch(model, feed, p, EPOCH, device, optimizer)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def loader_rate(feed: Feed, p: TrainParams) -> float:
    """Images/s of the input pipeline alone; also starts the feed's persistent workers."""
    t0, n = time.perf_counter(), 0
    for x, _, _ in feed.pass_over(epoch_keys(len(feed), p, EPOCH, augmented=True)):
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    cfg = yaml.safe_load((_common.REPO / "config/config.yaml").read_text())
    ap = _common.parser(__doc__)
    ap.add_argument("--n", type=int, default=512, help="training images (synthetic data)")
    ap.add_argument("--results", type=Path, help="use this finished workflow run's data instead (its results/ folder)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time")
    ap.add_argument("--encoder", default=cfg["model"]["encoder"])
    ap.add_argument("--model-size", type=int, default=cfg["model"]["size"])
    ap.add_argument("--batch-size", type=int, default=cfg["train"]["batch_size"])
    ap.add_argument("--threads", type=int, default=min(cfg["train"]["threads"], os.cpu_count()),
                    help="torch threads for the model (the workflow's train.threads, capped by the cores)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    a = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    known = {f.name for f in fields(TrainParams)}
    p = TrainParams.from_config({k: v for k, v in cfg["train"].items() if k in known})
    p = replace(p, batch_size=a.batch_size, min_steps_per_epoch=1, num_workers=0)
    with tempfile.TemporaryDirectory(prefix="lungssl-trainbench-") as tmp:
        ts = (workflow_set(a.results, a.model_size) if a.results else
              synthetic_set(Path(tmp), a.n, cfg["ingest"]["size"], a.model_size, cfg["ingest"]["shard_size"]))
        spec = replace(ModelSpec.from_config(cfg["model"], a.model_size), encoder=a.encoder, encoder_weights_path=None)
        model = build_model(spec).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
        ds = MaskDataset(ts, build_augment(p, p.seed), spec.input_norm)
        memory = Feed(InMemory(ds, p), p, device)
        first = MaskDataset(replace(ts, table=ts.table.iloc[:a.batch_size]), input_norm=spec.input_norm)
        warm = Feed(InMemory(first, p), p, device)
        timed_epoch(model, warm, p, device, optimizer)  # first-call allocations and kernel choice
        pure = [timed_epoch(model, memory, p, device, optimizer)]
        rows = []
        for w in a.workers:
            pw = replace(p, num_workers=w)
            feed = Feed(ds, pw, device)
            rate = loader_rate(feed, pw)  # workers persist across a job's epochs: start them untimed
            rows.append({"workers": w, "epoch_s": timed_epoch(model, feed, pw, device, optimizer),
                         "loader_images_per_s": rate})
        pure.append(timed_epoch(model, memory, p, device, optimizer))

    t_pure = min(pure)
    table = pd.DataFrame(rows)
    table["ratio_to_pure"] = table["epoch_s"] / t_pure
    table = table.round(3)
    best = table.loc[table["ratio_to_pure"].idxmin()]
    n = len(ts.table)
    figures = {"images_per_epoch": n, "model": f"{cfg['model']['arch']}/{a.encoder} at {a.model_size} px, batch "
               f"{a.batch_size}, {a.threads} threads, {device.type}", "pure_epoch_s": round(t_pure, 2),
               "pure_images_per_s": round(n / t_pure, 1), "best_workers": int(best.workers),
               "best_ratio_to_pure": float(best.ratio_to_pure)}
    with_workers = table[table["workers"] > 0]
    meets = bool((with_workers["ratio_to_pure"] <= 1.25).any()) if len(with_workers) else None
    result = {"benchmark": "train_input_pipeline", "target": "epoch with workers <= 1.25x pure forward/backward",
              "figures": figures, "meets_target": meets, "machine": _common.machine(gpu=True),
              "params": {"n": n, "results": str(a.results) if a.results else None, "pure_runs_s": pure},
              "rows": table.to_dict("records")}
    _common.emit(result, a.out, {"epoch time by DataLoader workers": table})


if __name__ == "__main__":
    main()
