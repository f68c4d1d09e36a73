import json
import os
from functools import lru_cache
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("8.20")


validate(config, schema="../config/schema.yaml")

# Code files are inputs of the rules they drive, so editing e.g. the weak-mask module reruns
# exactly those jobs and their dependants (mtime trigger), never ingest.
PKG = Path(workflow.basedir) / "lungssl"
SYNTHETIC_DIR = "resources/synthetic"
CFG_INGEST = config["ingest"]
SHARD_SIZE = CFG_INGEST["shard_size"]
CFG_QC = config["qc"]
USES_PRIOR = CFG_QC["method"] == "cohort"
QC_THRESHOLD = CFG_QC["cohort_threshold"] if USES_PRIOR else CFG_QC["threshold"]
QC_PRIOR = "results/qc/prior.npz"


wildcard_constraints:
    shard=r"\d{4}",


def _primary_source():
    cfg = config["input"]
    images = f"{SYNTHETIC_DIR}/images" if cfg["images"] == "synthetic" else cfg["images"]
    return {"name": "", "images": images, "preset": cfg["preset"], "masks": cfg["masks"],
            "group_regex": cfg["group_regex"]}


SOURCES = [_primary_source(), *config["input"]["extra"]]
USES_SYNTHETIC = config["input"]["images"] == "synthetic"


def shard_mem_mb(base, per_image):
    """Memory a per-shard job needs: set by the shard size, never by the data-set size."""
    return lambda wildcards, attempt: int((base + per_image * SHARD_SIZE) * attempt)


def shard_runtime(base, per_image_s):
    return lambda wildcards, attempt: int((base + per_image_s * SHARD_SIZE / 60) * attempt)


@lru_cache(maxsize=None)
def _scan_info(path, mtime):
    return json.loads(Path(path).read_text())


def scan_info():
    """Shard list and counts written by the scan checkpoint (small JSON, not the file table)."""
    path = checkpoints.scan.get().output.info
    return _scan_info(path, Path(path).stat().st_mtime)


def shards():
    return scan_info()["shards"]


def per_shard(pattern):
    return lambda wildcards: expand(pattern, shard=shards(), **wildcards)




# ---------------------------------------------------------------- learning stages

TRAIN_KEYS = ("batch_size", "lr", "bce_weight", "qc_weight", "hflip", "shift", "scale", "rotate",
              "brightness_contrast", "num_workers", "min_steps_per_epoch")
ROUND_ROOT = "results/rounds"


def train_params(epochs, min_epochs=1, early_stop=False, slope_fraction=0.1):
    """JSON handed to `lungssl train`: the model and the training settings of one stage.
    A function of the wildcards, so that braces in a configured path are not taken for wildcards."""
    train = {k: config["train"][k] for k in TRAIN_KEYS}
    train.update(epochs=epochs, min_epochs=min(min_epochs, epochs), early_stop=early_stop,
                 slope_fraction=slope_fraction, seed=config["seed"])
    text = json.dumps({"model": config["model"], "train": train}, sort_keys=True)
    return lambda wildcards: text


def train_mem_mb(wildcards, attempt):
    # Batch of images + activations; the targets add 1/8 byte per pixel per image.
    return int((3000 + config["train"]["batch_size"] * config["model"]["size"] ** 2 * 4e-4) * attempt)


def round_model(r):
    return f"{ROUND_ROOT}/{int(r)}/model.pt"


def round_status(r):
    """Status of round r; raises Snakemake's incomplete-checkpoint signal until it exists."""
    path = checkpoints.round_status.get(r=str(r)).output.status
    return json.loads(Path(path).read_text())


def final_round():
    max_rounds = config["self_learning"]["max_rounds"]
    for r in range(1, max_rounds + 1):
        if round_status(r)["stop"]:
            return r
    raise WorkflowError(f"no self-learning round up to {max_rounds} says stop: the round chain is broken")


def round_chain_inputs(wildcards):
    last = final_round()
    return [
        *[f"{ROUND_ROOT}/{r}/status.json" for r in range(1, last + 1)],
        *[f"{ROUND_ROOT}/{r}/qc.parquet" for r in range(1, last + 1)],
        *[round_model(r) for r in range(0, last)],
        *expand(f"{ROUND_ROOT}/{last}/pseudo/{{shard}}.npz", shard=shards()),
    ]


def has_ground_truth():
    return scan_info()["with_masks"] > 0


def evaluated_stages():
    stages = ["weak", *[f"round_{r}" for r in range(1, final_round() + 1)], "final"]
    if config["supervised"]["enabled"]:
        stages.append("supervised")
    return stages


def eval_predictions(wildcards):
    stage = wildcards.stage
    if stage == "weak":
        pattern, qc = "results/weak/{shard}.npz", "results/qc/weak.parquet"
    elif stage.startswith("round_"):
        r = stage.removeprefix("round_")
        pattern, qc = f"{ROUND_ROOT}/{r}/pseudo/{{shard}}.npz", f"{ROUND_ROOT}/{r}/qc.parquet"
    else:
        pattern, qc = f"results/predictions/{stage}/{{shard}}.npz", []
    return {"pred": expand(pattern, shard=shards()), "qc": qc,
            "gt": expand("results/gt/{shard}.npz", shard=shards()), "manifest": "results/manifest.parquet"}


def final_targets(wildcards):
    # Naming every round's status here makes a deleted status file a missing target that is
    # rebuilt, instead of a hole the final stage might silently step over.
    statuses = [f"{ROUND_ROOT}/{r}/status.json" for r in range(1, final_round() + 1)]
    targets = ["results/final/model.pt", *statuses]
    if has_ground_truth():
        targets.append("results/eval/summary.csv")
    if config["heatmaps"]["enabled"]:
        targets.append("results/heatmaps/scores.parquet")
    return targets
