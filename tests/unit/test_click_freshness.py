"""Click-to-live freshness: each click is live when the first served version trained on data that new serves."""

from __future__ import annotations

import pytest

from stream.closed_loop import click_freshness


def test_each_click_counts_from_its_time_to_the_first_version_covering_it():
    served = {0: 0.0, 1: 10.0, 2: 20.0, 3: 31.0}
    trained = {1: 8.0, 2: 15.0, 3: 29.0}
    out, missing = click_freshness([1.0, 8.0, 9.0, 16.0, 30.0], served, trained)
    assert out == pytest.approx([9.0, 2.0, 11.0, 15.0])
    assert missing == 1                        # the click at 30 s is newer than anything served
    assert click_freshness([5.0], {0: 0.0}, {}) == ([], 1)
