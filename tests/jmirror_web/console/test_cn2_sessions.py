"""A CN2 / Contrail session (one vRouter's frames to one analyzer port: mid CONTRAIL_MID,
sid the port) on the pages, the admin and the API: its format, vRouter and analyzer port
where a jmirror session shows its mid and sid, and never CONTRAIL_MID as an id."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Intercept, Router, Session, UnclaimedStream
from receiver.contrail import CONTRAIL_MID
from tests.factories import assign, make_case, make_intercept, make_router, make_session, make_user
from tests.jmirror_web.console.live_config import live_config

pytestmark = pytest.mark.django_db

PORT = 8123
# CONTRAIL_MID written as the pages write a mid, and as the intercept id its low 30
# bits would make: neither may appear anywhere for a Contrail session.
CONTRAIL_MID_HEX = f"{CONTRAIL_MID:#x}"
FORBIDDEN = (CONTRAIL_MID_HEX, f"{CONTRAIL_MID:x}", f"0x{PORT:x}")


def make_contrail_session(**fields: Any) -> Session:
    """A CN2 intercept's session from vRouter "vr-7" to analyzer port ``PORT``."""
    case = fields.pop("case", None) or make_case(reference="CN2-CASE")
    vrouter = make_router(
        name="vr-7", address="192.0.2.77", kind=Router.Kind.CN2, format=Router.Format.CONTRAIL
    )
    intercept = make_intercept(
        case,
        liid="CN2-LIID",
        kind=Intercept.Kind.CN2,
        intercept_id=None,
        analyzer_port=PORT,
        routers=[vrouter],
    )
    return make_session(intercept, router=vrouter, mid=CONTRAIL_MID, sid=PORT, **fields)


def assert_no_contrail_ids(text: str) -> None:
    for forbidden in FORBIDDEN:
        assert forbidden not in text


@pytest.fixture
def session() -> Session:
    return make_contrail_session()


@pytest.fixture
def analyst(client: Client, session: Session) -> None:
    user = make_user(Role.ANALYST)
    assert session.intercept is not None
    assign(user, session.intercept.case)
    client.force_login(user)


def test_the_session_page_names_format_vrouter_and_port(
    client: Client, session: Session, analyst: None
) -> None:
    response = client.get(reverse("console:session", args=[session.pk]))
    assert response.status_code == 200
    text = response.content.decode()
    assert f"Contrail (CN2), vRouter vr-7 (192.0.2.77), analyzer port {PORT}" in text
    assert f"<title>Session CN2-LIID analyzer port {PORT}" in text
    assert "mid <span" not in text
    assert_no_contrail_ids(text)


def test_a_jmirror_session_page_still_shows_mid_and_sid(client: Client) -> None:
    intercept = make_intercept(intercept_id=0x300)
    session = make_session(intercept, mid=0x300, sid=0x90)
    user = make_user(Role.ANALYST)
    assign(user, intercept.case)
    client.force_login(user)
    text = client.get(reverse("console:session", args=[session.pk])).content.decode()
    assert 'mid <span class="mono">0x300</span> · sid <span class="mono">0x90</span>' in text
    assert "Contrail" not in text


def test_the_case_page_row_and_live_config(client: Client, session: Session, analyst: None) -> None:
    assert session.intercept is not None
    response = client.get(reverse("console:case", args=[session.intercept.case_id]))
    assert response.status_code == 200
    text = response.content.decode()
    row = re.search(
        rf'<tr data-stream="([^"]*)" data-session="{session.pk}">(.*?)</tr>', text, re.S
    )
    assert row is not None
    # The row's key is the live summaries' (router id, mid, sid), as case.js builds it.
    assert row[1] == f"{session.router_id}:{CONTRAIL_MID}:{PORT}"
    assert ">Contrail (CN2)</a>" in row[2]
    assert f">analyzer port {PORT}</a>" in row[2]
    assert_no_contrail_ids(row[2])
    config = live_config(response)
    assert config["contrailMid"] == CONTRAIL_MID
    assert config["contrailMidText"] == "Contrail (CN2)"


def test_the_dashboard_alert_names_a_contrail_stream_by_port(client: Client) -> None:
    client.force_login(make_user(Role.LI_ADMIN))
    now = timezone.now()
    UnclaimedStream.objects.create(
        source="192.0.2.88",
        mid=CONTRAIL_MID,
        sid=PORT,
        reason=UnclaimedStream.Reason.NO_INTERCEPT,
        packets=5,
        first_seen=now - timedelta(minutes=1),
        last_seen=now,
    )
    text = client.get(reverse("home")).content.decode()
    assert f"Contrail, analyzer port {PORT} from 192.0.2.88 (no intercept)" in text
    assert_no_contrail_ids(text)


@pytest.mark.parametrize("role", [Role.ANALYST, Role.AUDITOR, Role.SYSADMIN])
def test_an_unassigned_user_cannot_see_the_session(
    client: Client, session: Session, role: Role
) -> None:
    user = make_user(role)
    assign(user, make_case(reference="OTHER"))
    client.force_login(user)
    assert client.get(reverse("console:session", args=[session.pk])).status_code == 404
    assert client.get(reverse("api:session-detail", args=[session.pk])).status_code == 404
    assert client.get(reverse("console:packet", args=[session.pk, 1])).status_code == 404


def test_the_api_says_format_and_analyzer_port(
    client: Client, session: Session, analyst: None
) -> None:
    body = client.get(reverse("api:session-detail", args=[session.pk])).json()
    assert body["format"] == "contrail"
    assert body["analyzer_port"] == PORT
    assert (body["mid"], body["sid"]) == (CONTRAIL_MID, PORT)  # the stream's key, as stored
    assert body["mid_hex"] is None
    assert body["sid_hex"] is None
    assert body["intercept_id"] is None


def test_the_api_says_jmirror_for_a_jmirror_session(client: Client) -> None:
    intercept = make_intercept(intercept_id=0x300)
    session = make_session(intercept, mid=0xC0000300, sid=0x90)
    user = make_user(Role.ANALYST)
    assign(user, intercept.case)
    client.force_login(user)
    body = client.get(reverse("api:session-detail", args=[session.pk])).json()
    assert body["format"] == "jmirror"
    assert body["analyzer_port"] is None
    assert (body["mid_hex"], body["intercept_id"], body["sid_hex"]) == ("0xc0000300", 0x300, "0x90")


def test_the_admin_session_list_and_page(client: Client, session: Session) -> None:
    client.force_login(make_user(Role.LI_ADMIN))
    listed = client.get(reverse("admin:intercepts_session_changelist"))
    assert listed.status_code == 200
    text = listed.content.decode()
    assert "Contrail (CN2)" in text
    assert f"analyzer port {PORT}" in text
    assert_no_contrail_ids(text)
    shown = client.get(reverse("admin:intercepts_session_change", args=[session.pk]))
    assert shown.status_code == 200
    text = shown.content.decode()
    assert f"analyzer port {PORT}" in text
    assert str(CONTRAIL_MID) not in text
    assert_no_contrail_ids(text)
