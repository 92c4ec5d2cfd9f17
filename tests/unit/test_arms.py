"""Arm assignment: stable per user, shares within sampling error, and stopping an arm moves only its users."""

import math

import pytest

from stream.experiment.arms import Arms, ArmsError

USERS = [f"user-{i}" for i in range(10_000)]


def _binomial_z(count: int, n: int, p: float) -> float:
    return (count - n * p) / math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("spec, arm, share", [("A=50,B=50", "B", 0.5), ("A=90,B=10", "B", 0.1),
                                              ("A=1,B=1,C=2", "C", 0.5)])
def test_shares_match_within_sampling_error(spec, arm, share):
    arms = Arms.parse(spec, "exp-1")
    count = sum(arms.assign(u) == arm for u in USERS)
    assert abs(_binomial_z(count, len(USERS), share)) < 4, (count, share)


def test_assignment_is_a_function_of_user_and_experiment():
    first, again = Arms.parse("A=50,B=50", "exp-1"), Arms.parse("A=50,B=50", "exp-1")
    assert [first.assign(u) for u in USERS[:500]] == [again.assign(u) for u in USERS[:500]]
    other = Arms.parse("A=50,B=50", "exp-2")
    moved = sum(first.assign(u) != other.assign(u) for u in USERS)
    # A new experiment deals users out afresh: about half change arm.
    assert abs(_binomial_z(moved, len(USERS), 0.5)) < 4


def test_stopping_an_arm_moves_only_its_users():
    before = Arms.parse("A=1,B=1,C=1", "exp")
    after = Arms.parse("A=1,C=1", "exp")
    for user in USERS:
        was = before.assign(user)
        now = after.assign(user)
        if was != "B":
            assert now == was, user
        else:
            assert now in ("A", "C")
    moved_to_a = sum(after.assign(u) == "A" for u in USERS if before.assign(u) == "B")
    from_b = sum(before.assign(u) == "B" for u in USERS)
    assert abs(_binomial_z(moved_to_a, from_b, 0.5)) < 4


def test_one_arm_takes_everyone():
    assert {Arms.single("default").assign(u) for u in USERS[:100]} == {"default"}
    assert Arms.parse("A").names == ["A"]


@pytest.mark.parametrize("spec, message", [("A=50,A=50", "repeat"), ("A=0,B=1", "positive"), ("A=x", "not a number"),
                                           ("A b=1", "policy name"), ("A,,B", "empty"), ("A=inf", "positive"),
                                           (",".join(f"a{i}" for i in range(9)), "at most")])
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ArmsError, match=message):
        Arms.parse(spec)


def test_share_of_is_the_fraction():
    arms = Arms.parse("A=30,B=10")
    assert arms.share_of("A") == 0.75 and arms.describe() == "A 75%, B 25%"
