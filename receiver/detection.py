"""Which UDP datagrams of a capture are mirror traffic, when the ports are not known
(``manage.py decode`` without ``--port``): sans-I/O, no Django.

A datagram is judged on its own first. It is *certain* when it decodes as jmirror or
Contrail and its inner packet is believable down to the IPv4 header checksum
(:func:`~receiver.jmirror.is_plausible_jmirror`,
:func:`~receiver.contrail.is_plausible_contrail`). Captures shared between operators are
often anonymized by rewriting addresses without fixing checksums; such a datagram, which
decodes and is believable in every other way, is only a *candidate*.

Candidates are judged by their flow, (outer source, UDP destination port), the way an
analyst would: a flow whose datagrams all decode as the same format, with a stable set
of streams (jmirror's mid and sid, Contrail's capture host and virtual networks), is
mirror traffic; a flow of other UDP where a few happen to decode is not.
:class:`FlowJudge` holds each candidate back until its flow is judged and hands every
datagram on in capture order. What a flow that was not accepted looked like is kept in
:attr:`FlowJudge.suggestions`, so that the ``decode`` command can name its port.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

from receiver.contrail import ContrailPacket, decode_contrail, is_plausible_contrail
from receiver.jmirror import DecodeError, JMirrorPacket, decode_datagram, is_plausible_jmirror

MirrorFormat = Literal["jmirror", "contrail"]
JMIRROR: Final = "jmirror"
CONTRAIL: Final = "contrail"
MirrorPacket = JMirrorPacket | ContrailPacket

NOT_MIRROR: Final = "not_mirror"
"""Skip reason of a datagram judged to be neither jmirror nor Contrail."""

# Contrail payloads start with a known TLV or the end marker (vr_mirror.c writes them
# in order); other payloads are not worth a Contrail decode.
_CONTRAIL_FIRST_BYTES: Final = frozenset({1, 2, 3, 4, 255})

JUDGED_AFTER: Final = 16
"""A flow is judged once this many of its datagrams were seen (candidates and misses)."""
ACCEPT_AT_LEAST: Final = 4
"""...and accepted only with this many candidates,"""
ACCEPT_AT_END: Final = 2
"""...or, for a flow still undecided at the end of the capture, this many."""
MISSES_PER_CANDIDATE: Final = 3
"""A flow with more than one miss per three candidates is not mirror traffic: a router's
stream decodes all through."""
MAX_FLOWS: Final = 65536
"""Flows followed at most; past it every flow is judged on what it has and forgotten."""
MAX_HELD: Final = 65536
"""Datagrams held back at most; past it the oldest one's flow is judged on what it has."""


def certain_if_jmirror(payload: bytes) -> bool:
    """Whether ``payload``, should it decode as jmirror, is a datagram :func:`classify`
    finds certain by its commonest route: version 0 and an option-less inner IPv4
    header whose checksum holds (checked as :func:`receiver.ip.ipv4_header_checksum_ok`
    does; its 20 bytes are not all zero, as they start with 0x45). False says nothing:
    classify() then judges the payload.

    Cheap, so that the decode command can take the common datagram past classify()
    and the judge's generator."""
    return (
        len(payload) >= 28
        and payload[8] == 0x45
        and payload[0] < 0x40
        and int.from_bytes(payload[8:28], "big") % 0xFFFF == 0
    )


def classify(payload: bytes) -> tuple[int, MirrorFormat | None, MirrorPacket | None]:
    """``(verdict, format, packet)`` of one UDP payload on its own: :data:`CERTAIN`,
    :data:`CANDIDATE` (believable but for the IPv4 header checksum), or :data:`MISS`
    (format and packet then None)."""
    try:
        jmirror = decode_datagram(payload)
    except DecodeError:
        pass
    else:
        if is_plausible_jmirror(jmirror):
            return CERTAIN, JMIRROR, jmirror
        if is_plausible_jmirror(jmirror, checksums=False):
            return CANDIDATE, JMIRROR, jmirror
    if payload and payload[0] in _CONTRAIL_FIRST_BYTES:
        try:
            contrail = decode_contrail(payload)
        except DecodeError:
            return MISS, None, None
        if is_plausible_contrail(contrail):
            return CERTAIN, CONTRAIL, contrail
        if is_plausible_contrail(contrail, checksums=False):
            return CANDIDATE, CONTRAIL, contrail
    return MISS, None, None


CERTAIN: Final = 0
CANDIDATE: Final = 1
MISS: Final = 2


def decode_as(format: MirrorFormat, payload: bytes) -> MirrorPacket:
    """Decode a payload as the given format (raises DecodeError)."""
    return decode_datagram(payload) if format == JMIRROR else decode_contrail(payload)


def _stream_of(packet: MirrorPacket) -> tuple[object, ...]:
    """What a router keeps stable within a flow: a jmirror session's mid and sid, a
    vRouter's capture host, virtual networks and flags."""
    if isinstance(packet, JMirrorPacket):
        return (packet.mid, packet.sid)
    return (packet.capture_host, packet.source_vn, packet.dest_vn)


FlowKey = tuple[str, int]
"""(outer source address, UDP destination port)."""


@dataclass(slots=True)
class Flow:
    """What one flow has shown so far."""

    format: MirrorFormat | None = None
    candidates: int = 0
    misses: int = 0
    streams: set[tuple[object, ...]] = field(default_factory=set)
    accepted: bool | None = None
    """None while undecided."""
    held: list[Held] = field(default_factory=list)


@dataclass(slots=True)
class Held:
    """A datagram waiting for its flow's verdict, or decided and waiting for the
    datagrams before it."""

    item: tuple[int, int, str, int, MirrorPacket] | None
    decided: bool


Decoded = tuple[int, int, str, int, MirrorPacket]
"""frame number, capture time in ns, router (outer source), UDP destination port, packet."""


class FlowJudge:
    """Judges datagrams on their own and by their flow, and hands on the mirror packets
    in capture order (see the module's docstring). Feed it with :meth:`offer`, which
    yields what has become ready, then :meth:`finish` at the end of the capture."""

    def __init__(self, skipped: Counter[str]) -> None:
        self.skipped = skipped
        self.flows: dict[FlowKey, Flow] = {}
        self.suggestions: Counter[tuple[MirrorFormat, int]] = Counter()
        """Datagrams of flows that looked like a format but were not accepted, by
        (format, UDP port): what ``--port`` would decode."""
        self._held: deque[Held] = deque()

    def offer(
        self, frame: int, time_ns: int, router: str, port: int, payload: bytes
    ) -> Iterator[Decoded]:
        verdict, format, packet = classify(payload)
        if verdict == CERTAIN and packet is not None:
            if self.flows:
                self._count_certain(router, port, format)
            if self._held:
                self._held.append(Held((frame, time_ns, router, port, packet), True))
            else:
                yield frame, time_ns, router, port, packet
                return
        else:
            self._judge(frame, time_ns, router, port, payload, verdict, format, packet)
        yield from self._release()

    def pass_certain(self, router: str, port: int, format: MirrorFormat) -> bool:
        """For a datagram the caller found certain on its own, as :func:`classify`
        would (e.g. by :func:`certain_if_jmirror` and a clean decode): True when it goes on at once,
        without :meth:`offer`, as nothing is held back (its flow, if followed, counts
        it); False when :meth:`offer` must take it, to keep the capture order.

        The common case, a capture of one router's checksummed datagrams, then costs no
        generator per datagram: measured 0.3 us of the 2.2 us that offer() takes."""
        if self._held:
            return False
        if self.flows:
            self._count_certain(router, port, format)
        return True

    def _count_certain(self, router: str, port: int, format: MirrorFormat | None) -> None:
        # A certain datagram is evidence for its flow's candidates.
        flow = self.flows.get((router, port))
        if flow is not None and flow.accepted is None and flow.format == format:
            flow.candidates += 1

    def finish(self) -> Iterator[Decoded]:
        """Judge every flow still undecided, on the evidence it has."""
        for flow in list(self.flows.values()):
            if flow.accepted is None and flow.held:
                self._decide(flow, at_end=True)
        yield from self._release()

    def _judge(
        self,
        frame: int,
        time_ns: int,
        router: str,
        port: int,
        payload: bytes,
        verdict: int,
        format: MirrorFormat | None,
        packet: MirrorPacket | None,
    ) -> None:
        flow = self.flows.get((router, port))
        if flow is None:
            if verdict == MISS:
                # A flow is only followed once something in it looks like mirror traffic:
                # ordinary UDP costs no memory.
                self.skipped[NOT_MIRROR] += 1
                return
            if len(self.flows) >= MAX_FLOWS:
                self._forget_flows()
            flow = self.flows[(router, port)] = Flow(format=format)
        if flow.accepted is not None:
            self._after_verdict(flow, frame, time_ns, router, port, payload, packet)
            return
        if verdict == MISS or format != flow.format or packet is None:
            flow.misses += 1
            self.skipped[NOT_MIRROR] += 1
        else:
            flow.candidates += 1
            flow.streams.add(_stream_of(packet))
            held = Held((frame, time_ns, router, port, packet), False)
            flow.held.append(held)
            self._held.append(held)
        if flow.candidates + flow.misses >= JUDGED_AFTER:
            self._decide(flow, at_end=False)
        elif len(self._held) > MAX_HELD:
            oldest = self._held[0]
            if oldest.item is not None:
                _, _, old_router, old_port, _ = oldest.item
                oldest_flow = self.flows.get((old_router, old_port))
                if oldest_flow is not None and oldest_flow.accepted is None:
                    self._decide(oldest_flow, at_end=True)

    def _forget_flows(self) -> None:
        """Hostile numbers of flows: each undecided one is judged on what it has (so its
        held datagrams go on, or are skipped, in order), then every flow is forgotten."""
        for flow in self.flows.values():
            if flow.accepted is None and flow.held:
                self._decide(flow, at_end=True)
        self.flows.clear()

    def _after_verdict(
        self,
        flow: Flow,
        frame: int,
        time_ns: int,
        router: str,
        port: int,
        payload: bytes,
        packet: MirrorPacket | None,
    ) -> None:
        """A datagram of a judged flow: an accepted flow's are decoded as its format, as
        ``--port`` would, and counted by their failure; a rejected flow's are skipped."""
        assert flow.format is not None
        if not flow.accepted:
            self.skipped[NOT_MIRROR] += 1
            if packet is not None:
                self.suggestions[(flow.format, port)] += 1
            return
        if packet is None or not isinstance(
            packet, JMirrorPacket if flow.format == JMIRROR else ContrailPacket
        ):
            try:
                packet = decode_as(flow.format, payload)
            except DecodeError as error:
                self.skipped[error.reason.value] += 1
                return
        self._held.append(Held((frame, time_ns, router, port, packet), True))

    def _decide(self, flow: Flow, *, at_end: bool) -> None:
        least = ACCEPT_AT_END if at_end else ACCEPT_AT_LEAST
        flow.accepted = (
            flow.candidates >= least
            and flow.misses * MISSES_PER_CANDIDATE <= flow.candidates
            and len(flow.streams) * 2 <= flow.candidates
        )
        for held in flow.held:
            held.decided = True
            if not flow.accepted:
                assert held.item is not None
                assert flow.format is not None
                self.suggestions[(flow.format, held.item[3])] += 1
                self.skipped[NOT_MIRROR] += 1
                held.item = None
        flow.held = []
        flow.streams = set()

    def _release(self) -> Iterator[Decoded]:
        held = self._held
        while held and held[0].decided:
            item = held.popleft().item
            if item is not None:
                yield item
