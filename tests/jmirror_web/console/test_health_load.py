"""The health page shows each receiver's load (active sessions, receive round,
files closed early by the open-file bound) and how far the database's counters trail."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import ReceiverProcess
from tests.factories import make_user

pytestmark = pytest.mark.django_db

URL = reverse("console:health")


def cell(text: str, field: str) -> str:
    found = re.search(rf'data-field="{field}">([^<]*)<', text)
    assert found is not None, field
    return found.group(1)


def test_the_health_page_shows_load_round_time_and_bookkeeping_backlog(client: Client) -> None:
    now = timezone.now()
    ReceiverProcess.objects.create(
        hostname="mediation-1",
        pid=4242,
        started_at=now - timedelta(hours=1),
        reported_at=now,
        active_sessions=2345,
        round_ms=12.5,
        longest_round_ms=250.5,
        bound_closes=678,
        bookkeeping_backlog=9876,
        bookkeeping_lag_seconds=7.5,
    )
    client.force_login(make_user(Role.SYSADMIN))
    page = client.get(URL)
    assert page.status_code == 200
    text = page.content.decode()
    assert cell(text, "active_sessions") == "2,345"
    assert cell(text, "round_ms") == "12.5"
    assert cell(text, "bound_closes") == "678"
    assert cell(text, "bookkeeping_backlog") == "9,876"
    assert cell(text, "bookkeeping_lag_seconds") == "7.5"
    assert "250.5" in text
    assert "678 closed early by the open-file bound" in text
    # Past LAG_ALERT_SECONDS the lag is shown as a problem.
    assert re.search(r'class="num error" data-field="bookkeeping_lag_seconds"', text)


def test_a_receiver_that_keeps_up_shows_no_lag_alert(client: Client) -> None:
    now = timezone.now()
    ReceiverProcess.objects.create(
        hostname="mediation-1",
        pid=1,
        started_at=now,
        reported_at=now,
        active_sessions=20,
        round_ms=1.0,
        bookkeeping_backlog=20,
        bookkeeping_lag_seconds=0.9,
    )
    client.force_login(make_user(Role.SYSADMIN))
    text = client.get(URL).content.decode()
    assert cell(text, "bookkeeping_lag_seconds") == "0.9"
    assert 'class="num error" data-field="bookkeeping_lag_seconds"' not in text
    assert 'class="num error" data-field="round_ms"' not in text
    assert "closed early by the open-file bound" not in text


def test_counters_trailing_the_traffic_alert_on_the_dashboard(client: Client) -> None:
    now = timezone.now()
    common = {"started_at": now, "reported_at": now}
    ReceiverProcess.objects.create(
        hostname="slow-db",
        pid=1,
        bookkeeping_lag_seconds=12.4,
        bookkeeping_backlog=10_000,
        **common,
    )
    ReceiverProcess.objects.create(
        hostname="keeps-up", pid=2, bookkeeping_lag_seconds=1.1, bookkeeping_backlog=300, **common
    )
    client.force_login(make_user(Role.SYSADMIN))
    response = client.get(reverse("home"))
    assert response.status_code == 200
    page = response.content.decode()
    assert (
        "Receiver slow-db:1: the database&#x27;s counters trailed the traffic by 12 s at its "
        "last write (10,000 session counters)" in page
    )
    assert "keeps-up" not in page
