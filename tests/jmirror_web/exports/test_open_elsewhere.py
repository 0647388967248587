"""Several capture hosts: a file still being written on another host, which this web
process cannot read (no web process reaches into a capture host), is left out of an
export, and the manifest, its page and the pcapng comment say exactly what is missing:
the node, the time range and the packets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from jmirror_web.exports.models import Export
from jmirror_web.intercepts.models import CaptureFile
from receiver.store import LINKTYPE_RAW
from tests.factories import assign, make_router, make_session
from tests.jmirror_web.exports.evidence import (
    SECOND,
    Stored,
    body,
    events,
    frames_of,
    iso,
    moment,
    packets_for,
    store,
    stored_session,
)

pytestmark = pytest.mark.django_db

OTHER = "capture-b"


@pytest.fixture(autouse=True)
def this_node(settings: Any) -> None:
    settings.NODE_NAME = "web-1"


def open_elsewhere(data_dir: Path, capture: CaptureFile, *, readable: bool = False) -> None:
    """As the row of a file another host is writing looks from here: open, no hash, its
    node; the file itself on that host's disk only (or, ``readable``, on a directory
    this host shares, as ``.part``)."""
    path = data_dir / capture.path
    if readable:
        path.rename(path.with_name(path.name + ".part"))
    else:
        path.unlink()
    CaptureFile.objects.filter(pk=capture.pk).update(closed=False, sha256="", node=OTHER)


def download(client: Client, stored: Stored, **params: str) -> Any:
    return client.get(reverse("exports:session", args=[stored.session.pk]), params)


def test_a_session_export_leaves_out_the_open_file_of_another_host_and_says_so(
    client: Client, stored: Stored, analyst: User, data_dir: Path
) -> None:
    newest = stored.files[0]  # 4 packets, the last 4 seconds
    open_elsewhere(data_dir, newest)
    client.force_login(analyst)

    response = download(client, stored, format="pcapng")

    assert response.status_code == 200
    data = body(response)
    kept = stored.frames[:8]
    assert frames_of(data) == [(t, LINKTYPE_RAW, frame) for t, frame in kept]
    export = Export.objects.get()
    assert export.state == Export.State.COMPLETE
    assert export.packets == 8
    manifest = export.manifest()
    (session,) = manifest["sessions"]
    assert [each["id"] for each in session["files"]] == [f.pk for f in reversed(stored.files[1:])]
    (missing,) = session["not_included"]
    assert missing == {
        "id": newest.pk,
        "name": Path(newest.path).name,
        "node": OTHER,
        "reason": "still being written on another capture host",
        "first_packet": iso(stored.frames[8][0]),
        "last_packet": iso(stored.frames[11][0]),
        "packets": 4,
        "bytes": newest.bytes,
    }
    (note,) = manifest["notes"]
    assert note.startswith(f"Not included: 4 packets of session {stored.router.name} mid ")
    for part in (iso(stored.frames[8][0]), iso(stored.frames[11][0]), f"capture host {OTHER}"):
        assert part in note
    # The file says so too, in its section comment.
    assert f"still being written on capture host {OTHER}" in export.comment
    assert "still being written on capture host" in data.decode("latin-1")
    # And the export's page, and its JSON manifest.
    page = client.get(reverse("exports:manifest", args=[export.pk])).content.decode()
    assert note.replace("'", "&#x27;") in page
    assert f'<tr class="not-included" data-node="{OTHER}">' in page
    served = json.loads(client.get(reverse("exports:manifest_json", args=[export.pk])).content)
    assert served["sessions"][0]["not_included"] == [missing]


def test_an_open_file_this_host_can_read_is_exported_as_any_other(
    client: Client, stored: Stored, analyst: User, data_dir: Path
) -> None:
    open_elsewhere(data_dir, stored.files[0], readable=True)
    client.force_login(analyst)

    data = body(download(client, stored, format="pcap"))

    assert len(frames_of(data)) == 12
    manifest = Export.objects.get().manifest()
    assert manifest["sessions"][0]["not_included"] == []
    # Nothing left out; only that the open file has no SHA-256 recorded yet.
    [note] = manifest["notes"]
    assert note.startswith("No SHA-256 was recorded yet for 1 source file still being written")


def test_an_open_file_of_this_node_is_never_taken_for_another_host_s(
    client: Client, stored: Stored, analyst: User, data_dir: Path, settings: Any
) -> None:
    # This host's own file gone is a missing file, refused as before (not left out).
    settings.NODE_NAME = OTHER
    open_elsewhere(data_dir, stored.files[0])
    client.force_login(analyst)

    response = download(client, stored, format="pcap")

    assert response.status_code == 400
    assert not Export.objects.exists()


def test_a_session_with_only_an_open_file_elsewhere_is_refused_saying_where_and_when(
    client: Client, stored: Stored, analyst: User, data_dir: Path, settings: Any
) -> None:
    settings.JMIRROR_SESSION_QUIET_SECONDS = 60
    for each in stored.files:
        open_elsewhere(data_dir, each)
    client.force_login(analyst)

    response = download(client, stored, format="pcap")

    assert response.status_code == 400
    text = response.content.decode()
    assert "only in a file still being written on another capture host" in text
    assert f"node {OTHER} from " in text
    assert "(4 packets)" in text
    assert "after 60 s without a packet" in text
    assert not Export.objects.exists()
    assert events("export.refused")


def test_an_intercept_export_lists_a_session_left_out_whole(
    client: Client, analyst: User, data_dir: Path
) -> None:
    first = stored_session(data_dir, count=4)
    # A second session of the same intercept, all of it in one file open on another host.
    router = make_router(name="mx-other-host")
    start = first.frames[0][0] + SECOND // 2
    frames = [(start + i * SECOND, data) for i, data in enumerate(packets_for(3))]
    session = make_session(
        first.intercept,
        router=router,
        mid=first.intercept.intercept_id,
        sid=0x4343,
        first_seen=moment(frames[0][0]),
        last_seen=moment(frames[-1][0]),
    )
    (open_file,) = store(data_dir, session, frames)
    open_elsewhere(data_dir, open_file)
    assign(analyst, first.case)
    client.force_login(analyst)

    response = client.get(
        reverse("exports:intercept", args=[first.intercept.pk]), {"format": "pcapng"}
    )

    assert response.status_code == 200
    data = body(response)
    assert [frame for _, _, frame in frames_of(data)] == [frame for _, frame in first.frames]
    manifest = Export.objects.get().manifest()
    assert [each["id"] for each in manifest["sessions"]] == [first.session.pk, session.pk]
    left_out = manifest["sessions"][1]
    assert left_out["files"] == []
    assert [(each["node"], each["packets"]) for each in left_out["not_included"]] == [(OTHER, 3)]
    (note,) = manifest["notes"]
    assert "mx-other-host" in note
