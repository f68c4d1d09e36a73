"""SIGKILL in the middle of the real workflow: a weak-mask job, the whole run while training
(a node failure mid-epoch) and a prediction job. Rerun, it completes with the outputs of a run
that was never interrupted; no half-written file is ever left under an output's name.
Also: two clean runs with the same config and seed give identical files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lungssl.storage import write_parquet
from lungssl.synthetic import write_dataset
from tests.faults.procs import damaged_outputs, kill_job, kill_run, same_files, start, temp_files, wait_for
from tests.workflow_utils import REPO, snakemake, write_config

pytestmark = pytest.mark.slow

CONFIG = {
    "ingest": {"shard_size": 6, "size": 128},
    "model": {"encoder": "resnet18", "size": 32},
    "train": {"batch_size": 4, "threads": 2, "min_steps_per_epoch": 3},
    "early_learning": {"min_epochs": 3, "max_epochs": 3},  # three epochs: killed in the second
    "predict": {"batch_size": 8},
}
TARGET = "results/rounds/1/qc.parquet"  # ingest, weak masks, QC, early learning, round-1 prediction + QC
BACKBONE = ("results/manifest.parquet", "results/qc/weak.parquet")
# Only time stamps differ between runs: the benchmarks, and the seconds in metrics and resume state.
NOT_COMPARED = ("benchmarks/", "train_state.pt", "metrics.parquet")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("cohort") / "data"
    write_dataset(data, n=12, seed=1, min_size=256, max_size=320)
    return data / "images"


def _workdir(tmp_path_factory, name: str, images: Path) -> Path:
    workdir = tmp_path_factory.mktemp(name)
    write_config(workdir, {**CONFIG, "input": {"images": str(images), "preset": "synthetic"}})
    return workdir


@pytest.fixture(scope="module")
def reference(tmp_path_factory, images) -> Path:
    workdir = _workdir(tmp_path_factory, "reference", images)
    snakemake(workdir, TARGET)
    return workdir


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, images):
    workdir = _workdir(tmp_path_factory, "interrupted", images)
    logs = workdir.parent / "snakemake-logs"  # beside, not inside, the working directory
    results = workdir / "results"
    steps = []

    run = start(workdir, TARGET, log=logs / "1.log")
    kill_job(run, "weak-masks")  # the scheduler sees its job die, as after an out-of-memory kill
    steps.append({"fault": "weak-mask job SIGKILLed", "rc": run.wait(), "killed": run.killed,
                  "damaged": damaged_outputs(results)})

    run = start(workdir, TARGET, log=logs / "2.log")
    state = results / "rounds/0/train_state.pt"  # appears once the first epoch is done
    wait_for(state.is_file, 900, "the first training epoch", run)
    kill_run(run)  # scheduler and training job at once, in epoch 2: a node failure
    steps.append({"fault": "whole run SIGKILLed mid-epoch", "rc": run.proc.returncode, "killed": run.killed,
                  "damaged": damaged_outputs(results)})

    snakemake(workdir, "--unlock")  # the documented recovery: unlock, rerun with --rerun-incomplete
    run = start(workdir, TARGET, "--rerun-incomplete", log=logs / "3.log")
    kill_job(run, "predict-shard")
    steps.append({"fault": "prediction job SIGKILLed", "rc": run.wait(), "killed": run.killed,
                  "damaged": damaged_outputs(results)})

    snakemake(workdir, TARGET)
    return workdir, steps


def _outputs(workdir: Path, under: str = "") -> list[str]:
    results = workdir / "results"
    return sorted(str(p.relative_to(results)) for p in (results / under).rglob("*")
                  if p.is_file() and not any(part in str(p.relative_to(results)) for part in NOT_COMPARED))


def test_every_fault_was_injected_and_failed_loudly(interrupted):
    _, steps = interrupted
    assert [s["fault"] for s in steps] == ["weak-mask job SIGKILLed", "whole run SIGKILLed mid-epoch",
                                           "prediction job SIGKILLed"]
    for step in steps:
        assert step["killed"], step
        assert step["rc"] != 0, step  # never reported as success


def test_no_half_written_file_is_ever_left_under_an_output_name(interrupted):
    workdir, steps = interrupted
    for step in steps:
        assert step["damaged"] == [], step
    results = workdir / "results"
    assert damaged_outputs(results) == []
    assert temp_files(results) == []  # what the killed writers left was cleaned by the rerun


def test_training_resumed_from_its_last_finished_epoch(interrupted, reference):
    workdir, _ = interrupted
    log = (workdir / "logs/early_learning.log").read_text()
    assert "resuming after epoch 1" in log
    model = torch.load(workdir / "results/rounds/0/model.pt", weights_only=True)
    assert model["meta"]["epoch"] == 3
    a = pd.read_parquet(reference / "results/rounds/0/metrics.parquet").drop(columns="seconds")
    b = pd.read_parquet(workdir / "results/rounds/0/metrics.parquet").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)


def test_rerun_after_kills_equals_the_uninterrupted_run(interrupted, reference):
    workdir, _ = interrupted
    expected = _outputs(reference)
    assert _outputs(workdir) == expected
    must_have = {"manifest.parquet", "weak/0000.npz", "qc/weak.parquet", "qc/prior.npz", "rounds/0/model.pt",
                 "rounds/1/pseudo/0001.npz", "rounds/1/qc.parquet", "rounds/1/status.json"}
    assert must_have <= set(expected)
    assert same_files(reference / "results", workdir / "results", expected) == []  # byte for byte


def test_two_runs_with_the_same_config_and_seed_are_identical(tmp_path_factory, images, reference):
    second = _workdir(tmp_path_factory, "second", images)
    snakemake(second, *BACKBONE)
    produced = _outputs(second)
    assert {"ingest/files.parquet", "manifest.parquet", "manifest_rejected.parquet", "weak/0000.npz",
            "weak/0001.parquet", "qc/0000.parquet", "qc/weak.parquet", "qc/prior.npz"} <= set(produced)
    assert same_files(reference / "results", second / "results", produced) == []
    split = [pd.read_parquet(w / "results/manifest.parquet").set_index("image_id")["split"] for w in (reference, second)]
    pd.testing.assert_series_equal(*split)
    assert set(split[0]) == {"train", "val"}


def test_a_run_writes_only_below_its_working_directory(reference, images):
    """No config value names an output: everything lands in results/ and logs/ of the working
    directory (and Snakemake's .snakemake/); the input folder is only ever read."""
    assert sorted(os.listdir(reference)) == [".snakemake", "config.yaml", "logs", "results"]
    assert sorted(os.listdir(images.parent)) == ["cases.csv", "images", "masks"]
    assert all(p.suffix == ".png" for p in images.iterdir())


def test_a_writer_killed_mid_write_leaves_nothing_under_the_name(tmp_path):
    """The mechanism behind every output: SIGKILL inside storage.atomic_path, between the bytes."""
    target = tmp_path / "out" / "table.parquet"
    code = (f"import time\nfrom lungssl.storage import atomic_path\nwith atomic_path({str(target)!r}) as tmp:\n"
            "    tmp.write_bytes(b'PAR1 the first half of a table')\n    print('writing', flush=True)\n"
            "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not target.exists() and len(temp_files(tmp_path)) == 1
    write_parquet(pd.DataFrame({"a": [1]}), target)  # the rerun's write
    assert pd.read_parquet(target)["a"].tolist() == [1] and temp_files(tmp_path) == []
