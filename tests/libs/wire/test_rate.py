import pytest

from ackwire.wire.rate import TokenBucket


def test_a_burst_is_allowed_then_the_rate_holds() -> None:
    bucket = TokenBucket(rate=2, burst=3)
    assert [bucket.take(0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_tokens_never_pile_up_beyond_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=2)
    bucket.take(0)
    assert [bucket.take(1000) for _ in range(3)][-1] > 0


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="required"):
        TokenBucket(rate=0, burst=1)
