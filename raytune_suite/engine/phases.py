"""Where a run's fixed cost goes: seconds from the process's start to the end of each
phase (imports, the file's checks, data, Ray, MLflow, building the search, the first
trial and its first result, the search, the end). ``run --verbose`` and ``resume
--verbose`` print them as one line."""

from __future__ import annotations

import time
from typing import Optional

_marks: dict[str, float] = {}  # phase -> time.time() at its end, in order


def process_start() -> float:
    """The process's start (``time.time()`` scale): its interpreter start-up and the
    CLI's imports are phases too."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - psutil (Ray's dependency) missing: from import
        return _IMPORTED


_IMPORTED = time.time()


def mark(phase: str) -> None:
    """``phase`` ended now (the first time only: a resumed search keeps its first)."""
    _marks.setdefault(phase, time.time())


def marks() -> dict[str, float]:
    """Phase -> seconds from the process's start to its end, in the order they ended."""
    start = process_start()
    return {k: v - start for k, v in sorted(_marks.items(), key=lambda kv: kv[1])}


def line() -> Optional[str]:
    """``phases (s from process start): imports 2.1 · ... · end 31.0``; None before any."""
    found = marks()
    if not found:
        return None
    return "phases (s from process start): " + " · ".join(f"{k} {v:.1f}"
                                                          for k, v in found.items())
