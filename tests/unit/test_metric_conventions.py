"""Every metric the roles register follows docs/ARCHITECTURE.md (metrics) and Prometheus' naming conventions."""

from __future__ import annotations

import importlib
import pkgutil
import re

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

import stream

FORBIDDEN_LABELS = {"user_id", "item_id", "request_id", "event_id", "user", "item"}


def recsys_metrics() -> list:
    for module in pkgutil.walk_packages(stream.__path__, prefix="stream."):
        if module.name != "stream.__main__":        # that one runs the CLI
            importlib.import_module(module.name)
    return [c for c in list(REGISTRY._collector_to_names)
            if isinstance(c, (Counter, Gauge, Histogram)) and c._name.startswith("recsys_")]


def test_names_units_labels_and_buckets():
    metrics = recsys_metrics()
    assert len(metrics) >= 40, "expected every role's metrics to be registered on import"
    for metric in metrics:
        name = metric._name
        assert re.fullmatch(r"recsys_[a-z][a-z0-9_]*[a-z0-9]", name), name
        assert metric._documentation.strip(), f"{name} has no help text"
        assert not set(metric._labelnames) & FORBIDDEN_LABELS, f"{name} labels {metric._labelnames}"
        assert "le" not in metric._labelnames and "quantile" not in metric._labelnames, name
        assert not name.endswith(("_count", "_sum", "_bucket", "_created")), f"{name} clashes with a sample suffix"
        # (Counters: prometheus_client keeps the name without _total and always exposes it with it.)
        if isinstance(metric, Histogram):
            assert name.endswith(("_seconds", "_bytes")), f"histogram {name} is not in a base unit"
            bounds = [b for b in metric._upper_bounds if b != float("inf")]
            assert len(bounds) >= 6 and bounds == sorted(bounds), f"{name} buckets {bounds}"
            assert bounds != list(Histogram.DEFAULT_BUCKETS[:-1]), f"{name} keeps the default buckets"
        if isinstance(metric, Gauge) and name.endswith("_total"):
            raise AssertionError(f"gauge {name} ends in _total (reserved for counters)")
    assert any(m._name == "recsys_learner_forgetting_ratio" for m in metrics)


def test_no_two_modules_register_the_same_family():
    names = [m._name for m in recsys_metrics()]
    assert len(names) == len(set(names))
