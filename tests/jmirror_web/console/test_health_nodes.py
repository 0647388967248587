"""The health page's capture hosts: each node's receivers (live, stale or stopped, last
report), its open files and its closed files and bytes, as counts only."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jmirror_web.console import health
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import ReceiverProcess
from tests.factories import make_capture_file, make_session, make_user

pytestmark = pytest.mark.django_db

URL = reverse("console:health")


def _receiver(node: str, pid: int, *, silent_for: timedelta = timedelta(0)) -> ReceiverProcess:
    now = timezone.now()
    return ReceiverProcess.objects.create(
        hostname=f"host-{node}",
        node=node,
        pid=pid,
        started_at=now - timedelta(hours=1),
        reported_at=now - silent_for,
    )


def _node_row(text: str, node: str) -> str:
    found = re.search(rf'<tr data-node="{re.escape(node)}">(.*?)</tr>', text, re.S)
    assert found is not None, f"no row for node {node!r}"
    return found.group(1)


def _field(row: str, name: str) -> str:
    found = re.search(rf'data-field="{name}">([^<]*)<', row)
    assert found is not None, name
    return found.group(1).replace("\xa0", " ")


def _page(client: Client) -> str:
    client.force_login(make_user(Role.SYSADMIN))
    response = client.get(URL)
    assert response.status_code == 200
    return response.content.decode()


def test_each_node_lists_its_receivers_open_files_and_closed_files_and_bytes(
    client: Client,
) -> None:
    _receiver("capture-a", 10)
    _receiver("capture-b", 20, silent_for=timedelta(minutes=5))
    session = make_session()
    make_capture_file(session, node="capture-a", bytes=1000)
    make_capture_file(session, node="capture-a", bytes=2048)
    make_capture_file(session, node="capture-a", bytes=500, closed=False, sha256="")
    make_capture_file(session, node="capture-b", bytes=4096)
    # Purged by retention: no longer held, not counted.
    make_capture_file(session, node="capture-b", bytes=10**9, purged_at=timezone.now())
    # A node whose receivers are gone for more than a day still shows its files.
    make_capture_file(session, node="capture-c", bytes=7)

    text = _page(client)

    a = _node_row(text, "capture-a")
    assert 'class="badge state-running">live<' in a
    assert "host-capture-a:10" in a
    assert (_field(a, "open_files"), _field(a, "open_bytes")) == ("1", "500 bytes")
    assert (_field(a, "closed_files"), _field(a, "closed_bytes")) == ("2", "3.0 KB")
    b = _node_row(text, "capture-b")
    assert 'class="badge state-stale">stale<' in b
    assert (_field(b, "open_files"), _field(b, "closed_files")) == ("0", "1")
    assert _field(b, "closed_bytes") == "4.0 KB"
    c = _node_row(text, "capture-c")
    assert "no receiver" in c
    assert "none in the last day" in c
    # By name.
    assert text.index('data-node="capture-a"') < text.index('data-node="capture-b"')


def test_a_stopped_receiver_makes_a_stopped_node_and_the_latest_report_shows(
    client: Client,
) -> None:
    earlier = _receiver("capture-a", 10, silent_for=timedelta(hours=3))
    later = _receiver("capture-a", 11, silent_for=timedelta(hours=2))
    for process in (earlier, later):
        process.stopped_at = process.reported_at
        process.save(update_fields=["stopped_at"])

    row = _node_row(_page(client), "capture-a")

    assert 'class="badge state-stopped">stopped<' in row
    assert f'<time datetime="{later.reported_at.isoformat()}"' in row


def test_files_from_before_node_names_are_listed_apart(client: Client) -> None:
    make_capture_file(make_session(), node="")
    row = _node_row(_page(client), "")
    assert "recorded before node names" in row
    assert _field(row, "closed_files") == "1"


def test_nodes_past_the_bound_are_cut_and_the_page_says_so(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "MAX_NODES", 2)
    for number in range(3):
        _receiver(f"capture-{number}", number)

    text = _page(client)

    assert text.count("<tr data-node=") == 2
    assert "More than 2 nodes" in text


def test_the_queries_do_not_grow_with_nodes_or_files(client: Client) -> None:
    client.force_login(make_user(Role.SYSADMIN))

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(URL).status_code == 200
        return len(captured)

    _receiver("capture-a", 1)
    make_capture_file(make_session(), node="capture-a")
    few = queries()
    session = make_session()
    for number in range(10):
        _receiver(f"capture-{number}", 100 + number)
        make_capture_file(session, node=f"capture-{number}")
    assert queries() == few
