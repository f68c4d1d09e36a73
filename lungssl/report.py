"""What the HTML report shows beyond each stage's own figures: small HTML tables, the images picked
for the overlay grids, and the runtime of every rule from its benchmark files.

Figures are drawn in lungssl.plots; this module only gathers and shapes the data.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from lungssl.storage import read_heat_stack, read_image_stack, read_mask_stack

# ---------------------------------------------------------------- HTML tables

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 15px;
       color: #222; margin: 1.2em; }
h1 { font-size: 1.35em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.4em 0; }
th, td { padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tr.reference td { color: #666; font-style: italic; }
p.note { color: #555; max-width: 60em; }
"""


def html_page(title: str, sections: Sequence[tuple[str, pd.DataFrame, str]], notes: Sequence[str] = ()) -> str:
    """A self-contained HTML page of titled tables (each with a note under it); text is escaped.

    A row whose first cell starts with "reference" is greyed, so the supervised reference stands
    apart from the label-free rows."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    for heading, table, note in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if table.empty:
            parts.append("<p class='note'>none</p>")
        else:
            parts.append(_table_html(table))
        if note:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _table_html(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for values in table.itertuples(index=False):
        cells = "".join(f"<td>{html.escape(_cell(v))}</td>" for v in values)
        ref = " class='reference'" if str(values[0]).startswith("reference") else ""
        rows.append(f"<tr{ref}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "–"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


# ---------------------------------------------------------------- input summary

def ingest_sections(summary: dict) -> list[tuple[str, pd.DataFrame, str]]:
    """Tables of the ingest summary (results/ingest/summary.json): counts, rejection reasons,
    ground-truth masks set aside."""
    split = summary.get("split", {})
    counts = pd.DataFrame([
        ("files found", summary["found"]), ("accepted", summary["accepted"]), ("rejected", summary["rejected"]),
        ("patients (groups)", summary.get("patients", 0)),
        ("training split", split.get("train", 0)), ("validation split", split.get("val", 0)),
        ("with ground-truth mask (only to measure)", summary.get("with_masks", 0)),
    ], columns=["", "images"])
    reasons = _count_table(summary.get("rejected_reasons", {}), "reason")
    aside = _count_table(summary.get("masks_set_aside", {}), "reason")
    return [
        ("Counts", counts, summary.get("split_note", "")),
        ("Rejected files by reason", reasons,
         "Every rejected file, with its path, is listed in results/manifest_rejected.parquet."),
        ("Ground-truth masks set aside", aside, "The image is used; only its mask is left out of the evaluation."),
    ]


def _count_table(counts: dict, name: str) -> pd.DataFrame:
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return pd.DataFrame(rows, columns=[name, "files"])


# ---------------------------------------------------------------- evaluation

REFERENCE_STAGES = ("supervised",)


def stage_label(stage: str) -> str:
    """A summary stage name as read in the report: the supervised model is marked as the reference."""
    base = stage.removesuffix("_qc_pass")
    label = {"weak": "weak masks", "final": "final model", "supervised": "reference: supervised model"}.get(
        base, base.replace("round_", "round ") + " pseudo-masks" if base.startswith("round_") else base)
    return label + (", QC-passed" if stage.endswith("_qc_pass") else "")


def eval_sections(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    """The evaluation summary (results/eval/summary.csv) as one table per split."""
    cols = {"n": "n", "dice_mean": "Dice mean", "dice_median": "median", "dice_p10": "p10", "dice_min": "min",
            "iou_mean": "IoU mean", "hd95_median": "HD95 median (px)"}
    sections = []
    for split, name, note in (("val", "validation split", "Images of patients no model trained on."),
                              ("all", "all images", "Every image with a ground-truth mask.")):
        part = summary[summary["split"] == split]
        table = part[list(cols)].rename(columns=cols)
        table.insert(0, "stage", [stage_label(s) for s in part["stage"]])
        sections.append((f"Dice against the ground truth, {name}", table.reset_index(drop=True), note))
    return sections


def dice_by_stage(tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Per-image Dice of every stage in one long table (stage, split, dice), with each stage's
    QC-passed masks as a stage of their own, in pipeline order."""
    parts = []
    for table in tables:
        if table.empty:
            continue
        stage = str(table["stage"].iloc[0])
        parts.append(table.assign(stage=stage))
        if "qc_pass" in table:
            passed = table[table["qc_pass"].fillna(False).astype(bool)]
            parts.append(passed.assign(stage=f"{stage}_qc_pass"))
    if not parts:
        return pd.DataFrame(columns=["stage", "split", "dice"])
    return pd.concat(parts, ignore_index=True)[["stage", "split", "dice"]]


# ---------------------------------------------------------------- overlay grids

def pick_images(manifest: pd.DataFrame, qc: pd.DataFrame, n: int, seed: int) -> dict[str, pd.DataFrame]:
    """Rows of the manifest (with qc_score, qc_pass) for a seeded sample and for the n worst QC scores."""
    table = manifest[["image_id", "shard", "row", "split"]].merge(
        qc[["image_id", "qc_score", "qc_pass"]], on="image_id", how="left")
    table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    sample = table.iloc[np.sort(rng.choice(len(table), size=min(n, len(table)), replace=False))]
    worst = table.sort_values(["qc_score", "image_id"], kind="stable", na_position="first").head(n)
    return {"sample": sample.reset_index(drop=True), "worst_qc": worst.reset_index(drop=True)}


def gather_panels(picked: pd.DataFrame, images: dict[str, Path], weak: dict[str, Path], final: dict[str, Path],
                  heat: dict[str, Path] | None = None) -> list[dict]:
    """For each picked image: its image, weak mask, final mask and (quantised) heatmap, read one shard
    at a time with the workflow's own stack readers. Dicts map a shard name to its file."""
    out: dict[str, dict] = {}
    for shard, rows in picked.groupby("shard", sort=True):
        stack = read_image_stack(images[shard])
        masks = {name: _by_id(*read_mask_stack(paths[shard])) for name, paths in (("weak", weak), ("final", final))}
        heats = _by_id(*read_heat_stack(heat[shard])) if heat else {}
        for rec in rows.itertuples(index=False):
            out[rec.image_id] = {"image_id": rec.image_id, "split": rec.split, "qc_score": rec.qc_score,
                                 "qc_pass": rec.qc_pass, "image": np.asarray(stack[int(rec.row)]),
                                 "weak": masks["weak"].get(rec.image_id), "final": masks["final"].get(rec.image_id),
                                 "heat": heats.get(rec.image_id)}
    return [out[i] for i in picked["image_id"]]


def _by_id(ids: list[str], arrays: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(ids, arrays))


# ---------------------------------------------------------------- runtimes

def _pattern_regex(pattern: str) -> re.Pattern:
    """A Snakemake path pattern -> regex matching one path: {name} matches within one folder level,
    {name,regex} (a wildcard constraint, which may hold braces itself) matches its regex."""
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] != "{":
            out.append(re.escape(pattern[i]))
            i += 1
            continue
        depth, j = 0, i
        while True:  # the matching closing brace
            depth += {"{": 1, "}": -1}.get(pattern[j], 0)
            if depth == 0:
                break
            j += 1
        _, _, constraint = pattern[i + 1:j].partition(",")
        out.append(f"(?:{constraint.strip()})" if constraint else "[^/]+")
        i = j + 1
    return re.compile("".join(out) + r"\Z")


BENCHMARK_COLUMNS = ("s", "max_rss", "cpu_time")


def runtime_table(paths: Iterable[Path], patterns: dict[str, str], exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Per rule: jobs, total / max wall seconds, peak memory (MB) and CPU seconds, from Snakemake's
    benchmark files. Each file is attributed to the rule whose benchmark pattern it matches."""
    regexes = [(rule, _pattern_regex(p)) for rule, p in sorted(patterns.items())]
    rows = []
    for path in paths:
        rule = next((r for r, rx in regexes if rx.match(str(path))), None)
        if rule is None or rule in exclude:
            continue
        bench = pd.read_csv(path, sep="\t")
        values = {c: pd.to_numeric(bench[c], errors="coerce").iloc[-1] if c in bench and len(bench) else np.nan
                  for c in BENCHMARK_COLUMNS}
        rows.append({"rule": rule, **values})
    cols = ["rule", "jobs", "total_s", "max_s", "max_rss_mb", "cpu_s"]
    if not rows:
        return pd.DataFrame(columns=cols)
    jobs = pd.DataFrame(rows)
    table = jobs.groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"), max_s=("s", "max"),
                                     max_rss_mb=("max_rss", "max"), cpu_s=("cpu_time", "sum")).reset_index()
    return table.sort_values(["total_s", "rule"], ascending=[False, True]).reset_index(drop=True)[cols]
