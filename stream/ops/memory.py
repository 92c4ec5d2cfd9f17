"""Resident memory of a process, from /proc (Linux): what the demo, the soak and the benchmarks report."""

from __future__ import annotations

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
