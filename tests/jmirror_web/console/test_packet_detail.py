"""Packet detail: one stored packet decoded (Scapy) and dumped, for users with the content
right on its case only, numbered across the session's files, every view audited."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from jmirror_web.audit.models import AuditEvent
from jmirror_web.console import packets, stored_packets
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import CaptureFile, Session
from receiver import traffic
from receiver.store import LINKTYPE_PPP_HDLC, LINKTYPE_RAW, PcapStore, SessionKey
from tests.factories import (
    assign,
    make_capture_file,
    make_case,
    make_intercept,
    make_router,
    make_session,
    make_user,
)

pytestmark = pytest.mark.django_db

T0 = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z
SECOND = 1_000_000_000


def moment(time_ns: int) -> datetime:
    return datetime.fromtimestamp(time_ns // SECOND, UTC)


@pytest.fixture
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.SESSIONS_DIR = tmp_path / "sessions"
    return tmp_path


@pytest.fixture
def session(data_dir: Path) -> Session:
    """A session whose three packets (IPv4/UDP/DNS, IPv6/TCP, PPP LCP) are in two pcap
    files, written by the receiver's own store: the link type changes after the second
    packet, so the store rotates. The rows are made newest file first, so that only the
    ordering by first packet puts them right."""
    case = make_case(reference="PKT-CASE")
    router = make_router(name="pkt-router")
    intercept = make_intercept(case, liid="PKT-LIID", intercept_id=0x300, routers=[router])
    session = make_session(intercept, router=router, mid=0x300, sid=0x90)
    store = PcapStore(data_dir / "sessions")
    key = SessionKey(intercept.liid, router.address, 0x300, 0x90)
    store.write(key, T0, bytes(traffic.ipv4_udp().packet), LINKTYPE_RAW)
    store.write(key, T0 + SECOND, bytes(traffic.ipv6_tcp_flow_label().packet), LINKTYPE_RAW)
    store.write(key, T0 + 2 * SECOND, bytes(traffic.ppp_lcp().packet), LINKTYPE_PPP_HDLC)
    closed = store.close_all()
    assert [each.packets for each in closed] == [2, 1]
    for each in reversed(closed):
        CaptureFile.objects.create(
            session=session,
            path=str(Path("sessions") / each.path),
            first_packet=moment(each.first_ns),
            last_packet=moment(each.last_ns),
            packets=each.packets,
            bytes=each.bytes,
            sha256=each.sha256,
            closed=True,
        )
    return session


@pytest.fixture
def analyst(client: Client, session: Session) -> User:
    user = make_user(Role.ANALYST)
    assert session.intercept is not None
    assign(user, session.intercept.case)
    client.force_login(user)
    return user


def url(session: Session, number: int) -> str:
    return reverse("console:packet", args=[session.pk, number])


def page(client: Client, session: Session, number: int) -> str:
    response = client.get(url(session, number))
    assert response.status_code == 200
    return str(response.content.decode())


def layer_names(text: str) -> list[str]:
    return re.findall(r'<details class="layer" open><summary>([^<]*)</summary>', text)


def fields(text: str) -> dict[str, str]:
    found = re.findall(
        r'<span class="field">([^<]*)</span> <span class="value">([^<]*)</span>', text
    )
    return dict(found)


# What it shows -------------------------------------------------------------------------


def test_ipv4_udp_packet_tree_hexdump_time_and_file(
    client: Client, session: Session, analyst: User
) -> None:
    text = page(client, session, 1)
    assert layer_names(text) == ["IP", "UDP", "DNS", "DNS Question Record"]
    shown = fields(text)
    assert shown["src"] == "203.0.113.7"
    assert shown["dst"] == "198.51.100.80"
    assert shown["proto"] == "udp (17)"
    assert shown["dport"] == "domain (53)"
    assert "www.example.com" in shown["qname"]
    data = bytes(traffic.ipv4_udp().packet)
    first_line = " ".join(f"{b:02x}" for b in data[:8]) + "  "
    first_line += " ".join(f"{b:02x}" for b in data[8:16])
    assert f"00000000  {first_line}" in text
    assert "2023-11-14 22:13:20.123456789 UTC" in text
    assert '<time datetime="2023-11-14T22:13:20.123Z">' in text
    assert f"{len(data)} bytes" in text
    assert "raw IP (101)" in text
    first_file = session.files.order_by("first_packet").first()
    assert first_file is not None
    assert first_file.path in text
    # Layers fold without a script.
    assert "<script>" not in text


def test_ipv6_tcp_packet(client: Client, session: Session, analyst: User) -> None:
    text = page(client, session, 2)
    assert layer_names(text) == ["IPv6", "TCP"]
    shown = fields(text)
    assert shown["fl"] == "631745"
    assert shown["src"] == "2001:db8:7::7"
    assert shown["nh"] == "TCP (6)"
    assert shown["flags"] == "S (2)"
    assert "00000000  6" in text  # version nibble 6


def test_ppp_lcp_packet_in_the_second_file(client: Client, session: Session, analyst: User) -> None:
    text = page(client, session, 3)
    names = layer_names(text)
    assert names[:3] == ["HDLC", "PPP Link Layer", "PPP Link Control Protocol"]
    assert names.count("PPP LCP Option") == 2  # the options, nested in their field
    shown = fields(text)
    assert shown["proto"] == "Link Control Protocol (0xc021)"  # as Wireshark writes it
    assert shown["code"] == "Configure-Request (1)"
    assert shown["max_recv_unit"] == "1492"
    assert "00000000  ff 03 c0 21" in text
    assert "PPP in HDLC-like framing (50)" in text
    last_file = session.files.order_by("first_packet").last()
    assert last_file is not None
    assert last_file.path in text
    assert "packet 1 of 1" in text


def test_previous_and_next_links(client: Client, session: Session, analyst: User) -> None:
    first = page(client, session, 1)
    assert f'href="{url(session, 2)}"' in first
    assert "first packet" in first
    middle = page(client, session, 2)
    assert f'href="{url(session, 1)}"' in middle
    assert f'href="{url(session, 3)}"' in middle
    last = page(client, session, 3)
    assert "last packet" in last
    assert f'href="{url(session, 4)}"' not in last


@pytest.mark.parametrize("number", [0, 4, 1000])
def test_a_number_out_of_range_is_404(
    client: Client, session: Session, analyst: User, number: int
) -> None:
    assert client.get(url(session, number)).status_code == 404


def test_the_view_is_audited(client: Client, session: Session, analyst: User) -> None:
    page(client, session, 3)
    event = AuditEvent.objects.get(action="packet viewed")
    assert event.actor == analyst
    assert event.object_type == "intercepts.Session"
    assert event.object_id == str(session.pk)
    last_file = session.files.order_by("first_packet").last()
    assert last_file is not None
    assert event.details == {"number": 3, "file": last_file.pk, "frame": 1, "outcome": "shown"}


def test_an_assigned_li_administrator_sees_it(client: Client, session: Session) -> None:
    admin = make_user(Role.LI_ADMIN)
    assert session.intercept is not None
    assign(admin, session.intercept.case)
    client.force_login(admin)
    assert "UDP" in layer_names(page(client, session, 1))


# When the file cannot give the packet ----------------------------------------------------


def test_a_missing_file_is_said_clearly(
    client: Client, session: Session, analyst: User, data_dir: Path
) -> None:
    first = session.files.order_by("first_packet").first()
    assert first is not None
    (data_dir / first.path).unlink()
    response = client.get(url(session, 2))
    assert response.status_code == 200
    text = response.content.decode()
    assert "The capture file holding this packet is missing" in text
    assert first.path in text
    event = AuditEvent.objects.get(action="packet viewed")
    assert event.details["outcome"] == "unavailable"
    # The other file still reads.
    assert "HDLC" in layer_names(page(client, session, 3))


def test_a_damaged_or_short_file_is_said_clearly(
    client: Client, session: Session, analyst: User, data_dir: Path
) -> None:
    first, second = session.files.order_by("first_packet")
    (data_dir / first.path).write_bytes(b"not a capture at all")
    assert "The capture file is damaged" in page(client, session, 1)
    data = (data_dir / second.path).read_bytes()
    (data_dir / second.path).write_bytes(data[:24])  # the header, no record
    # Cut after this process indexed it: where the index says the packet is, it is not.
    assert "The capture file ends inside this packet" in page(client, session, 3)
    # Indexed afresh (another process, a restart): the file is shorter than its row.
    stored_packets.forget_indexes()
    assert "holds 0 packets, fewer than its record says" in page(client, session, 3)


def test_a_file_still_being_written_is_read_from_its_part_file(
    client: Client, analyst: User, session: Session, data_dir: Path
) -> None:
    assert session.intercept is not None
    live = make_session(session.intercept, router=session.router, sid=0x91)
    store = PcapStore(data_dir / "sessions")
    key = SessionKey("PKT-LIID", session.router.address, 0x300, 0x91)
    store.write(key, T0, bytes(traffic.ipv4_udp().packet), LINKTYPE_RAW)
    store.flush()
    (open_file,) = store.open_files()
    make_capture_file(
        live, path=str(Path("sessions") / open_file.path), packets=1, closed=False, sha256=""
    )
    text = page(client, live, 1)
    assert "still being written" in text
    assert "UDP" in layer_names(text)
    store.close_all()


def test_an_undecodable_packet_still_shows_its_bytes(
    client: Client, session: Session, analyst: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(linktype: int, data: bytes) -> packets.Decoded:
        raise ValueError("scapy fell over")

    monkeypatch.setattr(packets, "decode", fails)
    text = page(client, session, 1)
    assert "Could not decode this packet (ValueError: scapy fell over)" in text
    assert "00000000  45 00" in text


def test_a_huge_packet_is_cut(client: Client, analyst: User, session: Session, data_dir: Path):
    assert session.intercept is not None
    big = make_session(session.intercept, router=session.router, sid=0x92)
    store = PcapStore(data_dir / "sessions")
    key = SessionKey("PKT-LIID", session.router.address, 0x300, 0x92)
    data = bytes(traffic.ipv4_udp().packet) + b"\xab" * 100_000
    store.write(key, T0, data, LINKTYPE_RAW)
    (closed,) = store.close_all()
    make_capture_file(big, path=str(Path("sessions") / closed.path), packets=1)
    text = page(client, big, 1)
    assert f"{len(data):,} bytes" in text
    assert "shown cut to the first 65,536 bytes" in text
    assert "0000fff0  ab ab" in text
    assert "00010000  " not in text


def test_hexdump_lines() -> None:
    lines = packets.hexdump(bytes(range(0x41, 0x41 + 20)) + b"\x00<")
    assert lines == [
        "00000000  41 42 43 44 45 46 47 48  49 4a 4b 4c 4d 4e 4f 50  ABCDEFGHIJKLMNOP",
        "00000010  51 52 53 54 00 3c                                 QRST.<",
    ]


def test_field_values_are_escaped(client: Client, analyst: User, session: Session, data_dir):
    """Packet content is attacker-controlled: it must never become markup."""
    assert session.intercept is not None
    hostile = make_session(session.intercept, router=session.router, sid=0x93)
    store = PcapStore(data_dir / "sessions")
    key = SessionKey("PKT-LIID", session.router.address, 0x300, 0x93)
    packet = traffic.ipv4_tcp().packet.copy()
    packet["Raw"].load = b"<script>alert(1)</script>"
    store.write(key, T0, bytes(packet), LINKTYPE_RAW)
    (closed,) = store.close_all()
    make_capture_file(hostile, path=str(Path("sessions") / closed.path), packets=1)
    text = page(client, hostile, 1)
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


# Who may see it ------------------------------------------------------------------------


def test_anonymous_users_are_sent_to_sign_in(client: Client, session: Session) -> None:
    response = client.get(url(session, 1))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console:login"))
    assert not AuditEvent.objects.filter(action__startswith="packet").exists()


def _others() -> dict[str, User]:
    other_analyst = make_user(Role.ANALYST)
    assign(other_analyst, make_case())
    return {
        "analyst of another case": other_analyst,
        "unassigned analyst": make_user(Role.ANALYST),
        "auditor": make_user(Role.AUDITOR),
        "sysadmin": make_user(Role.SYSADMIN),
        "unassigned LI administrator": make_user(Role.LI_ADMIN),
        "unassigned superuser": make_user(is_superuser=True, is_staff=True),
    }


def test_everyone_else_gets_404_and_the_refusal_is_audited(
    client: Client, session: Session
) -> None:
    for who, user in _others().items():
        client.force_login(user)
        response = client.get(url(session, 1))
        assert response.status_code == 404, who
        assert b"PKT-LIID" not in response.content, who
        assert b"sessions/" not in response.content, who
        event = AuditEvent.objects.filter(action="packet view refused").latest("id")
        assert event.actor == user, who
        assert event.object_id == str(session.pk)
        assert event.details == {
            "session": session.pk,
            "number": 1,
            "path": url(session, 1),
            "reason": "no content right",
            "where": "console:packet",
        }
    assert not AuditEvent.objects.filter(action="packet viewed").exists()


def test_an_assigned_auditor_or_sysadmin_still_gets_404(client: Client, session: Session) -> None:
    assert session.intercept is not None
    for role in (Role.AUDITOR, Role.SYSADMIN):
        user = make_user(role)
        assign(user, session.intercept.case)
        client.force_login(user)
        assert client.get(url(session, 1)).status_code == 404


def test_a_missing_session_looks_the_same_and_is_audited(client: Client, analyst: User) -> None:
    response = client.get(reverse("console:packet", args=[999999, 1]))
    assert response.status_code == 404
    event = AuditEvent.objects.get(action="packet view refused")
    assert event.actor == analyst
    assert event.details == {
        "session": 999999,
        "number": 1,
        "path": reverse("console:packet", args=[999999, 1]),
        "reason": "no content right",
        "where": "console:packet",
    }
    assert (event.object_type, event.object_id) == ("intercepts.Session", "999999")


@pytest.mark.skipif(
    not hasattr(CaptureFile, "purged_at"), reason="capture files have no purge mark yet"
)
def test_a_purged_file_is_not_served_even_if_still_on_disk(
    client: Client, session: Session, analyst: User
) -> None:
    from django.utils import timezone

    first = session.files.order_by("first_packet").first()
    assert first is not None
    CaptureFile.objects.filter(pk=first.pk).update(purged_at=timezone.now())
    text = page(client, session, 1)
    assert "was purged under the case&#x27;s retention period" in text
    assert "00000000  45" not in text
    assert "HDLC" in layer_names(page(client, session, 3))


@pytest.mark.parametrize(
    ("scapy", "shown"),
    [
        ("DNS Qry b'www.example.com.'", "DNS Qry www.example.com."),
        ("b'a\\x00b'", "b'a\\x00b'"),  # an escape: left as Scapy shows it
        ('b"it\'s"', "it's"),
        ("no bytes here", "no bytes here"),
    ],
)
def test_text_fields_read_as_text_not_python_bytes(scapy: str, shown: str) -> None:
    assert packets._unquoted(scapy) == shown
