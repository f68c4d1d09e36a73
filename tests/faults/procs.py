"""Injecting faults into real workflow runs: SIGKILL a job or the whole run, then check what is left.
(psutil comes with Snakemake, a dependency of the package.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import pyarrow.parquet as pq
import torch
from PIL import Image

from tests.workflow_utils import snakemake_command


@dataclass
class Run:
    """A workflow run in the background, in its own process group (so it can be killed whole)."""
    proc: subprocess.Popen
    log: Path
    killed: list[str] = field(default_factory=list)

    def wait(self, timeout: float = 900) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(workdir: Path, *args: str, log: Path) -> Run:
    cmd, env = snakemake_command(workdir, *args)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Run(proc, log)


def wait_for(condition: Callable[[], object], timeout: float, what: str, run: Run | None = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if run is not None and run.proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {run.proc.returncode}) before {what}:\n{run.output()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _argv(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:  # gone, or a zombie, meanwhile
        return []


def job_process(run: Run, subcommand: str) -> psutil.Process | None:
    """The running `lungssl <subcommand>` job of this run: only its own descendants are looked at,
    and only the Python process itself (not the shell that started it)."""
    try:
        children = psutil.Process(run.proc.pid).children(recursive=True)
    except psutil.Error:
        return None
    for child in children:
        argv = _argv(child)
        if any(os.path.basename(a) == "lungssl" for a in argv[:2]) and subcommand in argv[1:3]:
            return child
    return None


def kill_job(run: Run, subcommand: str, timeout: float = 600, after: float = 0.3) -> None:
    """SIGKILL one job, as an out-of-memory killer or a cluster's time limit would; the scheduler lives."""
    job = wait_for(lambda: job_process(run, subcommand), timeout, f"a {subcommand} job", run)
    time.sleep(after)  # into its work, not at its first instruction
    try:
        job.send_signal(signal.SIGKILL)
        run.killed.append(f"{subcommand} job {job.pid}")
    except psutil.NoSuchProcess:
        raise AssertionError(f"the {subcommand} job ended before it could be killed") from None


def kill_run(run: Run) -> None:
    """SIGKILL the scheduler and every job at once, as a node failure would."""
    procs = [psutil.Process(run.proc.pid), *psutil.Process(run.proc.pid).children(recursive=True)]
    os.killpg(run.proc.pid, signal.SIGKILL)
    run.proc.wait(timeout=60)
    gone, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, f"processes survived the kill: {alive}"
    run.killed.append(f"whole run ({len(procs)} processes)")


# ---------------------------------------------------------------- what a kill leaves behind

def _check(path: Path) -> None:
    suffix = path.suffix
    if suffix == ".parquet":
        pq.read_table(path)
    elif suffix == ".npz":
        with np.load(path) as z:
            for key in z.files:
                z[key]
    elif suffix == ".npy":
        np.load(path, mmap_mode="r")
    elif suffix == ".pt":
        torch.load(path, map_location="cpu", weights_only=True)
    elif suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".png":
        with Image.open(path) as im:
            im.load()


def damaged_outputs(results: Path) -> list[str]:
    """Every result file that exists under its own name but cannot be read whole (must be none)."""
    bad = []
    for path in sorted(results.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            try:
                _check(path)
            except Exception as err:  # any failure to read back is a half-written file
                bad.append(f"{path.relative_to(results)}: {type(err).__name__}: {err}")
    return bad


def temp_files(results: Path) -> list[str]:
    return sorted(str(p.relative_to(results)) for p in results.rglob(".*.tmp"))


def same_files(a: Path, b: Path, rels: list[str]) -> list[str]:
    """Relative paths whose bytes differ between two result folders (or that are missing)."""
    differ = []
    for rel in rels:
        fa, fb = a / rel, b / rel
        if not (fa.is_file() and fb.is_file()) or fa.read_bytes() != fb.read_bytes():
            differ.append(rel)
    return differ
