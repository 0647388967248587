"""Stored DNS, TLS and HTTP traffic of a session, written as the receiver writes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from jmirror_web.intercepts.models import CaptureFile, Session
from receiver import traffic
from receiver.store import LINKTYPE_PPP_HDLC, LINKTYPE_RAW, PcapStore, SessionKey

T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
MS = 1_000_000
CLIENT = traffic.SUBSCRIBER
WEB = "192.0.2.80"
TLS_SERVER = "192.0.2.44"
# A TLS 1.2 ClientHello for secure.example.net, as scapy's TLS layer builds it.
CLIENT_HELLO = bytes.fromhex(
    "16030300620100005e030300000000f2c318119ed6416c8576f5f58dde2b4de37b763a0fc9288baf1d0756"
    "00001ac02bc023c02fc027009e0067009c003cc009c0130033002f000a0100001b00000017001500001273"
    "65637572652e6578616d706c652e6e6574"
)


def row_time(time_ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_ns // 1000)


def tcp(src: str, dst: str, sport: int, dport: int, flags: str, payload: bytes = b"") -> bytes:
    packet = IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)
    return bytes(packet / Raw(payload) if payload else packet)


def subscriber_traffic() -> list[bytes]:
    """A DNS lookup, then a TLS connection closed by FIN both ways, then an HTTP request
    on a connection that is reset."""
    return [
        bytes(traffic.dns_query(client=CLIENT)),
        bytes(traffic.dns_response(client=CLIENT)),
        tcp(CLIENT, TLS_SERVER, 40000, 443, "S"),
        tcp(TLS_SERVER, CLIENT, 443, 40000, "SA"),
        tcp(CLIENT, TLS_SERVER, 40000, 443, "A"),
        tcp(CLIENT, TLS_SERVER, 40000, 443, "PA", CLIENT_HELLO),
        tcp(CLIENT, TLS_SERVER, 40000, 443, "FA"),
        tcp(TLS_SERVER, CLIENT, 443, 40000, "FA"),
        tcp(CLIENT, WEB, 40001, 80, "S"),
        tcp(WEB, CLIENT, 80, 40001, "SA"),
        tcp(CLIENT, WEB, 40001, 80, "PA", b"GET / HTTP/1.1\r\nHost: WWW.Example.ORG\r\n\r\n"),
        tcp(WEB, CLIENT, 80, 40001, "R"),
    ]


def store_packets(
    data_dir: Path, session: Session, packets: list[bytes], *, ppp: bool = True
) -> list[CaptureFile]:
    """Store ``packets`` 1 ms apart as bare IP (and a PPP control packet in a file of
    its own), with their rows as the receiver records them."""
    store = PcapStore(data_dir / "sessions")
    key = SessionKey("CONV-LIID", "192.0.2.1", 0x320, 0xB0)
    for number, data in enumerate(packets):
        store.write(key, T0 + number * MS, data, LINKTYPE_RAW)
    if ppp:
        store.write(key, T0, bytes(traffic.ppp_lcp().packet), LINKTYPE_PPP_HDLC)
    return [
        CaptureFile.objects.create(
            session=session,
            path=str(Path("sessions") / each.path),
            first_packet=row_time(each.first_ns),
            last_packet=row_time(each.last_ns),
            packets=each.packets,
            bytes=each.bytes,
            sha256=each.sha256,
            closed=True,
        )
        for each in store.close_all()
    ]
