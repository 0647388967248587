"""The connection's flow control, without a connection (jmirror_web.live.flow)."""

import pytest

from jmirror_web.live.flow import SendWindow, TokenBucket


def test_the_window_closes_after_size_unacknowledged_updates() -> None:
    window = SendWindow(size=2, interval=0.1)

    assert not window.full()
    assert [window.next_seq(), window.next_seq()] == [1, 2]
    assert window.full()
    assert window.ack(1)
    assert not window.full()


def test_an_ack_acknowledges_the_updates_before_it() -> None:
    window = SendWindow(size=4, interval=0.1)
    for _ in range(3):
        window.next_seq()

    assert window.ack(3)
    assert (window.sent, window.acked) == (3, 3)


@pytest.mark.parametrize("seq", [0, 2, 4, -1])
def test_an_ack_of_a_seq_not_sent_or_acknowledged_already_changes_nothing(seq: int) -> None:
    window = SendWindow(size=4, interval=0.1)
    for _ in range(3):
        window.next_seq()
    assert window.ack(2)

    assert not window.ack(seq)
    assert window.acked == 2


def test_flushes_are_an_interval_apart() -> None:
    window = SendWindow(size=4, interval=0.1)

    assert window.delay(now=5.0) <= 0  # never flushed: at once
    window.flushed(5.0)
    assert window.delay(now=5.04) == pytest.approx(0.06)
    assert window.delay(now=5.1) == pytest.approx(0.0)


def test_the_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(burst=3, rate=2.0, now=0.0)

    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.25)  # half a token
    assert bucket.take(0.5)
    assert not bucket.take(0.5)


def test_the_bucket_saves_up_no_more_than_the_burst() -> None:
    bucket = TokenBucket(burst=2, rate=1.0, now=0.0)

    assert [bucket.take(100.0) for _ in range(3)] == [True, True, False]
