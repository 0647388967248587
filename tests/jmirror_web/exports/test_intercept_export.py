"""Every session of an intercept in a window: one pcapng with an interface per session,
or a zip of per-session files, each compared with what the store wrote."""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from jmirror_web.exports.models import Export
from jmirror_web.intercepts.access import Role
from receiver.store import LINKTYPE_RAW
from tests.factories import assign, make_router, make_session, make_user
from tests.jmirror_web.exports.evidence import (
    SECOND,
    Stored,
    body,
    events,
    frames_of,
    iso,
    moment,
    packets_for,
    sha256,
    store,
    stored_session,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_sessions(data_dir: Path) -> tuple[Stored, Stored]:
    """Two sessions of one intercept from two routers, their packets interleaved in time
    (the second starts half a second after the first), and a third session much later."""
    first = stored_session(data_dir, count=6, rotate_seconds=2)
    router = make_router(name="mx-second")
    start = first.frames[0][0] + SECOND // 2
    frames = [(start + i * SECOND, data) for i, data in enumerate(packets_for(6))]
    session = make_session(
        first.intercept,
        router=router,
        mid=first.intercept.intercept_id,
        sid=0x4242,
        first_seen=moment(frames[0][0]),
        last_seen=moment(frames[-1][0]),
    )
    files = store(data_dir, session, frames)
    second = Stored(first.case, first.intercept, router, session, frames, files)
    return first, second


@pytest.fixture
def user(two_sessions: tuple[Stored, Stored]) -> User:
    user = make_user(Role.ANALYST)
    assign(user, two_sessions[0].case)
    return user


def export(client: Client, stored: Stored, **params: str) -> Any:
    return client.get(reverse("exports:intercept", args=[stored.intercept.pk]), params)


def test_one_pcapng_merges_every_session_in_time_order(
    client: Client, two_sessions: tuple[Stored, Stored], user: User, tmp_path: Path
) -> None:
    first, second = two_sessions
    client.force_login(user)
    response = export(client, first, format="pcapng")
    assert response.status_code == 200
    data = body(response)
    merged = sorted(first.frames + second.frames)
    assert frames_of(data) == [(t, LINKTYPE_RAW, d) for t, d in merged]
    record = Export.objects.get()
    assert record.kind == Export.Kind.INTERCEPT
    assert record.session is None
    assert sorted(record.session_ids) == sorted([first.session.pk, second.session.pk])
    assert record.sha256 == sha256(data)
    assert record.packets == 12
    assert record.file_name.startswith(f"{first.intercept.liid}_all-sessions_")
    assert response["Content-Type"] == "application/x-pcapng"

    tshark = shutil.which("tshark")
    if tshark is not None:
        path = tmp_path / "all.pcapng"
        path.write_bytes(data)
        fields = subprocess.run(
            [tshark, "-n", "-r", str(path), "-T", "fields", "-e", "frame.interface_name"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        # One interface per session, named after its router, mid and sid.
        assert len(fields) == 12
        assert {name.split("_")[0] for name in fields} == {first.router.name, "mx-second"}


def test_a_zip_holds_one_file_per_session_with_its_own_hash(
    client: Client, two_sessions: tuple[Stored, Stored], user: User
) -> None:
    first, second = two_sessions
    client.force_login(user)
    response = export(client, first, format="zip", member_format="pcap")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    data = body(response)
    record = Export.objects.get()
    assert record.sha256 == sha256(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert len(names) == 2
        by_session = {}
        for name in names:
            member = archive.read(name)
            assert record.members[name]["sha256"] == sha256(member)
            by_session[name] = frames_of(member)
    for stored in (first, second):
        [name] = [n for n in names if f"sid-{stored.session.sid:08x}" in n]
        assert by_session[name] == [(t, LINKTYPE_RAW, d) for t, d in stored.frames]


def test_a_window_takes_only_the_sessions_and_packets_inside_it(
    client: Client, two_sessions: tuple[Stored, Stored], user: User, data_dir: Path
) -> None:
    first, second = two_sessions
    late = stored_session(data_dir, count=2, case=first.case)  # another intercept
    client.force_login(user)
    start, end = first.frames[2][0], first.frames[4][0]
    data = body(export(client, first, format="pcapng", start=iso(start), end=iso(end)))
    inside = sorted(f for f in first.frames + second.frames if start // 1000 * 1000 <= f[0] < end)
    assert frames_of(data) == [(t, LINKTYPE_RAW, d) for t, d in inside]
    assert late.session.pk not in Export.objects.get().session_ids


def test_a_window_without_traffic_of_the_intercept_is_refused(
    client: Client, two_sessions: tuple[Stored, Stored], user: User
) -> None:
    first, _ = two_sessions
    client.force_login(user)
    after = first.session.last_seen + timedelta(hours=1)
    response = export(client, first, format="pcapng", start=after.isoformat())
    assert response.status_code == 400
    assert f"Intercept {first.intercept.liid} has no stored traffic between" in (
        response.content.decode()
    )
    assert events("export.refused")[-1].details["reason"].startswith("Intercept ")
    assert not Export.objects.exists()


def test_pcap_is_not_offered_for_several_sessions(
    client: Client, two_sessions: tuple[Stored, Stored], user: User
) -> None:
    client.force_login(user)
    response = export(client, two_sessions[0], format="pcap")
    assert response.status_code == 400
    assert "Select a valid choice. pcap is not one of the available choices." in (
        response.content.decode()
    )


def test_the_case_export_list_shows_the_exports(
    client: Client, two_sessions: tuple[Stored, Stored], user: User
) -> None:
    first, _ = two_sessions
    client.force_login(user)
    body(export(client, first, format="pcapng"))
    record = Export.objects.get()
    page = client.get(reverse("exports:case_exports", args=[first.case.pk])).content.decode()
    assert record.file_name in page
    assert record.sha256 in page
    manifest = client.get(reverse("exports:manifest", args=[record.pk])).content.decode()
    assert record.sha256 in manifest
    for stored in two_sessions:
        assert f'<td class="mono">{stored.session.sid:#x}</td>' in manifest


def test_the_case_page_offers_intercept_downloads_only_with_the_right(
    client: Client, two_sessions: tuple[Stored, Stored], user: User
) -> None:
    first, _ = two_sessions
    link = f'href="{reverse("exports:intercept", args=[first.intercept.pk])}"'
    client.force_login(user)
    assert link in client.get(reverse("console:case", args=[first.case.pk])).content.decode()
    client.force_login(make_user(Role.LI_ADMIN))  # sees the case, may not download
    page = client.get(reverse("console:case", args=[first.case.pk]))
    assert page.status_code == 200
    assert link not in page.content.decode()


def test_a_purged_file_of_any_session_in_the_window_refuses_the_export(
    client: Client, two_sessions: tuple[Stored, Stored], user: User
) -> None:
    first, second = two_sessions
    purged = second.files[0]
    purged.purged_at = purged.created_at
    purged.save()
    client.force_login(user)
    response = export(client, first, format="zip")
    assert response.status_code == 400
    assert f"1 capture file(s) of session {second.session.sid:#x} in this window were purged" in (
        response.content.decode()
    )
    assert not Export.objects.exists()
