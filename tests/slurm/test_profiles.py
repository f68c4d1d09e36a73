"""The execution profiles name real rules and parse; runs everywhere (no cluster needed)."""
from __future__ import annotations

import re

import pytest
import yaml

from tests.workflow_utils import REPO, snakemake, write_config

SLURM = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
WORKSTATION = yaml.safe_load((REPO / "profiles/workstation/config.yaml").read_text())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("profiles")
    write_config(path, {"synthetic": {"n": 24}, "ingest": {"shard_size": 12}})
    return path


@pytest.fixture(scope="module")
def rules(workdir):
    return set(snakemake(workdir, "--list-rules").stdout.split())


def test_slurm_profile_sends_training_and_prediction_to_a_gpu(rules):
    assert SLURM["executor"] == "slurm"
    gpu_rules = {"early_learning", "train_round", "final_model", "supervised_model", "predict_round", "predict_model"}
    assert set(SLURM["set-resources"]) == gpu_rules <= rules
    for rule, res in SLURM["set-resources"].items():
        assert res["gpu"] == 1 and res["slurm_partition"] and {"mem_mb", "runtime"} <= set(res), rule
    assert {"slurm_partition", "mem_mb", "runtime", "cpus_per_task"} <= set(SLURM["default-resources"])
    assert SLURM["retries"] >= 1 and SLURM["latency-wait"] >= 30


def test_local_rules_exist(rules):
    text = (REPO / "rules/common.smk").read_text()
    block = re.search(r"^localrules:\n((?:    \w+,\n)+)", text, re.M).group(1)
    local = set(re.findall(r"(\w+),", block))
    assert local == {"manifest", "qc_weak_merge", "weak_agreement_merge", "weak_qc_combined", "qc_quality",
                     "round_status", "round_chain",
                     "eval_summary", "heatmap_merge",
                     "report_ingest", "report_rounds", "report_eval", "report_runtimes"}
    assert local <= rules


def test_workstation_profile_limits_the_gpu_and_names_its_rerun_triggers():
    assert WORKSTATION["resources"]["gpu"] == 1
    assert set(WORKSTATION["rerun-triggers"]) == {"mtime", "params", "input", "code", "software-env"}


@pytest.mark.parametrize("profile", ["workstation", "slurm"])
def test_profile_dry_run(workdir, profile):
    if profile == "slurm":
        pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    proc = snakemake(workdir, "-n", "--profile", str(REPO / "profiles" / profile))
    text = proc.stdout + proc.stderr
    assert "Job stats:" in text and "not present in the Snakefile" not in text
