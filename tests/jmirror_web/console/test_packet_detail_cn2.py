"""The packet page for a Contrail session: its pcapng file's Ethernet frame decoded under the
Juniper header kept in the packet's options ("Juniper Virtual Network Information" above
Ethernet), with the direction and comment; stored bytes that do not add up never break
the page; the same rights as for jmirror."""

from __future__ import annotations

import io
import re
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from jmirror_web.audit.models import AuditEvent
from jmirror_web.console import packet_options
from jmirror_web.console.packet_options import (
    PacketOptions,
    juniper_header_problem,
    parse_options,
    read_packet_options,
)
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import CaptureFile, Intercept, Router, Session
from receiver import traffic
from receiver.contrail import CONTRAIL_MID, INGRESS_FLAG, decode_contrail, evidence_options
from receiver.pcap import (
    JUNIPER_PEN,
    OPTION_COMMENT,
    OPTION_CUSTOM_BINARY,
    OPTION_EPB_FLAGS,
    enhanced_packet_block,
    file_header,
    pcapng_block,
    pcapng_interface_description,
    pcapng_option,
    pcapng_section_header,
)
from receiver.store import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapStore, SessionKey
from tests.factories import assign, make_case, make_intercept, make_router, make_session, make_user

pytestmark = pytest.mark.django_db

T0 = 1_700_000_000_123_456_789
SECOND = 1_000_000_000
PORT = 8099
PASS_MIRROR = 0xA0


def moment(time_ns: int) -> datetime:
    # As the receiver writes a row's times: cut to the microsecond.
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_ns // 1000)


def contrail_payload(index: int, **header: Any) -> bytes:
    mirrored = traffic.ipv4_udp(sport=40000 + index)
    frame = traffic.inner_frame(mirrored, vlans=(100,) if index % 2 else ())
    fields = {
        "capture_host": "192.0.2.77",
        "flags": PASS_MIRROR | (INGRESS_FLAG if index % 2 == 0 else 0),
        "source_vn": "default-domain:k8s:red",
        "dest_vn": "default-domain:k8s:blue",
    } | header
    return traffic.contrail_datagram(frame, **fields)


def stored_block(time_ns: int, payload: bytes) -> bytes:
    """An Enhanced Packet Block as the receiver's pipeline stores a Contrail datagram."""
    packet = decode_contrail(payload)
    return enhanced_packet_block(0, time_ns, packet.frame, evidence_options(packet, payload))


@pytest.fixture
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.SESSIONS_DIR = tmp_path / "sessions"
    return tmp_path


def contrail_session(data_dir: Path, blocks: list[bytes]) -> Session:
    """A CN2 intercept's session whose pcapng file the receiver's own store wrote."""
    case = make_case(reference="CN2-PKT")
    vrouter = make_router(
        name="vr-7", address="192.0.2.77", kind=Router.Kind.CN2, format=Router.Format.CONTRAIL
    )
    intercept = make_intercept(
        case,
        liid="CN2-PKT-LIID",
        kind=Intercept.Kind.CN2,
        intercept_id=None,
        analyzer_port=PORT,
        routers=[vrouter],
    )
    session = make_session(
        intercept,
        router=vrouter,
        mid=CONTRAIL_MID,
        sid=PORT,
        first_seen=moment(T0),
        last_seen=moment(T0 + len(blocks) * SECOND),
    )
    store = PcapStore(data_dir / "sessions")
    key = SessionKey(intercept.liid, vrouter.address, CONTRAIL_MID, PORT)
    for number, block in enumerate(blocks):
        assert store.write_block(key, T0 + number * SECOND, block, LINKTYPE_ETHERNET)
    [closed] = store.close_all()
    assert closed.path.suffix == ".pcapng"
    CaptureFile.objects.create(
        session=session,
        path=str(Path("sessions") / closed.path),
        first_packet=moment(closed.first_ns),
        last_packet=moment(closed.last_ns),
        packets=closed.packets,
        bytes=closed.bytes,
        sha256=closed.sha256,
        closed=True,
    )
    return session


@pytest.fixture
def session(data_dir: Path) -> Session:
    payloads = [contrail_payload(0), contrail_payload(1)]
    return contrail_session(
        data_dir, [stored_block(T0 + n * SECOND, p) for n, p in enumerate(payloads)]
    )


@pytest.fixture
def analyst(client: Client, session: Session) -> User:
    user = make_user(Role.ANALYST)
    assert session.intercept is not None
    assign(user, session.intercept.case)
    client.force_login(user)
    return user


def page(client: Client, session: Session, number: int) -> str:
    response = client.get(reverse("console:packet", args=[session.pk, number]))
    assert response.status_code == 200
    return str(response.content.decode())


def layer_names(text: str) -> list[str]:
    return re.findall(r'<details class="layer" open><summary>([^<]*)</summary>', text)


def fields(text: str) -> list[tuple[str, str]]:
    return re.findall(
        r'<span class="field">([^<]*)</span> <span class="value">([^<]*)</span>', text
    )


# What it shows -------------------------------------------------------------------------


def test_the_juniper_header_is_decoded_above_the_ethernet_frame(
    client: Client, session: Session, analyst: User
) -> None:
    text = page(client, session, 1)
    names = layer_names(text)
    assert names[0] == "Juniper Virtual Network Information"
    assert names[names.index("Ethernet") :][:4] == ["Ethernet", "IP", "UDP", "DNS"]
    shown = fields(text)
    values = [value for _, value in shown]
    assert "192.0.2.77" in values  # the capture host TLV
    assert ("flags", "pass+mirror+ingress (0x400000a0)") in shown
    assert "default-domain:k8s:red" in values
    assert "default-domain:k8s:blue" in values
    assert ("src", "203.0.113.7") in shown
    assert ("sport", "40000") in shown
    assert "Ethernet (1)" in text
    assert "inbound (the vRouter&#x27;s ingress flag)" in text
    assert (
        "Juniper header: capture host 192.0.2.77; ingress; actions pass, mirror (flags "
        "0x400000a0); source VN default-domain:k8s:red; destination VN "
        "default-domain:k8s:blue"
    ) in text
    assert "Contrail (CN2), vRouter vr-7, analyzer port 8099" in text
    assert "data-juniper-bytes" in text
    assert "data-juniper-problem" not in text


def test_an_egress_vlan_tagged_frame(client: Client, session: Session, analyst: User) -> None:
    text = page(client, session, 2)
    names = layer_names(text)
    assert names[0] == "Juniper Virtual Network Information"
    assert "802.1Q" in names
    assert "outbound (egress at the vRouter)" in text
    assert ("sport", "40001") in fields(text)


def test_interface_mirroring_and_no_metadata(client: Client, data_dir: Path) -> None:
    interface = contrail_payload(0, capture_host=None, flags=None, dest_vn=None)
    bare = contrail_payload(1, capture_host=None, flags=None, source_vn=None, dest_vn=None)
    unknown = contrail_payload(2, extra_tlvs=[(9, b"\x01\x02")])
    session = contrail_session(
        data_dir,
        [
            stored_block(T0, interface),
            stored_block(T0 + SECOND, bare),
            stored_block(T0 + 2 * SECOND, unknown),
        ],
    )
    user = make_user(Role.ANALYST)
    assert session.intercept is not None
    assign(user, session.intercept.case)
    client.force_login(user)
    first = page(client, session, 1)
    assert layer_names(first)[0] == "Juniper Virtual Network Information"
    assert "Direction" not in first  # no flags TLV: no direction
    assert "source VN default-domain:k8s:red" in first
    second = page(client, session, 2)
    assert layer_names(second)[0] == "Juniper Virtual Network Information"
    assert "Juniper header: no metadata" in second
    third = page(client, session, 3)
    assert "TLV 9 0102" in third


def test_a_jump_by_receive_time_finds_a_contrail_packet(
    client: Client, session: Session, analyst: User
) -> None:
    response = client.get(
        reverse("console:packet_jump", args=[session.pk]), {"at": str(T0 + SECOND)}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("console:packet", args=[session.pk, 2])


def test_the_view_is_audited(client: Client, session: Session, analyst: User) -> None:
    page(client, session, 1)
    viewed = AuditEvent.objects.get(action="packet viewed")
    assert viewed.actor == analyst
    assert viewed.details["outcome"] == "shown"


@pytest.mark.parametrize("role", [Role.ANALYST, Role.LI_ADMIN, Role.AUDITOR, Role.SYSADMIN])
def test_a_user_not_assigned_to_the_case_gets_404(
    client: Client, session: Session, role: Role
) -> None:
    user = make_user(role)
    assign(user, make_case(reference="ELSEWHERE"))
    client.force_login(user)
    response = client.get(reverse("console:packet", args=[session.pk, 1]))
    assert response.status_code == 404
    assert b"Juniper" not in response.content
    jump = client.get(reverse("console:packet_jump", args=[session.pk]), {"at": str(T0)})
    assert jump.status_code == 404
    assert AuditEvent.objects.filter(action="packet view refused", actor=user).exists()


# Stored bytes that do not add up -------------------------------------------------------


def _block_with_options(frame: bytes, options: bytes) -> bytes:
    return enhanced_packet_block(0, T0, frame, options)


FRAME = bytes(traffic.inner_frame(traffic.ipv4_udp()))


@pytest.mark.parametrize(
    "header",
    [
        b"",  # no end marker at all
        b"\x01\x04\xc0\x00",  # a TLV cut short
        b"\xff\x00\x00",  # bytes after the end marker
        b"\x03\x05red",  # a VN TLV longer than what is left
        b"\x09\x00" * 1100 + b"\xff\x00",  # far longer than any vRouter's header
    ],
)
def test_a_hostile_juniper_header_is_reported_and_the_frame_decoded_alone(
    client: Client, data_dir: Path, header: bytes
) -> None:
    options = pcapng_option(OPTION_CUSTOM_BINARY, struct.pack("<I", JUNIPER_PEN) + header)
    session = contrail_session(data_dir, [_block_with_options(FRAME, options)])
    user = make_user(Role.ANALYST)
    assert session.intercept is not None
    assign(user, session.intercept.case)
    client.force_login(user)
    text = page(client, session, 1)
    assert "data-juniper-problem" in text
    assert layer_names(text)[:3] == ["Ethernet", "IP", "UDP"]


def test_damaged_options_and_foreign_custom_options(client: Client, data_dir: Path) -> None:
    foreign = pcapng_option(OPTION_CUSTOM_BINARY, struct.pack("<I", 99) + b"\xff\x00")
    comment = pcapng_option(OPTION_COMMENT, b"<script>x</script>")
    flags = pcapng_option(OPTION_EPB_FLAGS, struct.pack("<I", 3))  # no such direction
    overrun = struct.pack("<HH", OPTION_COMMENT, 400) + b"cut"
    overrun += bytes(-len(overrun) & 3)
    session = contrail_session(
        data_dir, [_block_with_options(FRAME, foreign + comment + flags + overrun)]
    )
    user = make_user(Role.ANALYST)
    assert session.intercept is not None
    assign(user, session.intercept.case)
    client.force_login(user)
    text = page(client, session, 1)
    assert layer_names(text)[:2] == ["Ethernet", "IP"]
    assert "Juniper header</th>" not in text  # another enterprise's option is not it
    assert "&lt;script&gt;x&lt;/script&gt;" in text
    assert "<script>x" not in text
    assert "Direction" not in text
    assert "damaged: only those before the damage are shown" in text


# The options reader --------------------------------------------------------------------


def _pcapng(*blocks: bytes, order: str = "<") -> bytes:
    if order == "<":
        return (
            pcapng_section_header("test")
            + pcapng_interface_description(LINKTYPE_ETHERNET)
            + b"".join(blocks)
        )
    return b"".join(
        _big_endian(block)
        for block in (
            pcapng_section_header("test"),
            pcapng_interface_description(LINKTYPE_ETHERNET),
            *blocks,
        )
    )


def _big_endian(block: bytes) -> bytes:
    """A little-endian block written here, rewritten big-endian where this test reads it
    (type, lengths, byte-order magic, EPB fields and option heads; values kept)."""
    block_type, length = struct.unpack_from("<II", block)
    body = bytearray(block[8:-4])
    if block_type == 0x0A0D0D0A:
        body[0:4] = struct.pack(">I", 0x1A2B3C4D)
    elif block_type == 6:
        fields_ = struct.unpack_from("<IIIII", body)
        body[0:20] = struct.pack(">IIIII", *fields_)
        position = 20 + fields_[3] + (-fields_[3] & 3)
        while position + 4 <= len(body):
            code, size = struct.unpack_from("<HH", body, position)
            body[position : position + 4] = struct.pack(">HH", code, size)
            if code in (OPTION_CUSTOM_BINARY, OPTION_EPB_FLAGS):  # the PEN, the flags word
                word = struct.unpack_from("<I", body, position + 4)[0]
                body[position + 4 : position + 8] = struct.pack(">I", word)
            position += 4 + size + (-size & 3)
    return struct.pack(">II", block_type, length) + bytes(body) + struct.pack(">I", length)


def test_the_reader_finds_the_numbered_blocks_options_in_either_byte_order() -> None:
    payload = contrail_payload(0)
    packet = decode_contrail(payload)
    blocks = [_block_with_options(FRAME, b""), stored_block(T0, payload)]
    for order in ("<", ">"):
        data = _pcapng(*blocks, order=order)
        options = read_packet_options(io.BytesIO(data), 2, packet.frame)
        assert options is not None
        assert options.direction == "inbound"
        assert options.juniper_header == payload[: packet.header_length]
        assert options.comments[0].startswith("Juniper header: capture host 192.0.2.77")
        assert not options.damaged
        assert read_packet_options(io.BytesIO(data), 1, FRAME) == PacketOptions(None, (), None)


def test_the_reader_gives_nothing_for_what_does_not_add_up() -> None:
    block = stored_block(T0, contrail_payload(0))
    frame = decode_contrail(contrail_payload(0)).frame
    whole = _pcapng(block)
    assert read_packet_options(io.BytesIO(whole), 1, frame) is not None
    # Another packet's bytes, a packet past the end, a pcap file, a cut file.
    assert read_packet_options(io.BytesIO(whole), 1, FRAME) is None
    assert read_packet_options(io.BytesIO(whole), 2, frame) is None
    pcap = file_header(LINKTYPE_RAW) + b"\x00" * 32
    assert read_packet_options(io.BytesIO(pcap), 1, frame) is None
    assert read_packet_options(io.BytesIO(whole[:-8]), 1, frame) is None
    assert read_packet_options(io.BytesIO(b""), 1, frame) is None
    # A block length that is not a multiple of 4, or that claims more than a block holds.
    bad_length = whole[: len(whole) - len(block)] + block[:4] + struct.pack("<I", 37)
    assert read_packet_options(io.BytesIO(bad_length + block[8:]), 1, frame) is None
    huge = packet_options.MAX_BLOCK + 4
    oversized = whole[: len(whole) - len(block)] + struct.pack("<II", 6, huge) + block[8:]
    assert read_packet_options(io.BytesIO(oversized), 1, frame) is None
    # A section whose byte-order magic is neither.
    broken = bytearray(whole)
    broken[8:12] = b"\x00\x00\x00\x00"
    assert read_packet_options(io.BytesIO(bytes(broken)), 1, frame) is None
    # A Simple Packet Block counts as a packet but has no options.
    simple = pcapng_block(3, struct.pack("<I", len(FRAME)) + FRAME + bytes(-len(FRAME) & 3))
    assert read_packet_options(io.BytesIO(_pcapng(simple, block)), 1, FRAME) is None
    assert read_packet_options(io.BytesIO(_pcapng(simple, block)), 2, frame) is not None


def test_options_are_bounded() -> None:
    many = pcapng_option(OPTION_COMMENT, b"x") * (packet_options.MAX_OPTIONS + 5)
    options = parse_options("<", many)
    assert options.damaged
    assert len(options.comments) == packet_options.MAX_COMMENTS
    long = parse_options("<", pcapng_option(OPTION_COMMENT, b"y" * 5000))
    assert len(long.comments[0]) == packet_options.MAX_COMMENT_CHARS + 1
    assert not long.damaged
    assert parse_options("<", b"\x01\x00").damaged  # a cut option head


def test_juniper_header_problem() -> None:
    assert juniper_header_problem(b"\xff\x00") is None
    assert juniper_header_problem(b"\x03\x03red\x04\x04blue\xff\x00") is None
    assert juniper_header_problem(b"\xff\x01\x00") is not None
    assert juniper_header_problem(b"\x03\x03re") is not None
