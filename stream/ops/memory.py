"""Resident memory and CPU time of a process, from /proc (Linux): what the demo, the soak and the benchmarks report."""

from __future__ import annotations

import os
from pathlib import Path


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size of ``pid`` in bytes; None where /proc is not there or the process is gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds ``pid`` has used (all its threads); None where /proc is not there."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
