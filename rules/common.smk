import json
import os
from functools import lru_cache
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("8.20")


validate(config, schema="../config/schema.yaml")

# Code files are inputs of the rules they drive, so editing e.g. the weak-mask module reruns
# exactly those jobs and their dependants (mtime trigger), never ingest.
PKG = Path(workflow.basedir) / "lungssl"
SYNTHETIC_DIR = "resources/synthetic"
CFG_INGEST = config["ingest"]
SHARD_SIZE = CFG_INGEST["shard_size"]


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
    return lambda wildcards: expand(pattern, shard=shards())


def evaluation_targets(wildcards):
    if scan_info()["with_masks"] == 0:
        return []
    return ["results/eval/weak.parquet"]
