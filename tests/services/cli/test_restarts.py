"""The restart back-off of `ackwire up`, without processes or clocks."""

import pytest

from ackwire.cli.restarts import RestartBackoff, RestartPolicy


def test_a_child_that_keeps_dying_waits_twice_as_long_each_time_up_to_the_cap() -> None:
    backoff = RestartBackoff(RestartPolicy(first_s=1, factor=2, max_s=10, stable_s=30))
    assert [backoff.after_death(lived_s=0.5) for _ in range(6)] == [1, 2, 4, 8, 10, 10]


def test_a_child_that_stayed_up_a_while_starts_over_from_the_first_wait() -> None:
    backoff = RestartBackoff(RestartPolicy(first_s=1, factor=2, max_s=10, stable_s=30))
    assert [backoff.after_death(lived_s=1) for _ in range(3)] == [1, 2, 4]
    assert backoff.after_death(lived_s=30) == 1
    assert backoff.after_death(lived_s=29.9) == 2  # a short life after that doubles again


def test_the_default_policy_is_bounded() -> None:
    backoff = RestartBackoff()
    waits = [backoff.after_death(lived_s=0) for _ in range(20)]
    assert waits[0] == RestartPolicy().first_s
    assert max(waits) == RestartPolicy().max_s
    assert waits == sorted(waits)


@pytest.mark.parametrize(
    "policy",
    [
        {"first_s": 0},
        {"first_s": 5, "max_s": 1},
        {"factor": 0.5},
        {"stable_s": 0},
    ],
)
def test_a_policy_that_would_not_back_off_is_refused(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="required"):
        RestartPolicy(**policy)
