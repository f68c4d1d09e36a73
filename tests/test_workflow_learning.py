"""End to end through the learning stages on a tiny synthetic set: rounds, final model, predict."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.workflow_utils import planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow

# Two rounds forced (min_rounds = max_rounds = 2), so the test knows which round the final comes from.
TINY = {
    "synthetic": {"n": 24, "min_size": 256, "max_size": 300},
    "ingest": {"shard_size": 12, "size": 128},
    "model": {"encoder": "resnet18", "size": 64},
    "train": {"batch_size": 8, "threads": 2},
    "early_learning": {"min_epochs": 2, "max_epochs": 3},
    "self_learning": {"min_rounds": 2, "max_rounds": 2, "min_epochs": 1, "max_epochs": 1},
    "final": {"epochs": 1},
    "supervised": {"epochs": 2},
}


def lungssl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lungssl.cli", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-4000:])
    return proc


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("chain")
    write_config(workdir, TINY)
    snakemake(workdir)
    return workdir


def test_rounds_unroll_and_final_comes_from_the_stopping_round(chain_run):
    r = chain_run / "results"
    s1 = json.loads((r / "rounds/1/status.json").read_text())
    s2 = json.loads((r / "rounds/2/status.json").read_text())
    assert not s1["stop"] and s2["stop"] and "round limit" in s2["reason"]
    assert not (r / "rounds/3").exists()
    chain = json.loads((r / "rounds/chain.json").read_text())
    assert chain["round"] == 2 and chain["init"].endswith("rounds/1/model.pt")
    payload = torch.load(r / "final/model.pt", weights_only=True)
    assert payload["meta"]["round"] == 2 and payload["meta"]["stage"] == "final"
    assert payload["spec"]["size"] == 64


def test_metrics_plots_and_evaluation(chain_run):
    r = chain_run / "results"
    metrics = pd.read_parquet(r / "rounds/0/metrics.parquet")
    assert {"train_loss", "train_dice", "val_loss", "val_dice", "slope_ratio", "chosen"} <= set(metrics.columns)
    assert metrics["chosen"].sum() == 1
    for png in ("rounds/0/learning_curve.png", "final/learning_curve.png", "qc/weak_hist.png"):
        assert (r / png).stat().st_size > 1000
    summary = pd.read_csv(r / "eval/summary.csv")
    stages = set(summary["stage"])
    assert {"weak", "weak_qc_pass", "round_1", "round_2", "final", "supervised"} <= stages
    val = summary[summary["split"] == "val"].set_index("stage")
    assert val["dice_mean"].between(0, 1).all()
    combined = pd.read_parquet(r / "qc/weak_combined.parquet")
    assert len(combined) == len(pd.read_parquet(r / "qc/weak.parquet"))
    assert any("mean of ranks" in label for label in pd.read_csv(r / "eval/qc_quality.csv").iloc[:, 0])


def test_second_run_has_nothing_to_do(chain_run):
    assert planned_jobs(snakemake(chain_run, "-n")) == {}


def test_predict_cli_on_a_folder(chain_run, tmp_path):
    images = chain_run / "resources/synthetic/images"
    proc = lungssl("predict", "--model", str(chain_run / "results/final/model.pt"), "--input", str(images),
                   "--output", str(tmp_path / "out"), "--overlay")
    import cv2

    for src in sorted(images.glob("*.png"))[:3]:
        mask = cv2.imread(str(tmp_path / "out" / src.name), cv2.IMREAD_UNCHANGED)
        assert mask.shape == cv2.imread(str(src), cv2.IMREAD_UNCHANGED).shape
        assert (tmp_path / "out" / f"{src.stem}_overlay.png").is_file()
    assert proc.returncode == 0


def test_heatmap_stage_covers_every_image(chain_run):
    r = chain_run / "results"
    manifest = pd.read_parquet(r / "manifest.parquet")
    scores = pd.read_parquet(r / "heatmaps/scores.parquet")
    assert sorted(scores["image_id"]) == sorted(manifest["image_id"])
    assert scores["score"].notna().all() and (scores["flagged_fraction"].dropna().between(0, 1)).all()
    overlays = sorted(p.stem for p in (r / "heatmaps/overlays").glob("*/*.png"))
    assert overlays == sorted(manifest["image_id"])
    # the synthetic set carries no image labels: nothing to measure, said so rather than invented
    assert pd.read_csv(r / "heatmaps/auc.csv").empty
    assert (r / "heatmaps/roc.png").stat().st_size > 1000
    with np.load(r / "heatmaps/0000.npz") as z:
        assert z["heat"].dtype == np.uint8 and len(z["ids"]) == z["heat"].shape[0]


REPORT_SECTIONS = ("1 Input", "2 Quality control", "3 Learning", "4 Masks", "5 Evaluation", "6 Heatmaps", "7 Runtime")
REPORT_FILES = ("results/ingest/summary.html", "results/qc/weak_hist.png", "results/report/qc_by_round.png",
                "results/rounds/0/learning_curve.png", "results/report/pass_fraction.png",
                "results/report/overlays_sample.png", "results/report/overlays_worst_qc.png",
                "results/eval/summary.html", "results/eval/dice.png", "results/heatmaps/roc.png",
                "results/report/runtimes.html", "results/report/runtimes.png")


def test_report_figures_are_made_by_the_run(chain_run):
    r = chain_run / "results"
    ingest = (r / "ingest/summary.html").read_text()
    assert "files found" in ingest and "<td>24</td>" in ingest
    runtimes = (r / "report/runtimes.html").read_text()
    for rule in ("decode", "weak_masks", "early_learning", "train_round", "predict_round", "final_model", "heatmap"):
        assert f"<td>{rule}</td>" in runtimes, rule  # per-shard and per-round jobs attributed to their rule
    assert "reference: supervised model" in (r / "eval/summary.html").read_text()
    for png in ("report/pass_fraction.png", "report/qc_by_round.png", "report/overlays_sample.png",
                "report/overlays_worst_qc.png", "eval/dice.png", "report/runtimes.png"):
        assert (r / png).stat().st_size > 10_000, png


def test_html_report_covers_every_section(chain_run, tmp_path):
    report = tmp_path / "report.html"
    snakemake(chain_run, "--report", str(report))
    html = report.read_text(encoding="utf-8")
    # self-contained: no script, style sheet or image is fetched from elsewhere
    assert not re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//", html)
    results = json.loads(re.search(r'<script id="results">\s*var results = (.*?);\s*</script>', html, re.S).group(1))
    categories = json.loads(re.search(r'<script id="categories">\s*var categories = (.*?);\s*</script>', html,
                                      re.S).group(1))
    assert sorted(categories) == list(REPORT_SECTIONS)
    for path in REPORT_FILES:
        assert path in results, path
        mime = "image/png" if path.endswith(".png") else "text/html"
        assert results[path]["data_uri"].startswith(f"data:{mime};"), path  # embedded, not linked
        assert results[path]["caption"], path
    assert "results/rounds/1/learning_curve.png" in categories["3 Learning"]["2 Self-learning rounds"]
    assert "Sections of this report" in html


def test_predict_cli_heatmaps_and_qc(chain_run, tmp_path):
    images = sorted((chain_run / "resources/synthetic/images").glob("*.png"))[:2]
    lungssl("predict", "--model", str(chain_run / "results/final/model.pt"), "--input", *map(str, images),
            "--output", str(tmp_path / "out"), "--heatmaps", str(chain_run / "results/heatmaps/normal_model.npz"),
            "--qc", str(chain_run / "results/qc/prior.npz"))
    table = pd.read_csv(tmp_path / "out" / "heatmap_scores.csv")
    assert len(table) == 2 and {"score", "flagged_fraction", "left_mean_z"} <= set(table.columns)
    assert all((tmp_path / "out" / f"{p.stem}_heat.png").is_file() for p in images)
    quality = pd.read_csv(tmp_path / "out" / "quality.csv")  # the run's own prior judges the masks
    assert list(quality["path"]) == [str(p) for p in images]
    assert quality["qc_score"].between(0, 1).all() and quality["f_stability"].between(0, 1).all()
    from lungssl.qc import load_prior

    judging = load_prior(chain_run / "results/qc/prior.npz").judging  # what predict --qc judges with
    assert judging["qc"]["cohort_threshold"] == 0.75 and judging["qc"]["method"] == "cohort"
    assert judging["film_tolerance"] == 8


def test_predict_cli_exit_codes(chain_run, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.png").write_text("not an image")
    model = str(chain_run / "results/final/model.pt")
    # every input unreadable: an error (1); some unreadable: 3 (tests/test_cli.py)
    proc = lungssl("predict", "--model", model, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                   check=False)
    assert proc.returncode == 1 and "none of the 1 input files could be read" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = lungssl("predict", "--model", model, "--input", str(empty), "--output", str(tmp_path / "o2"), check=False)
    assert proc.returncode == 1 and "no X-ray images found" in proc.stderr
    (tmp_path / "fake.pt").write_bytes(b"junk")
    proc = lungssl("predict", "--model", str(tmp_path / "fake.pt"), "--input", str(tmp_path / "in"), "--output",
                   str(tmp_path / "o3"), check=False)
    assert proc.returncode == 1 and "not a readable lungssl model" in proc.stderr


def test_a_chain_missing_a_round_is_refused(chain_run, tmp_path):
    r = chain_run / "results/rounds"
    proc = lungssl("round-chain", "--inputs", str(r / "2/status.json"), *map(str, (r / "2/pseudo").glob("*.npz")),
                   "--out", str(tmp_path / "chain.json"), check=False)
    assert proc.returncode == 1 and "rounds 1..1" in proc.stderr
    assert not (tmp_path / "chain.json").exists()


def test_a_replaced_round_model_is_refused_by_the_final_stage(chain_run, tmp_path):
    r = chain_run / "results"
    chain = json.loads((r / "rounds/chain.json").read_text())
    fake_init = tmp_path / "model.pt"
    fake_init.write_bytes((chain_run / chain["init"]).read_bytes() + b"tampered")
    (tmp_path / "chain.json").write_text(json.dumps({**chain, "init": str(fake_init)}))
    params = json.dumps({"model": {"arch": "Unet", "encoder": "resnet18", "size": 64},
                         "train": {"epochs": 1, "batch_size": 8}})
    proc = lungssl("train", "--stage", "final", "--chain", str(tmp_path / "chain.json"), "--manifest",
                   str(r / "manifest.parquet"), "--images", *map(str, (r / "images").glob("*.npy")),
                   "--params", params, "--out", str(tmp_path / "final.pt"), "--metrics", str(tmp_path / "m.parquet"),
                   "--plot", str(tmp_path / "c.png"), "--state", str(tmp_path / "s.pt"), check=False)
    assert proc.returncode == 1 and "changed after the round chain was verified" in proc.stderr
    assert not (tmp_path / "final.pt").exists()


def test_deleted_round_status_is_rebuilt_and_final_still_from_round_2(chain_run):
    final = chain_run / "results/final/model.pt"
    trained = final.stat().st_mtime_ns
    (chain_run / "results/rounds/1/status.json").unlink()
    snakemake(chain_run)
    assert final.stat().st_mtime_ns == trained  # the rebuilt status says the same: nothing is retrained
    payload = torch.load(chain_run / "results/final/model.pt", weights_only=True)
    assert payload["meta"]["round"] == 2
    assert json.loads((chain_run / "results/rounds/1/status.json").read_text())["round"] == 1


def test_raising_the_round_limit_continues_the_chain(chain_run, tmp_path):
    # A finished run whose user then asks for one more round: the checkpoint unrolls round 3 and
    # every stage that lists the rounds (final model, evaluation, QC quality) follows it.
    run = tmp_path / "run"
    shutil.copytree(chain_run, run, symlinks=True)
    write_config(run, {**TINY, "self_learning": {**TINY["self_learning"], "min_rounds": 3, "max_rounds": 3}})
    snakemake(run)
    r = run / "results"
    assert json.loads((r / "rounds/3/status.json").read_text())["stop"]
    assert torch.load(r / "final/model.pt", weights_only=True)["meta"]["round"] == 3
    assert "round_3" in set(pd.read_csv(r / "eval/summary.csv")["stage"])
    assert any("round 3" in label for label in pd.read_csv(r / "eval/qc_quality.csv").iloc[:, 0])


def test_a_rerun_round_that_changes_its_decision_updates_every_round_listing(chain_run, tmp_path):
    # Round 1's status file exists when Snakemake starts, so the round lists are first read from the
    # old decision; every job that lists the rounds must follow the decision the rerun round takes
    # (the summary once kept round 2 out after a stopped run was asked for two rounds).
    run = tmp_path / "run"
    shutil.copytree(chain_run, run, symlinks=True)
    r = run / "results"
    for rounds in (1, 2):  # round 1 flips to "stop", then back to "go on"
        write_config(run, {**TINY, "self_learning": {**TINY["self_learning"], "min_rounds": rounds, "max_rounds": rounds}})
        snakemake(run)
        assert torch.load(r / "final/model.pt", weights_only=True)["meta"]["round"] == rounds
        listed = {s for s in pd.read_csv(r / "eval/summary.csv")["stage"] if re.fullmatch(r"round_\d+", s)}
        assert listed == {f"round_{k}" for k in range(1, rounds + 1)}
        labels = pd.read_csv(r / "eval/qc_quality.csv").iloc[:, 0]
        assert {int(k) for k in labels.str.extract(r"^round (\d+) ")[0].dropna()} == set(range(1, rounds + 1))


def test_training_job_killed_mid_run_resumes(chain_run, tmp_path):
    r = chain_run / "results"
    params = json.dumps({"model": {"arch": "Unet", "encoder": "resnet18", "size": 64},
                         "train": {"epochs": 4, "min_epochs": 1, "early_stop": False, "batch_size": 8, "lr": 1e-3}})
    common = ["train", "--stage", "early_learning", "--manifest", str(r / "manifest.parquet"),
              "--images", *map(str, sorted((r / "images").glob("*.npy"))), "--targets",
              *map(str, sorted((r / "weak").glob("*.npz"))), "--qc", str(r / "qc/weak.parquet"),
              "--params", params, "--threads", "2"]

    def outputs(name):
        return ["--out", str(tmp_path / f"{name}.pt"), "--metrics", str(tmp_path / f"{name}.parquet"),
                "--plot", str(tmp_path / f"{name}.png"), "--state", str(tmp_path / f"{name}_state.pt")]

    lungssl(*common, *outputs("straight"))
    proc = subprocess.Popen([sys.executable, "-m", "lungssl.cli", *common, *outputs("killed")],
                            stderr=subprocess.PIPE, text=True)
    state = tmp_path / "killed_state.pt"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed.pt").exists()  # nothing half-done looks complete
    resumed = lungssl(*common, *outputs("killed"))
    assert "resuming after epoch" in resumed.stderr
    a = pd.read_parquet(tmp_path / "straight.parquet")
    b = pd.read_parquet(tmp_path / "killed.parquet")
    assert a["train_loss"].tolist() == pytest.approx(b["train_loss"].tolist(), rel=1e-4)
