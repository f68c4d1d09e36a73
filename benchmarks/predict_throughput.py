"""Inference throughput of `lungssl predict`: images/s on a folder of X-rays, at a 256 px model input.

Target (issue 6): report images/s at 256 px for the default model on the 2-core CPU machine and on
a GPU when one is lent (batching, mixed precision, channels-last); a CPU-friendly default model
(a lighter encoder) is worth offering if it keeps Dice within 0.01 of the default on the dev set.

For each encoder, `lungssl predict` (the command users run: read, predict with flip TTA, clean,
write a PNG per image) is timed under `/usr/bin/time -v` on the first N images, and once on a
single image to take out start-up and model loading:
  images_per_s      N / wall time of the whole command;
  steady_images_per_s  (N - 1) / (wall(N) - wall(1)): the rate once started;
  model_images_per_s   predict_probs alone (batches already in memory, TTA on), in this process.
Without --model an untrained model of the configured architecture is used: speed does not depend on
the weights (mask clean-up may differ a little). Accuracy of a lighter encoder needs a trained model
(see the README): this script measures speed only.

  python benchmarks/predict_throughput.py                        # dev set, default encoder, 256 px
  python benchmarks/predict_throughput.py --encoders resnet18 mobilenet_v2 --device cuda --batch-size 64
  python benchmarks/predict_throughput.py --model results/final/model.pt --input my_xrays/
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import _common

import numpy as np
import pandas as pd
import torch
import yaml

from lungssl.ingest import find_files
from lungssl.inference import predict_probs
from lungssl.loader import read_image
from lungssl.modeling import ModelSpec, build_model, load_model, pick_device, save_model


def cli_run(model: Path, inputs: Path, out: Path, device: str, batch: int) -> dict:
    res = _common.timed([sys.executable, "-m", "lungssl.cli", "-q", "predict", "--model", str(model), "--input",
                         str(inputs), "--output", str(out), "--device", device, "--batch-size", str(batch)])
    if res["returncode"] not in (0, 3):
        raise RuntimeError(f"lungssl predict failed:\n{res['stderr'][-3000:]}")
    return res


def model_rate(model_path: Path, images: list[np.ndarray], device: torch.device, batch: int) -> float:
    model, spec, _ = load_model(model_path, device)
    predict_probs(model, images[:batch], spec, device, batch)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    predict_probs(model, images, spec, device, batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - t0)


def main() -> None:
    cfg = yaml.safe_load((_common.REPO / "config/config.yaml").read_text())
    ap = _common.parser(__doc__)
    ap.add_argument("--input", type=Path, default=_common.DEV_IMAGES, help="folder of X-rays (default: the dev set)")
    ap.add_argument("--n", type=int, default=256, help="use the first N images of the folder")
    ap.add_argument("--model", type=Path, help="a trained model file (default: untrained models of --encoders)")
    ap.add_argument("--encoders", nargs="+", default=[cfg["model"]["encoder"]])
    ap.add_argument("--model-size", type=int, default=256, help="network input side (untrained models)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--batch-size", type=int, default=16, help="as `lungssl predict --batch-size`")
    a = ap.parse_args()
    if not a.input.is_dir():
        ap.error(f"{a.input} not found: give --input")

    device = pick_device(a.device)
    files = find_files(a.input)[:a.n]
    images = [read_image(f).pixels for f in files]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lungssl-predbench-") as tmp:
        tmp = Path(tmp)
        for folder, chosen in (("all", files), ("one", files[:1])):
            (tmp / folder).mkdir()
            for i, f in enumerate(chosen):  # links keep the originals' bytes and formats
                (tmp / folder / f"{i:06d}{f.suffix}").symlink_to(f.resolve())
        models = {Path(a.model).stem: a.model} if a.model else {}
        for enc in [] if a.model else a.encoders:
            models[enc] = tmp / f"{enc}.pt"
            save_model(models[enc], build_model(ModelSpec(cfg["model"]["arch"], enc, a.model_size)),
                       ModelSpec(cfg["model"]["arch"], enc, a.model_size), {"stage": "untrained (benchmark)"})
        for name, path in models.items():
            spec = load_model(path)[1]
            one = cli_run(path, tmp / "one", tmp / f"out1-{name}", device.type, a.batch_size)
            full = cli_run(path, tmp / "all", tmp / f"out-{name}", device.type, a.batch_size)
            n = len(files)
            rows.append({"model": name, "input_px": spec.size, "images": n, "wall_s": full["wall_s"],
                         "images_per_s": round(n / full["wall_s"], 1), "startup_s": one["wall_s"],
                         # None when noise (a busy machine) makes the one-image run the slower
                         "steady_images_per_s": round((n - 1) / (full["wall_s"] - one["wall_s"]), 1)
                         if full["wall_s"] > one["wall_s"] else None,
                         "model_images_per_s": round(model_rate(path, images, device, a.batch_size), 1),
                         "peak_rss_mb": full.get("max_rss_mb")})
    table = pd.DataFrame(rows)
    first = rows[0]
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    figures = {"device": f"{device.type} ({where})",
               "batch_size": a.batch_size, "input_image_px": int(np.median([im.shape[1] for im in images])),
               **{f"{r['model']}_images_per_s": r["images_per_s"] for r in rows},
               **{f"{r['model']}_steady_images_per_s": r["steady_images_per_s"] for r in rows}}
    result = {"benchmark": "predict_throughput", "target": "report lungssl predict images/s at 256 px (CPU and GPU)",
              "figures": figures, "meets_target": None, "machine": _common.machine(gpu=True),
              "params": {"input": str(a.input), "model": str(a.model) if a.model else None, "first": first["model"]},
              "rows": rows}
    _common.emit(result, a.out, {"per model": table})


if __name__ == "__main__":
    main()
