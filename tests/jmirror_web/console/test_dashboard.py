"""The dashboard: which cases each role sees, its alerts, and its bounded queries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from pytest_django.fixtures import Settings

from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Listener, ReceiverProcess, UnclaimedStream
from tests.factories import assign, make_case, make_intercept, make_session, make_user
from tests.jmirror_web.console.live_config import live_config

pytestmark = pytest.mark.django_db


def dashboard(client: Client, user: object) -> str:
    client.force_login(user)  # type: ignore[arg-type]
    response = client.get(reverse("home"))
    assert response.status_code == 200
    return response.content.decode()


def make_receiver(**fields: object) -> ReceiverProcess:
    now = timezone.now()
    values: dict[str, object] = {
        "hostname": "mediation1",
        "pid": 4242,
        "started_at": now - timedelta(hours=1),
        "reported_at": now,
    }
    values.update(fields)
    return ReceiverProcess.objects.create(**values)


def make_unclaimed(**fields: object) -> UnclaimedStream:
    now = timezone.now()
    values: dict[str, object] = {
        "source": "198.51.100.7",
        "mid": 0x777,
        "sid": 0x42,
        "reason": UnclaimedStream.Reason.NO_INTERCEPT,
        "packets": 12,
        "first_seen": now - timedelta(minutes=10),
        "last_seen": now - timedelta(minutes=1),
    }
    values.update(fields)
    return UnclaimedStream.objects.create(**values)


def test_an_analyst_sees_their_case_with_its_totals_and_not_another(client: Client):
    mine = make_case(reference="MINE-1")
    make_session(make_intercept(mine), packets=1234, bytes=2048)
    make_case(reference="OTHER-1")
    analyst = make_user(Role.ANALYST)
    assign(analyst, mine)
    page = dashboard(client, analyst)
    assert "MINE-1" in page
    assert "OTHER-1" not in page
    assert "1,234" in page
    assert "2.0\xa0KB" in page
    assert reverse("console:case", args=[mine.pk]) in page


def test_an_li_administrator_sees_every_case_with_counters(client: Client):
    first = make_case(reference="ALL-1")
    second = make_case(reference="ALL-2")
    page = dashboard(client, make_user(Role.LI_ADMIN))
    assert "ALL-1" in page
    assert "ALL-2" in page
    assert reverse("console:case", args=[first.pk]) in page
    assert reverse("console:case", args=[second.pk]) in page


def test_an_auditor_sees_the_records_but_no_traffic(client: Client):
    case = make_case(reference="AUDITED-1")
    make_session(make_intercept(case), packets=987654)
    response_page = dashboard(client, make_user(Role.AUDITOR))
    assert "AUDITED-1" in response_page
    assert "987,654" not in response_page
    assert reverse("console:case", args=[case.pk]) not in response_page
    assert "records only" in response_page


def test_an_auditor_gets_no_case_in_the_live_data(client: Client):
    make_case()
    client.force_login(make_user(Role.AUDITOR))
    assert live_config(client.get(reverse("home"))) == {"subscriptions": [], "cases": []}


def test_a_system_administrator_sees_no_case(client: Client):
    make_case(reference="HIDDEN-1")
    page = dashboard(client, make_user(Role.SYSADMIN))
    assert "HIDDEN-1" not in page
    assert "There is no case for you to see." in page


def test_the_live_data_names_only_the_users_cases(client: Client):
    mine, other = make_case(), make_case()
    analyst = make_user(Role.ANALYST)
    assign(analyst, mine)
    client.force_login(analyst)
    config = live_config(client.get(reverse("home")))
    assert config == {"subscriptions": [{"stream": "dashboard"}], "cases": [mine.pk]}
    assert other.pk not in config["cases"]


def test_a_silent_intercept_in_force_raises_an_alert(client: Client):
    case = make_case()
    make_intercept(case, liid="QUIET-1")
    page = dashboard(client, make_user(Role.LI_ADMIN))
    assert "Intercept QUIET-1" in page
    assert "has received nothing ever" in page


def test_an_intercept_with_recent_traffic_raises_no_alert(client: Client):
    intercept = make_intercept(make_case(), liid="BUSY-1")
    make_session(intercept, last_seen=timezone.now() - timedelta(minutes=2))
    assert "Intercept BUSY-1" not in dashboard(client, make_user(Role.LI_ADMIN))


def test_an_intercept_silent_longer_than_the_setting_raises_an_alert(
    client: Client, settings: Settings
):
    settings.JMIRROR_ALERT_SILENCE_MINUTES = 1
    intercept = make_intercept(make_case(), liid="STOPPED-1")
    make_session(intercept, last_seen=timezone.now() - timedelta(minutes=2))
    page = dashboard(client, make_user(Role.LI_ADMIN))
    assert "Intercept STOPPED-1" in page
    assert "(alert after 1 minutes)" in page


def test_an_intercept_that_just_came_into_force_raises_no_alert(client: Client):
    now = timezone.now()
    make_intercept(make_case(), liid="NEW-1", valid_from=now - timedelta(minutes=5))
    assert "Intercept NEW-1" not in dashboard(client, make_user(Role.LI_ADMIN))


def test_an_intercept_of_a_suspended_case_raises_no_silence_alert(client: Client):
    make_intercept(make_case(status="suspended"), liid="PAUSED-1")
    assert "Intercept PAUSED-1" not in dashboard(client, make_user(Role.LI_ADMIN))


def test_an_analyst_gets_no_silence_alert_for_another_case(client: Client):
    make_intercept(make_case(), liid="ELSEWHERE-1")
    analyst = make_user(Role.ANALYST)
    assign(analyst, make_case())
    assert "ELSEWHERE-1" not in dashboard(client, analyst)


def test_a_warrant_ending_within_a_day_raises_an_alert(client: Client):
    make_case(reference="ENDING-1", valid_until=timezone.now() + timedelta(hours=5))
    make_case(reference="LASTING-1", valid_until=timezone.now() + timedelta(days=3))
    page = dashboard(client, make_user(Role.LI_ADMIN))
    assert "Case ENDING-1: the warrant ends in" in page
    assert "Case LASTING-1: the warrant ends" not in page


def test_recent_unclaimed_streams_alert_an_li_administrator(client: Client):
    make_unclaimed(mid=0x40000300)
    page = dashboard(client, make_user(Role.LI_ADMIN))
    assert "1 unclaimed mirror stream(s) in the last hour" in page
    assert "mirror id 0x300 sid 0x42 from 198.51.100.7 (no intercept)" in page
    assert reverse("console:unclaimed") in page


def test_old_unclaimed_streams_raise_no_alert(client: Client):
    make_unclaimed(last_seen=timezone.now() - timedelta(hours=2))
    assert "unclaimed mirror stream" not in dashboard(client, make_user(Role.LI_ADMIN))


def test_an_analyst_gets_no_unclaimed_or_health_alert(client: Client):
    make_unclaimed()
    receiver = make_receiver(store_errors={"ENOSPC": 3})
    Listener.objects.create(receiver=receiver, address="0.0.0.0:30030", kernel_drops=5)
    page = dashboard(client, make_user(Role.ANALYST))
    assert "unclaimed" not in page.lower()
    assert "ENOSPC" not in page
    assert "dropped by the kernel" not in page


@pytest.mark.parametrize("role", [Role.SYSADMIN, Role.LI_ADMIN])
def test_kernel_drops_and_store_errors_alert_who_looks_after_the_service(
    client: Client, role: Role
):
    receiver = make_receiver(store_errors={"ENOSPC": 3})
    Listener.objects.create(receiver=receiver, address="0.0.0.0:30030", kernel_drops=1500)
    Listener.objects.create(receiver=receiver, address="[::]:30030", kernel_drops=0)
    page = dashboard(client, make_user(role))
    assert "Receiver mediation1:4242 socket 0.0.0.0:30030: 1,500 datagrams dropped" in page
    assert "[::]:30030" not in page
    assert "Receiver mediation1:4242 could not store packets (ENOSPC: 3)" in page


def test_a_stopped_or_silent_receiver_raises_no_alert(client: Client):
    now = timezone.now()
    make_receiver(store_errors={"ENOSPC": 3}, stopped_at=now)
    make_receiver(pid=7, store_errors={"EIO": 1}, reported_at=now - timedelta(hours=2))
    page = dashboard(client, make_user(Role.SYSADMIN))
    assert "could not store" not in page


def test_a_healthy_receiver_raises_no_alert(client: Client):
    receiver = make_receiver()
    Listener.objects.create(receiver=receiver, address="0.0.0.0:30030", kernel_drops=None)
    page = dashboard(client, make_user(Role.SYSADMIN))
    assert 'class="alert' not in page


def _cases_with_traffic(count: int, analyst: object) -> None:
    for _ in range(count):
        case = make_case()
        intercept = make_intercept(case, valid_from=case.valid_from)
        make_session(intercept, last_seen=timezone.now() - timedelta(hours=1))
        assign(analyst, case)  # type: ignore[arg-type]


def _dashboard_queries(client: Client, user: object) -> int:
    client.force_login(user)  # type: ignore[arg-type]
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("home")).status_code == 200
    return len(queries)


@pytest.mark.parametrize("role", [Role.LI_ADMIN, Role.ANALYST, Role.AUDITOR])
def test_the_dashboard_takes_as_many_queries_for_30_cases_as_for_3(
    client: Client, role: Role, django_assert_max_num_queries
):
    user = make_user(role)
    make_unclaimed()
    receiver = make_receiver(store_errors={"ENOSPC": 1})
    Listener.objects.create(receiver=receiver, address="0.0.0.0:30030", kernel_drops=1)
    _cases_with_traffic(3, user)
    few = _dashboard_queries(client, user)
    _cases_with_traffic(27, user)
    many = _dashboard_queries(client, user)
    assert few == many, (few, many)
    # Four of them the traffic over time and the top talkers, summed by the database for
    # every case at once.
    with django_assert_max_num_queries(18):
        client.get(reverse("home"))


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0.5, "just now"),
        (30, "30\xa0seconds ago"),
        (59, "59\xa0seconds ago"),
        (300, "5\xa0minutes ago"),
    ],
)
def test_last_traffic_is_said_in_seconds_when_it_is_recent(seconds: float, said: str) -> None:
    from datetime import UTC, datetime, timedelta

    from jmirror_web.console.views import ago

    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert ago(now - timedelta(seconds=seconds), now) == said


def test_each_case_shows_its_traffic_over_the_last_hour_and_day(client: Client) -> None:
    from django.utils import timezone

    from jmirror_web.intercepts.models import TrafficMinute

    user = make_user(Role.ANALYST)
    busy, quiet = make_case(reference="BUSY"), make_case(reference="QUIET")
    for case in (busy, quiet):
        assign(user, case)
    session = make_session(make_intercept(busy))
    now = timezone.now().replace(second=0, microsecond=0)
    for minutes_ago, packets in ((0, 5), (10, 7), (59, 1), (60, 100), (23 * 60, 11), (25 * 60, 9)):
        TrafficMinute.objects.create(
            session=session,
            minute=now - timedelta(minutes=minutes_ago),
            packets=packets,
            bytes=packets * 100,
        )
    client.force_login(user)
    page = client.get(reverse("home")).content.decode()
    # The last hour: this minute and the 59 before it; the last day: this hour and the 23
    # before it (the 25-hour-old minute is in neither).
    assert "13 packets in the last hour; peak 7 packets per minute" in page
    assert "124 packets in the last day" in page
    assert page.count('<svg class="sparkline"') == 4
    assert "0 packets in the last hour" in page  # the quiet case: a flat line


def test_each_case_shows_its_top_talkers_of_the_last_day_but_not_its_target(
    client: Client,
) -> None:
    from django.utils import timezone

    from jmirror_web.conversations.models import Conversation

    user = make_user(Role.ANALYST)
    case = make_case(reference="TALK")
    assign(user, case)
    intercept = make_intercept(case)
    target = "203.0.113.7"
    now = timezone.now()
    flows = [
        # (session sid, peer, bytes each way, hours ago); the target is side A or B.
        (1, "198.51.100.1", 5_000, 1),
        (1, "198.51.100.2", 9_000, 2),
        (2, "198.51.100.1", 7_000, 3),  # the same peer in another session: added
        (2, "198.51.100.3", 1_000, 4),
        (2, "198.51.100.9", 99_000, 30),  # more than a day ago: left out
    ]
    sessions = {sid: make_session(intercept, sid=sid) for sid in (1, 2, 3)}
    # A session of one conversation, which its target started: not a talker either.
    Conversation.objects.create(
        session=sessions[3],
        protocol=17,
        address_a=target,
        port_a=53000,
        address_b="198.51.100.53",
        port_b=53,
        first_seen=now - timedelta(minutes=2),
        last_seen=now - timedelta(minutes=1),
        packets_ab=1,
        bytes_ab=100,
        packets_ba=1,
        bytes_ba=200,
    )
    for number, (sid, peer, size, hours) in enumerate(flows):
        a, b = (target, peer) if number % 2 else (peer, target)
        Conversation.objects.create(
            session=sessions[sid],
            protocol=6,
            address_a=a,
            port_a=40000 + number,
            address_b=b,
            port_b=443,
            first_seen=now - timedelta(hours=hours, minutes=5),
            last_seen=now - timedelta(hours=hours),
            packets_ab=10,
            bytes_ab=size,
            packets_ba=10,
            bytes_ba=size,
        )
    # The same target over IPv6 too (dual stack): its IPv6 address is not a talker either.
    for number, peer in enumerate(("2001:db8::1", "2001:db8::2")):
        Conversation.objects.create(
            session=sessions[1],
            protocol=6,
            address_a="2001:db8:7::7",
            port_a=41000 + number,
            address_b=peer,
            port_b=443,
            first_seen=now - timedelta(minutes=9),
            last_seen=now - timedelta(minutes=8),
            packets_ab=1,
            bytes_ab=10,
            packets_ba=1,
            bytes_ba=10,
        )
    client.force_login(user)
    page = client.get(reverse("home")).content.decode()
    cell = page.split("data-talkers>")[1].split("</td>")[0]
    shown = [part.split(">")[1].split("<")[0] for part in cell.split('class="mono"')[1:]]
    assert shown == ["198.51.100.1", "198.51.100.2", "198.51.100.3"]  # 24 kB, 18 kB, 2 kB
    assert "198.51.100.53" not in cell  # 300 bytes: fourth
    from jmirror_web.console.traffic import top_talkers
    from jmirror_web.intercepts.models import Case

    every = top_talkers(Case.objects.filter(pk=case.pk), now, count=10)[case.pk]
    assert [talker.address for talker in every] == [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.53",  # of the one-conversation session: its target is not listed
        "2001:db8::1",
        "2001:db8::2",
    ]
    assert "2001:db8:7::7" not in {talker.address for talker in every}
    assert (every[0].bytes, every[0].packets, every[0].sessions) == (24_000, 40, 2)
    assert target not in cell
    assert "198.51.100.9" not in cell
    assert "?q=198.51.100.1" in cell
