"""Who measured, when and on what code: the facts every benchmark result carries.

A figure is named by the date and commit of its run (BENCHMARKS.md), so each result
records both; a tree with uncommitted changes says so (``dirty``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def code_version() -> dict[str, Any]:
    """The commit the code was run at, and whether the tree had uncommitted changes (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short=7", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


#: The code a benchmark process runs is what was checked out when it started: a run of an hour may end after a
#: commit, and the result must name the code it measured (``commit_at_end`` says when HEAD moved meanwhile).
AT_START = code_version()


def machine_info() -> dict[str, Any]:
    at_end = code_version()
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        **AT_START,
        **({"commit_at_end": at_end["commit"]} if at_end["commit"] != AT_START["commit"] else {}),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    return info


def result(name: str, metrics: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The stable JSON layout of one benchmark result."""
    return {"name": name, "metrics": metrics, "params": params, "machine": machine_info()}
