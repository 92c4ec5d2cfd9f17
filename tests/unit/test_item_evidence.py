"""Item evidence: a shrunk, decayed mean of each item's residuals, grown on demand, zero where unseen, its
shrinkage estimated from the residuals (large where items do not differ, near noise/spread where they do)."""

from __future__ import annotations

import numpy as np
import pytest

from models.item_evidence import ItemEvidence


def test_the_offset_is_the_residuals_mean_shrunk_by_the_prior_weight():
    evidence = ItemEvidence(decay=1.0, prior_weight=10.0)
    evidence.record(np.array([3, 3, 3, 3]), np.array([0.5, 0.5, 0.5, 0.5]))
    np.testing.assert_allclose(evidence.offsets(np.array([3, 0, 7])), [2.0 / 14.0, 0.0, 0.0])
    assert len(evidence) == 1 and evidence.outcomes == 4


def test_many_outcomes_converge_on_their_mean_and_old_ones_fade():
    evidence = ItemEvidence(decay=0.97, prior_weight=10.0)
    evidence.record(np.full(500, 1), np.full(500, -0.2))
    assert evidence.offsets(np.array([1]))[0] == pytest.approx(-0.2 * 1 / (1 + 10 * 0.03), rel=1e-3)
    evidence.record(np.full(500, 1), np.full(500, 0.3))     # the item changed: the old residuals are forgotten
    assert evidence.offsets(np.array([1]))[0] == pytest.approx(0.3 / 1.3, rel=1e-3)


def test_rows_beyond_the_table_grow_it_and_read_as_zero_before():
    evidence = ItemEvidence(capacity=4)
    assert evidence.offsets(np.array([100_000]))[0] == 0.0
    evidence.record(np.array([5000]), np.array([1.0]))
    assert evidence.offsets(np.array([5000]))[0] > 0 and evidence.offsets(np.array([4999]))[0] == 0.0


def test_bad_settings_and_rows_are_refused():
    with pytest.raises(ValueError):
        ItemEvidence(prior_weight=0.0)
    with pytest.raises(ValueError):
        ItemEvidence(decay=1.5)
    with pytest.raises(ValueError):
        ItemEvidence().record(np.array([-1]), np.array([0.0]))


def test_a_forged_reward_neither_stops_the_evidence_nor_owns_an_items_bias():
    evidence = ItemEvidence(decay=1.0, prior_weight=10.0)
    evidence.record(np.array([1, 2, 3]), np.array([float("nan"), float("inf"), 1e300]))
    assert evidence.outcomes == 1                                   # the non-finite two are skipped
    assert evidence.offsets(np.array([3]))[0] == pytest.approx(10.0 / 11.0)   # 1e300 counts as 10
    evidence.record(np.array([3] * 10_000), np.zeros(10_000))      # and is outweighed like any outlier
    assert abs(evidence.offsets(np.array([3]))[0]) < 0.002


def outcomes(true_offsets: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Residuals of clicks on random items: Bernoulli(0.3 + the item's true offset) minus 0.3."""
    rows = rng.integers(0, len(true_offsets), size=n)
    return rows, (rng.random(n) < 0.3 + true_offsets[rows]).astype(float) - 0.3


def test_items_that_differ_are_trusted_after_about_noise_over_spread_outcomes():
    rng = np.random.default_rng(0)
    true = rng.choice([-0.15, 0.15], size=200)          # spread 0.0225, noise about 0.2
    evidence = ItemEvidence()
    assert evidence.prior_weight >= 1e5                 # no estimate yet: no shift
    evidence.record(*outcomes(true, 40_000, rng))
    assert 4 < evidence.prior_weight < 20, evidence.prior_weight
    shifted = evidence.offsets(np.arange(200))
    assert np.corrcoef(shifted, true)[0, 1] > 0.8


def test_items_that_do_not_differ_are_barely_shifted():
    rng = np.random.default_rng(1)
    evidence = ItemEvidence()
    evidence.record(*outcomes(np.zeros(200), 40_000, rng))
    assert evidence.prior_weight > 200, evidence.prior_weight
    assert np.abs(evidence.offsets(np.arange(200))).max() < 0.02
