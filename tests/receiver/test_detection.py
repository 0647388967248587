"""Finding mirror traffic in a capture without its ports: per datagram, and per flow for
captures whose addresses were rewritten without fixing checksums."""

from __future__ import annotations

import json
import struct
from collections import Counter
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.ntp import NTP
from scapy.utils import wrpcap

from receiver import detection
from receiver.contrail import contrail_header
from receiver.detection import FlowJudge
from receiver.offline import decode_capture

ROUTER = "192.0.2.1"
VROUTER = "192.0.2.77"
MEDIATION = "198.51.100.10"


def anonymized(ip_packet: bytes) -> bytes:
    """An IPv4 packet whose source was rewritten and whose checksum was not fixed: what
    capture anonymizers commonly do."""
    rewritten = bytearray(ip_packet)
    rewritten[12:16] = bytes((203, 0, 113, rewritten[15] ^ 0x5A))
    return bytes(rewritten)


def inner_packet(index: int) -> bytes:
    return bytes(
        IP(src="10.0.0.1", dst="10.9.0.1", id=index) / TCP(sport=40000, dport=443) / (b"x" * index)
    )


def jmirror_frame(inner: bytes, *, port: int, sid: int = 0x90) -> Ether:
    payload = struct.pack("!II", 0x300, sid) + inner
    return Ether() / IP(src=ROUTER, dst=MEDIATION) / UDP(sport=port, dport=port) / payload


def contrail_frame(inner_ip: bytes, *, port: int) -> Ether:
    header = contrail_header(
        capture_host=VROUTER, flags=0x400000A0, source_vn="vn-a", dest_vn="vn-b"
    )
    ethernet = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800))
    payload = header + ethernet + inner_ip
    return (
        Ether() / IP(src=VROUTER, dst=MEDIATION) / UDP(sport=49152, dport=port, chksum=0) / payload
    )


def ordinary_udp() -> list[Ether]:
    return [
        Ether()
        / IP(src="192.0.2.53", dst=MEDIATION)
        / UDP(sport=53, dport=41000)
        / DNS(qd=DNSQR(qname="example.net")),
        Ether() / IP(src="192.0.2.123", dst=MEDIATION) / UDP(sport=123, dport=123) / NTP(),
        Ether()
        / IP(src="192.0.2.9", dst=MEDIATION)
        / UDP(sport=514, dport=514)
        / b"<13>Dec  6 11:00:00 host app: hello",
    ]


def write(path: Path, frames: list[Ether]) -> Path:
    for number, frame in enumerate(frames):
        frame.time = 1_790_000_000 + number / 1000
    wrpcap(str(path), frames)
    return path


def decode(path: Path, *options: str) -> tuple[list[dict[str, object]], str]:
    out, err = StringIO(), StringIO()
    call_command("decode", str(path), *options, stdout=out, stderr=err)
    return [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_an_anonymized_jmirror_capture_on_an_unusual_port_decodes_completely(tmp_path: Path):
    frames = [jmirror_frame(anonymized(inner_packet(i)), port=6100) for i in range(40)]
    frames[10:10] = ordinary_udp()
    records, summary = decode(write(tmp_path / "anon.pcap", frames))
    assert [record["frame"] for record in records] == [
        number for number in range(1, 44) if number not in (11, 12, 13)
    ]
    assert {record["format"] for record in records} == {"jmirror"}
    assert records[0]["src"] == "203.0.113.91"
    assert "43 frames read, 40 packets decoded (jmirror: 40), 3 skipped (not_mirror: 3)" in summary
    assert "try" not in summary


def test_an_anonymized_contrail_capture_decodes_completely(tmp_path: Path):
    frames = [contrail_frame(anonymized(inner_packet(i)), port=9100) for i in range(20)]
    records, summary = decode(write(tmp_path / "anon-cn2.pcap", frames))
    assert len(records) == 20
    assert {record["format"] for record in records} == {"contrail"}
    assert records[0]["source_vn"] == "vn-a"
    assert "(contrail: 20)" in summary


def test_held_back_datagrams_come_out_in_capture_order_among_certain_ones(tmp_path: Path):
    frames: list[Ether] = []
    for i in range(12):
        frames.append(jmirror_frame(anonymized(inner_packet(i)), port=6100))
        frames.append(jmirror_frame(inner_packet(i), port=30030, sid=0x91))
    records, _ = decode(write(tmp_path / "mixed.pcap", frames))
    assert [record["frame"] for record in records] == list(range(1, 25))


def test_ordinary_udp_is_still_not_mirror_traffic(tmp_path: Path):
    frames = ordinary_udp() * 20
    records, summary = decode(write(tmp_path / "plain.pcap", frames))
    assert records == []
    assert summary == "60 frames read, 0 packets decoded, 60 skipped (not_mirror: 60)\n"


def test_a_flow_with_one_lookalike_among_other_traffic_is_skipped_and_its_port_named(
    tmp_path: Path,
):
    # One datagram that decodes as jmirror (checksum rewritten) in a flow that is
    # otherwise not: not enough to call the flow mirror traffic, but worth a hint.
    frames = [
        Ether() / IP(src=ROUTER, dst=MEDIATION) / UDP(sport=7000, dport=7000) / (b"junk %d" % i)
        for i in range(6)
    ]
    frames.insert(3, jmirror_frame(anonymized(inner_packet(1)), port=7000))
    records, summary = decode(write(tmp_path / "lookalike.pcap", frames))
    assert records == []
    assert summary == (
        "7 frames read, 0 packets decoded, 7 skipped (not_mirror: 7); "
        "port 7000 looks like jmirror (1 datagrams skipped): try --port 7000\n"
    )
    forced, _ = decode(write(tmp_path / "lookalike.pcap", frames), "--port", "7000")
    assert [record["frame"] for record in forced] == [4]


def test_a_contrail_port_decodes_as_wiresharks_decode_as_does(tmp_path: Path):
    frames = [contrail_frame(inner_packet(i), port=8099) for i in range(3)]
    frames.append(Ether() / IP(src=VROUTER, dst=MEDIATION) / UDP(dport=8099) / b"\x03\x40short")
    records, summary = decode(write(tmp_path / "cn2.pcap", frames), "--contrail-port", "8099")
    assert [record["frame"] for record in records] == [1, 2, 3]
    assert "(no_end_of_tlvs: 1)" in summary


def test_one_port_cannot_be_both_formats(tmp_path: Path):
    path = write(tmp_path / "any.pcap", ordinary_udp())
    with pytest.raises(Exception, match="both jmirror and Contrail"):
        decode(path, "--port", "8099", "--contrail-port", "8099")


def test_the_datagrams_held_back_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Candidates of flows that never reach a verdict are judged on what they have once
    # too many are held, and still come out in order.
    monkeypatch.setattr(detection, "MAX_HELD", 4)
    monkeypatch.setattr(detection, "JUDGED_AFTER", 1000)
    frames = [jmirror_frame(anonymized(inner_packet(i)), port=6100) for i in range(10)]
    path = write(tmp_path / "held.pcap", frames)
    skipped: Counter[str] = Counter()
    judge = FlowJudge(skipped)
    largest_held = 0
    records = []
    with path.open("rb") as stream:
        for record in decode_capture(stream, (), skipped, (), judge):
            records.append(record)
            largest_held = max(largest_held, len(judge._held))
    assert [record[0] for record in records] == list(range(1, 11))
    assert largest_held <= 5


def test_past_the_flow_bound_every_flow_is_judged_and_nothing_is_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # More flows than followed at once (hostile captures): the undecided ones are judged
    # on what they have before they are forgotten, so what comes after still comes out.
    monkeypatch.setattr(detection, "MAX_FLOWS", 3)
    frames = []
    for round_number in range(2):
        for port in (6101, 6102, 6103, 6104, 6105):
            frames.append(jmirror_frame(anonymized(inner_packet(round_number)), port=port))
    frames.append(jmirror_frame(inner_packet(99), port=30030))  # certain
    path = write(tmp_path / "flows.pcap", frames)
    skipped: Counter[str] = Counter()
    judge = FlowJudge(skipped)
    with path.open("rb") as stream:
        records = list(decode_capture(stream, (), skipped, (), judge))
    assert not judge._held
    numbers = [record[0] for record in records]
    assert numbers == sorted(numbers)
    assert numbers[-1] == len(frames)  # the certain datagram at the end came out
    assert len(records) + skipped["not_mirror"] == len(frames)
