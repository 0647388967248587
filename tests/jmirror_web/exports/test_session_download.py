"""Downloading one session from the pages: whole, in a window, filtered, in pcap and
pcapng; every export compared packet by packet with what the store wrote, its recorded
SHA-256 with the bytes received, and every refusal explained and audited."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jmirror_web.exports.forms import MAX_FILTER_ITEMS
from jmirror_web.exports.models import Export
from jmirror_web.exports.request import SourceError
from jmirror_web.intercepts.models import CaptureFile
from receiver import traffic
from receiver.store import LINKTYPE_PPP_HDLC, LINKTYPE_RAW, PcapStore, SessionKey
from tests.jmirror_web.exports.evidence import (
    SECOND,
    Stored,
    body,
    events,
    frames_of,
    iso,
    moment,
    sha256,
    stored_session,
    tshark_count,
)

pytestmark = pytest.mark.django_db


def download(client: Client, stored: Stored, **params: str) -> Any:
    return client.get(reverse("exports:session", args=[stored.session.pk]), params)


def expected(
    stored: Stored, keep: Any = lambda time_ns, data: True
) -> list[tuple[int, int, bytes]]:
    return [(t, LINKTYPE_RAW, data) for t, data in stored.frames if keep(t, data)]


@pytest.mark.parametrize("export_format", ["pcap", "pcapng"])
def test_the_whole_session_comes_out_as_stored_and_its_hash_is_recorded(
    client: Client, stored: Stored, analyst: User, export_format: str
) -> None:
    assert len(stored.files) == 3  # rotated: the export merges them
    client.force_login(analyst)
    response = download(client, stored, format=export_format)
    assert response.status_code == 200
    data = body(response)
    assert frames_of(data) == expected(stored)

    export = Export.objects.get()
    assert response["X-Export-Id"] == str(export.pk)
    assert export.state == Export.State.COMPLETE
    assert export.sha256 == sha256(data)
    assert (export.size, export.packets) == (len(data), 12)
    assert export.requester == analyst
    assert export.first_packet_ns == stored.frames[0][0]
    assert export.last_packet_ns == stored.frames[-1][0]
    # The manifest lists the files read, in time order, with their recorded SHA-256.
    assert [f["sha256"] for f in export.sources[0]["files"]] == [
        f.sha256 for f in reversed(stored.files)
    ]
    complete = events("export.complete")
    assert len(complete) == 1
    assert complete[0].actor == analyst
    assert complete[0].details["sha256"] == sha256(data)
    assert complete[0].details["packets"] == 12
    assert complete[0].details["format"] == export_format
    assert len(events("export.start")) == 1


def test_headers_name_the_file_from_liid_router_sid_and_window(
    client: Client, stored: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    response = download(client, stored, format="pcapng")
    body(response)
    session = stored.session
    first = session.first_seen.strftime("%Y%m%dT%H%M%SZ")
    last = session.last_seen.strftime("%Y%m%dT%H%M%SZ")
    name = (
        f"{stored.intercept.liid}_{stored.router.name}_sid-{session.sid:08x}_{first}-{last}.pcapng"
    )
    assert response["Content-Disposition"] == f'attachment; filename="{name}"'
    assert response["Content-Type"] == "application/x-pcapng"
    assert response["Cache-Control"] == "no-store"
    pcap = download(client, stored, format="pcap")
    body(pcap)
    assert pcap["Content-Type"] == "application/vnd.tcpdump.pcap"


def test_the_pcapng_section_comment_says_what_was_exported_by_whom(
    client: Client, stored: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    data = body(download(client, stored, format="pcapng"))
    export = Export.objects.get()
    for part in (
        f"LIID: {stored.intercept.liid}",
        f"Case: {stored.case.reference}",
        f"router {stored.router.name}",
        f"sid {stored.session.sid:#x}",
        f"Requester: {analyst.username}",
        f"evidence export {export.pk}",
    ):
        assert part in export.comment
    assert export.comment.encode() in data


def test_a_window_gives_exactly_the_packets_inside_it(
    client: Client, stored: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    start_ns = stored.frames[3][0]  # inclusive
    end_ns = stored.frames[8][0]  # exclusive
    response = download(client, stored, format="pcap", start=iso(start_ns), end=iso(end_ns))
    assert response.status_code == 200
    data = body(response)
    # The row times are cut to the microsecond: the window starts at packet 3's
    # microsecond, so packet 3 (at .123456789) is in and packet 8 is out.
    assert frames_of(data) == expected(stored)[3:8]
    export = Export.objects.get()
    assert export.sha256 == sha256(data)
    assert export.packets == 5
    assert export.window_start is not None
    assert events("export.complete")[0].details["start"] == iso(start_ns)


def test_a_window_given_with_an_offset_or_without_one_is_utc(
    client: Client, stored: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    start = stored.session.first_seen + timedelta(seconds=2)
    local = (start + timedelta(hours=13)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "+13:00"
    naive = start.strftime("%Y-%m-%dT%H:%M:%S.%f")
    with_offset = frames_of(body(download(client, stored, format="pcap", start=local)))
    without = frames_of(body(download(client, stored, format="pcap", start=naive)))
    assert with_offset == without == expected(stored)[2:]


@pytest.mark.parametrize(
    ("params", "keep"),
    [
        ({"addresses": "203.0.113.8"}, lambda i: i % 4 == 1),
        ({"ports": "443"}, lambda i: i % 4 == 0),
        ({"protocols": "icmp"}, lambda i: i % 4 == 2),
        ({"protocols": "udp"}, lambda i: i % 4 in (1, 3)),
        ({"protocols": "17, 6", "addresses": "203.0.113.7"}, lambda i: i % 4 == 0),
    ],
)
def test_filters_keep_exactly_the_matching_packets(
    client: Client, stored: Stored, analyst: User, params: dict[str, str], keep: Any
) -> None:
    client.force_login(analyst)
    response = download(client, stored, format="pcapng", **params)
    assert response.status_code == 200
    data = body(response)
    wanted = [frame for i, frame in enumerate(expected(stored)) if keep(i)]
    assert wanted
    assert frames_of(data) == wanted
    assert Export.objects.get().packets == len(wanted)


@pytest.mark.parametrize("export_format", ["pcap", "pcapng"])
def test_tshark_opens_the_export(
    client: Client, stored: Stored, analyst: User, export_format: str, tmp_path: Path
) -> None:
    client.force_login(analyst)
    path = tmp_path / f"export.{export_format}"
    path.write_bytes(body(download(client, stored, format=export_format)))
    assert tshark_count(path) == 12


def test_a_session_over_many_files_with_out_of_order_rows_comes_out_in_time_order(
    client: Client, data_dir: Path
) -> None:
    many = stored_session(data_dir, count=30, rotate_seconds=2)
    assert len(many.files) == 15
    user = _analyst_of(many)
    client.force_login(user)
    data = body(download(client, many, format="pcap"))
    times = [time_ns for time_ns, _, _ in frames_of(data)]
    assert times == sorted(times)
    assert frames_of(data) == expected(many)


# Refusals ------------------------------------------------------------------------------


def _analyst_of(stored: Stored) -> User:
    from jmirror_web.intercepts.access import Role
    from tests.factories import assign, make_user

    user = make_user(Role.ANALYST)
    assign(user, stored.case)
    return user


def refused(response: Any, message: str) -> None:
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Export.objects.exists()
    refusals = events("export.refused")
    assert refusals, "the refusal is audited"
    assert message.replace("&#x27;", "'") in str(refusals[-1].details["reason"]) or (
        refusals[-1].details["reason"] == "invalid parameters"
    )


def test_a_window_outside_the_warrant_is_refused_naming_the_allowed_range(
    client: Client, stored: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    before = stored.case.valid_from - timedelta(hours=1)
    response = download(client, stored, format="pcap", start=before.isoformat())
    allowed = f"allows {stored.case.valid_from:%Y-%m-%d %H:%M:%S}"
    refused(response, "The window must lie inside the warrant")
    assert allowed in response.content.decode()
    after = stored.case.valid_until + timedelta(hours=1)
    refused(download(client, stored, format="pcap", end=after.isoformat()), "inside the warrant")


def test_a_window_inside_the_case_but_outside_the_intercept_is_refused(
    client: Client, stored: Stored, analyst: User
) -> None:
    intercept = stored.intercept
    intercept.valid_from = stored.session.first_seen - timedelta(minutes=1)
    intercept.save()
    client.force_login(analyst)
    start = intercept.valid_from - timedelta(minutes=5)
    refused(
        download(client, stored, format="pcap", start=start.isoformat()),
        f"intercept {intercept.liid}, allows {intercept.valid_from:%Y-%m-%d %H:%M:%S}",
    )


def test_a_window_where_the_session_has_no_traffic_is_refused(
    client: Client, stored: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    later = stored.session.last_seen + timedelta(minutes=1)
    response = download(client, stored, format="pcap", start=later.isoformat())
    refused(response, "has no traffic in that window: its packets span")


def test_a_window_that_ends_before_it_starts_is_refused(
    client: Client, stored: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    start = stored.session.first_seen + timedelta(seconds=5)
    response = download(
        client,
        stored,
        format="pcap",
        start=start.isoformat(),
        end=stored.session.first_seen.isoformat(),
    )
    refused(response, "The window&#x27;s end must be after its start.")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"format": "pcap", "start": "yesterday"}, "Enter a time as ISO 8601"),
        ({"format": "pcap", "end": "2026-13-45T99:00"}, "Enter a time as ISO 8601"),
        ({"format": "tar"}, "Select a valid choice. tar is not one of the available choices."),
        ({"format": "zip"}, "Select a valid choice. zip is not one of the available choices."),
        ({"start": "2026-01-01T00:00:00Z"}, "This field is required."),
        (
            {
                "format": "pcap",
                "addresses": " ".join(f"10.0.0.{i}" for i in range(MAX_FILTER_ITEMS + 1)),
            },
            f"At most {MAX_FILTER_ITEMS} addresses.",
        ),
        (
            {"format": "pcap", "addresses": "10.0.0.300"},
            "&#x27;10.0.0.300&#x27; is not an IPv4 or IPv6 address.",
        ),
        ({"format": "pcap", "ports": "65536"}, "&#x27;65536&#x27; is not a port (0 to 65535)."),
        ({"format": "pcap", "ports": ",".join(["1"] * 17)}, f"At most {MAX_FILTER_ITEMS} ports."),
        ({"format": "pcap", "protocols": "quic"}, "&#x27;quic&#x27; is not a protocol"),
        ({"format": "pcap", "protocols": "256"}, "&#x27;256&#x27; is not a protocol"),
    ],
)
def test_bad_parameters_get_the_form_back_with_a_clear_message(
    client: Client, stored: Stored, analyst: User, params: dict[str, str], message: str
) -> None:
    client.force_login(analyst)
    response = download(client, stored, **params)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Export.objects.exists()
    assert events("export.refused")[-1].details["reason"] == "invalid parameters"


def test_without_parameters_the_page_is_the_form(
    client: Client, stored: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    response = download(client, stored)
    assert response.status_code == 200
    assert 'name="format"' in response.content.decode()
    assert not Export.objects.exists()


def test_purged_files_are_not_served(client: Client, stored: Stored, analyst: User) -> None:
    purged = stored.files[-1]  # the oldest file (rows were made newest first)
    purged.purged_at = timezone.now()
    purged.save()
    client.force_login(analyst)
    refused(download(client, stored, format="pcap"), "were purged under the case")
    # A window after the purged file is still served, without the purged packets.
    assert purged.last_packet is not None
    start = purged.last_packet + timedelta(seconds=1)
    data = body(download(client, stored, format="pcap", start=start.isoformat()))
    assert frames_of(data) == [f for f in expected(stored) if f[0] >= stored.frames[4][0]]


def test_a_file_missing_from_disk_is_refused_before_anything_is_sent(
    client: Client, stored: Stored, analyst: User, data_dir: Path
) -> None:
    (data_dir / stored.files[0].path).unlink()
    client.force_login(analyst)
    response = download(client, stored, format="pcap")
    assert response.status_code == 400
    assert not Export.objects.exists()
    assert events("export.refused")


def test_a_capture_file_row_pointing_outside_the_sessions_directory_is_refused(
    client: Client, stored: Stored, analyst: User
) -> None:
    escaped = stored.files[0]
    escaped.path = "../../etc/passwd"
    escaped.save()
    client.force_login(analyst)
    refused(download(client, stored, format="pcap"), "recorded outside the sessions directory")


# Committed rows: closing a response sends request_finished, which closes the database
# connection (and would end a test's transaction with it on PostgreSQL).
@pytest.mark.django_db(transaction=True)
def test_a_client_that_goes_away_leaves_an_aborted_export(client: Client, data_dir: Path) -> None:
    big = stored_session(
        data_dir, count=3000, rotate_seconds=3600, payloads=[b"E" + bytes(999)] * 3000
    )
    user = _analyst_of(big)
    client.force_login(user)
    response = download(client, big, format="pcap")
    first = next(iter(response.streaming_content))
    response.close()  # what a WSGI server does when the client goes away
    export = Export.objects.get()
    assert export.state == Export.State.ABORTED
    assert export.bytes_sent >= len(first) > 0
    assert export.sha256 == ""
    aborted = events("export.aborted")
    assert len(aborted) == 1
    assert aborted[0].details["bytes_sent"] == export.bytes_sent
    assert not events("export.complete")


def test_packets_between_whole_seconds_keep_their_nanoseconds(
    client: Client, stored: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    data = body(download(client, stored, format="pcapng"))
    assert [t % SECOND for t, _, _ in frames_of(data)] == [123_456_789] * 12


def test_a_file_damaged_after_the_check_fails_the_export_mid_stream(
    client: Client, stored: Stored, analyst: User, data_dir: Path
) -> None:
    newest = data_dir / stored.files[0].path
    newest.write_bytes(newest.read_bytes()[:-7])  # ends inside its last record
    client.force_login(analyst)
    response = download(client, stored, format="pcap")
    assert response.status_code == 200  # the damage is found only when reading that far
    with pytest.raises(SourceError):
        body(response)
    export = Export.objects.get()
    assert export.state == Export.State.FAILED
    assert stored.files[0].path.rsplit("/", 1)[-1] in export.error
    assert export.sha256 == ""
    [failed] = events("export.failed")
    assert failed.details["error"] == export.error
    assert failed.details["bytes_sent"] == export.bytes_sent
    assert not events("export.complete")


def test_a_refused_window_is_shown_again_in_utc_as_the_input_can_show_it(
    client: Client, stored: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    response = download(client, stored, format="pcap", start="2020-01-01T13:00:00.250+13:00")
    assert response.status_code == 400
    assert 'value="2020-01-01T00:00:00.250"' in response.content.decode()


def test_a_session_mixing_ppp_and_ip_exports_as_pcapng_but_not_as_pcap(
    client: Client, data_dir: Path, tmp_path: Path
) -> None:
    mixed = stored_session(data_dir, count=2)
    assert mixed.session.intercept is not None
    store_ = PcapStore(data_dir / "sessions")
    key = SessionKey(mixed.intercept.liid, mixed.router.address, mixed.session.mid, 0x7777)
    lcp = bytes(traffic.ppp_lcp().packet)
    store_.write(key, mixed.frames[0][0] + SECOND // 2, lcp, LINKTYPE_PPP_HDLC)
    [closed] = store_.close_all()
    CaptureFile.objects.create(
        session=mixed.session,
        path=str(Path("sessions") / closed.path),
        first_packet=moment(closed.first_ns),
        last_packet=moment(closed.last_ns),
        packets=1,
        bytes=closed.bytes,
        sha256=closed.sha256,
        closed=True,
    )
    client.force_login(_analyst_of(mixed))
    data = body(download(client, mixed, format="pcapng"))
    assert frames_of(data) == [
        (mixed.frames[0][0], LINKTYPE_RAW, mixed.frames[0][1]),
        (closed.first_ns, LINKTYPE_PPP_HDLC, lcp),
        (mixed.frames[1][0], LINKTYPE_RAW, mixed.frames[1][1]),
    ]
    response = download(client, mixed, format="pcap")
    assert response.status_code == 400
    assert "which one pcap file cannot hold: export as pcapng instead, or as pcap-ip" in (
        response.content.decode()
    )
    assert (
        "export as pcapng instead, or as pcap-ip"
        in (events("export.refused")[-1].details["reason"])
    )
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(data)
    assert tshark_count(path) == 3  # last: skipped without tshark


def test_a_live_session_exports_what_its_open_file_holds_so_far(
    client: Client, stored: Stored, analyst: User, data_dir: Path
) -> None:
    assert stored.session.intercept is not None
    live = PcapStore(data_dir / "sessions")
    key = SessionKey(
        stored.intercept.liid, stored.router.address, stored.session.mid, stored.session.sid
    )
    later = stored.frames[-1][0] + SECOND
    data = bytes(traffic.ipv4_udp().packet)
    live.write(key, later, data, LINKTYPE_RAW)
    live.flush()
    [being_written] = live.open_files()
    CaptureFile.objects.create(
        session=stored.session,
        path=str(Path("sessions") / being_written.path),
        first_packet=moment(later),
        last_packet=moment(later),
        packets=1,
        closed=False,
    )
    stored.session.last_seen = moment(later)
    stored.session.save()
    client.force_login(analyst)
    exported = body(download(client, stored, format="pcap"))
    assert frames_of(exported) == [*expected(stored), (later, LINKTYPE_RAW, data)]
    export = Export.objects.get()
    open_entry = export.sources[0]["files"][-1]
    assert (open_entry["closed"], open_entry["sha256"]) == (False, None)
    # The closed files cite their recorded SHA-256; of the open one the manifest says
    # that none is recorded yet, and the page too.
    manifest = client.get(reverse("exports:manifest_json", args=[export.pk])).json()
    listed = manifest["sessions"][0]["files"]
    assert [(f["name"], f["sha256"]) for f in listed[:-1]] == [
        (Path(f.path).name, f.sha256) for f in reversed(stored.files)
    ]
    assert all(f.sha256 for f in stored.files)
    assert manifest["notes"] == [
        f"No SHA-256 was recorded yet for 1 source file still being written when the export "
        f"started ({open_entry['name']}): a file's SHA-256 is recorded when it closes (after a "
        "quiet time without packets, or at rotation) and is then shown on its session's "
        "page. Every closed file is listed with its recorded SHA-256."
    ]
    shown = client.get(reverse("exports:manifest", args=[export.pk])).content.decode()
    assert "none recorded yet (file still being written)" in shown
    live.close_all()


def test_the_manifest_page_and_comment_say_no_filter_or_the_filter_in_words(
    client: Client, stored: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    body(download(client, stored, format="pcapng"))
    body(download(client, stored, format="pcapng", ports="443 53", protocols="udp 99"))
    plain, filtered = Export.objects.order_by("pk")
    for export, said in (
        (plain, "no filter"),
        (filtered, "ports 53, 443; protocols 17 (udp), 99"),
    ):
        page = client.get(reverse("exports:manifest", args=[export.pk])).content.decode()
        assert f"<td data-filter>{said}</td>" in page
        assert f"Filter: {said}\n" in export.comment
        assert "{" not in page.split("<th>Filter</th>", 1)[1].split("</tr>", 1)[0]


def test_the_window_inputs_say_and_take_utc_whatever_the_time_zone(
    client: Client, stored: Stored, analyst: User, settings: Any
) -> None:
    settings.TIME_ZONE = "Pacific/Auckland"
    client.force_login(analyst)
    page = client.get(reverse("console:session", args=[stored.session.pk])).content.decode()
    assert ">From (UTC)" in page
    assert ">To (UTC)" in page
    start_ns = stored.frames[3][0]
    typed = iso(start_ns).removesuffix("Z").removesuffix("+00:00")  # no offset given
    body(download(client, stored, format="pcap", start=typed))
    export = Export.objects.get()
    assert export.window_start is not None
    assert export.window_start.utcoffset() == timedelta(0)
    assert int(export.window_start.timestamp()) == start_ns // SECOND
