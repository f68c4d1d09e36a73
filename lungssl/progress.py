"""Progress of long loops, for a person at a terminal and for a rule's log file.

On a terminal it is a tqdm bar. Elsewhere (a workflow rule sends stderr to its `log:` file, a
cluster job to its log) a bar would be a heap of carriage returns, so it is one plain log line
every LUNGSSL_PROGRESS_SECONDS (default 30) seconds: done/total, rate and time left.
"""
from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("lungssl")

DEFAULT_INTERVAL_S = 30.0


def interval_s() -> float:
    try:
        return max(0.0, float(os.environ.get("LUNGSSL_PROGRESS_SECONDS", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


class Progress:
    """progress = Progress(total, "weak masks"); progress.update(n) ...; progress.close().

    terminal: None = a bar when stderr is a terminal, else log lines; False = log lines only.
    Nothing at all when the "lungssl" logger is quieter than INFO (lungssl -q)."""

    def __init__(self, total: int, desc: str, unit: str = "images", terminal: bool | None = None,
                 interval: float | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.done, self.t0 = 0, time.monotonic()
        self.interval = interval_s() if interval is None else interval
        self.last = self.t0
        quiet = not logging.getLogger("lungssl").isEnabledFor(logging.INFO)
        tty = sys.stderr.isatty() if terminal is None else terminal
        self.bar = None
        self.lines = not quiet and not tty and total > 0
        if tty and not quiet and total > 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit.rstrip("s") or unit, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.lines and now - self.last >= self.interval and self.done < self.total:
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = f", about {_duration(left)} left" if left == left else ""
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:.2f} {self.unit}/s{eta}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
