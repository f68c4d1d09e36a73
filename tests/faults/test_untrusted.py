"""Untrusted files and names: pickled code in model files is never run, and no name taken from
the data or the config can put an output outside the folder it belongs in."""
from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lungssl import training
from lungssl.inference import predict_folder
from lungssl.modeling import ModelSpec, build_model, load_model, save_model
from tests.conftest import REPO, toy_radiograph, write_png
from tests.workflow_utils import snakemake, write_config


class _Payload:
    """Pickles as "call os.system": whoever unpickles it with full pickle runs the command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture
def booby_trapped(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code-was-run"
    path = tmp_path / "model.pt"
    torch.save({"format": "lungssl-model/1", "spec": _Payload(marker), "state_dict": {}, "meta": {},
                "model": _Payload(marker), "key": "x", "history": "[]"}, path)
    torch.load(path, weights_only=False)  # proof that the file is live: full unpickling runs it
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_a_model_file_with_pickled_code_is_refused_by_predict(booby_trapped, tmp_path):
    path, marker = booby_trapped
    write_png(tmp_path / "in" / "a.png", toy_radiograph(64)[0])
    proc = subprocess.run([sys.executable, "-m", "lungssl.cli", "predict", "--model", str(path), "--input",
                           str(tmp_path / "in"), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "not a readable lungssl model" in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_no_loader_of_model_files_runs_pickled_code(booby_trapped, tmp_path):
    """Models (predict, predict-shard, train --init), resume states, encoder weights."""
    path, marker = booby_trapped
    with pytest.raises(ValueError, match="not a readable lungssl model"):
        load_model(path)
    spec = ModelSpec(encoder="resnet18", size=32)
    model = build_model(spec)
    optimizer = torch.optim.Adam(model.parameters())
    assert training._resume(path, "x", model, optimizer, torch.device("cpu")) == ([], 1, None)  # restarts cleanly
    with pytest.raises(ValueError, match="not a readable weights file"):
        build_model(ModelSpec(encoder="resnet18", size=32, encoder_weights_path=str(path)))
    assert not marker.exists()


def test_every_load_in_the_package_refuses_pickled_code():
    """torch.load always with weights_only=True; no pickle, no np.load(allow_pickle=True)."""
    loads = 0
    for source in sorted((REPO / "lungssl").glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "joblib") for n in names), source
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            kwargs = {k.arg: k.value for k in node.keywords}
            if node.func.attr == "load" and getattr(node.func.value, "id", "") == "torch":
                loads += 1
                flag = kwargs.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{source.name}:{node.lineno}"
            allow = kwargs.get("allow_pickle")
            assert allow is None or (isinstance(allow, ast.Constant) and allow.value is False), \
                f"{source.name}:{node.lineno}"
    assert loads >= 3


def test_predict_never_writes_outside_its_output_folder(tmp_path):
    """Names come from the data: "..png" has the stem ".", and "in/../x.png" is inside "in" by its
    letters only. Before the fix the first wrote out.png beside out/, the second overwrote x.png."""
    spec = ModelSpec(encoder="resnet18", size=32)
    save_model(tmp_path / "m.pt", build_model(spec), spec, {})
    image = toy_radiograph(64)[0]
    for rel in ("in/..png", "in/sub/a.png", "victim.png"):
        write_png(tmp_path / rel, image)
    victim = (tmp_path / "victim.png").read_bytes()
    before = set(os.listdir(tmp_path))
    written, rejected = predict_folder(tmp_path / "m.pt", [tmp_path / "in", tmp_path / "in" / ".." / "victim.png"],
                                       tmp_path / "out", progress=False)
    assert (written, rejected) == (3, [])
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png")) == \
        ["..png.png", "sub/a.png", "victim.png"]
    assert set(os.listdir(tmp_path)) == before | {"out"}
    assert (tmp_path / "victim.png").read_bytes() == victim


def test_a_source_name_cannot_carry_a_path(tmp_path):
    """Source names prefix image ids and patient groups: letters, digits, _ and - only."""
    write_config(tmp_path, {"input": {"extra": [{"name": "../../escape", "images": str(tmp_path)}]}})
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "../../escape" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
