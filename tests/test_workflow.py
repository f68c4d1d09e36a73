"""End to end: the real Snakemake workflow on a tiny synthetic set, in a temp folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.workflow_utils import REPO, copy_workflow, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow

TINY = {"synthetic": {"n": 24, "min_size": 256, "max_size": 320}, "ingest": {"shard_size": 10, "size": 128}}
# The backbone only: ingest, weak masks, QC and their evaluation (the learning stages have their own test).
TARGETS = ("results/manifest.parquet", "results/qc/weak.parquet", "results/eval/weak.parquet")
RERUN = {"weak_masks": 3, "shape_prior": 1, "qc_weak": 3, "qc_weak_merge": 1, "evaluate": 1}


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, workflow_copy):
    workdir = tmp_path_factory.mktemp("wf")
    write_config(workdir, TINY)
    snakemake(workdir, *TARGETS, workflow=workflow_copy)
    return workdir


def test_tiny_run_produces_manifest_weak_masks_and_qc(tiny_run):
    manifest = pd.read_parquet(tiny_run / "results/manifest.parquet")
    rejected = pd.read_parquet(tiny_run / "results/manifest_rejected.parquet")
    assert len(manifest) + len(rejected) == 24 and len(manifest) == 24
    assert set(manifest["split"]) == {"train", "val"}
    assert manifest.groupby("group")["split"].nunique().max() == 1  # a patient never straddles the split
    qc = pd.read_parquet(tiny_run / "results/qc/weak.parquet")
    assert sorted(qc["image_id"]) == sorted(manifest["image_id"])
    assert qc["qc_score"].between(0, 1).all()
    for shard in ("0000", "0001", "0002"):
        assert (tiny_run / f"results/qc/{shard}.parquet").is_file()
        assert (tiny_run / f"results/weak/{shard}.npz").is_file()
    evaluation = pd.read_parquet(tiny_run / "results/eval/weak.parquet")
    assert len(evaluation) == 24 and evaluation["dice"].between(0, 1).all() and evaluation["dice"].mean() > 0.5
    assert (tiny_run / "results/qc/weak_hist.png").stat().st_size > 1000
    assert json.loads((tiny_run / "results/ingest/summary.json").read_text())["accepted"] == 24


def test_second_run_has_nothing_to_do(tiny_run, workflow_copy):
    assert planned_jobs(snakemake(tiny_run, "-n", *TARGETS, workflow=workflow_copy)) == {}


def test_weak_mask_param_change_reruns_only_downstream(tiny_run, workflow_copy):
    write_config(tiny_run, {**TINY, "weak_masks": {"pair_smooth_px": 9}})
    try:
        jobs = planned_jobs(snakemake(tiny_run, "-n", *TARGETS, workflow=workflow_copy))
    finally:
        write_config(tiny_run, TINY)
    assert jobs == RERUN


def test_weak_mask_code_change_reruns_only_downstream(tiny_run, workflow_copy):
    code = workflow_copy / "lungssl" / "weak_masks.py"
    original = code.read_text()
    code.write_text(original + "\n# an edit to the weak-mask code\n")
    try:
        jobs = planned_jobs(snakemake(tiny_run, "-n", *TARGETS, workflow=workflow_copy))
    finally:
        code.write_text(original)
    assert jobs == RERUN


def test_config_typo_fails_before_any_job_naming_the_key(tmp_path):
    write_config(tmp_path, {"weak_masks": {"clahe_clp": 3.0}})
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "clahe_clp" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_input_folder_without_images_fails_with_clear_message(tmp_path):
    # An empty folder fails at start-up (tests/test_cli.py); one holding other files, in the scan job.
    (tmp_path / "xrays").mkdir()
    (tmp_path / "xrays" / "notes.txt").write_text("no X-rays here")
    write_config(tmp_path, {"input": {"images": str(tmp_path / "xrays"), "preset": "generic"}})
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    log = (tmp_path / "logs/ingest/scan.log").read_text()
    assert f"lungssl: error: no X-ray images found in {tmp_path / 'xrays'}" in log and "Traceback" not in log


def test_lint_is_clean():
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
