"""Decoding of jmirror packets out of capture files (``manage.py decode``); no Django.

The pipeline is three generators: :func:`receiver.pcap_reader.iter_frames` reads records,
:func:`receiver.pcap_reader.iter_udp_datagrams` takes them down to (reassembled) UDP
datagrams, and :func:`decode_capture` keeps the jmirror ones. :func:`json_line` writes
one decoded packet in the ``decode`` command's output format.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator
from typing import BinaryIO, Final

from receiver.jmirror import DecodeError, JMirrorPacket, decode_datagram, is_plausible_jmirror
from receiver.pcap_reader import iter_frames, iter_udp_datagrams

NOT_JMIRROR: Final = "not_jmirror"
PORT_NOT_SELECTED: Final = "port_not_selected"

# The decode command's keys, in output order; the key order is part of the contract.
JSON_KEYS: Final = (
    "frame",
    "time",
    "router",
    "port",
    "mid",
    "intercept_id",
    "version",
    "sid",
    "inner",
    "ppp_protocol",
    "src",
    "dst",
    "proto",
    "sport",
    "dport",
    "length",
)

DecodedFrame = tuple[int, int, str, int, JMirrorPacket]
"""frame number, capture time in ns, router (outer source), outer UDP destination
port, and the packet."""


def decode_capture(
    stream: BinaryIO, ports: Collection[int], skipped: Counter[str]
) -> Iterator[DecodedFrame]:
    """Yield every jmirror packet in a capture, in capture order.

    With ``ports``, every UDP datagram to one of them is decoded as jmirror (as
    Wireshark's "Decode As" does) and one that fails is skipped under its
    :class:`~receiver.jmirror.DecodeFailure` reason. Without, jmirror is detected on
    any port and everything else is skipped as ``not_jmirror``. Every frame that yields
    no packet is counted in ``skipped``. A damaged file raises
    :class:`~receiver.pcap_reader.CaptureError` after its last complete record.
    """
    datagrams = iter_udp_datagrams(iter_frames(stream), skipped)
    if ports:
        selected = frozenset(ports)
        for frame, time_ns, router, _, _, port, payload in datagrams:
            if port not in selected:
                skipped[PORT_NOT_SELECTED] += 1
                continue
            try:
                packet = decode_datagram(payload)
            except DecodeError as error:
                skipped[error.reason.value] += 1
                continue
            yield frame, time_ns, router, port, packet
    else:
        for frame, time_ns, router, _, _, port, payload in datagrams:
            try:
                packet = decode_datagram(payload)
            except DecodeError:
                skipped[NOT_JMIRROR] += 1
                continue
            if is_plausible_jmirror(packet):
                yield frame, time_ns, router, port, packet
            else:
                skipped[NOT_JMIRROR] += 1


# Every string value is an address from inet_ntoa/inet_ntop or an inner kind literal,
# so none needs JSON escaping; a template is four times faster than json.dumps here.
_JSON_LINE: Final = (
    '{"frame": %d, "time": %d.%09d, "router": "%s", "port": %d, "mid": %d, '
    '"intercept_id": %d, "version": %d, "sid": %d, "inner": "%s", "ppp_protocol": %s, '
    '"src": %s, "dst": %s, "proto": %s, "sport": %s, "dport": %s, "length": %d}\n'
)


def json_line(frame: int, time_ns: int, router: str, port: int, packet: JMirrorPacket) -> str:
    """One output line of ``manage.py decode`` (see :data:`JSON_KEYS`), newline included.

    ``time`` is written from integer nanoseconds, so it is exact to the nanosecond
    where a float would round.
    """
    seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
    src = packet.src
    dst = packet.dst
    proto = packet.proto
    sport = packet.sport
    dport = packet.dport
    ppp_protocol = packet.ppp_protocol
    return _JSON_LINE % (
        frame,
        seconds,
        nanoseconds,
        router,
        port,
        packet.mid,
        packet.intercept_id,
        packet.version,
        packet.sid,
        packet.inner,
        "null" if ppp_protocol is None else ppp_protocol,
        "null" if src is None else f'"{src}"',
        "null" if dst is None else f'"{dst}"',
        "null" if proto is None else proto,
        "null" if sport is None else sport,
        "null" if dport is None else dport,
        packet.length,
    )
