"""The reconnect policy: the contract's close-code table, and the back-off's waits."""

import itertools

import pytest

from ackwire.client.policy import Backoff, Next, after_close


@pytest.mark.parametrize(
    ("code", "next_move"),
    [
        (1000, Next.STOP),
        (1001, Next.RESUME_NOW),
        (1008, Next.STOP),
        (1009, Next.STOP),
        (1011, Next.RESUME_LATER),
        (4001, Next.RESUME_LATER),
        (4401, Next.RENEW_TOKEN),
        (4403, Next.NEW_SESSION),
        (4409, Next.STOP),
        (4429, Next.RESUME_LATER),
        (1006, Next.RESUME_LATER),
        (4999, Next.RESUME_LATER),
        (None, Next.RESUME_LATER),
    ],
)
def test_every_close_code_of_the_contract_has_its_move(code: int | None, next_move: Next) -> None:
    verdict = after_close(code, "why")
    assert verdict.next is next_move
    assert "why" in verdict.why


def test_waits_grow_to_the_cap_each_jittered_below_its_ceiling() -> None:
    backoff = Backoff(first_s=1, factor=2, cap_s=8)
    assert list(itertools.islice(backoff.delays(lambda: 0.999), 6)) == pytest.approx(
        [0.999, 1.998, 3.996, 7.992, 7.992, 7.992]
    )
    assert list(itertools.islice(backoff.delays(lambda: 0.0), 3)) == [0, 0, 0]


@pytest.mark.parametrize("args", [{"first_s": 0}, {"first_s": 5, "cap_s": 1}, {"factor": 0.5}])
def test_a_backoff_that_could_not_work_is_refused(args: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="required"):
        Backoff(**args)
