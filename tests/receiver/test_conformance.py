"""``manage.py decode`` against tshark, the decoder everyone trusts, and against generated
traffic whose content is known, for what tshark cannot decode.

tshark only dissects jmirror on ports it is told (``-d udp.port==P,jmirror``), and its
jmirror dissector hands on only what its first four mirrored bytes look like: IPv4
without options (``45``), IPv6, and PPP ``FF 03 x0 21`` (IPv4, LCP, IPCP) or
``FF 03 00 57`` (IPv6). Everything else it leaves as UDP data; there the generator's
record of what it built is the reference.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from receiver import traffic
from receiver.traffic import ExpectedDecode
from tests.receiver.contrail_tshark import contrail_tshark_view
from tests.receiver.router_captures import Capture, capture_params

pytestmark = pytest.mark.tshark

REPO_ROOT = Path(__file__).resolve().parents[2]

RECORD_KEYS = {
    "jmirror": list(traffic.JMIRROR_RECORD_KEYS),
    "contrail": list(traffic.CONTRAIL_RECORD_KEYS),
}
JMIRROR_PORTS = (30030, 6502, 5000, 54301)

# Kinds whose first mirrored bytes tshark 4.0's jmirror dissector does not recognise.
TSHARK_BLIND_KINDS = frozenset(
    {
        "ipv4_router_alert_udp",
        "ipv4_record_route_icmp",
        "ppp_ipv4_compressed_protocol",
        "ppp_pap",
        "ppp_chap",
        "ppp_ipv6cp",
    }
)

TSHARK_FIELDS = [
    *("frame.number", "frame.time_epoch", "frame.protocols"),
    *("ip.src", "ip.dst", "ip.proto", "ip.flags.mf", "ip.frag_offset"),
    *("udp.srcport", "udp.dstport", "udp.length", "jmirror.mid", "jmirror.sid"),
    *("ipv6.src", "ipv6.dst", "ipv6.nxt", "ipv6.hopopts.nxt", "ipv6.routing.nxt"),
    *("ipv6.dstopts.nxt", "ipv6.fraghdr.nxt", "ppp.protocol", "tcp.srcport", "tcp.dstport"),
]
IPV6_EXTENSION_HEADERS = ("ipv6.hopopts", "ipv6.routing", "ipv6.dstopts", "ipv6.fraghdr")
TSHARK_INNER_KIND = {"ip": "ipv4", "ipv6": "ipv6", "pw_hdlc_nocw_hdlc_ppp": "ppp"}


@pytest.fixture(scope="module")
def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        pytest.skip("tshark is not installed")
    return path


@cache
def decode(capture: Path, ports: tuple[int, ...] = ()) -> tuple[dict[str, object], ...]:
    """The records ``manage.py decode`` prints, run as a user runs it."""
    result = subprocess.run(
        [sys.executable, "manage.py", "decode", str(capture), *(f"--port={p}" for p in ports)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    records = tuple(json.loads(line) for line in result.stdout.splitlines())
    for record in records:
        assert list(record) == RECORD_KEYS.get(str(record.get("format"))), f"keys of {record}"
    return records


@cache
def tshark_view(tshark: str, capture: Path, ports: tuple[int, ...]) -> dict[int, dict[str, object]]:
    """What tshark shows of each frame it decodes as jmirror, in the decode command's
    terms: only the keys tshark has a value for."""
    command = [tshark, "-r", str(capture), "-T", "fields", "-E", "occurrence=a"]
    for port in ports:
        command += ["-d", f"udp.port=={port},jmirror"]
    for name in TSHARK_FIELDS:
        command += ["-e", name]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    view = {}
    for line in lines.splitlines():
        values = dict(zip(TSHARK_FIELDS, line.split("\t"), strict=True))
        fields = {name: value.split(",") if value else [] for name, value in values.items()}
        record = _as_decode_record(fields)
        if record is not None:
            view[int(values["frame.number"])] = record
    return view


def _as_decode_record(fields: Mapping[str, list[str]]) -> dict[str, object] | None:
    protocols = fields["frame.protocols"][0].split(":")
    if "jmirror" not in protocols:
        return None
    mid = int(fields["jmirror.mid"][0], 16)
    record: dict[str, object] = {
        "frame": int(fields["frame.number"][0]),
        "time": float(fields["frame.time_epoch"][0]),
        "router": fields["ip.src"][0],
        "port": int(fields["udp.dstport"][0]),
        "format": "jmirror",
        "mid": mid,
        "intercept_id": mid & 0x3FFFFFFF,
        "version": mid >> 30,
        "sid": int(fields["jmirror.sid"][0], 16),
        "ppp_protocol": None,
        "length": int(fields["udp.length"][0]) - 16,
    }
    after_jmirror = protocols[protocols.index("jmirror") + 1 :]
    record["inner"] = TSHARK_INNER_KIND[after_jmirror[0]]
    ip_version = after_jmirror[0]
    if ip_version == "pw_hdlc_nocw_hdlc_ppp":
        record["ppp_protocol"] = int(fields["ppp.protocol"][0], 16)
        ip_version = after_jmirror[2] if len(after_jmirror) > 2 else ""
    if ip_version == "ip":
        # Occurrence 0 is the router's outer IPv4 header.
        record |= {"src": fields["ip.src"][1], "dst": fields["ip.dst"][1]}
        record["proto"] = int(fields["ip.proto"][1])
        fragment = (
            fields["ip.flags.mf"][1] not in ("0", "False") or fields["ip.frag_offset"][1] != "0"
        )
    elif ip_version == "ipv6":
        record |= {"src": fields["ipv6.src"][0], "dst": fields["ipv6.dst"][0]}
        record["proto"] = _ipv6_transport(protocols, fields)
        fragment = "ipv6.fraghdr" in protocols
    elif record["inner"] == "ppp":
        return record | {"src": None, "dst": None, "proto": None, "sport": None, "dport": None}
    else:
        return record
    # tshark reassembles inner fragments and shows the ports on the last one, where the
    # decoder (one packet at a time) has none: ports of fragments are left to the
    # generator's record.
    if not fragment:
        record |= _transport_ports(record["proto"], fields)
    return record


def _ipv6_transport(protocols: Sequence[str], fields: Mapping[str, list[str]]) -> int:
    """The protocol after the first IPv6 header's extension headers."""
    position = protocols.index("ipv6") + 1
    proto = int(fields["ipv6.nxt"][0])
    while position < len(protocols) and protocols[position] in IPV6_EXTENSION_HEADERS:
        header = protocols[position]
        occurrence = protocols[:position].count(header)
        proto = int(fields[f"{header}.nxt"][occurrence])
        position += 1
    return proto


def _transport_ports(proto: object, fields: Mapping[str, list[str]]) -> dict[str, object]:
    if proto == traffic.PROTO_TCP and fields["tcp.srcport"]:
        return {"sport": int(fields["tcp.srcport"][0]), "dport": int(fields["tcp.dstport"][0])}
    if proto == traffic.PROTO_UDP and len(fields["udp.srcport"]) > 1:
        # Occurrence 0 is the router's outer UDP header.
        return {"sport": int(fields["udp.srcport"][1]), "dport": int(fields["udp.dstport"][1])}
    if proto in (traffic.PROTO_ICMP, traffic.PROTO_ICMPV6):
        return {"sport": None, "dport": None}
    return {}


def disagreements(
    ours: Iterable[Mapping[str, object]], reference: Mapping[int, Mapping[str, object]]
) -> list[str]:
    """One line per frame and key where ``ours`` differs from ``reference``, for every
    key the reference has (times to the microsecond of the capture)."""
    by_frame = {int(str(record["frame"])): record for record in ours}
    lines = []
    for frame, expected in sorted(reference.items()):
        record = by_frame.get(frame)
        if record is None:
            lines.append(f"frame {frame}: not decoded, expected {dict(expected)}")
            continue
        for key, value in expected.items():
            got = record.get(key)
            if key == "time":
                same = isinstance(got, float | int) and math.isclose(
                    float(got), float(str(value)), rel_tol=0, abs_tol=1e-6
                )
            else:
                same = got == value
            if not same:
                lines.append(f"frame {frame}: {key} is {got!r}, expected {value!r}")
    return lines


@dataclass(frozen=True)
class GeneratedCapture:
    path: Path
    expected: list[ExpectedDecode]
    noise_frames: list[int]

    def reference(self, ports: Iterable[int] = JMIRROR_PORTS) -> dict[int, dict[str, object]]:
        wanted = set(ports)
        return {e.frame: e.as_record() for e in self.expected if e.port in wanted}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> GeneratedCapture:
    """Every inner kind on several ports, two routers with equal (mid, sid), VLAN tags,
    fragmented outer datagrams in and out of order, and UDP noise in between."""
    builder = traffic.PcapBuilder()
    rng = random.Random(20261122)
    noise = [
        traffic.dns_query(),
        traffic.dns_response(),
        traffic.ntp_request(),
        traffic.syslog_message(),
        *(traffic.random_udp(rng, avoid_ports=JMIRROR_PORTS) for _ in range(6)),
    ]

    for index, mirrored in enumerate(traffic.every_mirrored_kind()):
        builder.add_jmirror(
            mirrored, port=JMIRROR_PORTS[index % 4], mid=0x100 + index, sid=0x5000 + index
        )
        if index % 3 == 0:
            builder.add_noise(noise[(index // 3) % len(noise)])

    for router in (traffic.ROUTER, traffic.OTHER_ROUTER):
        builder.add_jmirror(traffic.ipv4_tcp(), router=router, port=54301, mid=0x8000, sid=1)
        builder.add_jmirror(traffic.ppp_lcp(), router=router, port=54301, mid=0x8000, sid=1)

    builder.add_jmirror(traffic.ipv4_udp(), port=6502, mid=0x200, sid=1, vlans=[100])
    builder.add_jmirror(traffic.ppp_ipv6_tcp(), port=5000, mid=0x201, sid=2, vlans=[100, 200])
    builder.add_jmirror(
        traffic.ipv6_icmpv6(),
        port=30030,
        mid=0x202,
        sid=3,
        vlans=[100, 200],
        service_tag_type=0x8100,
    )
    builder.add_noise(traffic.dns_query(), vlans=[100])

    # Full-size mirrored packets: the network fragments the router's datagram.
    builder.add_jmirror(traffic.full_size_ipv4_tcp(), port=6502, mid=0x300, sid=1, mtu=1500)
    builder.add_jmirror(
        traffic.full_size_ppp_ipv6_udp(), port=54301, mid=0x301, sid=2, vlans=[300], mtu=1500
    )
    # A last fragment of 8 bytes: a 42-byte frame the capture records padded to 60.
    builder.add_jmirror(traffic.full_size_ipv4_tcp(1472), port=5000, mid=0x302, sid=3, mtu=1500)
    # Out of order, and two datagrams' fragments interleaved with noise among them.
    reversed_fragments = builder.jmirror(
        traffic.full_size_ipv4_tcp(), port=30030, mid=0x303, sid=4, mtu=576
    )
    builder.append(*reversed(reversed_fragments))
    first = builder.jmirror(traffic.full_size_ipv4_tcp(), port=6502, mid=0x304, sid=5, mtu=1000)
    second = builder.jmirror(
        traffic.full_size_ppp_ipv6_udp(), port=6502, mid=0x305, sid=6, mtu=1000
    )
    builder.append(first[0], second[0])
    builder.add_noise(traffic.syslog_message())
    builder.append(second[1], first[1])
    for packet in noise:
        builder.add_noise(packet)

    path = tmp_path_factory.mktemp("conformance") / "generated.pcap"
    builder.write(path)
    return GeneratedCapture(path, builder.expected, builder.noise_frames)


@pytest.mark.captures
@pytest.mark.parametrize("router_capture", capture_params(), indirect=True)
def test_decode_agrees_with_tshark_on_every_frame_of_the_router_captures(
    tshark: str, router_capture: Capture
):
    reference = tshark_view(tshark, router_capture.path, (router_capture.port,))

    records = decode(router_capture.path)

    assert [record["frame"] for record in records] == sorted(reference)
    assert disagreements(records, reference) == []


@pytest.mark.captures
@pytest.mark.parametrize("router_capture", capture_params(), indirect=True)
def test_decode_finds_every_router_packet_without_being_told_the_port(router_capture: Capture):
    records = decode(router_capture.path)

    assert [record["frame"] for record in records] == list(range(1, router_capture.frames + 1))
    assert {record["port"] for record in records} == {router_capture.port}


@pytest.mark.captures
@pytest.mark.parametrize("router_capture", capture_params("jmirror_ipv6_l2tp.pcap"), indirect=True)
def test_two_routers_sending_the_same_mid_and_sid_stay_apart(router_capture: Capture):
    records = decode(router_capture.path)

    streams = {(record["router"], record["mid"], record["sid"]) for record in records}

    assert streams == {("64.230.45.123", 0x8000, 1), ("64.230.56.119", 0x8000, 1)}


def test_decode_reports_every_generated_jmirror_packet_as_it_was_generated(
    generated: GeneratedCapture,
):
    records = decode(generated.path)

    assert disagreements(records, generated.reference()) == []
    assert [record["frame"] for record in records] == [e.frame for e in generated.expected]


def test_decode_agrees_with_tshark_on_every_generated_packet_tshark_decodes(
    tshark: str, generated: GeneratedCapture
):
    reference = tshark_view(tshark, generated.path, JMIRROR_PORTS)

    records = decode(generated.path)

    assert disagreements(records, reference) == []


def test_tshark_decodes_every_generated_kind_but_those_its_dissector_cannot_recognise(
    tshark: str, generated: GeneratedCapture
):
    """Guards the comparison above: it would pass vacuously if tshark decoded nothing."""
    reference = tshark_view(tshark, generated.path, JMIRROR_PORTS)

    missed = {e.name for e in generated.expected if e.frame not in reference}

    assert missed <= TSHARK_BLIND_KINDS
    assert set(reference) <= {e.frame for e in generated.expected}


def test_outer_fragments_decode_on_the_frame_that_completes_the_datagram(
    generated: GeneratedCapture,
):
    fragmented = [e for e in generated.expected if e.name.startswith("full_size")]

    records = {record["frame"]: record for record in decode(generated.path)}

    assert len(fragmented) == 6
    for expected in fragmented:
        assert records.get(expected.frame, {}).get("mid") == expected.mid, expected.name
        assert records[expected.frame]["length"] == expected.length


def test_udp_noise_never_appears_in_decode_output_without_port(generated: GeneratedCapture):
    decoded_frames = {record["frame"] for record in decode(generated.path)}

    assert decoded_frames.isdisjoint(generated.noise_frames)


@pytest.mark.parametrize("ports", [(6502,), (5000, 54301)], ids=str)
def test_with_port_only_packets_to_those_ports_appear(
    generated: GeneratedCapture, ports: tuple[int, ...]
):
    records = decode(generated.path, ports)

    assert {record["port"] for record in records} == set(ports)
    assert disagreements(records, generated.reference(ports)) == []
    assert len(records) == len(generated.reference(ports))


@pytest.mark.captures
@pytest.mark.parametrize("router_capture", capture_params("jmirror_ip.pcap"), indirect=True)
def test_with_another_port_a_router_capture_decodes_to_nothing(router_capture: Capture):
    assert decode(router_capture.path, (5000,)) == ()


def test_the_generators_record_agrees_with_tshark_wherever_tshark_decodes(
    tshark: str, generated: GeneratedCapture
):
    """The generator's record is the reference where tshark is blind, so it must first
    agree with tshark everywhere tshark can see."""
    reference = tshark_view(tshark, generated.path, JMIRROR_PORTS)

    mismatches = disagreements(generated.reference().values(), reference)

    assert mismatches == []


def test_with_port_the_version_bits_stay_apart_from_the_intercept_id(tshark: str, tmp_path: Path):
    builder = traffic.PcapBuilder()
    for mid in (0x80000300, 0x40000010, 0xC0000001):
        builder.add_jmirror(traffic.ipv4_tcp(), port=6502, mid=mid, sid=0x90)
    capture = tmp_path / "versions.pcap"
    builder.write(capture)

    records = decode(capture, (6502,))

    assert [(r["mid"], r["version"], r["intercept_id"]) for r in records] == [
        (0x80000300, 2, 0x300),
        (0x40000010, 1, 0x10),
        (0xC0000001, 3, 0x1),
    ]
    assert disagreements(records, tshark_view(tshark, capture, (6502,))) == []


# Contrail (CN2 vRouter Juniper header) ---------------------------------------------------

CONTRAIL_PORTS = (8099, 9099, 40300)


@pytest.fixture(scope="module")
def generated_contrail(tmp_path_factory: pytest.TempPathFactory) -> GeneratedCapture:
    """Every Contrail variant on three analyzer ports, mixed with jmirror on two ports
    and ordinary UDP (DNS, NTP, syslog, random) in between."""
    builder = traffic.PcapBuilder()
    rng = random.Random(20261206)
    noise = [
        traffic.dns_query(),
        traffic.ntp_request(),
        traffic.syslog_message(),
        *(traffic.random_udp(rng, avoid_ports=JMIRROR_PORTS + CONTRAIL_PORTS) for _ in range(4)),
    ]
    mirrored = traffic.every_mirrored_kind()
    for index, variant in enumerate(traffic.every_contrail_variant()):
        variant.add_to(builder, port=CONTRAIL_PORTS[index % len(CONTRAIL_PORTS)])
        if index % 4 == 0:
            builder.add_jmirror(
                mirrored[index % len(mirrored)],
                port=JMIRROR_PORTS[index % 2],
                mid=0x400 + index,
                sid=index,
            )
            builder.add_noise(noise[(index // 4) % len(noise)])
    path = tmp_path_factory.mktemp("conformance") / "contrail.pcap"
    builder.write(path)
    return GeneratedCapture(path, builder.expected, builder.noise_frames)


def test_decode_reports_every_generated_contrail_and_jmirror_packet_as_it_was_generated(
    generated_contrail: GeneratedCapture,
):
    records = decode(generated_contrail.path)

    reference = {e.frame: e.as_record() for e in generated_contrail.expected}
    assert disagreements(records, reference) == []
    assert [record["frame"] for record in records] == sorted(reference)


def test_decode_agrees_with_tshark_on_every_generated_contrail_packet(
    tshark: str, generated_contrail: GeneratedCapture
):
    reference = contrail_tshark_view(tshark, generated_contrail.path, CONTRAIL_PORTS)

    records = decode(generated_contrail.path)

    assert disagreements(records, reference) == []
    assert len(reference) == sum(e.format == "contrail" for e in generated_contrail.expected)
