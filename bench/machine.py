"""Who measured: the machine facts every benchmark result carries."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
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
