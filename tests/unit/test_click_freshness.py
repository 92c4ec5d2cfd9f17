"""Click-to-live freshness: each click is live when the first served version trained on data that new serves."""

from __future__ import annotations

import pytest

from stream.demo.closed_loop import click_lags


def test_each_click_counts_from_its_time_to_the_first_version_covering_it():
    served = {0: 0.0, 1: 10.0, 2: 20.0, 3: 31.0}
    trained = {1: 8.0, 2: 15.0, 3: 29.0}
    lags = click_lags([1.0, 8.0, 9.0, 16.0, 30.0], served, trained)
    assert lags[:4] == pytest.approx([9.0, 2.0, 11.0, 15.0])
    assert lags[4] is None                     # the click at 30 s is newer than anything served
    assert click_lags([5.0], {0: 0.0}, {}) == [None]


def test_histogram_quantiles_read_cumulative_buckets():
    from stream.demo.closed_loop import histogram_quantiles

    text = "\n".join([
        'x_seconds_bucket{le="0.5"} 50.0', 'x_seconds_bucket{le="1.0"} 98.0', 'x_seconds_bucket{le="2.0"} 100.0',
        'x_seconds_bucket{le="+Inf"} 100.0', 'x_seconds_count 100.0', 'y_seconds_bucket{le="9.0"} 1.0'])
    assert histogram_quantiles(text, "x_seconds") == {"count": 100.0, "p50_at_most": 0.5, "p99_at_most": 2.0}
    assert histogram_quantiles("", "x_seconds") == {"count": 0.0, "p50_at_most": None, "p99_at_most": None}


def test_a_version_trained_on_less_than_an_earlier_one_does_not_hide_the_earlier():
    # v2 claims older data than v1 (a rollback): a click v1 covers is live from v1 on, not from v3.
    served = {1: 10.0, 2: 20.0, 3: 30.0}
    trained = {1: 9.0, 2: 4.0, 3: 25.0}
    assert click_lags([5.0, 9.0, 12.0], served, trained) == [5.0, 1.0, 18.0]


def test_click_to_live_by_window_reports_each_window_of_clicks_on_its_own():
    from stream.demo.closed_loop import click_freshness_by_window

    served = {1: 10.0, 2: 20.0, 3: 31.0}
    trained = {1: 8.0, 2: 15.0, 3: 29.0}
    clicks = [1.0, 8.0, 9.0, 16.0, 30.0]
    rows = click_freshness_by_window(clicks, click_lags(clicks, served, trained), start=0.0, window=10.0)
    assert [(r["from_s"], r["clicks"], r["not_live_at_end"]) for r in rows] == [(0.0, 3, 0), (10.0, 1, 0), (30.0, 1, 1)]
    assert rows[0]["p50"] == pytest.approx(9.0) and rows[1]["p99"] == pytest.approx(15.0)
    assert rows[2]["p99"] is None
