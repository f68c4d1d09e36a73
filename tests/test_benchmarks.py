"""Smoke test of benchmarks/: every script runs on tiny data and prints and writes its figures.

The real benchmark runs (thousands of images, minutes to hours) are not part of the test suite;
see benchmarks/README.md. This only keeps the scripts from rotting.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lungssl.modeling import ModelSpec, build_model, save_model
from lungssl.synthetic import write_dataset
from tests.workflow_utils import REPO, write_config

SCRIPTS = ("weak_masks_throughput", "dag_scale", "shard_memory", "train_input_pipeline", "predict_throughput",
           "end_to_end", "intensity_robustness")


def bench(name: str, out: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert f"== {name}:" in proc.stdout and "meets_target" in proc.stdout
    result = json.loads(out.read_text())
    assert result["benchmark"] == name and {"target", "figures", "machine", "meets_target"} <= set(result)
    assert result["machine"]["cores"] >= 1
    return result


@pytest.fixture(scope="module")
def xrays(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench-data")
    write_dataset(root / "syn", n=6, seed=3, min_size=160, max_size=200)
    return root / "syn" / "images"


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Target (issue " in proc.stdout, proc.stderr


def test_weak_masks_throughput(xrays, tmp_path):
    r = bench("weak_masks_throughput", tmp_path / "r.json", "--images", str(xrays), "--shard-size", "3",
              "--workers", "1", "2")
    f = r["figures"]
    assert f["images"] == 6 and f["method"] == "pair" and f["stability"]  # the default method, as the workflow runs it
    assert f["images_per_s_per_core_1w"] > 0 and "speedup_2w_vs_1w" in f and 0 < f["mean_dice"] <= 1
    assert [row["workers"] for row in r["rows"]] == [1, 2]


def test_dag_scale(tmp_path):
    r = bench("dag_scale", tmp_path / "r.json", "--n", "200", "--shard-size", "100")
    row = r["rows"][0]
    assert row["images"] == 200 and row["shards"] == 2
    assert row["jobs_by_rule"]["weak_masks"] == 2 and row["jobs_by_rule"]["decode"] == 2
    assert row["dry_planned_s"] > 0 and row["jobs_planned"] == sum(row["jobs_by_rule"].values())


def test_shard_memory(tmp_path):
    r = bench("shard_memory", tmp_path / "r.json", "--n", "4", "8", "--stage", "weak", "--pool", "2",
              "--image-size", "128", "160", "--config", '{"ingest": {"shard_size": 4, "size": 64}}')
    peaks = {row["rule"]: row for row in r["rows"]}
    assert {"decode", "manifest", "weak_masks", "qc_weak", "qc_weak_merge", "shape_prior"} <= set(peaks)
    assert peaks["weak_masks"]["jobs"] == "1 / 2" and peaks["weak_masks"]["peak_mb_8"] > 0
    assert "worst_per_shard_or_merge_change" in r["figures"]


def test_train_input_pipeline(tmp_path):
    r = bench("train_input_pipeline", tmp_path / "r.json", "--n", "8", "--batch-size", "4", "--model-size", "64",
              "--threads", "1", "--workers", "0", "1", "--device", "cpu")
    assert r["figures"]["images_per_epoch"] == 8 and r["figures"]["pure_epoch_s"] > 0
    assert [row["workers"] for row in r["rows"]] == [0, 1] and all(row["ratio_to_pure"] > 0 for row in r["rows"])


def test_predict_throughput(xrays, tmp_path):
    r = bench("predict_throughput", tmp_path / "r.json", "--input", str(xrays), "--n", "3", "--model-size", "64",
              "--batch-size", "2", "--device", "cpu")
    row = r["rows"][0]
    assert row["images"] == 3 and row["input_px"] == 64 and row["images_per_s"] > 0 and row["model_images_per_s"] > 0


def test_end_to_end(tmp_path):
    write_config(tmp_path, {"synthetic": {"n": 4, "min_size": 128, "max_size": 160},
                            "ingest": {"shard_size": 2, "size": 64}})
    r = bench("end_to_end", tmp_path / "r.json", "--configfile", str(tmp_path / "config.yaml"), "--directory",
              str(tmp_path), "--cores", "2", "--targets", "results/qc/weak.parquet")
    assert r["figures"]["fresh"] and r["figures"]["jobs_done"] >= 7 and r["figures"]["wall_s"] > 0
    assert {"decode", "weak_masks", "qc_weak", "qc_weak_merge"} <= {row["rule"] for row in r["rows"]}


def test_intensity_robustness(xrays, tmp_path):
    spec = ModelSpec(encoder="resnet18", size=64)
    models = [tmp_path / "z.pt", tmp_path / "a.pt"]  # given out of sorted order: the summary aligns them
    for path in models:
        save_model(path, build_model(spec), spec, {"stage": "test"})
    r = bench("intensity_robustness", tmp_path / "r.json", "--images", str(xrays),
              "--model", *map(str, models), "--size", "96")
    assert r["params"]["n"] == 6 and {row["curve"] for row in r["rows"]} >= {"identity", "gamma 2.0", "log"}
    assert all(0 <= row["mean"] <= 1 for row in r["rows"]) and set(r["figures"]) == set(map(str, models))
