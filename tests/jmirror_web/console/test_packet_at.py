"""Opening a stored packet by its receive time (``?at=<ns>``), as the session page's live
packet list links it: the number found is the one the packet page shows it under."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jmirror_web.audit.models import AuditEvent
from jmirror_web.console import packets, stored_packets
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import CaptureFile, Session
from receiver import traffic
from receiver.packet_index import PacketIndex
from receiver.store import (
    LINKTYPE_PPP_HDLC,
    LINKTYPE_RAW,
    FileFacts,
    PcapStore,
    SessionKey,
)
from tests.factories import assign, make_case, make_intercept, make_router, make_session, make_user

pytestmark = pytest.mark.django_db

T0 = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z
SECOND = 1_000_000_000
UDP = bytes(traffic.ipv4_udp().packet)
TCP = bytes(traffic.ipv6_tcp_flow_label().packet)
LCP = bytes(traffic.ppp_lcp().packet)
NOT_YET = "may not be on disk yet"


def row_time(time_ns: int) -> datetime:
    """A packet time as the receiver writes it into the rows: cut to the microsecond."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_ns // 1000)


@pytest.fixture
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.SESSIONS_DIR = tmp_path / "sessions"
    return tmp_path


@pytest.fixture
def session(data_dir: Path) -> Session:
    case = make_case(reference="AT-CASE")
    router = make_router(name="at-router")
    intercept = make_intercept(case, liid="AT-LIID", intercept_id=0x310, routers=[router])
    return make_session(
        intercept,
        router=router,
        mid=0x310,
        sid=0xA0,
        first_seen=row_time(T0),
        last_seen=row_time(T0 + 60 * SECOND),
    )


@pytest.fixture
def analyst(client: Client, session: Session) -> User:
    user = make_user(Role.ANALYST)
    assert session.intercept is not None
    assign(user, session.intercept.case)
    client.force_login(user)
    return user


def store_for(data_dir: Path, **options: Any) -> tuple[PcapStore, SessionKey]:
    return PcapStore(data_dir / "sessions", **options), SessionKey(
        "AT-LIID", "192.0.2.1", 0x310, 0xA0
    )


def record_files(session: Session, closed: list[FileFacts]) -> list[CaptureFile]:
    """Rows as the receiver writes them; made newest file first, so that only the
    ordering by first packet numbers them right."""
    rows = [
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
        for each in reversed(closed)
    ]
    return rows[::-1]


def at(client: Client, session: Session, value: str, **options: Any) -> Any:
    return client.get(reverse("console:packet_jump", args=[session.pk]), {"at": value}, **options)


def number_found(client: Client, session: Session, time_ns: int) -> int:
    response = at(client, session, str(time_ns))
    assert response.status_code == 302, response.get("Location")
    prefix = reverse("console:packet_jump", args=[session.pk])
    assert response["Location"].startswith(prefix)
    return int(response["Location"].removeprefix(prefix).strip("/"))


def message_for(client: Client, session: Session, value: str) -> str:
    """The session page's message after a lookup that found nothing."""
    response = at(client, session, value, follow=True)
    assert response.redirect_chain == [(reverse("console:session", args=[session.pk]), 302)]
    shown = [str(each) for each in response.context["messages"]]
    assert len(shown) == 1
    assert shown[0] in response.content.decode().replace("&#x27;", "'")
    return shown[0]


def read_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose packet index the lookup itself reads, in order (the session page
    a refusal redirects to lists stored packets: its reads are not the lookup's)."""
    opened: list[str] = []
    index_at = stored_packets.file_index
    looking = [False]

    def spy(capture: CaptureFile) -> PacketIndex:
        if looking[0]:
            opened.append(Path(capture.path).name)
        return index_at(capture)

    lookup = packets.number_received_at

    def spied_lookup(session: Session, time_ns: int) -> int | None:
        looking[0] = True
        try:
            return lookup(session, time_ns)
        finally:
            looking[0] = False

    monkeypatch.setattr(stored_packets, "file_index", spy)
    monkeypatch.setattr(packets, "number_received_at", spied_lookup)
    return opened


# Finding it ------------------------------------------------------------------------------


def test_every_packet_of_rotated_files_gets_the_number_its_page_shows_it_under(
    client: Client, session: Session, analyst: User, data_dir: Path
) -> None:
    store, key = store_for(data_dir, rotate_seconds=1.5)
    # Two packets in one microsecond, one ns apart: the rows cannot tell them apart.
    times = [T0, T0 + 1, T0 + SECOND, T0 + 2 * SECOND, T0 + 3 * SECOND, T0 + 5 * SECOND]
    for time_ns in times:
        store.write(key, time_ns, UDP, LINKTYPE_RAW)
    closed = store.close_all()
    assert [each.packets for each in closed] == [3, 2, 1]
    record_files(session, closed)
    for expected, time_ns in enumerate(times, start=1):
        number = number_found(client, session, time_ns)
        assert number == expected
        page = client.get(reverse("console:packet", args=[session.pk, number]))
        assert page.status_code == 200
        assert f"({time_ns} ns)" in page.content.decode()


def test_side_by_side_files_and_a_time_in_both_the_first_numbered_wins(
    client: Client, session: Session, analyst: User, data_dir: Path
) -> None:
    """A PPP session's mirror mixes link types, one file each, open side by side: their
    spans overlap, and both may hold a packet of one nanosecond. Numbering is the
    export's: by time, equal times to the file with the earlier first packet, so the bare
    IP file's packet, numbered first, wins."""
    store, key = store_for(data_dir)
    store.write(key, T0, UDP, LINKTYPE_RAW)
    store.write(key, T0 + SECOND, LCP, LINKTYPE_PPP_HDLC)
    store.write(key, T0 + 2 * SECOND, TCP, LINKTYPE_RAW)
    store.write(key, T0 + 2 * SECOND, LCP, LINKTYPE_PPP_HDLC)
    raw, ppp = record_files(session, store.close_all())
    assert (raw.packets, ppp.packets) == (2, 2)

    assert number_found(client, session, T0 + 2 * SECOND) == 3
    page = client.get(reverse("console:packet", args=[session.pk, 3])).content.decode()
    assert f"({T0 + 2 * SECOND} ns)" in page
    assert "raw IP (101)" in page
    # In the bare IP file's span but only in the PPP file: between the two IP packets.
    assert number_found(client, session, T0 + SECOND) == 2
    page = client.get(reverse("console:packet", args=[session.pk, 2])).content.decode()
    assert f"({T0 + SECOND} ns)" in page
    assert "PPP in HDLC-like framing (50)" in page


def test_the_lookup_reads_each_files_index_once_and_then_from_memory(
    client: Client,
    session: Session,
    analyst: User,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, key = store_for(data_dir, rotate_seconds=1.5)
    for second in range(6):
        store.write(key, T0 + second * SECOND, UDP, LINKTYPE_RAW)
    files = record_files(session, store.close_all())
    assert len(files) == 3
    stored_packets.forget_indexes()
    opened: list[str] = []
    read = stored_packets.read_index_file

    def spy(path: Path) -> PacketIndex | None:
        opened.append(path.name)
        return read(path)

    monkeypatch.setattr(stored_packets, "read_index_file", spy)
    assert number_found(client, session, T0 + 3 * SECOND) == 4
    assert sorted(opened) == sorted(Path(each.path).name + ".idx" for each in files)
    assert number_found(client, session, T0 + 5 * SECOND) == 6
    assert len(opened) == 3  # the closed files' indexes stayed in memory


def test_a_file_still_being_written_without_a_last_packet_yet_is_read_from_its_part_file(
    client: Client, session: Session, analyst: User, data_dir: Path
) -> None:
    store, key = store_for(data_dir)
    store.write(key, T0, UDP, LINKTYPE_RAW)
    store.write(key, T0 + SECOND, TCP, LINKTYPE_RAW)
    store.flush()
    (open_file,) = store.open_files()
    CaptureFile.objects.create(
        session=session,
        path=str(Path("sessions") / open_file.path),
        first_packet=row_time(T0),
        last_packet=None,
        packets=2,
        closed=False,
    )
    assert number_found(client, session, T0 + SECOND) == 2
    page = client.get(reverse("console:packet", args=[session.pk, 2])).content.decode()
    assert f"({T0 + SECOND} ns)" in page
    assert "still being written" in page
    store.close_all()


def test_a_packet_on_disk_but_not_yet_counted_in_its_row_has_no_number_yet(
    client: Client, session: Session, analyst: User, data_dir: Path
) -> None:
    """The row of an open file is brought up to date about once a second: a packet past
    its count would get a number the packet page does not know yet (or another file's)."""
    store, key = store_for(data_dir)
    store.write(key, T0, UDP, LINKTYPE_RAW)
    store.write(key, T0 + SECOND, TCP, LINKTYPE_RAW)
    store.flush()
    (open_file,) = store.open_files()
    CaptureFile.objects.create(
        session=session,
        path=str(Path("sessions") / open_file.path),
        first_packet=row_time(T0),
        last_packet=None,
        packets=1,
        closed=False,
    )
    assert NOT_YET in message_for(client, session, str(T0 + SECOND))
    store.close_all()


def test_the_lookup_and_what_it_found_are_audited(
    client: Client, session: Session, analyst: User, data_dir: Path
) -> None:
    store, key = store_for(data_dir)
    store.write(key, T0, UDP, LINKTYPE_RAW)
    (row,) = record_files(session, store.close_all())
    client.get(reverse("console:packet", args=[session.pk, number_found(client, session, T0)]))
    looked_up = AuditEvent.objects.get(action="packet looked up")
    assert looked_up.actor == analyst
    assert looked_up.object_id == str(session.pk)
    assert looked_up.details == {"at": str(T0), "outcome": "found", "number": 1}
    viewed = AuditEvent.objects.get(action="packet viewed")
    assert viewed.details == {"number": 1, "file": row.pk, "frame": 1, "outcome": "shown"}


# Finding nothing -------------------------------------------------------------------------


@pytest.fixture
def stored(session: Session, data_dir: Path) -> list[CaptureFile]:
    store, key = store_for(data_dir, rotate_seconds=1.5)
    for second in range(4):
        store.write(key, T0 + second * SECOND, UDP, LINKTYPE_RAW)
    return record_files(session, store.close_all())


def test_a_time_with_no_packet_may_not_be_on_disk_yet(
    client: Client, session: Session, analyst: User, stored: list[CaptureFile]
) -> None:
    message = message_for(client, session, str(T0 + 1))
    assert message == (
        "No stored packet of this session was received at 2023-11-14 22:13:20.123456790 UTC "
        f"({T0 + 1} ns). It may not be on disk yet (the receiver writes packets within "
        "about a second): try again in a moment."
    )
    event = AuditEvent.objects.get(action="packet looked up")
    assert event.details == {"at": str(T0 + 1), "outcome": "not found"}


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "12ab",
        "-1",
        "+1",
        "1e18",
        " 1",
        "1.5",
        "²",
        "١٢",
        "9" * 20,
        str(2**63),
        "9" * 500,
    ],
)
def test_a_value_that_is_not_a_time_is_said_clearly(
    client: Client, session: Session, analyst: User, stored: list[CaptureFile], value: str
) -> None:
    message = message_for(client, session, value)
    assert message == (
        f"“{value[:40]}” is not a packet time: the link needs the receive time in "
        "nanoseconds since the epoch, digits only."
    )
    event = AuditEvent.objects.get(action="packet looked up")
    assert event.details == {"at": value[:40], "outcome": "not found"}


@pytest.mark.parametrize(
    ("offset", "said"),
    [
        (-SECOND, "That is before the session's first packet."),
        (-T0, "That is before the session's first packet."),  # 0: the epoch
        (61 * SECOND, "That is after the last packet this session has recorded"),
        (2**63 - 1 - T0, "That is after the last packet this session has recorded"),
    ],
)
def test_a_time_outside_the_session_is_said_clearly_and_reads_nothing(
    client: Client,
    session: Session,
    analyst: User,
    stored: list[CaptureFile],
    monkeypatch: pytest.MonkeyPatch,
    offset: int,
    said: str,
) -> None:
    opened = read_paths(monkeypatch)
    assert said in message_for(client, session, str(T0 + offset))
    assert opened == []


def test_a_purged_file_is_not_read_and_later_numbers_still_agree(
    client: Client,
    session: Session,
    analyst: User,
    stored: list[CaptureFile],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = stored
    CaptureFile.objects.filter(pk=first.pk).update(purged_at=timezone.now())
    opened = read_paths(monkeypatch)
    message = message_for(client, session, str(T0 + SECOND))
    assert "A capture file of that time was purged under the case's retention period." in message
    assert opened == []
    # The purged file's packets keep their numbers: the next file's first packet is 3.
    assert number_found(client, session, T0 + 2 * SECOND) == 3
    assert opened == [Path(second.path).name]  # the purged file is not read


def test_a_missing_file_is_said_clearly(
    client: Client, session: Session, analyst: User, stored: list[CaptureFile], data_dir: Path
) -> None:
    (data_dir / stored[0].path).unlink()
    assert "is missing or cannot be read" in message_for(client, session, str(T0))


# Who may look ----------------------------------------------------------------------------


def test_anonymous_users_are_sent_to_sign_in(client: Client, session: Session) -> None:
    response = at(client, session, str(T0))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console:login"))
    assert not AuditEvent.objects.filter(action__startswith="packet").exists()


def test_everyone_without_the_content_right_gets_404_audited_and_nothing_read(
    client: Client,
    session: Session,
    stored: list[CaptureFile],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert session.intercept is not None
    assigned_auditor = make_user(Role.AUDITOR)
    assign(assigned_auditor, session.intercept.case)
    other_analyst = make_user(Role.ANALYST)
    assign(other_analyst, make_case())
    opened = read_paths(monkeypatch)
    for who, user in {
        "unassigned analyst": make_user(Role.ANALYST),
        "analyst of another case": other_analyst,
        "auditor": make_user(Role.AUDITOR),
        "assigned auditor": assigned_auditor,
        "unassigned superuser": make_user(is_superuser=True, is_staff=True),
    }.items():
        client.force_login(user)
        before = AuditEvent.objects.filter(action="packet view refused").count()
        for value in (str(T0), "not a time"):
            response = at(client, session, value)
            assert response.status_code == 404, who
            assert b"AT-LIID" not in response.content, who
        # The second try at the same session within the window is counted, not written
        # (jmirror_web.audit.refusals).
        assert AuditEvent.objects.filter(action="packet view refused").count() == before + 1
        event = AuditEvent.objects.filter(action="packet view refused").latest("id")
        assert event.actor == user, who
        assert event.object_id == str(session.pk)
        assert event.details == {
            "session": session.pk,
            "at": str(T0),
            "path": reverse("console:packet_jump", args=[session.pk]),
            "reason": "no content right",
            "where": "console:packet_jump",
        }
    assert opened == []
    assert not AuditEvent.objects.filter(action="packet looked up").exists()


def test_a_missing_session_looks_the_same_and_is_audited(client: Client, analyst: User) -> None:
    response = client.get(reverse("console:packet_jump", args=[999999]), {"at": str(T0)})
    assert response.status_code == 404
    event = AuditEvent.objects.get(action="packet view refused")
    assert event.actor == analyst
    assert event.details == {
        "session": 999999,
        "at": str(T0),
        "path": reverse("console:packet_jump", args=[999999]),
        "reason": "no content right",
        "where": "console:packet_jump",
    }
    assert (event.object_type, event.object_id) == ("intercepts.Session", "999999")
