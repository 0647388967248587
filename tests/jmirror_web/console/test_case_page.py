"""The case page: 404 for whoever may not see the case's metadata, its intercepts and
sessions for those who may, and a bounded number of queries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jmirror_web.console.views import SESSIONS_PER_PAGE
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Case, Intercept, Session
from receiver.contrail import CONTRAIL_MID
from tests.factories import assign, make_case, make_intercept, make_router, make_session, make_user
from tests.jmirror_web.console.live_config import live_config

pytestmark = pytest.mark.django_db


@pytest.fixture
def case() -> Case:
    case = make_case(reference="CASE-PAGE-1")
    router = make_router(name="edge-router-1")
    intercept = make_intercept(case, liid="LIID-PAGE-1", intercept_id=0x300, routers=[router])
    make_session(intercept, router=router, mid=0x300, sid=0x90, packets=4321, bytes=10240)
    return case


def page(client: Client, user: User, case: Case, query: str = "") -> object:
    client.force_login(user)
    return client.get(reverse("console:case", args=[case.pk]) + query)


def test_the_assigned_analyst_sees_the_intercepts_and_sessions(client: Client, case: Case):
    analyst = make_user(Role.ANALYST)
    assign(analyst, case)
    response = page(client, analyst, case)
    assert response.status_code == 200  # type: ignore[attr-defined]
    text = response.content.decode()  # type: ignore[attr-defined]
    assert "LIID-PAGE-1" in text
    assert "edge-router-1" in text
    assert "0x300" in text
    assert "0x90" in text
    assert "4,321" in text
    assert "10.0\xa0KB" in text
    session = Session.objects.get(sid=0x90)
    assert reverse("console:session", args=[session.pk]) in text


def test_an_li_administrator_sees_any_case(client: Client, case: Case):
    assert page(client, make_user(Role.LI_ADMIN), case).status_code == 200  # type: ignore[attr-defined]


@pytest.mark.parametrize("role", [Role.ANALYST, Role.AUDITOR, Role.SYSADMIN, None])
def test_whoever_may_not_see_its_metadata_gets_404(client: Client, case: Case, role: Role | None):
    user = make_user(role)
    assign(user, make_case())
    response = page(client, user, case)
    assert response.status_code == 404  # type: ignore[attr-defined]
    assert b"CASE-PAGE-1" not in response.content  # type: ignore[attr-defined]


def test_an_assigned_auditor_still_gets_404(client: Client, case: Case):
    # An assignment gives metadata only to analysts (access.py); the auditor reads the
    # records in the admin, not the traffic.
    auditor = make_user(Role.AUDITOR)
    assign(auditor, case)
    assert page(client, auditor, case).status_code == 404  # type: ignore[attr-defined]


def test_a_case_that_does_not_exist_is_404_like_a_hidden_one(client: Client):
    client.force_login(make_user(Role.LI_ADMIN))
    assert client.get(reverse("console:case", args=[999999])).status_code == 404


def test_an_anonymous_visitor_is_sent_to_sign_in(client: Client, case: Case):
    url = reverse("console:case", args=[case.pk])
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('console:login')}?next={url}"


def test_the_live_data_names_this_case_its_intercepts_and_routers_only(client: Client, case: Case):
    other = make_case()
    other_router = make_router(name="other-router")
    make_session(make_intercept(other, liid="OTHER-LIID"), router=other_router)
    analyst = make_user(Role.ANALYST)
    assign(analyst, case)
    assign(analyst, other)
    config = live_config(page(client, analyst, case))  # type: ignore[arg-type]
    intercept = Intercept.objects.get(liid="LIID-PAGE-1")
    router = intercept.routers.get()
    assert config == {
        "subscriptions": [{"stream": "case", "id": case.pk}],
        "case": case.pk,
        "addSessions": True,
        "sessionUrl": reverse("console:session", args=[0]),
        "intercepts": {str(intercept.pk): "LIID-PAGE-1"},
        "routers": {str(router.pk): "edge-router-1"},
        # How case.js tells a Contrail session's summary (and what it shows for it).
        "contrailMid": CONTRAIL_MID,
        "contrailMidText": "Contrail (CN2)",
    }


def _add_sessions(intercept: Intercept, count: int) -> None:
    router = make_router()
    now = timezone.now()
    first = Session.objects.filter(intercept=intercept).count()
    Session.objects.bulk_create(
        Session(
            router=router,
            intercept=intercept,
            mid=intercept.intercept_id,
            sid=first + number,
            first_seen=now - timedelta(hours=1),
            last_seen=now - timedelta(seconds=number),
            packets=number,
            bytes=number * 100,
        )
        for number in range(count)
    )


def test_sessions_are_paginated(client: Client, case: Case):
    intercept = make_intercept(case)
    _add_sessions(intercept, SESSIONS_PER_PAGE + 5)
    analyst = make_user(Role.ANALYST)
    assign(analyst, case)
    first = page(client, analyst, case).content.decode()  # type: ignore[attr-defined]
    assert first.count("data-stream=") == SESSIONS_PER_PAGE
    assert "page 1 of 2" in first
    second = page(client, analyst, case, "?page=2")
    text = second.content.decode()  # type: ignore[attr-defined]
    assert text.count("data-stream=") == 6
    assert live_config(second)["addSessions"] is False  # type: ignore[arg-type]


def _case_queries(client: Client, user: User, case: Case) -> int:
    client.force_login(user)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("console:case", args=[case.pk])).status_code == 200
    return len(queries)


@pytest.mark.parametrize("role", [Role.LI_ADMIN, Role.ANALYST])
def test_the_case_page_takes_as_many_queries_for_100_sessions_as_for_10(
    client: Client, case: Case, role: Role, django_assert_max_num_queries
):
    user = make_user(role)
    assign(user, case)
    intercepts = [make_intercept(case, routers=[make_router()]) for _ in range(2)]
    _add_sessions(intercepts[0], 10)
    few = _case_queries(client, user, case)
    _add_sessions(intercepts[1], 90)
    make_intercept(case, routers=[make_router(), make_router()])
    many = _case_queries(client, user, case)
    assert few == many
    with django_assert_max_num_queries(12):
        client.get(reverse("console:case", args=[case.pk]))


def test_the_heading_line_names_the_agency_only_when_the_case_has_one(client: Client):
    analyst = make_user(Role.ANALYST)
    with_agency = make_case(title="Warrant A", agency="Agency A")
    without = make_case(title="Warrant B", agency="")
    assign(analyst, with_agency)
    assign(analyst, without)
    assert "Warrant A · Agency A · " in page(client, analyst, with_agency).content.decode()  # type: ignore[attr-defined]
    assert "Warrant B · <span" in page(client, analyst, without).content.decode()  # type: ignore[attr-defined]
