"""Running the real workflow in a temporary folder, as a user would."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_config(workdir: Path, overrides: dict) -> Path:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    _merge(cfg, overrides)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


WORKFLOW_PARTS = ("Snakefile", "rules", "config", "report", "envs", "lungssl")


def copy_workflow(dest: Path) -> Path:
    """A private copy of the workflow, so a test may edit its code without touching the repo."""
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    return dest


def snakemake_command(workdir: Path, *args: str, workflow: Path = REPO) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a workflow run in workdir (its config.yaml)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(workflow / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    return cmd, env


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900,
              workflow: Path = REPO) -> subprocess.CompletedProcess:
    cmd, env = snakemake_command(workdir, *args, workflow=workflow)
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    counts.pop("total", None)
    return counts
