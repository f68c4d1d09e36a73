"""Every hostile file at once through the real ingest, weak-mask and QC jobs of the workflow.

Each file must be accepted and decoded correctly, or rejected with its specific reason in the
rejected table; the run must not crash, and accepted + rejected = found.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.faults.inputs import PATIENT_SECRETS, SHELL_NAME, build_hostile_set
from tests.workflow_utils import snakemake, write_config

pytestmark = pytest.mark.slow

CONFIG = {"ingest": {"shard_size": 12, "size": 128}}
TARGETS = ("results/manifest.parquet", "results/qc/weak.parquet", "results/eval/weak.parquet")


def _tree(root: Path) -> dict[str, str]:
    """Every entry under root (links not followed) with its content hash or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir" if path.is_dir() else "special"
    return out


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    inputs = build_hostile_set(base)
    before = _tree(base)
    workdir = base / "work"
    workdir.mkdir()
    write_config(workdir, {**CONFIG, "input": {"images": str(inputs.root), "preset": "images_masks"}})
    proc = snakemake(workdir, *TARGETS)
    results = workdir / "results"
    tables = {
        "files": pd.read_parquet(results / "ingest/files.parquet"),
        "manifest": pd.read_parquet(results / "manifest.parquet"),
        "rejected": pd.read_parquet(results / "manifest_rejected.parquet"),
    }
    return {"inputs": inputs, "workdir": workdir, "base": base, "before": before, "proc": proc, **tables,
            "summary": json.loads((results / "ingest/summary.json").read_text())}


def test_accepted_plus_rejected_is_found_and_found_is_every_image_file(hostile):
    files, manifest, rejected = hostile["files"], hostile["manifest"], hostile["rejected"]
    expected = hostile["inputs"].expected
    assert sorted(files["rel_path"]) == sorted(expected)  # nothing dropped, nothing invented
    assert len(manifest) + len(rejected) == len(files)
    assert set(manifest["image_id"]).isdisjoint(rejected["image_id"])
    assert sorted([*manifest["rel_path"], *rejected["rel_path"]]) == sorted(expected)
    summary = hostile["summary"]
    assert (summary["found"], summary["accepted"], summary["rejected"]) == (len(files), len(manifest), len(rejected))
    assert sum(summary["rejected_reasons"].values()) == len(rejected)


def test_each_hostile_file_has_its_outcome(hostile):
    expected = hostile["inputs"].expected
    accepted = hostile["manifest"].set_index("rel_path")
    reasons = hostile["rejected"].set_index("rel_path")["reason"]
    wrong = []
    for rel, exp in expected.items():
        if exp.reason is None:
            if rel not in accepted.index:
                wrong.append(f"{rel!r}: rejected ({reasons.get(rel)}), expected accepted")
                continue
            row = accepted.loc[rel]
            if exp.fmt and row["format"] != exp.fmt or exp.bit_depth and row["bit_depth"] != exp.bit_depth:
                wrong.append(f"{rel!r}: {row['format']}/{row['bit_depth']} bit, expected {exp.fmt}/{exp.bit_depth}")
        elif rel not in reasons.index or not reasons[rel].startswith(exp.reason):
            wrong.append(f"{rel!r}: {reasons.get(rel, 'accepted')!r}, expected {exp.reason!r}")
    assert not wrong, "\n".join(wrong)
    assert accepted.loc["formats/huge.png", "width"] == 10000


def _pixels(workdir: Path, manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    assert manifest["row"].dtype.kind == "i" and (manifest["row"] >= 0).all()
    stacks = {s: np.load(workdir / f"results/images/{s}.npy") for s in manifest["shard"].unique()}
    return {rec.rel_path: stacks[rec.shard][rec.row].astype(float) for rec in manifest.itertuples()}


def test_accepted_variants_decode_like_their_reference(hostile):
    """16-bit, RGBA, palette, 1-bit, JPEG, BMP, 10,000 px, DICOM MONOCHROME1/2: the same picture."""
    pixels = _pixels(hostile["workdir"], hostile["manifest"])
    checked = 0
    for rel, exp in hostile["inputs"].expected.items():
        if exp.reason is not None or exp.like is None:
            continue
        a, b = pixels[rel], pixels[exp.like]
        if exp.min_corr is not None:
            corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
            assert corr >= exp.min_corr, f"{rel}: correlation {corr:.3f} with {exp.like}"
        else:
            diff = np.abs(a - b).mean()
            assert diff <= exp.max_diff, f"{rel}: mean difference {diff:.2f} from {exp.like}"
        checked += 1
    assert checked >= 20
    # MONOCHROME1 stores air bright: inverted, the lungs are dark as in MONOCHROME2.
    assert np.abs(pixels["dicom/mono1.dcm"] - pixels["dicom/mono2.dcm"]).max() <= 1


def test_ids_are_unique_ascii_and_never_path_like(hostile):
    ids = hostile["files"]["image_id"]
    assert ids.is_unique
    for iid in ids:
        assert iid.isascii() and "/" not in iid and not iid.startswith(".") and iid not in ("", ".", "..")
    by_rel = hostile["files"].set_index("rel_path")["image_id"]
    assert by_rel["names/a/chest.png"] != by_rel["names/b/chest.png"]  # same stem, two folders


def test_a_bad_ground_truth_mask_is_set_aside_with_its_reason(hostile):
    manifest = hostile["manifest"].set_index("rel_path")
    wrong = manifest.loc["gt/wrong_size_mask.png"]
    assert not wrong["has_mask"] and wrong["mask_reason"] == "mask size 90x100 differs from image 288x320"
    corrupt = manifest.loc["gt/corrupt_mask.png"]
    assert not corrupt["has_mask"] and corrupt["mask_reason"] == "mask unreadable: truncated or corrupt image"
    assert hostile["summary"]["masks_set_aside"] == {wrong["mask_reason"]: 1, corrupt["mask_reason"]: 1}
    good = manifest[manifest["has_mask"]]
    assert len(good) == 30  # the synthetic images' masks are all used
    evaluated = pd.read_parquet(hostile["workdir"] / "results/eval/weak.parquet")
    assert sorted(evaluated["image_id"]) == sorted(good["image_id"])


def test_accepted_hostile_images_go_through_weak_masks_and_qc(hostile):
    results = hostile["workdir"] / "results"
    qc = pd.read_parquet(results / "qc/weak.parquet")
    assert sorted(qc["image_id"]) == sorted(hostile["manifest"]["image_id"])
    # A shard in which every file was rejected still flows through every per-shard job, empty.
    files = hostile["files"]
    all_rejected = sorted(set(files["shard"]) - set(hostile["manifest"]["shard"]))
    assert all_rejected, "the layout should give one shard of rejects only"
    for shard in all_rejected:
        assert pd.read_parquet(results / f"qc/{shard}.parquet").empty
        assert (pd.read_parquet(results / f"ingest/shards/{shard}.parquet")["row"] == -1).all()
    assert qc["qc_score"].between(0, 1).all()
    passed = qc.set_index("image_id")["qc_pass"]
    synthetic = hostile["manifest"].loc[hostile["manifest"]["has_mask"], "image_id"]
    assert passed[synthetic].mean() >= 0.5  # the good images still make it through QC


def test_skipped_links_and_other_files_are_reported_not_silent(hostile):
    log = (hostile["workdir"] / "logs/ingest/scan.log").read_text()
    assert "not following 1 symlinked folder(s)" in log and hostile["inputs"].folder_link in log
    assert "ignored 2 file(s) of other types" in log


def test_no_patient_data_in_any_output_or_log(hostile):
    """DICOM headers carry a patient name and id: neither may appear in any file the run wrote."""
    proc = hostile["proc"]
    blobs = [(Path("<snakemake output>"), (proc.stdout + proc.stderr).encode())]
    blobs += [(p, p.read_bytes()) for p in hostile["workdir"].rglob("*") if p.is_file()]
    assert len(blobs) > 50
    leaks = [str(p) for p, data in blobs for secret in PATIENT_SECRETS if secret.encode() in data]
    assert not leaks, leaks


def test_inputs_are_untouched_and_nothing_is_written_outside_the_workdir(hostile):
    base = hostile["base"]
    after = _tree(base)
    outside_work = {k: v for k, v in after.items() if not k.startswith("work")}
    assert outside_work == {k: v for k, v in hostile["before"].items() if not k.startswith("work")}
    assert not any(Path(dirpath, "PWNED").exists() for dirpath, _, _ in os.walk(base))
    assert not Path("PWNED").exists()
    assert SHELL_NAME in set(hostile["manifest"]["rel_path"])  # the name did travel through every job
