#!/usr/bin/env python3
"""Render a workflow's Snakemake HTML report in headless Chromium and write screenshots of it.

The report is a JavaScript (React) app: a plain screenshot shows only its landing page. For every
other view this script writes a copy of the report with a few lines of script appended that open
the view once the app is up (a category, or one result: figure or table), and screenshots that.
It also reads the rendered page back (--dump-dom) and checks that the app rendered every category.

    # after a workflow run in RUN (its config in RUN/config.yaml):
    python scripts/check_report.py --workdir RUN --out screenshots/
    # or for a report made already:
    python scripts/check_report.py RUN/report.html --out screenshots/

Needs Chromium (Debian: apt-get install -y chromium). Exit status: 0 all views rendered,
1 a view failed (named on stderr), 2 no Chromium or no report.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")

# Appended to a copy of the report: wait until the React app has mounted (global `app`), then open a view.
OPEN_VIEW = """
<script>
(function open() {{
  if (typeof app === "undefined" || app === null) {{ setTimeout(open, 100); return; }}
  {action}
}})();
</script>
"""


def find_browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def build_report(workdir: Path, report: Path) -> None:
    config = workdir / "config.yaml"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           *(["--configfile", str(config)] if config.is_file() else []), "--report", str(report)]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(cmd, check=True, env=env)


def report_data(html: str, name: str) -> dict:
    """A JSON object the report embeds as `var <name> = {...};`."""
    match = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', html, re.S)
    if not match:
        raise ValueError(f"the report has no `var {name}`: is it a Snakemake report?")
    return json.loads(match.group(1))


def views(html: str) -> list[tuple[str, str]]:
    """(file name, script action) of every view: landing page, each category, each result."""
    results, categories = report_data(html, "results"), report_data(html, "categories")
    out = [("00_landing", "")]
    for k, cat in enumerate(sorted(categories), 1):
        out.append((f"{k:02d}_category_{_slug(cat)}", f"app.showCategory({json.dumps(cat)});"))
        for sub in sorted(categories[cat]):
            for path in categories[cat][sub]:
                entry = results[path]
                kind = {"image/png": "img", "image/jpeg": "img", "image/svg+xml": "img",
                        "text/html": "html"}.get(entry["mime_type"])
                if kind is None:  # e.g. CSV: the report offers a download, there is nothing to look at
                    continue
                action = (f"app.showCategory({json.dumps(cat)}); app.setView({{content: {json.dumps(kind)}, "
                          f"contentPath: results[{json.dumps(path)}].data_uri, resultPath: {json.dumps(path)}, "
                          f"category: {json.dumps(cat)}, subcategory: {json.dumps(sub)}, navbarMode: 'resultinfo'}});")
                out.append((f"{k:02d}_result_{_slug(path)}", action))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def chromium(browser: str, url: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # Every host name fails to resolve: a report that needs anything from the network shows it here.
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000", "--window-size=1400,2000",
           *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", nargs="?", help="report.html (default: WORKDIR/report.html)")
    parser.add_argument("--workdir", help="a workflow run: build WORKDIR/report.html there first")
    parser.add_argument("--out", default="report_screenshots", help="folder for the screenshots")
    a = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("check_report: no Chromium found (Debian: apt-get install -y chromium); nothing rendered",
              file=sys.stderr)
        return 2
    report = Path(a.report) if a.report else Path(a.workdir or ".") / "report.html"
    if a.workdir:
        build_report(Path(a.workdir).resolve(), report.resolve())
    if not report.is_file():
        print(f"check_report: {report} not found", file=sys.stderr)
        return 2
    html = report.read_text(encoding="utf-8")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = []

    # The landing page, read back as rendered: the app must list every category in its menu.
    dom = chromium(browser, report.resolve().as_uri(), "--dump-dom").stdout
    missing = [c for c in report_data(html, "categories") if c not in dom]
    if missing or "Loading Snakemake Report" in dom and "Results" not in dom:
        failures.append(f"landing page: the app did not render the categories {missing}")

    with tempfile.TemporaryDirectory() as tmp:
        for name, action in views(html):
            page = Path(tmp) / f"{name}.html"
            if action:  # before the page's own closing tag, the last one (scripts in the page contain others)
                head, tag, tail = html.rpartition("</body>")
                page.write_text(head + OPEN_VIEW.format(action=action) + tag + tail, encoding="utf-8")
            else:
                page.write_text(html, encoding="utf-8")
            shot = (out / f"{name}.png").resolve()
            proc = chromium(browser, page.as_uri(), f"--screenshot={shot}")
            errors = [line for line in proc.stderr.splitlines() if "Uncaught" in line]
            if not shot.is_file() or shot.stat().st_size < 5000 or errors:
                failures.append(f"{name}: {'; '.join(errors) or 'no screenshot'}")
            print(f"{shot} ({shot.stat().st_size // 1024 if shot.is_file() else 0} KB)")
    for failure in failures:
        print(f"check_report: FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
