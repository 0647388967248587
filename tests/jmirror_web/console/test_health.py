"""The health page: system administrators only, receiver and socket counters, disk space,
and never any case data."""

from __future__ import annotations

import re
import shutil
from collections import namedtuple
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Listener, ReceiverProcess, UnclaimedStream
from tests.factories import (
    assign,
    make_capture_file,
    make_case,
    make_intercept,
    make_router,
    make_session,
    make_user,
)

pytestmark = pytest.mark.django_db

URL = reverse("console:health")
SECRET_MARKERS = ("SECRET-CASE-REF", "Secret warrant title", "SECRETLIID", "secret-router")
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def receivers() -> dict[str, ReceiverProcess]:
    now = timezone.now()
    running = ReceiverProcess.objects.create(
        hostname="mediation-1",
        pid=4242,
        started_at=now - timedelta(hours=2),
        reported_at=now,
        datagrams=1234567,
        bytes=987654321,
        malformed=17,
        unstorable=3,
        internal_errors=2,
        unclaimed_overflow=5,
        drops={"unknown_router": 111, "no_intercept": 2222, "outside_window": 0},
        store_errors={"ENOSPC": 333},
        open_files=7,
    )
    Listener.objects.create(
        receiver=running,
        address="0.0.0.0:30030",
        datagrams=1234000,
        bytes=987000000,
        kernel_drops=4545,
        rcvbuf=8388608,
    )
    Listener.objects.create(
        receiver=running, address="[::]:6502", datagrams=567, bytes=654321, kernel_drops=None
    )
    stale = ReceiverProcess.objects.create(
        hostname="mediation-2",
        pid=77,
        started_at=now - timedelta(days=3),
        reported_at=now - timedelta(minutes=5),
    )
    stopped = ReceiverProcess.objects.create(
        hostname="mediation-3",
        pid=88,
        started_at=now - timedelta(hours=5),
        reported_at=now - timedelta(hours=1),
        stopped_at=now - timedelta(hours=1),
    )
    ReceiverProcess.objects.create(
        hostname="long-gone",
        pid=99,
        started_at=now - timedelta(days=30),
        reported_at=now - timedelta(days=29),
        stopped_at=now - timedelta(days=29),
    )
    return {"running": running, "stale": stale, "stopped": stopped}


@pytest.fixture
def secret_case() -> None:
    """Case records carrying the no-leak markers, with an unclaimed stream from the
    secret router: the health page must show none of it."""
    case = make_case(reference="SECRET-CASE-REF", title="Secret warrant title")
    router = make_router(name="secret-router")
    intercept = make_intercept(case, liid="SECRETLIID", routers=[router])
    make_capture_file(make_session(intercept, router=router), path="sessions/secret/1.pcap")
    now = timezone.now()
    UnclaimedStream.objects.create(
        source=router.address,
        router=router,
        mid=0x300,
        sid=1,
        reason="no_intercept",
        packets=5,
        first_seen=now,
        last_seen=now,
    )


def _as(client: Client, user: User) -> Client:
    client.force_login(user)
    return client


def test_anonymous_users_are_sent_to_sign_in(client: Client) -> None:
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console:login"))


@pytest.mark.parametrize("role", [Role.ANALYST, Role.LI_ADMIN, Role.AUDITOR, None])
def test_only_system_administrators_may_see_it(client: Client, role: Role | None) -> None:
    user = make_user(role)
    if role is Role.ANALYST:
        assign(user, make_case())
    assert _as(client, user).get(URL).status_code == 403


def test_the_navigation_links_to_it_for_system_administrators(client: Client) -> None:
    page = _as(client, make_user(Role.SYSADMIN)).get(URL)
    assert page.status_code == 200
    assert f'href="{URL}"'.encode() in page.content


def test_a_system_administrator_sees_receivers_listeners_and_counters(
    client: Client, receivers: dict[str, ReceiverProcess]
) -> None:
    client.force_login(make_user(Role.SYSADMIN))  # slow (password hashing): then report
    running = receivers["running"]
    running.reported_at = timezone.now()
    running.save(update_fields=["reported_at"])
    page = client.get(URL)
    assert page.status_code == 200
    text = page.content.decode()
    # Receivers with their state; one stopped a month ago is no longer listed.
    assert 'data-receiver="mediation-1:4242"' in text
    assert re.search(r"mediation-1:4242</td>\s*<td><span class=\"badge state-running\">", text)
    assert re.search(r"mediation-2:77</td>\s*<td><span class=\"badge state-stale\">", text)
    assert re.search(r"mediation-3:88</td>\s*<td><span class=\"badge state-stopped\">", text)
    assert "long-gone" not in text
    assert "1 silent for more than 10 s" in text
    # Last database flush, as a machine-readable UTC time with its age.
    assert f'<time datetime="{running.reported_at.isoformat()}"' in text
    age = re.search(r"\((\d+) s ago\)", text)
    assert age is not None
    assert int(age.group(1)) < 10
    # Totals, humanized.
    for shown in ("1,234,567", "17", "7"):
        assert shown in text
    assert "941.9\xa0MB" in text or "941.9 MB" in text
    # Listeners: address, datagrams, bytes, kernel drops (or unknown), receive buffer.
    assert "0.0.0.0:30030" in text
    assert "[::]:6502" in text
    assert "4,545" in text
    assert "unknown" in text
    assert "8.0\xa0MB" in text or "8.0 MB" in text
    # Drops by reason and store errors by errno.
    for reason in ("unknown_router", "no_intercept", "outside_window", "ENOSPC"):
        assert reason in text
    for count in ("111", "2,222", "333"):
        assert f'<td class="num">{count}</td>' in text or f'error">{count}</td>' in text


def test_the_live_rates_come_from_a_script_file_and_data_attributes(
    client: Client, receivers: dict[str, ReceiverProcess]
) -> None:
    text = _as(client, make_user(Role.SYSADMIN)).get(URL).content.decode()
    assert "js/health.js" in text
    assert 'data-live-url="/ws/live/"' in text
    assert 'data-field="datagrams_per_second"' in text
    # No inline script (a Content-Security-Policy will forbid them).
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", text) == []
    assert "on" + "click=" not in text


def test_disk_space_of_the_data_directory(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def usage(path: object) -> Usage:
        asked.append(str(path))
        return Usage(total=100 * 2**30, used=60 * 2**30, free=40 * 2**30)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    text = _as(client, make_user(Role.SYSADMIN)).get(URL).content.decode()
    from django.conf import settings

    assert asked == [str(settings.DATA_DIR)]
    assert "40.0\xa0GB free" in text
    assert "40.0 % of 100.0\xa0GB" in text
    assert "60.0\xa0GB used" in text
    assert "Less than 10 % free" not in text


def test_low_disk_space_warns(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: Usage(total=100 * 2**30, used=95 * 2**30, free=5 * 2**30)
    )
    text = _as(client, make_user(Role.SYSADMIN)).get(URL).content.decode()
    assert "Less than 10 % free" in text


def test_an_unreadable_data_directory_is_said_not_a_500(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(path: object) -> Usage:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(shutil, "disk_usage", fails)
    page = _as(client, make_user(Role.SYSADMIN)).get(URL)
    assert page.status_code == 200
    assert b"disk space cannot be read" in page.content


def test_no_receiver_is_an_alert(client: Client) -> None:
    text = _as(client, make_user(Role.SYSADMIN)).get(URL).content.decode()
    assert "No receiver has reported" in text


def test_no_case_data_on_the_page(
    client: Client, receivers: dict[str, ReceiverProcess], secret_case: None
) -> None:
    sysadmin = make_user(Role.SYSADMIN)
    # Even a system administrator assigned to a case (which gives them nothing) and a
    # superuser (who has every right but content) see only counts here.
    assign(sysadmin, make_case(reference="ASSIGNED-CASE-REF"))
    superuser = make_user(is_superuser=True)
    for user in (sysadmin, superuser):
        client.force_login(user)
        text = client.get(URL).content.decode()
        for marker in (*SECRET_MARKERS, "ASSIGNED-CASE-REF", "sessions/secret/"):
            assert marker not in text


def test_the_queries_do_not_grow_with_the_receivers(
    client: Client, receivers: dict[str, ReceiverProcess]
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(make_user(Role.SYSADMIN))

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(URL).status_code == 200
        return len(captured)

    few = queries()
    for number in range(20):
        process = ReceiverProcess.objects.create(
            hostname=f"extra-{number}",
            pid=number,
            started_at=timezone.now(),
            reported_at=timezone.now(),
        )
        Listener.objects.create(receiver=process, address=f"0.0.0.0:{6000 + number}")
    assert queries() == few
