"""A session mixing PPP and raw IP files, exported from the pages and the API: the forms
warn before a pcap is asked for, plain pcap is refused with a way out, and the IP-only
pcap is a conversion its manifest and audit records state."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from scapy.layers.ppp import PPP
from scapy.utils import rdpcap

from jmirror_web.exports.models import CONVERSION_STATEMENT, Export
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import CaptureFile
from receiver import traffic
from receiver.store import LINKTYPE_PPP_HDLC, LINKTYPE_RAW, PcapStore, SessionKey
from tests.factories import assign, make_user
from tests.jmirror_web.exports.evidence import (
    SECOND,
    Stored,
    body,
    events,
    frames_of,
    moment,
    sha256,
    stored_session,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_throttle_counts() -> None:
    cache.clear()


def add_ppp_file(data_dir: Path, stored: Stored, frames: list[tuple[int, bytes]]) -> CaptureFile:
    """A PPP (HDLC framing) file beside the session's raw IP files, as the receiver
    stores a subscriber's PPP traffic."""
    key = SessionKey(stored.intercept.liid, stored.router.address, stored.session.mid, 0x7777)
    ppp_store = PcapStore(data_dir / "sessions")
    for time_ns, data in frames:
        ppp_store.write(key, time_ns, data, LINKTYPE_PPP_HDLC)
    [closed] = ppp_store.close_all()
    return CaptureFile.objects.create(
        session=stored.session,
        path=str(Path("sessions") / closed.path),
        first_packet=moment(closed.first_ns),
        last_packet=moment(closed.last_ns),
        packets=closed.packets,
        bytes=closed.bytes,
        sha256=closed.sha256,
        closed=True,
    )


def ppp_frame(mirrored: traffic.Mirrored) -> tuple[bytes, bytes]:
    """A PPP frame as stored, and the IP packet it carries."""
    return bytes(mirrored.packet), bytes(mirrored.packet[PPP].payload)


@pytest.fixture
def mixed(data_dir: Path) -> tuple[Stored, CaptureFile, list[tuple[int, bytes]]]:
    """Four raw IP packets one second apart, and between them PPP control (LCP, PAP) and
    IP in PPP (IPv4, IPv6, IPv4 with a one-byte protocol): the session and its PPP
    file, and the IP packets in time order."""
    stored = stored_session(data_dir, count=4, rotate_seconds=3600)
    t = [time_ns for time_ns, _ in stored.frames]
    v4, v4_ip = ppp_frame(traffic.ppp_ipv4_udp())
    v6, v6_ip = ppp_frame(traffic.ppp_ipv6_tcp())
    short, short_ip = ppp_frame(traffic.ppp_ipv4_compressed_protocol())
    half = SECOND // 2
    ppp_file = add_ppp_file(
        data_dir,
        stored,
        [
            (t[0] - half, bytes(traffic.ppp_lcp().packet)),
            (t[0] - half + 1, bytes(traffic.ppp_pap().packet)),
            (t[0] + half, v4),
            (t[1] + half, v6),
            (t[2] + half, short),
            (t[3] + half, bytes(traffic.ppp_lcp().packet)),
        ],
    )
    ip = [
        (t[0], stored.frames[0][1]),
        (t[0] + half, v4_ip),
        (t[1], stored.frames[1][1]),
        (t[1] + half, v6_ip),
        (t[2], stored.frames[2][1]),
        (t[2] + half, short_ip),
        (t[3], stored.frames[3][1]),
    ]
    return stored, ppp_file, ip


def analyst_of(stored: Stored) -> User:
    user = make_user(Role.ANALYST)
    assign(user, stored.case)
    return user


def page(client: Client, stored: Stored, **params: str) -> Any:
    return client.get(reverse("exports:session", args=[stored.session.pk]), params)


def test_the_session_form_warns_of_mixed_link_types_before_submitting(
    client: Client, mixed: Any, stored: Stored
) -> None:
    session, _, _ = mixed
    client.force_login(analyst_of(session))
    text = page(client, session).content.decode()
    assert 'id="mixed-link-types"' in text
    assert "This session's files hold <strong>PPP and raw IP</strong> packets" in text
    assert '<option value="pcap-ip">pcap, IP only (PPP framing removed: a conversion)' in text
    # A session of one link type is not warned about (but may still be converted).
    client.force_login(analyst_of(stored))
    text = page(client, stored).content.decode()
    assert 'id="mixed-link-types"' not in text
    assert '<option value="pcap-ip">' in text


def test_the_ip_only_pcap_is_the_ip_packets_in_time_order_and_says_it_is_a_conversion(
    client: Client, mixed: Any
) -> None:
    stored, ppp_file, ip = mixed
    client.force_login(analyst_of(stored))
    response = page(client, stored, format="pcap-ip")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/vnd.tcpdump.pcap"
    assert response["Content-Disposition"].endswith('_ip-only.pcap"')
    data = body(response)
    assert frames_of(data) == [(time_ns, LINKTYPE_RAW, packet) for time_ns, packet in ip]
    assert [bytes(packet) for packet in rdpcap(io.BytesIO(data))] == [p for _, p in ip]

    export = Export.objects.get()
    assert (export.format, export.sha256, export.packets) == ("pcap-ip", sha256(data), 7)
    manifest = client.get(reverse("exports:manifest_json", args=[export.pk])).json()
    conversion = manifest["conversion"]
    assert conversion["to"] == "raw IP (link type 101)"
    assert conversion["statement"] == CONVERSION_STATEMENT
    assert (
        conversion["ppp_frames_converted"],
        conversion["raw_ip_packets_copied"],
        conversion["ppp_control_left_out"],
    ) == (3, 4, 3)
    recorded = {each.path.rsplit("/", 1)[-1]: each.sha256 for each in [*stored.files, ppp_file]}
    assert {f["name"]: f["sha256"] for f in conversion["source_files"]} == recorded
    assert manifest["notes"][0] == (
        f"{CONVERSION_STATEMENT} It holds 3 packets taken out of PPP frames and 4 raw IP "
        "packets as stored; 3 PPP control packets were left out."
    )
    assert "remain the evidence" in manifest["notes"][0]
    shown = client.get(reverse("exports:manifest", args=[export.pk])).content.decode()
    assert "This file is a conversion, not a copy of the stored records" in shown
    # The audit record says it too, at the start and with the counts at the end.
    assert events("export.start")[0].details["conversion"] == CONVERSION_STATEMENT
    complete = events("export.complete")[0].details
    assert complete["conversion"] == {
        "statement": CONVERSION_STATEMENT,
        "ppp_frames_converted": 3,
        "raw_ip_packets_copied": 4,
        "ppp_control_left_out": 3,
    }


def test_a_plain_pcap_of_the_mixed_session_is_refused_pointing_to_both_ways_out(
    client: Client, mixed: Any
) -> None:
    stored, _, _ = mixed
    client.force_login(analyst_of(stored))
    response = page(client, stored, format="pcap")
    assert response.status_code == 400
    text = response.content.decode()
    assert "export as pcapng instead, or as pcap-ip (pcap of the IP packets only" in text
    assert 'id="mixed-link-types"' in text  # the warning stays on the form shown again
    assert not Export.objects.exists()
    assert "or as pcap-ip" in events("export.refused")[0].details["reason"]


def test_the_api_converts_and_refuses_as_the_page_does(mixed: Any) -> None:
    stored, _, ip = mixed
    api = APIClient()
    token = Token.objects.create(user=analyst_of(stored))
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    url = f"/api/sessions/{stored.session.pk}/pcap"
    response = api.get(url, {"format": "pcap-ip"})
    assert response.status_code == 200
    assert frames_of(body(response)) == [(t, LINKTYPE_RAW, packet) for t, packet in ip]
    manifest = api.get(f"/api/exports/{Export.objects.get().pk}").json()
    assert manifest["conversion"]["ppp_frames_converted"] == 3

    refused = api.get(url, {"format": "pcap"})
    assert refused.status_code == 400
    [message] = refused.json()["detail"]
    assert message.endswith("a conversion, said so in its manifest).")


def test_a_conversion_of_a_session_without_ip_is_refused_clearly(
    client: Client, data_dir: Path, stored: Stored
) -> None:
    # Only PPP control in the window: the session's raw IP packets all lie after it.
    control = add_ppp_file(
        data_dir, stored, [(stored.frames[0][0] - SECOND, bytes(traffic.ppp_lcp().packet))]
    )
    assert control.first_packet is not None
    stored.session.first_seen = control.first_packet
    stored.session.save()
    client.force_login(analyst_of(stored))
    response = page(
        client,
        stored,
        format="pcap-ip",
        start=control.first_packet.isoformat(),
        end=moment(stored.frames[0][0]).isoformat(),
    )
    assert response.status_code == 400
    assert "There is no IP packet to convert" in response.content.decode()
    assert not Export.objects.exists()


def test_rights_are_unchanged_for_the_conversion(client: Client, mixed: Any) -> None:
    stored, _, _ = mixed
    outsider = make_user(Role.ANALYST)  # not assigned to the case
    client.force_login(outsider)
    assert page(client, stored).status_code == 404
    assert page(client, stored, format="pcap-ip").status_code == 404
    assert not Export.objects.exists()
    assert events("export.refused")[-1].details.get("session") == stored.session.pk


def test_the_case_form_names_the_mixed_sessions_and_zips_ip_only_members(
    client: Client, mixed: Any
) -> None:
    stored, _, ip = mixed
    client.force_login(analyst_of(stored))
    url = reverse("exports:case", args=[stored.case.pk])
    text = client.get(url).content.decode()
    assert "1 session here mixes link types" in text
    assert f"sid 0x{stored.session.sid:x} (PPP and raw IP)" in text
    refused = client.get(url, {"format": "zip", "member_format": "pcap"})
    assert refused.status_code == 400
    assert "choose pcapng for the zip&#x27;s members, or as pcap-ip" in refused.content.decode()

    response = client.get(url, {"format": "zip", "member_format": "pcap-ip"})
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(body(response))) as archive:
        [name] = archive.namelist()
        assert name.endswith(".pcap")
        assert frames_of(archive.read(name)) == [(t, LINKTYPE_RAW, p) for t, p in ip]
    export = Export.objects.get()
    assert (export.format, export.member_format) == ("zip", "pcap-ip")
    assert export.conversion["ppp_control_left_out"] == 3
