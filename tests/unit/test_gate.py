"""The publish gate's decision rule, on per-decision doubly robust terms (the models' side is in
tests/unit/test_learner_worker.py)."""

from __future__ import annotations

import numpy as np

from models.gate import GateConfig, compare


def test_the_gate_refuses_only_a_loss_that_is_both_significant_and_material():
    """The decision rule on per-decision DR terms: a consistent 1% loss is negligible, a consistent 10% loss
    is refused, and a 5% loss buried in noise is not evidence."""
    rng = np.random.default_rng(0)
    live = rng.normal(0.5, 0.3, size=2000)
    config = GateConfig()
    assert compare(live - 0.005, live, config).publish                        # 1%: negligible
    refused = compare(live - 0.05, live, config)                               # 10%: refused
    assert not refused.publish and refused.high < 0 and refused.reason == "refused"
    noisy = live - 0.025 + rng.normal(0, 3.0, size=2000)                       # 5% within the noise
    verdict = compare(noisy, live, config)
    assert verdict.publish and verdict.low < -0.01 * 0.5 < verdict.high
