"""Every session of every intercept of a case: one pcapng with an interface per session
or a zip of per-session files, each intercept kept to its own warrant, compared packet by
packet with what the receiver's store wrote."""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from jmirror_web.audit.models import AuditEvent
from jmirror_web.exports.models import Export
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Case
from receiver.store import LINKTYPE_PPP_HDLC, LINKTYPE_RAW
from tests.factories import assign, make_case, make_router, make_session, make_user
from tests.jmirror_web.exports.evidence import (
    SECOND,
    Stored,
    body,
    frames_of,
    iso,
    moment,
    packets_for,
    sha256,
    store,
    stored_session,
)

pytestmark = pytest.mark.django_db

Packet = tuple[int, int, bytes]  # time (ns), link type, bytes as stored


def ppp(protocol: int, payload: bytes) -> bytes:
    return struct.pack("!BBH", 0xFF, 0x03, protocol) + payload


LCP = ppp(0xC021, bytes.fromhex("0101000a0506deadbeef"))


@dataclass
class Evidence:
    case: Case
    bare: Stored  # intercept A, bare IP, three files
    ppp: Stored  # intercept A, another router, PPP (IPv4 in PPP and LCP)
    second: Stored  # intercept B of the same case, bare IP
    other: Stored  # another case's session at the same times

    def packets(self, *sessions: Stored) -> list[Packet]:
        linktype = {id(self.ppp): LINKTYPE_PPP_HDLC}
        return sorted(
            (time_ns, linktype.get(id(each), LINKTYPE_RAW), data)
            for each in sessions
            for time_ns, data in each.frames
        )


@pytest.fixture(autouse=True)
def _fresh_throttle_counts() -> None:
    cache.clear()  # the API's throttle counts live in the cache, which outlives a test


@pytest.fixture
def evidence(data_dir: Path) -> Evidence:
    """Two intercepts of one case, three sessions interleaved in time, and a session of
    another case at the same times."""
    case = make_case(reference="CASE-EXPORT")
    bare = stored_session(data_dir, count=6, rotate_seconds=2, case=case)
    start = bare.frames[0][0]
    router = make_router(name="bras-ppp")
    payloads = [ppp(0x0021, data) if i % 3 else LCP for i, data in enumerate(packets_for(5))]
    frames = [(start + SECOND // 2 + i * SECOND, data) for i, data in enumerate(payloads)]
    session = make_session(
        bare.intercept,
        router=router,
        mid=bare.intercept.intercept_id,
        sid=0x5151,
        first_seen=moment(frames[0][0]),
        last_seen=moment(frames[-1][0]),
    )
    files = store(data_dir, session, frames, rotate_seconds=2, linktype=LINKTYPE_PPP_HDLC)
    ppp_session = Stored(case, bare.intercept, router, session, frames, files)
    second = stored_session(data_dir, count=4, case=case, start_ns=start + SECOND // 4)
    other = stored_session(data_dir, count=5, start_ns=start + SECOND // 3)
    return Evidence(case, bare, ppp_session, second, other)


@pytest.fixture
def analyst(evidence: Evidence) -> User:
    user = make_user(Role.ANALYST)
    assign(user, evidence.case)
    return user


def export(client: Client, case: Case, **params: str) -> Any:
    return client.get(reverse("exports:case", args=[case.pk]), params)


def api_client(user: User) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def pcapng_interfaces(data: bytes) -> tuple[list[str], dict[int, list[Packet]]]:
    """The interface names of a little-endian pcapng and the packets of each interface."""
    names: list[str] = []
    linktypes: list[int] = []
    packets: dict[int, list[Packet]] = {}
    pos = 0
    while pos < len(data):
        block_type, length = struct.unpack_from("<II", data, pos)
        if block_type == 1:  # interface description: link type, then options
            linktypes.append(struct.unpack_from("<H", data, pos + 8)[0])
            option = pos + 16
            name = ""
            while option < pos + length - 4:
                code, size = struct.unpack_from("<HH", data, option)
                if code == 0:
                    break
                if code == 2:  # if_name
                    name = data[option + 4 : option + 4 + size].decode()
                option += 4 + size + (-size & 3)
            names.append(name)
        elif block_type == 6:  # enhanced packet: interface, time (ns), captured length
            interface, high, low, captured = struct.unpack_from("<IIII", data, pos + 8)
            frame = data[pos + 28 : pos + 28 + captured]
            packets.setdefault(interface, []).append(
                ((high << 32) | low, linktypes[interface], frame)
            )
        pos += length
    return names, packets


def test_one_pcapng_holds_every_packet_of_the_case_an_interface_per_session(
    client: Client, evidence: Evidence, analyst: User
) -> None:
    client.force_login(analyst)
    response = export(client, evidence.case, format="pcapng")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-pcapng"
    data = body(response)
    # Every stored packet of the three sessions, byte for byte, and none of the other case.
    assert sorted(frames_of(data)) == evidence.packets(evidence.bare, evidence.ppp, evidence.second)
    names, packets = pcapng_interfaces(data)
    assert len(names) == 3
    for stored in (evidence.bare, evidence.ppp, evidence.second):
        session = stored.session
        [index] = [
            i
            for i, name in enumerate(names)
            if name == f"{stored.intercept.liid}_{stored.router.name}_mid-{session.mid:08x}"
            f"_sid-{session.sid:08x}"
        ]
        # In time order within the interface, and exactly the session's packets.
        assert packets[index] == evidence.packets(stored)
    record = Export.objects.get()
    assert record.kind == Export.Kind.CASE
    assert record.case == evidence.case
    assert record.intercept is None
    assert record.session is None
    assert sorted(record.session_ids) == sorted(
        s.session.pk for s in (evidence.bare, evidence.ppp, evidence.second)
    )
    assert record.sha256 == sha256(data)
    assert record.packets == 15
    assert record.file_name.startswith("CASE-EXPORT_case_")
    assert AuditEvent.objects.filter(action="export.complete", object_id=str(record.pk)).exists()


def test_a_zip_holds_a_file_per_session_and_the_manifest_hashes_the_sources(
    client: Client, evidence: Evidence, analyst: User, data_dir: Path
) -> None:
    client.force_login(analyst)
    response = export(client, evidence.case, format="zip", member_format="pcapng")
    assert response.status_code == 200
    data = body(response)
    record = Export.objects.get()
    assert record.sha256 == sha256(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert len(archive.namelist()) == 3
        for stored in (evidence.bare, evidence.ppp, evidence.second):
            [name] = [n for n in archive.namelist() if f"sid-{stored.session.sid:08x}" in n]
            assert name.startswith(stored.intercept.liid)
            member = archive.read(name)
            assert record.members[name]["sha256"] == sha256(member)
            assert frames_of(member) == evidence.packets(stored)

    manifest = client.get(reverse("exports:manifest_json", args=[record.pk])).json()
    assert manifest["kind"] == "case"
    assert manifest["requester"] == analyst.username
    assert manifest["window"] == {"start": None, "end": None}
    assert manifest["intercept"] is None
    assert {each["liid"] for each in manifest["intercepts"]} == {
        evidence.bare.intercept.liid,
        evidence.second.intercept.liid,
    }
    listed = {
        each["id"]: (each["liid"], [f["sha256"] for f in each["files"]])
        for each in manifest["sessions"]
    }
    for stored in (evidence.bare, evidence.ppp, evidence.second):
        liid, hashes = listed[stored.session.pk]
        assert liid == stored.intercept.liid
        # Every source file, its recorded hash that of the file on disk.
        assert sorted(hashes) == sorted(
            sha256((data_dir / each.path).read_bytes()) for each in stored.files
        )


def test_each_intercept_is_kept_to_its_own_warrant(
    client: Client, evidence: Evidence, analyst: User
) -> None:
    # Warrants narrowed after the packets were stored: intercept A from its second
    # second, intercept B until its third packet.
    start = evidence.bare.frames[0][0]
    first = evidence.bare.intercept
    first.valid_from = moment(start + SECOND + SECOND // 4)
    first.save()
    second = evidence.second.intercept
    second.valid_until = moment(evidence.second.frames[2][0])
    second.save()
    client.force_login(analyst)
    response = export(client, evidence.case, format="pcapng")
    assert response.status_code == 200
    kept = [
        packet
        for packet in evidence.packets(evidence.bare, evidence.ppp)
        if packet[0] >= start + SECOND + SECOND // 4
    ] + evidence.packets(evidence.second)[:2]
    assert sorted(frames_of(body(response))) == sorted(kept)


def test_a_window_takes_only_the_packets_inside_it(
    client: Client, evidence: Evidence, analyst: User
) -> None:
    start = evidence.bare.frames[1][0]
    end = evidence.bare.frames[3][0]
    client.force_login(analyst)
    response = export(client, evidence.case, format="pcapng", start=iso(start), end=iso(end))
    assert response.status_code == 200
    wanted = [
        packet
        for packet in evidence.packets(evidence.bare, evidence.ppp, evidence.second)
        if moment(start) <= moment(packet[0]) < moment(end)
    ]
    assert wanted
    assert sorted(frames_of(body(response))) == wanted


def test_the_filters_apply_to_every_session(
    client: Client, evidence: Evidence, analyst: User
) -> None:
    client.force_login(analyst)
    response = export(client, evidence.case, format="pcapng", protocols="udp")
    assert response.status_code == 200
    found = frames_of(body(response))
    # UDP packets of the bare sessions and IPv4/UDP inside PPP; never LCP.
    assert found
    assert LCP not in {frame for _, _, frame in found}
    assert {linktype for _, linktype, _ in found} == {LINKTYPE_RAW, LINKTYPE_PPP_HDLC}


def test_a_window_without_stored_traffic_is_refused_clearly_and_audited(
    client: Client, evidence: Evidence, analyst: User
) -> None:
    client.force_login(analyst)
    start = evidence.bare.frames[-1][0] + 60 * SECOND
    response = export(
        client, evidence.case, format="pcapng", start=iso(start), end=iso(start + SECOND)
    )
    assert response.status_code == 400
    assert "Case CASE-EXPORT has no stored traffic between" in response.content.decode()
    refusal = AuditEvent.objects.filter(action="export.refused").order_by("-pk").first()
    assert refusal is not None
    assert "no stored traffic" in refusal.details["reason"]
    assert not Export.objects.exists()


def test_the_api_streams_the_case_as_the_page_does(evidence: Evidence, analyst: User) -> None:
    response = api_client(analyst).get(f"/api/cases/{evidence.case.pk}/pcap")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-pcapng"
    data = b"".join(response.streaming_content)
    assert sorted(frames_of(data)) == evidence.packets(evidence.bare, evidence.ppp, evidence.second)
    assert Export.objects.get().sha256 == sha256(data)


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"format": "pcap"}, "format"),
        ({"format": "tar"}, "format"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-13-01T00:00:00Z"}, "end"),
        ({"ports": "70000"}, "ports"),
        ({"addresses": "10.0.0.300"}, "addresses"),
        ({"protocols": "carrier-pigeon"}, "protocols"),
        ({"start": "2001-01-01T00:00:00Z"}, "start"),  # before the case's warrant
    ],
)
def test_bad_parameters_are_a_json_400_naming_the_parameter(
    evidence: Evidence, analyst: User, parameters: dict[str, str], field: str
) -> None:
    response = api_client(analyst).get(f"/api/cases/{evidence.case.pk}/pcap", parameters)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert field in response.json()
    refusal = AuditEvent.objects.filter(action="export.refused").order_by("-pk").first()
    assert refusal is not None
    assert refusal.object_id == str(evidence.case.pk)
    assert not Export.objects.exists()


def test_bad_parameters_on_the_page_are_a_400_with_the_form(
    client: Client, evidence: Evidence, analyst: User
) -> None:
    client.force_login(analyst)
    response = export(client, evidence.case, format="pcapng", ports="70000")
    assert response.status_code == 400
    assert "is not a port" in response.content.decode()
    assert not Export.objects.exists()


@pytest.mark.parametrize("kind", ["analyst of another case", "assigned auditor", "anonymous"])
def test_refusals_are_as_for_the_other_downloads_and_audited(evidence: Evidence, kind: str) -> None:
    user: User | None = None
    if kind == "analyst of another case":
        user = make_user(Role.ANALYST)
        assign(user, evidence.other.case)  # the wrong case
    elif kind == "assigned auditor":
        user = make_user(Role.AUDITOR)
        assign(user, evidence.case)  # assigned, but no download right
    case = evidence.case.pk
    page = Client()
    api = APIClient()
    if user is not None:
        page.force_login(user)
        api = api_client(user)
    for how, response in (
        ("page", page.get(reverse("exports:case", args=[case]), {"format": "pcapng"})),
        ("api", api.get(f"/api/cases/{case}/pcap")),
    ):
        if user is None and how == "page":
            assert response.status_code == 302
            assert response["Location"].startswith(reverse("console:login"))
        elif user is None:
            assert response.status_code == 401
        else:
            assert response.status_code == 404
        refusal = AuditEvent.objects.filter(action="export.refused").order_by("-pk").first()
        assert refusal is not None, how
        assert refusal.actor == user
        assert refusal.object_id == str(case)
        assert refusal.details["reason"] == (
            "not signed in" if user is None else "no download right"
        )
    assert AuditEvent.objects.filter(action="export.refused").count() == 2
    assert not Export.objects.exists()


def test_the_case_page_says_what_the_export_holds_only_with_the_right(
    client: Client, evidence: Evidence, analyst: User
) -> None:
    client.force_login(analyst)
    page = client.get(reverse("console:case", args=[evidence.case.pk])).content.decode()
    assert reverse("exports:case", args=[evidence.case.pk]) in page
    contents = " ".join(page.split("data-case-contents>", 1)[1].split("</p>", 1)[0].split())
    assert "<strong>2</strong> intercepts" in contents
    assert "<strong>3</strong> sessions" in contents
    assert "<strong>15</strong> packets" in contents
    auditor = make_user(Role.AUDITOR)
    assign(auditor, evidence.case)
    client.force_login(auditor)
    page = client.get(reverse("console:case", args=[evidence.case.pk])).content.decode()
    assert reverse("exports:case", args=[evidence.case.pk]) not in page
    # The export's own page, before any parameter, says the same.
    client.force_login(analyst)
    form = client.get(reverse("exports:case", args=[evidence.case.pk]))
    assert form.status_code == 200
    assert "<strong>3</strong> sessions" in " ".join(form.content.decode().split())


def test_the_manifest_page_names_every_intercept_of_a_case_export(
    client: Client, evidence: Evidence, analyst: User
) -> None:
    client.force_login(analyst)
    body(export(client, evidence.case, format="pcapng"))
    record = Export.objects.get()
    page = client.get(reverse("exports:manifest", args=[record.pk])).content.decode()
    row = page.split("<th>Case / LIID</th><td>", 1)[1].split("</td>", 1)[0]
    assert row.startswith("CASE-EXPORT / ")
    for stored in (evidence.bare, evidence.second):
        assert stored.intercept.liid in row
