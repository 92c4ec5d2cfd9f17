"""What the scorer logs stays within the event contracts' size limits."""

from __future__ import annotations

from stream.serving.scorer import _fits


def test_a_candidate_list_too_long_for_the_event_limit_is_not_logged():
    assert _fits([f"item-{i}" for i in range(1000)])
    assert not _fits(["x" * 128 for _ in range(1000)])
