"""The `lungssl` command as a person and a script meet it: help, exit codes, one-line errors,
inputs of `lungssl predict`, progress in the logs of the workflow's long steps."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from lungssl import cli
from lungssl.modeling import MODEL_FORMAT, ModelSpec, build_model, save_model
from lungssl.progress import Progress
from lungssl.storage import read_mask_stack, write_image_stack, write_mask_stack, write_parquet
from tests.conftest import toy_radiograph, write_png

SPEC = ModelSpec(arch="Unet", encoder="resnet18", size=32)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(path, build_model(SPEC), SPEC, {"stage": "test"})
    return path


def run(argv: list[str], capsys) -> tuple[int, str]:
    """cli.main in-process: (exit code, stderr)."""
    code = cli.main(argv)
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    """The error a person sees: exactly one `lungssl: error:` line and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("lungssl: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def cli_process(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lungssl.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})}, **kwargs)


# ---------------------------------------------------------------- help

def test_every_subcommand_has_a_description_and_examples():
    parser = cli.build_parser()
    main_help = parser.format_help()
    assert "Exit codes:" in main_help and "Examples:" in main_help
    for code in ("0  success", "1  error", "2  usage error", "3  predict only"):
        assert code in main_help
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    # every subcommand a rule runs exists (and gets the checks below)
    rules = "".join(p.read_text() for p in (Path(__file__).parents[1] / "rules").glob("*.smk"))
    assert set(re.findall(r"lungssl ([a-z][a-z-]*)", rules)) <= set(subparsers.choices)
    for name, sub in subparsers.choices.items():
        text = sub.format_help()
        assert sub.description and "\n" not in sub.description, name
        examples = text.split("Examples:\n", 1)[1]
        assert f"  lungssl {name} " in examples or f"&& lungssl {name} " in examples, name
        if name != "predict":
            assert "(used by the workflow rule" in sub.description, name


def test_help_exits_0_and_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["predict", "--help"])
    assert info.value.code == 0 and "Examples:" in capsys.readouterr().out
    base = ["predict", "--model", "m.pt", "--input", "x", "--output", "o"]
    for argv, message in ((["predict"], "the following arguments are required: --model, --input, --output"),
                          ([*base, "--device", "gpu"], "'gpu' is not a device: use auto, cpu, cuda or cuda:N"),
                          ([*base, "--batch-size", "0"], "0 is not at least 1"),
                          (["nonsense"], "invalid choice: 'nonsense'")):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err, argv


# ---------------------------------------------------------------- predict: inputs and exit codes

@pytest.fixture
def xrays(tmp_path) -> Path:
    write_png(tmp_path / "in" / "a.png", toy_radiograph(64, seed=0)[0])
    write_png(tmp_path / "in" / "sub" / "b.png", toy_radiograph(72, seed=1)[0])
    return tmp_path / "in"


def test_predict_all_written_exits_0(model_file, xrays, tmp_path, capsys):
    code, _ = run(["predict", "--model", str(model_file), "--input", str(xrays), "--output", str(tmp_path / "out"),
                   "--device", "cpu"], capsys)
    assert code == 0
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == \
        ["a.png", "sub/b.png"]
    assert not (tmp_path / "out" / "rejected.csv").exists()


def test_predict_some_rejected_exits_3_with_the_reasons(model_file, xrays, tmp_path):
    (xrays / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    proc = cli_process("predict", "--model", str(model_file), "--input", str(xrays), "--output", str(tmp_path / "out"))
    assert proc.returncode == 3, proc.stderr
    assert "1 of 3 input files could not be read" in proc.stderr and "Traceback" not in proc.stderr
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv")
    assert [Path(p).name for p in rejected["path"]] == ["broken.png"] and rejected["reason"].str.len().min() > 0
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "sub" / "b.png").is_file()


def test_predict_with_every_input_rejected_exits_1(model_file, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.png").write_text("not an image")
    code, err = run(["predict", "--model", str(model_file), "--input", str(tmp_path / "in"), "--output",
                     str(tmp_path / "out")], capsys)
    assert code == 1
    line = one_error_line(err)
    assert "none of the 1 input files could be read" in line and "rejected.csv" in line


def test_predict_missing_or_empty_input_exits_1_naming_it(model_file, tmp_path, capsys):
    code, err = run(["predict", "--model", str(model_file), "--input", str(tmp_path / "nowhere"), "--output",
                     str(tmp_path / "out")], capsys)
    assert code == 1 and "input not found: " + str(tmp_path / "nowhere") in one_error_line(err)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    code, err = run(["predict", "--model", str(model_file), "--input", str(tmp_path / "empty"), "--output",
                     str(tmp_path / "out")], capsys)
    assert code == 1 and "no X-ray images found in " + str(tmp_path / "empty") in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_predict_reads_a_list_of_paths_and_keeps_same_named_files_apart(model_file, tmp_path, capsys, monkeypatch):
    for patient in ("p1", "p2"):
        write_png(tmp_path / "data" / patient / "image.png", toy_radiograph(64, seed=len(patient))[0])
    (tmp_path / "list.txt").write_text("# to segment\ndata/p1/image.png\n\ndata/p2/image.png\ndata/p3/missing.png\n")
    monkeypatch.chdir(tmp_path)  # listed paths are relative to the current folder, as typed
    code, _ = run(["predict", "--model", str(model_file), "--input", "list.txt", "--output", "out", "--lr-labels"],
                  capsys)
    assert code == 3  # the missing listed file is rejected, the others written
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == \
        ["p1/image.png", "p1/image_lr.png", "p2/image.png", "p2/image_lr.png"]
    assert Path(pd.read_csv(tmp_path / "out" / "rejected.csv")["path"][0]).name == "missing.png"
    assert len(pd.read_csv(tmp_path / "out" / "left_right.csv")) == 2


def test_predict_individual_files_with_one_name_all_kept(model_file, tmp_path, capsys):
    files = [write_png(tmp_path / d / "x.png", toy_radiograph(64, seed=k)[0]) for k, d in enumerate("abc")]
    code, _ = run(["predict", "--model", str(model_file), "--input", *map(str, files), "--output",
                   str(tmp_path / "out")], capsys)
    assert code == 0 and len(list((tmp_path / "out").glob("x*.png"))) == 3


def test_predict_measures_against_manual_masks_and_says_why_one_could_not_be(model_file, tmp_path, capsys, caplog):
    from lungssl.evaluation import dice

    caplog.set_level(logging.INFO, logger="lungssl")

    images, truths = tmp_path / "site" / "images", tmp_path / "site" / "masks"
    for name, size, seed in (("a", 64, 0), ("b", 72, 1), ("c", 64, 2), ("d", 64, 3)):
        image, mask = toy_radiograph(size, seed=seed)
        write_png(images / f"{name}.png", image)
        if name == "b":
            mask = mask[:64, :64]  # another image's size: recorded, never resized
        if name != "c":  # c has no manual mask
            write_png(truths / f"{name}.png", mask.astype(np.uint8) * 255)
    code, _ = run(["predict", "--model", str(model_file), "--input", str(images), "--output", str(tmp_path / "out"),
                   "--truth", "{root}/../masks/{stem}.png"], capsys)
    assert code == 0
    scores = pd.read_csv(tmp_path / "out" / "truth_scores.csv", keep_default_na=False).set_index("path")
    assert [Path(p).name for p in scores.index] == ["a.png", "b.png", "c.png", "d.png"]
    problems = {Path(p).name: v for p, v in scores["problem"].items()}
    assert problems["a.png"] == problems["d.png"] == ""
    assert problems["b.png"] == "manual mask is 64x64, the image 72x72"
    assert problems["c.png"].startswith("no manual mask ") and problems["c.png"].endswith("c.png")
    for name in ("a", "d"):  # the Dice of the written mask against the manual one
        written = cv2.imread(str(tmp_path / "out" / f"{name}.png"), cv2.IMREAD_GRAYSCALE) > 127
        manual = cv2.imread(str(truths / f"{name}.png"), cv2.IMREAD_GRAYSCALE) > 127
        assert float(scores.loc[str(images / f"{name}.png"), "dice"]) == pytest.approx(dice(written, manual))
    assert "Dice against the manual masks of 2 images" in caplog.text
    assert "2 of 4 images could not be scored" in caplog.text


def test_predict_qc_scores_each_written_mask_as_the_rounds_score_pseudo_masks(model_file, tmp_path, capsys):
    from lungssl import qc
    from lungssl.weak_masks import find_film

    images = tmp_path / "site"
    cohort = []
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        image, mask = toy_radiograph(64, seed=seed)
        write_png(images / f"{name}.png", image)
        cohort.append(mask)
    prior_path = tmp_path / "prior.npz"
    qc.save_prior(qc.build_shape_prior(cohort, grid=32), prior_path)
    code, _ = run(["predict", "--model", str(model_file), "--input", str(images), "--output", str(tmp_path / "out"),
                   "--qc", str(prior_path)], capsys)
    assert code == 0
    table = pd.read_csv(tmp_path / "out" / "quality.csv").set_index("path")
    assert [Path(p).name for p in table.index] == ["a.png", "b.png", "c.png"]
    assert (table["qc_pass"] == (table["qc_score"] >= qc.QCParams().cohort_threshold)).all()
    assert table["f_stability"].between(0, 1).all()
    prior = qc.load_prior(prior_path)
    for name in ("a", "b", "c"):  # the written mask's cohort score, as the rounds compute it
        written = cv2.imread(str(tmp_path / "out" / f"{name}.png"), cv2.IMREAD_GRAYSCALE) > 127
        image = cv2.imread(str(images / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        film = tuple(v / 64 for v in find_film(image))
        small = cv2.resize(written.astype(np.uint8), (SPEC.size, SPEC.size), interpolation=cv2.INTER_NEAREST) > 0
        shape = qc.cohort_scores(small, prior, qc.QCParams(), film)["qc_score"]
        assert table.loc[str(images / f"{name}.png"), "q_shape"] == pytest.approx(shape)


def test_quality_scorer_passes_a_typical_lung_pair_and_fails_a_lost_lung(tmp_path):
    from lungssl import qc
    from lungssl.inference import _QualityScorer

    cohort = [toy_radiograph(64, seed=s)[1] for s in range(3)]
    qc.save_prior(qc.build_shape_prior(cohort, grid=32), tmp_path / "prior.npz")
    scorer = _QualityScorer(tmp_path / "prior.npz")
    image, mask = toy_radiograph(96, seed=5)
    half = mask.copy()
    half[:, 48:] = False  # one lung missed, as on a film the model does not know
    for name, m, agreement in (("pair", mask, 1.0), ("half", half, 1.0), ("unstable", mask, 0.3)):
        scorer(name, image, m, agreement, 32)
    rows = {r["path"]: r for r in scorer.rows}
    assert rows["pair"]["qc_pass"] and rows["pair"]["qc_score"] > 0.9 and rows["pair"]["why"] == ""
    assert not rows["half"]["qc_pass"] and "robust SDs from the cohort's" in rows["half"]["why"]
    assert not rows["unstable"]["qc_pass"] and rows["unstable"]["why"].startswith("the mirrored image gives")
    scorer.write(tmp_path / "quality.csv")
    table = pd.read_csv(tmp_path / "quality.csv").set_index("path")
    # ranks among the three: the pair ties for best on both scores, each other mask is last on one
    assert table.loc["pair", "qc_rank"] == pytest.approx(5 / 6)
    assert table.loc["half", "qc_rank"] == table.loc["unstable", "qc_rank"] == pytest.approx((5 / 6 + 1 / 3) / 2)


def test_quality_scorer_judges_with_the_settings_saved_in_the_prior(tmp_path):
    from lungssl import qc
    from lungssl.inference import _QualityScorer

    cohort = [toy_radiograph(64, seed=s)[1] for s in range(3)]
    image, mask = toy_radiograph(96, seed=5)
    passes = {}
    for level in (0.75, 0.2):
        prior = qc.build_shape_prior(cohort, grid=32)
        path = tmp_path / f"prior{level}.npz"
        qc.save_prior(dataclasses.replace(prior, judging={"qc": {"cohort_threshold": level}}), path)
        scorer = _QualityScorer(path)
        scorer("unstable", image, mask, 0.3, 32)  # scores about 0.3: fails the default, passes 0.2
        passes[level] = scorer.rows[0]["qc_pass"]
    assert passes == {0.75: False, 0.2: True}


def test_shape_prior_command_saves_the_qc_settings_and_refuses_wrong_ones(tmp_path, capsys):
    from lungssl import qc
    from lungssl.storage import write_mask_stack

    masks = np.stack([toy_radiograph(64, seed=s)[1] for s in range(4)])
    write_mask_stack(tmp_path / "weak.npz", [f"i{k}" for k in range(4)], masks)
    base = ["shape-prior", "--masks", str(tmp_path / "weak.npz"), "--out", str(tmp_path / "prior.npz")]
    code, _ = run(base + ["--params", '{"cohort_threshold": 0.7}', "--film-tolerance", "5"], capsys)
    assert code == 0
    assert qc.load_prior(tmp_path / "prior.npz").judging == {"qc": {"cohort_threshold": 0.7}, "film_tolerance": 5}
    code, err = run(base + ["--params", '{"z_soft": 7, "z_hard": 6}'], capsys)
    assert code == 1 and "z_soft < z_hard" in one_error_line(err)


def test_predict_refuses_a_file_that_is_no_shape_prior_before_reading_the_model(xrays, tmp_path, capsys):
    (tmp_path / "prior.npz").write_text("not a prior")
    for prior, message in ((tmp_path / "prior.npz", "is not the shape prior of a lungssl run"),
                           (tmp_path / "none.npz", "none.npz")):
        code, err = run(["predict", "--model", str(tmp_path / "no-model.pt"), "--input", str(xrays), "--output",
                         str(tmp_path / "out"), "--qc", str(prior)], capsys)
        assert code == 1 and message in one_error_line(err)


@pytest.mark.parametrize("template, message", [
    ("{dir}/../masks/{name}.png", "{name} is not a placeholder; use {root}, {dir} and {stem}"),
    ("masks/{}.png", "a positional {} is not a placeholder"),
    ("masks/all.png", "must contain {stem}"),
    ("{stem", "is not a valid template"),
])
def test_predict_refuses_a_mistyped_mask_template_before_reading_the_model(xrays, tmp_path, capsys, template,
                                                                           message):
    code, err = run(["predict", "--model", str(tmp_path / "no-model.pt"), "--input", str(xrays), "--output",
                     str(tmp_path / "out"), "--truth", template], capsys)
    assert code == 1 and message in one_error_line(err)


def test_gpu_asked_for_but_absent_is_one_clear_line(model_file, xrays, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run(["predict", "--model", str(model_file), "--input", str(xrays), "--output", str(tmp_path / "out"),
                     "--device", "cuda"], capsys)
    line = one_error_line(err)
    assert code == 1 and "a GPU was asked for (device cuda)" in line and "--device cpu" in line
    assert "train.device" in line and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- predict: model files

def _bad_models(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    d = tmp_path / "models"
    d.mkdir()
    cases = {}
    cases["missing"] = (d / "nope.pt", "model file not found: ")
    (d / "empty.pt").write_bytes(b"")
    cases["empty"] = (d / "empty.pt", "not a readable lungssl model: the file is empty")
    (d / "text.pt").write_text("hello")
    cases["not torch"] = (d / "text.pt", "not a readable lungssl model: not a PyTorch archive")
    data = good.read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (d / "truncated.pt", "not a readable lungssl model: not a PyTorch archive")
    torch.save(build_model(SPEC).state_dict(), d / "bare.pt")
    cases["bare weights"] = (d / "bare.pt", "bare weights (a state_dict), not a lungssl model")
    torch.save({"epoch": 3, "weights": {}}, d / "other.pt")
    cases["other tool"] = (d / "other.pt",
                           f"a PyTorch file but not a lungssl model (format None, expected {MODEL_FORMAT})")
    payload = torch.load(good, weights_only=True)
    torch.save({**payload, "format": "lungssl-model/2", "lungssl_version": "9.0.0"}, d / "newer.pt")
    cases["newer version"] = (d / "newer.pt", "is a lungssl model of format lungssl-model/2 (written by lungssl 9.0.0)")
    torch.save({**payload, "spec": {**payload["spec"], "future_field": 1}}, d / "spec.pt")
    cases["unknown spec"] = (d / "spec.pt", "describes its model in a way this lungssl")
    torch.save({**payload, "state_dict": {k: v for k, v in list(payload["state_dict"].items())[:-2]}}, d / "cut.pt")
    cases["damaged weights"] = (d / "cut.pt", "is a damaged lungssl model: its weights do not fit")
    return cases


def test_bad_model_files_say_which_and_what_to_do(model_file, xrays, tmp_path, capsys):
    for name, (path, expected) in _bad_models(tmp_path, model_file).items():
        code, err = run(["predict", "--model", str(path), "--input", str(xrays), "--output", str(tmp_path / "out")],
                        capsys)
        line = one_error_line(err)
        assert code == 1 and expected in line, (name, line)
        assert str(path) in line, (name, line)
    assert not (tmp_path / "out").exists()


def test_errors_are_one_line_in_a_real_process_and_debug_shows_the_traceback(tmp_path):
    (tmp_path / "m.pt").write_text("junk")
    (tmp_path / "in").mkdir()
    args = ["predict", "--model", str(tmp_path / "m.pt"), "--input", str(tmp_path / "in"),
            "--output", str(tmp_path / "o")]
    proc = cli_process(*args)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"lungssl: error: {tmp_path / 'm.pt'} is not a readable lungssl model: not a PyTorch archive (truncated or "
        "corrupt, or another kind of file); use a model.pt written by `lungssl train` or the workflow "
        "(results/final/model.pt)"]
    debug = cli_process("--debug", *args)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


# ---------------------------------------------------------------- progress in logs

def test_progress_is_a_log_line_off_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="lungssl"):
        with Progress(4, "weak masks", terminal=False, interval=0) as bar:
            for _ in range(4):
                bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("weak masks: 1/4 images (25%), ") and "images/s" in lines[0]
    assert len(lines) == 3  # none for the last step: the command's own summary line follows


def _shard(tmp_path: Path, n: int = 3):
    images = np.stack([toy_radiograph(64, seed=i)[0] for i in range(n)])
    write_image_stack(tmp_path / "0000.npy", images)
    ids = [f"img{i}" for i in range(n)]
    write_parquet(pd.DataFrame({"image_id": ids, "accepted": True, "row": range(n)}), tmp_path / "table.parquet")
    return ids


def _as_rule(args: list[str], log: Path) -> None:
    """Like a workflow rule: `lungssl ... > {log} 2>&1`, a progress line per step."""
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "lungssl.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                              timeout=300, env={**os.environ, "LUNGSSL_PROGRESS_SECONDS": "0"})
    assert proc.returncode == 0, log.read_text()


def test_weak_masks_and_predict_shard_write_progress_to_the_rule_log(model_file, tmp_path):
    _shard(tmp_path)
    _as_rule(["weak-masks", "--images", str(tmp_path / "0000.npy"), "--table", str(tmp_path / "table.parquet"),
              "--out", str(tmp_path / "weak.npz"), "--stats", str(tmp_path / "weak.parquet")], tmp_path / "weak.log")
    text = (tmp_path / "weak.log").read_text()
    assert "weak masks: 1/3 images (33%)" in text and "\r" not in text
    films = pd.read_parquet(tmp_path / "weak.parquet")[["film_top", "film_bottom", "film_left", "film_right"]]
    assert ((films >= 0) & (films <= 1)).all().all() and (films.film_top < films.film_bottom).all()
    _as_rule(["predict-shard", "--model", str(model_file), "--images", str(tmp_path / "0000.npy"), "--table",
              str(tmp_path / "table.parquet"), "--batch-size", "1", "--device", "cpu", "--out",
              str(tmp_path / "p.npz"), "--stats", str(tmp_path / "p.parquet")], tmp_path / "predict.log")
    text = (tmp_path / "predict.log").read_text()
    assert "predict: 1/3 images" in text and "predict: 2/3 images" in text and "predicted 3 masks" in text


def test_training_writes_epoch_lines_and_in_epoch_progress_to_the_rule_log(tmp_path):
    ids = _shard(tmp_path, n=8)
    masks = np.stack([toy_radiograph(64, seed=i)[1] for i in range(8)])
    write_mask_stack(tmp_path / "t.npz", ids, masks)
    write_parquet(pd.DataFrame({"image_id": ids, "shard": "0000", "row": range(8), "split": "train"}),
                  tmp_path / "manifest.parquet")
    params = {"model": {"arch": "Unet", "encoder": "resnet18", "size": 32},
              "train": {"epochs": 2, "min_epochs": 1, "early_stop": False, "batch_size": 4, "min_steps_per_epoch": 2}}
    _as_rule(["train", "--stage", "early_learning", "--manifest", str(tmp_path / "manifest.parquet"), "--images",
              str(tmp_path / "0000.npy"), "--targets", str(tmp_path / "t.npz"), "--params", json.dumps(params),
              "--device", "cpu", "--out", str(tmp_path / "m.pt"), "--metrics", str(tmp_path / "m.parquet"),
              "--plot", str(tmp_path / "c.png"), "--state", str(tmp_path / "s.pt")], tmp_path / "train.log")
    text = (tmp_path / "train.log").read_text()
    assert "training on cpu" in text and "epoch 1 training: 1/2 batches" in text
    assert "epoch 1/2  train loss" in text and "epoch 2/2  train loss" in text


# ---------------------------------------------------------------- workflow: config and input errors at start-up

def _dry_run_error(tmp_path: Path, overrides: dict, *args: str) -> str:
    """The workflow's start-up error: it fails before any job and prints no schema dump."""
    from tests.workflow_utils import snakemake, write_config

    write_config(tmp_path, overrides)
    proc = snakemake(tmp_path, "-n", *args, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and not (tmp_path / "results").exists(), out
    assert "Failed validating" not in out and len(out.strip().splitlines()) <= 6, out
    return next(line for line in out.splitlines() if line.startswith("config: "))


@pytest.mark.parametrize("overrides,expected", [
    ({"modle": {"arch": "Unet"}},
     "config: unknown key modle (did you mean 'model'?); the keys allowed at the top level are: seed, input, "),
    ({"model": {"encodr": "resnet34"}},
     "config: unknown key model.encodr (did you mean 'encoder'?); the keys allowed under model are: arch, encoder, "
     "size, encoder_weights_path"),
    ({"model": {"arch": "Unett"}},
     "config: model.arch is 'Unett', which is not allowed (did you mean 'Unet'?); allowed values: Unet, "
     "UnetPlusPlus, "),
    ({"train": {"device": "gpu"}},
     "config: train.device is 'gpu', which is not allowed; allowed values: auto, cpu, cuda"),
    ({"ingest": {"size": 17}}, "config: ingest.size: 17 is less than the minimum of 64"),
    ({"input": {"extra": [{"name": "b", "images": "x", "presett": "generic"}]}},
     "config: unknown key input.extra[0].presett (did you mean 'preset'?); the keys allowed under "
     "input.extra[0] are: "),
])
def test_config_mistakes_are_one_line_naming_the_key_and_what_is_allowed(tmp_path, overrides, expected):
    assert _dry_run_error(tmp_path, overrides).startswith(expected)


def test_missing_or_empty_input_folder_fails_at_start_up(tmp_path):
    line = _dry_run_error(tmp_path, {"input": {"images": "xrays", "preset": "generic"}})
    assert line.startswith("config: input.images = 'xrays': the input folder does not exist (relative to the "
                           f"working directory {tmp_path})")
    (tmp_path / "xrays" / "sub").mkdir(parents=True)
    line = _dry_run_error(tmp_path, {"input": {"images": str(tmp_path / "xrays"), "preset": "generic"}})
    assert "no X-ray images found: the folder is empty" in line


def test_snap_masks_moves_boundaries_or_copies_and_checks_the_order(tmp_path):
    import cv2

    ids = _shard(tmp_path)
    truths = np.stack([toy_radiograph(64, seed=i)[1] for i in range(3)])
    shrunk = np.stack([cv2.erode(t.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0 for t in truths])
    write_mask_stack(tmp_path / "raw.npz", ids, shrunk)
    common = ["snap-masks", "--masks", str(tmp_path / "raw.npz"), "--images", str(tmp_path / "0000.npy"),
              "--table", str(tmp_path / "table.parquet")]
    assert cli.main([*common, "--snap-px", "3", "6", "--out", str(tmp_path / "snapped.npz")]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "copied.npz")]) == 0
    out_ids, snapped = read_mask_stack(tmp_path / "snapped.npz")
    assert out_ids == ids and snapped.shape == shrunk.shape and not np.array_equal(snapped, shrunk)
    assert np.array_equal(read_mask_stack(tmp_path / "copied.npz")[1], shrunk)
    write_mask_stack(tmp_path / "swapped.npz", ids[::-1], shrunk)
    common[2] = str(tmp_path / "swapped.npz")
    assert cli.main([*common, "--out", str(tmp_path / "x.npz")]) != 0
    assert not (tmp_path / "x.npz").exists()
