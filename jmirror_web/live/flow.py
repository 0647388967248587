"""When one websocket connection may send and be sent to (sans-I/O: the caller passes the
time, nothing here waits or sends).

- :class:`SendWindow`: the server's ``updates`` go at most one per flush interval, and
  only while fewer than a window's worth wait for the page's ``ack`` (docs/live-protocol.md,
  "Acks are required"): daphne buffers without limit what a consumer sends to a client
  that does not read, and acks are the only sign that the page keeps up;
- :class:`TokenBucket`: the page's messages other than acks, at most a rate on average
  with bursts, since each may cause a reply that the server would have to buffer.

What waits between two ``updates`` is :class:`~jmirror_web.live.buffer.UpdateBuffer`'s.
"""

from __future__ import annotations


class SendWindow:
    """The ``seq`` of the ``updates`` sent and acknowledged, and when the last flush was."""

    def __init__(self, *, size: int, interval: float) -> None:
        self.size = size
        self.interval = interval
        self.sent = 0
        self.acked = 0
        self._last_flush = 0.0

    def full(self) -> bool:
        """Whether ``size`` updates wait for an ack: nothing more is sent until one comes."""
        return self.sent - self.acked >= self.size

    def delay(self, now: float) -> float:
        """Seconds to wait from ``now`` before the next flush (0 or less: none)."""
        return self._last_flush + self.interval - now

    def flushed(self, now: float) -> None:
        """The buffer was taken at ``now``, whether or not it held anything to send."""
        self._last_flush = now

    def next_seq(self) -> int:
        """The ``seq`` of an ``updates`` about to be sent."""
        self.sent += 1
        return self.sent

    def ack(self, seq: int) -> bool:
        """Acknowledges ``seq`` and those before it; False, changing nothing, when ``seq``
        was not sent or is acknowledged already."""
        if not self.acked < seq <= self.sent:
            return False
        self.acked = seq
        return True


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    def __init__(self, *, burst: int, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        """Takes one token at ``now``; False when there is none."""
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
