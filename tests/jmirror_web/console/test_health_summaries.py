"""The health page's summaries section: how far the summariser of conversations and names
is behind (files and packets waiting, since when, files unreadable), as counts only."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jmirror_web.conversations.models import SummaryBacklog, SummaryProgress, summary_backlog
from jmirror_web.intercepts.access import Role
from tests.factories import make_capture_file, make_session, make_user

pytestmark = pytest.mark.django_db

URL = reverse("console:health")


def _field(text: str, name: str) -> str:
    found = re.search(rf'data-field="{name}">([^<]*)<', text)
    assert found is not None, name
    return found.group(1).replace("\xa0", " ").strip()


def _page(client: Client) -> str:
    client.force_login(make_user(Role.SYSADMIN))
    response = client.get(URL)
    assert response.status_code == 200
    return response.content.decode()


def test_nothing_waits_on_an_empty_system(client: Client) -> None:
    assert summary_backlog() == SummaryBacklog()
    text = _page(client)
    assert _field(text, "summary_files") == "0"
    assert _field(text, "summary_behind") == "nothing waits"


def test_the_backlog_counts_waiting_packets_since_the_oldest_and_unreadable_files(
    client: Client,
) -> None:
    session = make_session()
    early = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    summarised = make_capture_file(session, packets=10, last_packet=early - timedelta(hours=1))
    SummaryProgress.objects.create(capture=summarised, packets=10)
    partly = make_capture_file(session, packets=50, last_packet=early)
    SummaryProgress.objects.create(capture=partly, packets=20)
    make_capture_file(session, packets=7, last_packet=early + timedelta(minutes=5))
    unreadable = make_capture_file(session, packets=5, last_packet=early - timedelta(hours=2))
    SummaryProgress.objects.create(capture=unreadable, packets=0, failed_at=5, error="gone")
    # Purged: its packets are gone, nothing to summarise.
    make_capture_file(
        session, packets=99, last_packet=early - timedelta(days=1), purged_at=timezone.now()
    )

    backlog = summary_backlog()
    assert backlog == SummaryBacklog(files=2, packets=30 + 7, behind_since=early, unreadable=1)

    text = _page(client)
    assert _field(text, "summary_files") == "2"
    assert _field(text, "summary_packets") == "37"
    assert "packets up to 2026-12-01 10:00:00 UTC" in _field(text, "summary_behind")
    assert _field(text, "summary_unreadable").startswith("1 ")
    # A file that grew since it could not be read is waiting again, not unreadable.
    unreadable.packets = 8
    unreadable.save(update_fields=["packets"])
    assert summary_backlog() == SummaryBacklog(
        files=3, packets=37 + 8, behind_since=early - timedelta(hours=2), unreadable=0
    )


def test_the_page_says_when_this_hosts_receivers_do_not_summarise(
    client: Client, settings: object
) -> None:
    assert "JMIRROR_SUMMARISE=false" not in _page(client)
    settings.JMIRROR_SUMMARISE = False  # type: ignore[attr-defined]
    assert "JMIRROR_SUMMARISE=false" in _page(client)
