"""The stored packet list (session page and GET /api/sessions/<id>/packets): one
numbering with the export and the packet page, filters on the index, rights, bad input."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from jmirror_web.audit.models import AuditEvent
from jmirror_web.console import stored_packets
from jmirror_web.console.packets import read_packet
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import CaptureFile, Session
from receiver import traffic
from receiver.packet_index import INDEX_SUFFIX
from receiver.pcap_reader import iter_frames
from receiver.store import LINKTYPE_PPP_HDLC, LINKTYPE_RAW, PcapStore, SessionKey
from tests.factories import assign, make_case, make_intercept, make_router, make_session, make_user
from tests.jmirror_web.exports.evidence import SECOND, body, moment, t0

pytestmark = pytest.mark.django_db

LCP = bytes(traffic.ppp_lcp().packet)


@pytest.fixture
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.SESSIONS_DIR = tmp_path / "sessions"
    return tmp_path


def ppp(ip_packet: bytes) -> bytes:
    return b"\xff\x03\x00\x21" + ip_packet


@pytest.fixture
def mixed(data_dir: Path) -> Session:
    """A PPP subscriber session as routers mirror it: PPP control and PPP-framed IP in one
    file, bare IP in another, rotated, their times interleaved and two of them equal."""
    case = make_case(reference="LIST-CASE")
    router = make_router(name="list-router")
    intercept = make_intercept(case, liid="LIST-LIID", routers=[router])
    start = t0()
    store = PcapStore(data_dir / "sessions", rotate_seconds=3)
    key = SessionKey(intercept.liid, router.address, intercept.intercept_id, 0x77)
    writes: list[tuple[int, bytes, int]] = [(start, LCP, LINKTYPE_PPP_HDLC)]
    for k in range(1, 9):
        dns = bytes(traffic.ipv4_udp(src="203.0.113.8", dport=53).packet)
        web = bytes(traffic.ipv4_tcp(src="203.0.113.7", dport=443).packet)
        writes.append((start + k * SECOND, web, LINKTYPE_RAW))
        writes.append((start + k * SECOND + 500, ppp(dns), LINKTYPE_PPP_HDLC))
    writes.append((start + 9 * SECOND, LCP, LINKTYPE_PPP_HDLC))
    writes.append((start + 9 * SECOND, bytes(traffic.ipv6_udp().packet), LINKTYPE_RAW))
    for time_ns, data, linktype in writes:
        assert store.write(key, time_ns, data, linktype)
    closed = store.close_all()
    assert len(closed) > 4  # rotated, both link types
    session = make_session(
        intercept,
        router=router,
        mid=intercept.intercept_id,
        sid=0x77,
        first_seen=moment(start),
        last_seen=moment(start + 9 * SECOND),
        packets=len(writes),
        stored_packets=len(writes),
    )
    for each in reversed(closed):  # newest first: only ordering may put them right
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


def analyst_of(client: Client, session: Session, role: Role = Role.ANALYST) -> User:
    user = make_user(role)
    assert session.intercept is not None
    assign(user, session.intercept.case)
    client.force_login(user)
    return user


def api(client: Client, session: Session, **query: Any) -> Any:
    return client.get(reverse("api:session_packets", args=[session.pk]), query)


def exported_frames(client: Client, session: Session) -> list[tuple[int, bytes]]:
    response = client.get(reverse("api:session_pcap", args=[session.pk]), {"format": "pcapng"})
    assert response.status_code == 200
    return [(time_ns, data) for _n, time_ns, _l, data in iter_frames(io.BytesIO(body(response)))]


def test_packet_n_is_the_same_on_the_page_the_api_the_packet_page_and_the_export(
    client: Client, mixed: Session
) -> None:
    analyst_of(client, mixed)
    frames = exported_frames(client, mixed)
    listed = api(client, mixed, page_size=50).json()
    assert listed["count"] == listed["stored"] == len(frames) == 19
    rows = listed["results"]
    assert [row["number"] for row in rows] == list(range(1, 20))
    for row, (time_ns, data) in zip(rows, frames, strict=True):
        found = stored_packets.list_packets(mixed, {"page_size": "25"}, content=True)
        assert found.page is not None
        assert row["time"] == found.page.rows[row["number"] - 1]["time"]
        assert stored_packets.parse_time(row["time"][:26] + "Z", "t") == time_ns // 1000 * 1000
        located = stored_packets.locate_packet(mixed, row["number"])
        assert located is not None
        capture, index, total = located
        assert total == 19
        assert read_packet(capture, index)[0] == time_ns
        assert read_packet(capture, index)[2] == data
    # Two packets of one nanosecond in two files: ordered as the export orders them.
    assert frames[-1][0] == frames[-2][0]
    assert {row["protocol"] for row in rows[-2:]} == {"PPP LCP", "DNS"}
    page = client.get(reverse("console:packet", args=[mixed.pk, 18])).content.decode()
    assert f"({frames[17][0]} ns)" in page
    session_page = client.get(reverse("console:session", args=[mixed.pk]), {"page_size": 25})
    text = session_page.content.decode()
    assert 'data-number="19"' in text
    assert "19 stored packets" in text
    assert f'href="{reverse("console:packet", args=[mixed.pk, 19])}"' in text


def test_filters_select_on_the_index_what_the_packets_say(client: Client, mixed: Session) -> None:
    analyst_of(client, mixed)
    every = api(client, mixed, page_size=50).json()["results"]

    def numbers(**query: Any) -> list[int]:
        answer = api(client, mixed, page_size=50, **query)
        assert answer.status_code == 200, answer.content
        return [row["number"] for row in answer.json()["results"]]

    assert numbers(port=53) == [r["number"] for r in every if 53 in (r["sport"], r["dport"])]
    assert numbers(address="203.0.113.7") == [
        r["number"] for r in every if "203.0.113.7" in (r["src"], r["dst"])
    ]
    tcp = [r["number"] for r in every if r["protocol"] in {"TCP", "HTTP"}]
    assert tcp
    assert numbers(protocol="tcp") == tcp
    assert numbers(protocol="6") == tcp
    assert numbers(protocol="link") == [r["number"] for r in every if r["protocol"] == "PPP LCP"]
    assert numbers(start=every[4]["time"], end=every[8]["time"]) == [5, 6, 7, 8]
    queries = [r["number"] for r in every if "standard query" in r["info"].casefold()]
    assert queries
    assert numbers(info="Standard QUERY") == queries  # whatever its case
    # Pages of a filter: numbers stay the session's.
    dns = [r["number"] for r in every if 53 in (r["sport"], r["dport"])]
    first = api(client, mixed, port=53, page_size=25).json()
    assert (first["count"], first["pages"]) == (len(dns), 1)
    paged = [api(client, mixed, page_size=25, page=page).json() for page in (1, 2)]
    assert [r["number"] for r in paged[0]["results"]] == list(range(1, 20))
    assert paged[1]["results"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"page": "0"}, "page"),
        ({"page": "x"}, "page"),
        ({"page_size": "7"}, "page_size"),
        ({"port": "70000"}, "port"),
        ({"port": "-1"}, "port"),
        ({"address": "10.0.0.300"}, "address"),
        ({"protocol": "quic"}, "protocol"),
        ({"start": "yesterday"}, "start"),
        ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start"),
        ({"info": "x" * 101}, "info"),
    ],
)
def test_bad_parameters_are_400_naming_them_and_the_page_says_so(
    client: Client, mixed: Session, query: dict[str, str], field: str
) -> None:
    analyst_of(client, mixed)
    answer = api(client, mixed, **query)
    assert answer.status_code == 400
    assert field in answer.json()
    page = client.get(reverse("console:session", args=[mixed.pk]), query)
    assert page.status_code == 200
    text = page.content.decode()
    assert f'data-field-name="{field}"' in text
    # The form shows what was typed, to be corrected, cut to what a filter holds.
    for name, typed in query.items():
        if name in stored_packets.FILTERS:
            assert f'name="{name}" value="{typed[: stored_packets.INFO_TEXT_LIMIT]}"' in text


def test_a_page_past_the_end_is_empty_not_an_error(client: Client, mixed: Session) -> None:
    analyst_of(client, mixed)
    answer = api(client, mixed, page=99).json()
    assert answer["results"] == []
    assert answer["count"] == 19


def test_metadata_holders_list_without_info_and_content_listings_are_audited(
    client: Client, mixed: Session
) -> None:
    client.force_login(make_user(Role.LI_ADMIN))  # every case's metadata, no content
    rows = api(client, mixed).json()["results"]
    assert rows
    assert all(row["info"] is None for row in rows)
    assert api(client, mixed, info="Echo").status_code == 400
    page = client.get(reverse("console:session", args=[mixed.pk])).content.decode()
    assert 'data-number="1"' in page
    assert "Echo Request" not in page
    assert not AuditEvent.objects.filter(action=stored_packets.LISTED).exists()
    analyst_of(client, mixed)
    api(client, mixed, port="53")
    event = AuditEvent.objects.get(action=stored_packets.LISTED)
    assert event.details["filter"] == {"port": "53"}
    dns = [row["number"] for row in rows if 53 in (row["sport"], row["dport"])]
    assert event.details["numbers"] == [dns[0], dns[-1]]


def test_users_without_the_right_get_404_audited(client: Client, mixed: Session) -> None:
    assigned_auditor = make_user(Role.AUDITOR)
    assert mixed.intercept is not None
    assign(assigned_auditor, mixed.intercept.case)
    for user in (make_user(Role.ANALYST), assigned_auditor):
        client.force_login(user)
        before = AuditEvent.objects.filter(action="access.refused").count()
        answer = api(client, mixed)
        assert answer.status_code == 404
        assert b"LIST-LIID" not in answer.content
        assert AuditEvent.objects.filter(action="access.refused").count() == before + 1
        assert client.get(reverse("console:session", args=[mixed.pk])).status_code == 404
    client.logout()
    assert api(client, mixed).status_code in (401, 403)


def test_a_missing_file_keeps_the_others_and_their_numbers(
    client: Client, mixed: Session, data_dir: Path
) -> None:
    analyst_of(client, mixed)
    before = api(client, mixed, page_size=50).json()["results"]
    gone = CaptureFile.objects.filter(session=mixed).order_by("first_packet").first()
    assert gone is not None
    with (data_dir / gone.path).open("rb") as stream:
        gone_times = [time_ns for _n, time_ns, _l, _d in iter_frames(stream)]
    (data_dir / gone.path).unlink()
    stored_packets.forget_indexes()
    after = api(client, mixed, page_size=50).json()["results"]
    assert len(after) == len(before)
    lost = [row for row in after if row["unavailable"]]
    assert len(lost) == len(gone_times)
    assert all("missing" in row["info"] for row in lost)
    # The other files' packets, all there, in the same order (a missing file's packets
    # keep their count of numbers, placed at its first packet's time).
    shown = {stored_packets.parse_time(row["time"][:26] + "Z", "t") for row in before}
    assert len(shown) > len({t // 1000 * 1000 for t in gone_times})
    kept = [row["info"] for row in after if not row["unavailable"]]
    gone_shown = {t // 1000 * 1000 for t in gone_times}
    assert kept == [
        row["info"]
        for row in before
        if stored_packets.parse_time(row["time"][:26] + "Z", "t") not in gone_shown
    ]
    filtered = api(client, mixed, port=53).json()
    assert filtered["unsearched"] == len(lost)


def test_a_missing_or_foreign_index_is_rebuilt_from_the_file_and_kept(
    client: Client, mixed: Session, data_dir: Path
) -> None:
    analyst_of(client, mixed)
    before = api(client, mixed, page_size=50).json()["results"]
    indexes = sorted((data_dir / "sessions").glob(f"*/*{INDEX_SUFFIX}"))
    assert len(indexes) == CaptureFile.objects.filter(session=mixed).count()
    indexes[0].unlink()
    indexes[1].write_bytes(indexes[2].read_bytes())  # another file's index
    stored_packets.forget_indexes()
    assert api(client, mixed, page_size=50).json()["results"] == before
    assert indexes[0].exists()  # rebuilt beside its closed file
    assert indexes[1].read_bytes() != indexes[2].read_bytes()


def test_the_session_pages_download_form_warns_of_mixed_link_types(
    client: Client, mixed: Session
) -> None:
    analyst_of(client, mixed)
    page = client.get(reverse("console:session", args=[mixed.pk])).content.decode()
    assert 'id="mixed-link-types"' in page
    assert "pcap, IP only" in page
