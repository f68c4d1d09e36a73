"""What every benchmark script shares: the machine it ran on, timing a command, the workflow's
Snakemake `benchmark:` files per rule, and printing/writing the figures.

The scripts import the `lungssl` package of this checkout (not an installed copy), and so do the
`lungssl` commands the workflow runs under them (PYTHONPATH is set here).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
# The venv's bin (snakemake, lungssl) first, as tests/workflow_utils.py does.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

SHARED_DATA = Path(os.environ.get("LUNGSSL_SHARED_DATA", REPO.parent / "shared" / "data"))
DEV_IMAGES = SHARED_DATA / "montgomery-shenzhen-512" / "images"


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="also write the figures as JSON to this file")
    return p


def machine(gpu: bool = False) -> dict:
    """Where a figure came from. The load average is there so that a contended run shows."""
    info = {"host": platform.node(), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "mem_gb": _mem_gb(), "python": platform.python_version(),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
    if gpu:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gb() -> float | None:
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        return round(kb / 2**20, 1)
    except (OSError, AttributeError):
        return None


def emit(result: dict, out: Path | None, tables: dict | None = None) -> None:
    """Print the headline figures (and any tables), then write the whole result as JSON."""
    result["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(f"== {result['benchmark']}: {result['target']}")
    for key, value in result["figures"].items():
        print(f"{key:>34}: {value}")
    print(f"{'meets_target':>34}: {result.get('meets_target')}")
    m = result["machine"]
    print(f"{'machine':>34}: {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GB"
          f"{', GPU ' + m['gpu'] if m.get('gpu') else ''}; load {m['loadavg_1m_at_start']} -> {m['loadavg_1m_at_end']}")
    for name, table in (tables or {}).items():
        print(f"\n{name}:\n{table.to_string(index=False) if hasattr(table, 'to_string') else table}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")


def timed(cmd: list[str], cwd: Path | None = None, timeout: float | None = None) -> dict:
    """Run a command under `/usr/bin/time -v`: wall seconds, peak RSS (the largest process of the
    tree: getrusage's max over waited-for children, not a sum), CPU seconds, exit code."""
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    full = [gnu_time, "-v", *cmd] if gnu_time else cmd
    t0 = time.perf_counter()
    proc = subprocess.run(full, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    res = {"returncode": proc.returncode, "wall_s": round(wall, 3), "stdout": proc.stdout, "stderr": proc.stderr}
    if gnu_time:
        fields = dict(re.findall(r"^\s*(.+?): (.+)$", proc.stderr, re.MULTILINE))
        res["max_rss_mb"] = round(int(fields.get("Maximum resident set size (kbytes)", 0)) / 1024, 1)
        cpu = float(fields.get("User time (seconds)", 0)) + float(fields.get("System time (seconds)", 0))
        res["cpu_s"] = round(cpu, 2)
    return res


def benchmark_patterns(workflow: Path = REPO) -> dict[str, str]:
    """Rule name -> glob of its `benchmark:` files under the working directory, read from rules/."""
    patterns = {}
    for smk in sorted((workflow / "rules").glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"^(?:rule|checkpoint)\s+(\w+):(.*?)(?=^(?:rule|checkpoint)\s|\Z)", text, re.S | re.M):
            bench = re.search(r"^\s+benchmark:\s*\n\s+f?\"([^\"]+)\"", m.group(2), re.M)
            if bench:
                patterns[m.group(1)] = re.sub(r"\{[^}]+\}", "*", bench.group(1))
    return patterns


def benchmark_table(workdir: Path, workflow: Path = REPO):
    """Every Snakemake benchmark file of a run, one row per job, with its rule."""
    import pandas as pd

    frames = []
    for rule, pattern in benchmark_patterns(workflow).items():
        for path in sorted(workdir.glob(pattern)):
            df = pd.read_csv(path, sep="\t")
            frames.append(df.assign(rule=rule, job=str(path.relative_to(workdir / "results/benchmarks"))))
    if not frames:
        return pd.DataFrame(columns=["rule", "job", "s", "max_rss", "cpu_time"])
    table = pd.concat(frames, ignore_index=True)
    return table.apply(lambda c: pd.to_numeric(c, errors="coerce") if c.name in ("s", "max_rss", "cpu_time") else c)


def per_rule(table):
    """Per rule: jobs, wall seconds (sum and max), peak RSS (MB, max over its jobs), CPU seconds."""
    if table.empty:
        return table
    g = table.groupby("rule")
    return (g.agg(jobs=("s", "size"), s_sum=("s", "sum"), s_max=("s", "max"), max_rss_mb=("max_rss", "max"),
                  cpu_s=("cpu_time", "sum")).round(1).reset_index().sort_values("s_sum", ascending=False))
