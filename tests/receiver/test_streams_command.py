"""manage.py streams: sessions with counters and files, unclaimed streams marked as such."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from jmirror_web.intercepts.models import AGGREGATE_MID, UnclaimedStream
from receiver.contrail import CONTRAIL_MID
from tests.factories import make_capture_file, make_router, make_session

pytestmark = pytest.mark.django_db


def streams(*args: str) -> str:
    out = io.StringIO()
    call_command("streams", *args, stdout=out)
    return out.getvalue()


def unclaimed(**fields: object) -> UnclaimedStream:
    now = timezone.now()
    values: dict[str, object] = {
        "source": "198.51.100.7",
        "mid": 0x4242,
        "sid": 3,
        "reason": UnclaimedStream.Reason.UNKNOWN_ROUTER,
        "packets": 17,
        "first_seen": now - timedelta(minutes=1),
        "last_seen": now,
    }
    values.update(fields)
    return UnclaimedStream.objects.create(**values)


def test_json_lists_sessions_with_files_and_unclaimed_streams_marked():
    session = make_session(mid=0x300, sid=0x90, packets=12, bytes=1200, stored_packets=12)
    file = make_capture_file(session, closed=False, sha256="", node="capture-a")
    router = make_router(address="203.0.113.9")
    unclaimed(source="203.0.113.9", router=router, reason="no_intercept", mid=0x777)

    document = json.loads(streams("--json"))

    [listed] = document["sessions"]
    assert listed["status"] == "claimed"
    assert (listed["id"], listed["mid"], listed["sid"]) == (session.pk, "0x00000300", "0x00000090")
    assert (listed["liid"], listed["case"]) == (
        session.intercept.liid,
        session.intercept.case.reference,
    )
    assert (listed["packets"], listed["bytes"], listed["stored_packets"]) == (12, 1200, 12)
    assert [(f["path"], f["closed"], f["node"]) for f in listed["files"]] == [
        (file.path, False, "capture-a")
    ]
    [stream] = document["unclaimed"]
    assert stream["status"] == "unclaimed"
    assert (stream["source"], stream["router"], stream["mid"], stream["reason"]) == (
        "203.0.113.9",
        router.name,
        "0x00000777",
        "no_intercept",
    )
    assert stream["packets"] == 17
    assert stream["last_seen"].endswith("Z")


def test_the_table_marks_unclaimed_streams_and_open_files():
    session = make_session()
    make_capture_file(session, path="sessions/x/open.pcap", closed=False, node="capture-b")
    unclaimed()

    lines = streams().splitlines()

    assert lines[0].startswith("STATUS")
    assert lines[1].startswith("claimed")
    assert session.intercept.liid in lines[1]
    assert "sessions/x/open.pcap" in lines[2]
    assert "(open)" in lines[2]
    assert "on capture-b" in lines[2]
    assert lines[3].startswith("unclaimed")
    assert "unknown_router" in lines[3]
    assert "198.51.100.7" in lines[3]


def test_nothing_seen_yet_says_so():
    assert streams() == "no streams seen yet\n"
    assert json.loads(streams("--json")) == {"sessions": [], "unclaimed": []}


def test_the_limit_keeps_the_latest():
    now = timezone.now()
    for minutes in range(5):
        unclaimed(sid=minutes, last_seen=now - timedelta(minutes=minutes))
    listed = json.loads(streams("--json", "--limit", "2"))["unclaimed"]
    assert [each["sid"] for each in listed] == ["0x00000000", "0x00000001"]


@pytest.mark.parametrize("limit", ["0", "-1", "1000001"])
def test_a_limit_out_of_range_is_refused(limit):
    with pytest.raises(CommandError, match="--limit must be between 1 and 1000000"):
        streams("--limit", limit)


def test_a_source_aggregate_row_is_listed_as_other_streams():
    unclaimed(mid=AGGREGATE_MID, sid=0, packets=90_000)

    [stream] = json.loads(streams("--json"))["unclaimed"]
    assert (stream["mid"], stream["sid"], stream["packets"]) == ("other", "other", 90_000)


def test_contrail_streams_are_listed_by_analyzer_port():
    vrouter = make_router(kind="cn2", port=8099)
    make_session(router=vrouter, mid=CONTRAIL_MID, sid=8099)
    unclaimed(source="192.0.2.77", mid=CONTRAIL_MID, sid=9100)

    listed = json.loads(streams("--json"))
    [session] = listed["sessions"]
    [stream] = listed["unclaimed"]
    assert (session["mid"], session["sid"]) == ("contrail", "port 8099")
    assert (stream["mid"], stream["sid"]) == ("contrail", "port 9100")
    assert "port 9100" in streams()
