"""Item evidence: a shrunk, decayed mean of each item's residuals, grown on demand, zero where unseen."""

from __future__ import annotations

import numpy as np
import pytest

from models.item_evidence import ItemEvidence


def test_the_offset_is_the_residuals_mean_shrunk_by_the_prior_weight():
    evidence = ItemEvidence(prior_weight=10.0, decay=1.0)
    evidence.record(np.array([3, 3, 3, 3]), np.array([0.5, 0.5, 0.5, 0.5]))
    np.testing.assert_allclose(evidence.offsets(np.array([3, 0, 7])), [2.0 / 14.0, 0.0, 0.0])
    assert len(evidence) == 1 and evidence.outcomes == 4


def test_many_outcomes_converge_on_their_mean_and_old_ones_fade():
    evidence = ItemEvidence(prior_weight=10.0, decay=0.97)
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
