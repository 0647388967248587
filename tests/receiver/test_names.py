"""Names read from one packet: DNS, TLS server names, HTTP hosts; every hostile packet
gives nothing or a bounded, escaped name, never an exception."""

from __future__ import annotations

import random
import struct

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from receiver import traffic
from receiver.names import NAME_LIMIT, SeenName, dns_names, http_host, names_in, tls_server_name

RAW, PPP, ETHERNET = 101, 50, 1
CLIENT_HELLO = bytes.fromhex(
    "16030300620100005e030300000000f2c318119ed6416c8576f5f58dde2b4de37b763a0fc9288baf1d0756"
    "00001ac02bc023c02fc027009e0067009c003cc009c0130033002f000a0100001b00000017001500001273"
    "65637572652e6578616d706c652e6e6574"
)


def udp_dns(message: bytes) -> bytes:
    return bytes(IP(src="203.0.113.7", dst="198.51.100.53") / UDP(sport=5353, dport=53) / message)


def dns_header(questions: int = 1, answers: int = 0, response: bool = False) -> bytes:
    return struct.pack(">HHHHHH", 0x1234, 0x8180 if response else 0x0100, questions, answers, 0, 0)


def test_a_query_and_its_answers_give_the_names_with_their_addresses() -> None:
    response = IPv6(src="2001:db8::53", dst="2001:db8::7") / UDP(sport=53, dport=5000)
    response /= DNS(
        qr=1,
        qd=DNSQR(qname="Mail.Example.COM.", qtype="AAAA"),
        an=[
            DNSRR(rrname="mail.example.com", type="AAAA", rdata="2001:db8::25"),
            DNSRR(rrname="mail.example.com", type="CNAME", rdata="relay.example.net"),
            DNSRR(rrname="mail.example.com", type="A", rdata="192.0.2.25"),
        ],
    )
    assert names_in(RAW, bytes(response)) == [
        SeenName("dns-answer", "mail.example.com", "2001:db8::25"),
        SeenName("dns-answer", "mail.example.com", "192.0.2.25"),
    ]
    assert names_in(RAW, bytes(traffic.dns_query())) == [
        SeenName("dns-query", "www.example.com", "198.51.100.53")
    ]


def test_names_are_read_inside_ppp_and_ethernet_framing() -> None:
    query = bytes(traffic.dns_query())
    expected = names_in(RAW, query)
    assert names_in(PPP, b"\xff\x03\x00\x21" + query) == expected
    frame = bytes(6) + bytes(6) + b"\x81\x00\x00\x64" + b"\x08\x00" + query
    assert names_in(ETHERNET, frame) == expected
    assert names_in(PPP, b"\xff\x03\xc0\x21" + query) == []  # LCP, not IP


def test_a_tls_client_hello_gives_its_server_name_and_an_http_request_its_host() -> None:
    hello = IP(dst="192.0.2.44") / TCP(dport=443, flags="PA") / Raw(CLIENT_HELLO)
    assert names_in(RAW, bytes(hello)) == [SeenName("tls-sni", "secure.example.net", "192.0.2.44")]
    request = b"POST /x HTTP/1.1\r\nUser-Agent: a\r\nhost:  Shop.Example:8080 \r\n\r\nHost: no"
    packet = IP(dst="192.0.2.80") / TCP(dport=8080, flags="PA") / Raw(request)
    assert names_in(RAW, bytes(packet)) == [
        SeenName("http-host", "shop.example:8080", "192.0.2.80")
    ]


def test_a_compression_loop_gives_no_name_and_no_error() -> None:
    # The question's name points at itself; then one pointing forward.
    itself = dns_header() + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    assert names_in(RAW, udp_dns(itself)) == []
    forward = dns_header() + b"\xc0\x0e" + b"\x03abc\x00" + b"\x00\x01\x00\x01"
    assert names_in(RAW, udp_dns(forward)) == []
    # A response whose answer names point at each other, backwards only in appearance.
    answers = dns_header(1, 2, True) + b"\x01a\x00\x00\x01\x00\x01"
    answers += b"\xc0\x2a\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04\xc0\x00\x02\x01" * 2
    assert names_in(RAW, udp_dns(answers)) == []


def test_an_overlong_name_is_refused_and_a_long_escaped_one_is_cut_to_the_limit() -> None:
    labels = b"".join(b"\x3f" + b"a" * 63 for _ in range(5))  # 320 bytes: over 255
    assert dns_names(dns_header() + labels + b"\x00\x00\x01\x00\x01", "a", "b") == []
    hostile = b"".join(b"\x3f" + b"\x00\n<" * 21 for _ in range(3)) + b"\x00"
    [seen] = names_in(RAW, udp_dns(dns_header() + hostile + b"\x00\x01\x00\x01"))
    assert len(seen.name) <= NAME_LIMIT
    assert seen.name.isascii()
    assert seen.name.isprintable()
    assert seen.name.startswith("\\x00\\x0a<")


def test_counts_larger_than_the_message_stop_at_its_end() -> None:
    message = dns_header(65535, 65535, True) + b"\x01a\x00\x00\x01\x00\x01"
    assert dns_names(message, "a", "b") == []


def test_junk_after_a_tls_record_header_gives_no_server_name() -> None:
    assert tls_server_name(b"\x16\x03\x01\xff\xff\x01\x00") == ""
    assert tls_server_name(CLIENT_HELLO[:60]) == ""
    cut_in_name = CLIENT_HELLO[:-5]
    assert tls_server_name(cut_in_name) == ""
    # A name length that runs past the record.
    broken = bytearray(CLIENT_HELLO)
    broken[-20:-18] = b"\x00\xff"
    assert tls_server_name(bytes(broken)) == ""
    assert http_host(b"GET / HTTP/1.1\r\nHost\r\n\r\n") == ""
    assert len(http_host(b"GET / HTTP/1.1\r\nHost: " + b"\xff" * 3000 + b"\r\n")) == NAME_LIMIT


def test_random_packets_never_raise() -> None:
    chooser = random.Random(19)
    seeds = [
        udp_dns(dns_header(2, 3, True)),
        bytes(IP(dst="192.0.2.44") / TCP(dport=443, flags="PA") / Raw(CLIENT_HELLO)),
        bytes(traffic.dns_response()),
    ]
    for _ in range(3000):
        data = bytearray(chooser.choice(seeds))
        for _ in range(chooser.randint(1, 8)):
            data[chooser.randrange(len(data))] = chooser.randrange(256)
        data = data[: chooser.randint(0, len(data))]
        for linktype in (RAW, PPP, ETHERNET, 0):
            for seen in names_in(linktype, bytes(data)):
                assert len(seen.name) <= NAME_LIMIT
                assert seen.name.isascii()
                assert seen.name.isprintable()


def test_an_address_reached_through_a_cname_is_an_answer_for_the_name_asked_too() -> None:
    response = IP(src="198.51.100.53", dst="203.0.113.7") / UDP(sport=53, dport=5000)
    response /= DNS(
        qr=1,
        qd=DNSQR(qname="www.shop.example", qtype="A"),
        an=[
            DNSRR(rrname="www.shop.example", type="CNAME", rdata="edge.cdn.example"),
            DNSRR(rrname="edge.cdn.example", type="A", rdata="192.0.2.99"),
        ],
    )
    assert names_in(RAW, bytes(response)) == [
        SeenName("dns-answer", "edge.cdn.example", "192.0.2.99"),
        SeenName("dns-answer", "www.shop.example", "192.0.2.99"),
    ]
