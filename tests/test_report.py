"""The report's figures and tables from small hand-made inputs (the workflow's report is checked on
the learning tests' tiny run, tests/test_workflow_learning.py::test_html_report_covers_every_section)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from lungssl.cli import main
from lungssl.report import dice_by_stage, html_page, ingest_sections, pick_images, runtime_table, stage_label
from lungssl.self_learning import pass_fractions
from lungssl.storage import write_image_stack, write_mask_stack, write_npz
from tests.conftest import toy_radiograph


def test_ingest_tables_count_every_file_and_reason():
    summary = {"found": 7, "accepted": 4, "rejected": 3, "with_masks": 2, "patients": 4,
               "split": {"train": 3, "val": 1}, "rejected_reasons": {"empty file": 1, "truncated or corrupt image": 2},
               "masks_set_aside": {}, "split_note": ""}
    sections = ingest_sections(summary)
    counts = dict(sections[0][1].itertuples(index=False))
    assert counts["files found"] == 7 and counts["accepted"] + counts["rejected"] == 7
    reasons = sections[1][1]
    assert reasons["reason"].tolist() == ["truncated or corrupt image", "empty file"]  # most frequent first
    page = html_page("Input <x>", sections)
    assert "Input &lt;x&gt;" in page and "truncated or corrupt image" in page and "<script" not in page


def test_html_escapes_file_derived_text():
    page = html_page("t", [("s", pd.DataFrame({"reason": ["<img src=x onerror=alert(1)>"], "n": [1]}), "")])
    assert "<img" not in page and "&lt;img" in page


def test_stage_labels_mark_the_reference():
    assert stage_label("supervised").startswith("reference")
    assert stage_label("round_2") == "round 2 pseudo-masks"
    assert stage_label("weak_qc_pass") == "weak masks, QC-passed"


def test_dice_by_stage_keeps_order_and_splits_qc_passed():
    weak = pd.DataFrame({"image_id": ["a", "b"], "stage": "weak", "dice": [0.9, 0.5], "split": ["train", "val"],
                         "qc_pass": [True, False]})
    final = pd.DataFrame({"image_id": ["a", "b"], "stage": "final", "dice": [0.95, 0.9], "split": ["train", "val"]})
    long = dice_by_stage([weak, final])
    assert list(dict.fromkeys(long["stage"])) == ["weak", "weak_qc_pass", "final"]
    assert long.loc[long["stage"] == "weak_qc_pass", "dice"].tolist() == [0.9]


def test_pick_images_is_seeded_and_finds_the_worst_qc():
    manifest = pd.DataFrame({"image_id": [f"i{k:02d}" for k in range(20)], "shard": "0000", "row": range(20),
                             "split": "train"})
    qc = pd.DataFrame({"image_id": manifest["image_id"], "qc_score": np.linspace(1, 0.05, 20), "qc_pass": True})
    a, b = pick_images(manifest, qc, 5, seed=3), pick_images(manifest, qc, 5, seed=3)
    assert a["sample"]["image_id"].tolist() == b["sample"]["image_id"].tolist()
    assert a["sample"]["image_id"].tolist() != pick_images(manifest, qc, 5, seed=4)["sample"]["image_id"].tolist()
    assert a["worst_qc"]["image_id"].tolist() == ["i19", "i18", "i17", "i16", "i15"]
    assert len(pick_images(manifest.head(3), qc, 5, seed=0)["sample"]) == 3  # fewer images than rows


def test_runtime_table_attributes_files_to_rules(tmp_path):
    bench = tmp_path / "results/benchmarks"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = {"decode/0000.tsv": 2.0, "decode/0001.tsv": 3.0, "heatmaps/0000.tsv": 1.0, "heatmaps/codes/0000.tsv": 4.0,
             "rounds/1/predict/0000.tsv": 5.0, "eval/weak.tsv": 0.5, "eval_summary.tsv": 0.25, "old_rule.tsv": 9.0}
    for rel, s in files.items():
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).write_text(header + f"{s}\t0:00:0{int(s)}\t{100 * s}\t1\t1\t1\t0\t0\t50\t{s / 2}\n")
    # as Snakemake gives them: global wildcard constraints written into the pattern, braces and all
    patterns = {"decode": "decode/{shard,\\d{4}}.tsv", "heatmap": "heatmaps/{shard}.tsv",
                "heatmap_codes": "heatmaps/codes/{shard}.tsv", "predict_round": "rounds/{r}/predict/{shard}.tsv",
                "evaluate": "eval/{stage}.tsv", "eval_summary": "eval_summary.tsv"}
    patterns = {rule: f"{bench}/{pattern}" for rule, pattern in patterns.items()}
    table = runtime_table(sorted(bench.rglob("*.tsv")), patterns, exclude=["eval_summary"]).set_index("rule")
    assert table.loc["decode", "jobs"] == 2 and table.loc["decode", "total_s"] == 5.0
    assert table.loc["decode", "max_s"] == 3.0 and table.loc["decode", "max_rss_mb"] == 300
    assert table.loc["heatmap", "total_s"] == 1.0 and table.loc["heatmap_codes", "total_s"] == 4.0
    assert "eval_summary" not in table.index and "old_rule" not in table.index
    assert table.index[0] == "decode"  # longest first


def test_pass_fractions_start_with_the_weak_masks(tmp_path):
    manifest = pd.DataFrame({"image_id": list("abcd"), "split": ["train", "train", "train", "val"]})
    weak = pd.DataFrame({"image_id": list("abcd"), "qc_pass": [True, False, False, True]})
    status = {"round": 1, "pass_fraction": 2 / 3, "n_train": 3, "n_pass": 2, "stop": True, "reason": "target",
              "model_sha256": "x", "qc_sha256": "y"}
    (tmp_path / "1").mkdir()
    (tmp_path / "1/status.json").write_text(json.dumps(status))
    table = pass_fractions(weak, manifest, [tmp_path / "1/status.json"])
    assert table["round"].tolist() == [0, 1]
    assert table.loc[0, "pass_fraction"] == pytest.approx(1 / 3)  # the val image does not count
    assert table["stop"].tolist() == [False, True]


@pytest.fixture
def tiny_results(tmp_path):
    """Two shards of toy radiographs with weak and final masks, heatmaps, QC, manifest, eval tables."""
    r = tmp_path / "results"
    rows = []
    for shard, seeds in (("0000", (0, 1, 2)), ("0001", (3, 4))):
        pairs = [toy_radiograph(128, s) for s in seeds]
        ids = [f"img{s}" for s in seeds]
        write_image_stack(r / f"images/{shard}.npy", np.stack([p[0] for p in pairs]))
        write_mask_stack(r / f"weak/{shard}.npz", ids, np.stack([p[1] for p in pairs]))
        write_mask_stack(r / f"predictions/final/{shard}.npz", ids,
                         np.stack([cv2.erode(p[1].astype(np.uint8), np.ones((5, 5))) > 0 for p in pairs]))
        heat = np.zeros((len(ids), 128, 128), np.uint8)
        heat[:, 40:80, 20:50] = 100
        write_npz(r / f"heatmaps/{shard}.npz", ids=np.asarray(ids), heat=heat)
        rows += [{"image_id": i, "shard": shard, "row": k, "split": "val" if i == "img4" else "train"}
                 for k, i in enumerate(ids)]
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(r / "manifest.parquet")
    qc = manifest[["image_id"]].assign(qc_score=[0.9, 0.2, 0.8, 0.7, 0.95], qc_pass=[True, False, True, False, True])
    qc.to_parquet(r / "qc.parquet")
    return r


def test_overlay_grids_cli(tiny_results):
    r = tiny_results
    argv = ["report-overlays", "--manifest", str(r / "manifest.parquet"), "--qc", str(r / "qc.parquet"),
            "--images", *(str(r / f"images/{s}.npy") for s in ("0000", "0001")),
            "--weak", *(str(r / f"weak/{s}.npz") for s in ("0000", "0001")),
            "--final", *(str(r / f"predictions/final/{s}.npz") for s in ("0000", "0001")),
            "--rows", "4", "--seed", "1"]
    assert main([*argv, "--heat", *(str(r / f"heatmaps/{s}.npz") for s in ("0000", "0001")),
                 "--sample", str(r / "s.png"), "--worst", str(r / "w.png")]) == 0
    with_heat = cv2.imread(str(r / "w.png"))
    assert main([*argv, "--sample", str(r / "s2.png"), "--worst", str(r / "w2.png")]) == 0
    without = cv2.imread(str(r / "w2.png"))
    assert with_heat.shape[1] > without.shape[1]  # the heatmap column
    # two images to a row: two rows of readable thumbnails, wider than tall (a report page shows it whole)
    assert 2 * 200 < with_heat.shape[0] < with_heat.shape[1] and with_heat.std() > 20


def test_report_eval_and_rounds_cli(tiny_results, tmp_path):
    r = tiny_results
    tables = []
    for stage, dice in (("weak", 0.8), ("final", 0.9), ("supervised", 0.95)):
        t = pd.DataFrame({"image_id": ["img0", "img1", "img4"], "stage": stage, "dice": [dice, dice - 0.2, dice],
                          "iou": 0.7, "hd95": 3.0, "split": ["train", "train", "val"]})
        if stage == "weak":
            t["qc_pass"] = [True, False, True]
        t.to_parquet(tmp_path / f"{stage}.parquet")
        tables.append(str(tmp_path / f"{stage}.parquet"))
    assert main(["eval-summary", "--inputs", *tables, "--out", str(tmp_path / "summary.csv")]) == 0
    assert main(["report-eval", "--inputs", *tables, "--summary", str(tmp_path / "summary.csv"),
                 "--table", str(tmp_path / "summary.html"), "--plot", str(tmp_path / "dice.png")]) == 0
    page = (tmp_path / "summary.html").read_text()
    assert "reference: supervised model" in page and "class='reference'" in page and "validation split" in page
    assert cv2.imread(str(tmp_path / "dice.png")).std() > 10

    status = tmp_path / "rounds/1/status.json"
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps({"round": 1, "pass_fraction": 0.75, "n_train": 4, "n_pass": 3, "stop": True,
                                  "reason": "pass fraction 0.750 >= target 0.660", "model_sha256": "",
                                  "qc_sha256": ""}))
    pd.read_parquet(r / "qc.parquet").to_parquet(tmp_path / "rounds/1/qc.parquet")
    assert main(["report-rounds", "--manifest", str(r / "manifest.parquet"), "--weak-qc", str(r / "qc.parquet"),
                 "--statuses", str(status), "--round-qc", str(tmp_path / "rounds/1/qc.parquet"),
                 "--threshold", "0.75", "--target-pass", "0.66", "--plot", str(tmp_path / "pass.png"),
                 "--hist", str(tmp_path / "hist.png")]) == 0
    hist, passed = cv2.imread(str(tmp_path / "hist.png")), cv2.imread(str(tmp_path / "pass.png"))
    assert hist.shape[1] > 1.5 * hist.shape[0]  # weak masks and round 1 side by side
    assert hist.std() > 10 and passed.std() > 10
