"""What some browser is watching live, as the receive loop needs to know it.

The live view shows a sample of each watched session's latest packets. Keeping and
decoding that sample for every session costs the receiver per session and tick, which at
thousands of concurrent sessions starved the receive loop; so the capture keeps
samples only for sessions a browser watches, directly or through their intercept or case.
Standard library only: the receive loop imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LiveWatch:
    """The sessions, intercepts and cases some live page subscribes to now. Sessions are
    named as the capture knows them: (router id, mid, sid).

    ``dashboard`` says that some dashboard is open: it shows per-case counts, which the
    live thread sums for every case without building a summary per session or keeping
    any packet sample, so it is not part of :meth:`covers` nor of truth."""

    streams: frozenset[tuple[int, int, int]] = field(default_factory=frozenset)
    intercepts: frozenset[int] = field(default_factory=frozenset)
    cases: frozenset[int] = field(default_factory=frozenset)
    dashboard: bool = False

    def covers(self, router_id: int, mid: int, sid: int, intercept_pk: int, case_pk: int) -> bool:
        """Whether a session of this router, mid and sid, claimed for this intercept and
        case, is watched."""
        return (
            case_pk in self.cases
            or intercept_pk in self.intercepts
            or (router_id, mid, sid) in self.streams
        )

    def __bool__(self) -> bool:
        """Whether any session may be covered (samples may be wanted at all)."""
        return bool(self.streams or self.intercepts or self.cases)


NOBODY = LiveWatch()
"""Nothing is watched: no samples are kept."""
