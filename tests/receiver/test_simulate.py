import itertools
import json
import socket
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from receiver.jmirror import PPPProtocol, decode_datagram
from receiver.management.commands.simulate import build_contrail_payloads, build_payloads
from receiver.scapy_contrail import JuniperVN
from receiver.traffic import (
    DEST_VN,
    SOURCE_VN,
    SUBSCRIBER,
    VROUTER_GATEWAY_MAC,
    WORKLOAD_MAC,
)


@pytest.fixture
def listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def receive(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(65535) for _ in range(count)]


def simulate(*args: str) -> str:
    out = StringIO()
    call_command("simulate", *args, stdout=out)
    return out.getvalue()


def test_it_sends_decodable_jmirror_traffic_with_the_asked_mid_and_sid(listener):
    port = listener.getsockname()[1]
    output = simulate(
        "--to",
        f"127.0.0.1:{port}",
        "--count",
        "50",
        "--rate",
        "0",
        "--mid",
        "0x300",
        "--sid",
        "0x1234",
    )
    packets = [decode_datagram(each) for each in receive(listener, 50)]
    assert len(packets) == 50
    assert {(packet.mid, packet.version, packet.sid) for packet in packets} == {(0x300, 0, 0x1234)}
    assert {packet.inner for packet in packets} == {"ppp"}
    assert PPPProtocol.LCP in {packet.ppp_protocol for packet in packets}
    assert "sent 50 datagrams" in output
    assert f"to 127.0.0.1:{port}" in output
    assert "mid 0x300 sid 0x1234" in output


def test_each_mid_gets_its_own_session_id_unless_one_is_given(listener):
    port = listener.getsockname()[1]
    simulate(
        "--to", f"127.0.0.1:{port}", "--count", "50", "--rate", "0", "--mid", "5", "--mid", "6"
    )
    packets = [decode_datagram(each) for each in receive(listener, 50)]
    assert {(packet.intercept_id, packet.sid) for packet in packets} == {(5, 0x90), (6, 0x91)}


def test_it_paces_to_the_asked_rate(listener):
    port = listener.getsockname()[1]
    output = simulate("--to", f"127.0.0.1:{port}", "--count", "20", "--rate", "100")
    assert len(receive(listener, 20)) == 20
    seconds = float(output.split(" in ")[1].split(" s ")[0])
    # 20 datagrams at 100/s: the first goes at once, the other 19 take 0.19 s.
    assert 0.17 <= seconds < 1.0


def test_it_stops_after_the_duration(listener):
    port = listener.getsockname()[1]
    output = simulate("--to", f"127.0.0.1:{port}", "--duration", "0.2", "--rate", "50")
    sent = int(output.split("sent ")[1].split(" ")[0])
    # About 10; fewer only when a loaded machine oversleeps, never more than the bucket allows.
    assert 5 <= sent <= 12
    assert len(receive(listener, sent)) == sent


_LOGIN = [
    PPPProtocol.LCP,
    PPPProtocol.LCP,
    PPPProtocol.PAP,
    PPPProtocol.PAP,
    PPPProtocol.IPCP,
    PPPProtocol.IPCP,
    PPPProtocol.IPV6CP,
]


def test_the_default_is_a_ppp_login_then_browsing_in_ppp_each_packet_once():
    packets = [decode_datagram(each) for each in build_payloads([0x300], None)]
    assert [packet.ppp_protocol for packet in packets[:7]] == _LOGIN
    kinds = {(packet.inner, packet.ppp_protocol, packet.proto) for packet in packets[7:]}
    assert kinds == {
        ("ppp", 0x21, 17),
        ("ppp", 0x21, 6),
        ("ppp", 0x21, 1),
        ("ppp", 0x57, 17),
        ("ppp", 0x57, 6),
        ("ppp", 0x57, 58),
    }
    # Once each: no packet of the browsing repeats (Wireshark would see retransmissions).
    browsing = [packet.data for packet in packets[7:]]
    assert len(set(browsing)) == len(browsing)


def test_ip_framing_is_bare_ip_without_a_login():
    packets = [decode_datagram(each) for each in build_payloads([0x300], None, "ip")]
    assert {packet.inner for packet in packets} == {"ipv4", "ipv6"}
    assert {packet.ppp_protocol for packet in packets} == {None}


def test_mixed_framing_alternates_ppp_and_bare_ip_after_the_login():
    packets = [decode_datagram(each) for each in build_payloads([0x300], None, "mixed")]
    assert [packet.ppp_protocol for packet in packets[:7]] == _LOGIN
    kinds = {(packet.inner, packet.ppp_protocol, packet.proto) for packet in packets[7:]}
    assert kinds == {
        (inner, ppp, proto)
        for inner, ppp in (("ipv4", None), ("ipv6", None), ("ppp", 0x21), ("ppp", 0x57))
        for proto in ((17, 6, 1) if inner == "ipv4" or ppp == 0x21 else (17, 6, 58))
    }
    assert [packet.inner == "ppp" for packet in packets[7:11]] == [True, False, True, False]


def test_framing_is_refused_with_contrail(listener):
    port = listener.getsockname()[1]
    with pytest.raises(CommandError, match="--framing is for --format jmirror"):
        simulate("--to", f"127.0.0.1:{port}", "--format", "contrail", "--framing", "ip")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "localhost"], "'localhost' is not HOST:PORT"),
        (["--to", "127.0.0.1:http"], "'http' is not a port number"),
        (["--to", "127.0.0.1:0"], "port 0 is out of range (1-65535)"),
        (["--to", "127.0.0.1:65536"], "port 65536 is out of range (1-65535)"),
        (["--to", "::1:5000"], "write an IPv6 address as [ADDRESS]:PORT"),
        (["--to", "127.0.0.1:5000", "--rate", "-1"], "rate -1 must be 0 (unpaced) or more"),
        (["--to", "127.0.0.1:5000", "--count", "0"], "count 0 must be at least 1"),
        (["--to", "127.0.0.1:5000", "--duration", "0"], "duration 0 must be more than 0 seconds"),
        (
            ["--to", "127.0.0.1:5000", "--mid", str(2**30)],
            f"mid {2**30} is out of range: it is the 30-bit intercept id (0 to 0x3fffffff)",
        ),
        (["--to", "127.0.0.1:5000", "--mid", "-1"], "mid -1 is out of range"),
        (["--to", "127.0.0.1:5000", "--sid", "0x100000000"], "sid 0x100000000 is out of range"),
    ],
)
def test_it_refuses_bad_arguments_with_a_clear_error(args, message):
    with pytest.raises(CommandError) as error:
        call_command("simulate", *args)
    assert message in str(error.value)


def test_it_needs_a_destination():
    with pytest.raises(CommandError, match="--to"):
        call_command("simulate")


def test_it_sends_to_an_ipv6_address_in_brackets():
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with sock:
        sock.settimeout(5)
        port = sock.getsockname()[1]
        simulate("--to", f"[::1]:{port}", "--count", "3", "--rate", "0")
        assert len([decode_datagram(each) for each in receive(sock, 3)]) == 3


def contrail_headers(payloads: list[bytes]) -> list[JuniperVN]:
    return [JuniperVN(payload) for payload in payloads]


def test_it_sends_contrail_flow_mirroring_with_the_four_tlvs(listener):
    port = listener.getsockname()[1]
    output = simulate(
        "--to", f"127.0.0.1:{port}", "--format", "contrail", "--count", "40", "--rate", "0"
    )

    headers = contrail_headers(receive(listener, 40))

    assert {header.capture_host for header in headers} == {"127.0.0.1"}
    assert {header.actions for header in headers} == {("pass", "mirror")}
    assert {header.traffic_direction for header in headers} == {"ingress", "egress"}
    assert {(header.traffic_direction, header.source_vn, header.dest_vn) for header in headers} == {
        ("ingress", SOURCE_VN, DEST_VN),
        ("egress", DEST_VN, SOURCE_VN),
    }
    assert {type(header.payload) for header in headers} == {Ether}
    assert headers[0][ARP].psrc == SUBSCRIBER
    assert {IP in header for header in headers} == {True, False}
    assert any(IPv6 in header for header in headers)
    assert "contrail flow mirroring, capture host 127.0.0.1" in output
    assert "sent 40 datagrams" in output


def test_ingress_frames_are_the_workloads_own():
    for header in contrail_headers(
        build_contrail_payloads("flow", capture_host="10.0.0.1", vn="a", peer_vn="b")
    ):
        ingress = header.traffic_direction == "ingress"
        if ARP in header:
            assert (header[ARP].psrc == SUBSCRIBER) == ingress
        else:
            assert (header[Ether].src == WORKLOAD_MAC) == ingress


def test_interface_mirroring_names_only_the_workloads_vn_by_direction():
    headers = contrail_headers(
        build_contrail_payloads("interface", capture_host="10.0.0.1", vn="k8s:web", peer_vn="x")
    )

    shapes = {
        (header.capture_host, header.flags, header.source_vn, header.dest_vn, header[Ether].src)
        for header in headers
    }

    assert shapes == {
        (None, None, "k8s:web", None, WORKLOAD_MAC),
        (None, None, None, "k8s:web", VROUTER_GATEWAY_MAC),
    }


def test_it_tags_the_mirrored_frames_with_the_asked_vlans(listener):
    port = listener.getsockname()[1]
    output = simulate(
        *("--to", f"127.0.0.1:{port}", "--format", "contrail", "--mirroring", "interface"),
        *("--vn", "k8s:web", "--vlan", "100", "--vlan", "200", "--count", "5", "--rate", "0"),
    )

    headers = contrail_headers(receive(listener, 5))

    assert {(header[Dot1AD].vlan, header[Dot1Q].vlan) for header in headers} == {(100, 200)}
    assert "contrail interface mirroring, VN k8s:web, VLAN 100/200" in output


def test_it_names_the_capture_host_and_vns_it_is_given(listener):
    port = listener.getsockname()[1]
    simulate(
        *("--to", f"127.0.0.1:{port}", "--format", "contrail", "--capture-host", "10.9.8.7"),
        *("--vn", "v" * 255, "--peer-vn", "p", "--vlan", "5", "--count", "3", "--rate", "0"),
    )

    headers = contrail_headers(receive(listener, 3))

    assert {header.capture_host for header in headers} == {"10.9.8.7"}
    assert {header.source_vn for header in headers} >= {"v" * 255}
    assert {header[Dot1Q].vlan for header in headers} == {5}


def test_it_sends_contrail_over_ipv6():
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with sock:
        sock.settimeout(5)
        port = sock.getsockname()[1]
        simulate("--to", f"[::1]:{port}", "--format", "contrail", "--count", "3", "--rate", "0")
        headers = contrail_headers(receive(sock, 3))
    assert {header.capture_host for header in headers} == {"127.0.0.1"}
    assert all(Ether in header for header in headers)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "vxlan"], "invalid choice: 'vxlan'"),
        (["--format", "contrail", "--mid", "5"], "--mid is for --format jmirror (the default)"),
        (["--format", "contrail", "--sid", "0"], "--sid is for --format jmirror (the default)"),
        (["--vn", "web"], "--vn is for --format contrail"),
        (["--mirroring", "flow"], "--mirroring is for --format contrail"),
        (["--vlan", "5"], "--vlan is for --format contrail"),
        (["--capture-host", "10.0.0.1"], "--capture-host is for --format contrail"),
        (
            ["--format", "contrail", "--mirroring", "interface", "--peer-vn", "db"],
            "--peer-vn is for flow mirroring: interface mirroring sends only the workload's VN",
        ),
        (
            ["--format", "contrail", "--mirroring", "interface", "--capture-host", "10.0.0.1"],
            "--capture-host is for flow mirroring",
        ),
        (["--format", "contrail", "--mirroring", "port"], "invalid choice: 'port'"),
        (["--format", "contrail", "--vlan", "4096"], "VLAN id 4096 is out of range (0-4095)"),
        (["--format", "contrail", "--vlan", "-1"], "VLAN id -1 is out of range (0-4095)"),
        (["--format", "contrail", "--vlan", "ten"], "'ten' is not a number"),
        (
            ["--format", "contrail", *("--vlan", "1") * 3],
            "at most 2 --vlan tags (a service and a customer tag), not 3",
        ),
        (["--format", "contrail", "--vn", "v" * 256], "must be 1 to 255 ASCII characters"),
        (["--format", "contrail", "--vn", ""], "must be 1 to 255 ASCII characters"),
        (["--format", "contrail", "--peer-vn", "réseau"], "must be 1 to 255 ASCII characters"),
        (["--format", "contrail", "--vn", "a\x00b"], "without NUL"),
        (
            ["--format", "contrail", "--capture-host", "::1"],
            "'::1' is not an IPv4 address (the capture host is the vRouter's router id)",
        ),
    ],
)
def test_it_refuses_bad_contrail_arguments_with_a_clear_error(args, message):
    with pytest.raises(CommandError) as error:
        call_command("simulate", "--to", "127.0.0.1:5000", *args)
    assert message in str(error.value)


def _decoded(path) -> list[dict]:
    out = StringIO()
    call_command("decode", str(path), stdout=out, stderr=StringIO())
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_write_makes_a_capture_that_decode_reads_whole(tmp_path):
    """README's decode example runs on a fresh clone with a capture simulate writes."""
    path = tmp_path / "demo.pcap"
    output = simulate("--write", str(path), "--rate", "100")
    payloads = build_payloads([0x300], None)
    assert f"wrote {len(payloads)} datagrams to {path}" in output
    records = _decoded(path)
    assert [(record["mid"], record["sid"]) for record in records] == [(0x300, 0x90)] * len(payloads)
    assert [record["length"] for record in records] == [len(each) - 8 for each in payloads]
    times = [float(record["time"]) for record in records]
    assert {round(later - earlier, 4) for earlier, later in itertools.pairwise(times)} == {0.01}


def test_write_of_contrail_frames_decodes_as_contrail(tmp_path):
    path = tmp_path / "cn2.pcap"
    simulate("--write", str(path), "--format", "contrail", "--count", "7")
    records = _decoded(path)
    assert len(records) == 7
    assert {(record["format"], record["port"]) for record in records} == {("contrail", 8099)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--write", "/nonexistent-dir/x.pcap"], "cannot write /nonexistent-dir/x.pcap"),
        (["--write", "x.pcap", "--duration", "1"], "--duration is for sending"),
    ],
)
def test_write_refuses_what_it_cannot_do(args, message):
    with pytest.raises(CommandError, match=message):
        simulate(*args)


def test_to_and_write_are_one_or_the_other(tmp_path):
    with pytest.raises(CommandError, match="not allowed with argument"):
        simulate("--to", "127.0.0.1:5000", "--write", str(tmp_path / "x.pcap"))
    with pytest.raises(CommandError, match="one of the arguments --to --write is required"):
        simulate("--count", "1")


def test_the_browsing_names_a_tls_site_in_a_client_hello_as_a_browser_does():
    from scapy.layers.inet import TCP

    from receiver.management.commands.simulate import TLS_SERVER_NAME, browsing

    hellos = [
        bytes(packet[TCP].payload)
        for packet in browsing()
        if TCP in packet and packet[TCP].dport == 443 and bytes(packet[TCP].payload)
    ]
    assert len(hellos) == 1
    hello = hellos[0]
    assert hello[:3] == b"\x16\x03\x01"  # a handshake record
    assert hello[5] == 1  # ClientHello
    assert int.from_bytes(hello[3:5], "big") == len(hello) - 5
    assert hello.endswith(TLS_SERVER_NAME.encode())  # the SNI extension, last
