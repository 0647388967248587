"""The session live view: 404 for whoever may not see the case's metadata; totals,
files and the data its JavaScript needs for those who may."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from jmirror_web.console.views import LIVE_ROWS
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Session
from tests.factories import (
    assign,
    make_capture_file,
    make_case,
    make_intercept,
    make_router,
    make_session,
    make_user,
)
from tests.jmirror_web.console.live_config import live_config

pytestmark = pytest.mark.django_db


@pytest.fixture
def session() -> Session:
    case = make_case(reference="SESSION-CASE-1")
    intercept = make_intercept(case, liid="SESSION-LIID-1")
    session = make_session(
        intercept, router=make_router(name="bng-1"), sid=0xABC, packets=5000, bytes=4096
    )
    make_capture_file(
        session, path="sessions/SESSION-LIID-1_bng-1/first.pcap", sha256="ab" * 32, packets=4000
    )
    make_capture_file(
        session, path="sessions/SESSION-LIID-1_bng-1/second.pcap.part", sha256="", closed=False
    )
    return session


def open_page(client: Client, user: User, session: Session):  # type: ignore[no-untyped-def]
    client.force_login(user)
    return client.get(reverse("console:session", args=[session.pk]))


def _case_of(session: Session):  # type: ignore[no-untyped-def]
    assert session.intercept is not None
    return session.intercept.case


def test_the_assigned_analyst_sees_totals_and_files(client: Client, session: Session):
    analyst = make_user(Role.ANALYST)
    assign(analyst, _case_of(session))
    response = open_page(client, analyst, session)
    assert response.status_code == 200
    text = response.content.decode()
    assert "Session 0xabc of SESSION-LIID-1" in text
    assert "5,000" in text
    assert "4.0\xa0KB" in text
    assert "first.pcap" in text
    assert "second.pcap.part" in text
    assert "ab" * 32 in text
    assert "<strong>open</strong>" in text
    # The file's folder is not repeated; only its name.
    assert "sessions/SESSION-LIID-1_bng-1/" not in text
    assert "metadata only" not in text


def test_an_li_administrator_not_assigned_sees_it_without_packet_info(
    client: Client, session: Session
):
    response = open_page(client, make_user(Role.LI_ADMIN), session)
    assert response.status_code == 200
    assert "metadata only" in response.content.decode()


@pytest.mark.parametrize("role", [Role.ANALYST, Role.AUDITOR, Role.SYSADMIN, None])
def test_whoever_may_not_see_its_metadata_gets_404(
    client: Client, session: Session, role: Role | None
):
    user = make_user(role)
    assign(user, make_case())
    response = open_page(client, user, session)
    assert response.status_code == 404
    assert b"SESSION-LIID-1" not in response.content


def test_a_session_claimed_by_no_intercept_is_404_even_for_an_li_administrator(client: Client):
    orphan = make_session(make_intercept())
    Session.objects.filter(pk=orphan.pk).update(intercept=None)
    assert open_page(client, make_user(Role.LI_ADMIN), orphan).status_code == 404


def test_an_anonymous_visitor_is_sent_to_sign_in(client: Client, session: Session):
    response = client.get(reverse("console:session", args=[session.pk]))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console:login"))


def test_the_live_data_is_this_sessions_subscription_and_totals(client: Client, session: Session):
    analyst = make_user(Role.ANALYST)
    assign(analyst, _case_of(session))
    assert live_config(open_page(client, analyst, session)) == {
        "subscriptions": [{"stream": "session", "id": session.pk}],
        "session": session.pk,
        "totals": {"packets": 5000, "bytes": 4096, "stored": 10},
        "limit": LIVE_ROWS,
        "olderPackets": "every stored packet is in the capture files below: open one by "
        "number, or download the session",
        "packetAtUrl": reverse("console:packet_jump", args=[session.pk]),
        "sessionApiUrl": f"/api/sessions/{session.pk}/",
    }


def test_the_recorded_totals_the_page_catches_up_with_are_readable_by_its_user(
    client: Client, session: Session
):
    """session.js raises its totals to what ``sessionApiUrl`` answers now and then."""
    analyst = make_user(Role.ANALYST)
    assign(analyst, _case_of(session))
    url = live_config(open_page(client, analyst, session))["sessionApiUrl"]
    recorded = client.get(url, HTTP_ACCEPT="application/json").json()
    assert (recorded["packets"], recorded["bytes"], recorded["stored_packets"]) == (5000, 4096, 10)


def test_live_rows_link_to_their_packet_only_for_a_user_with_the_content_right(
    client: Client, session: Session
):
    """session.js links a row's time to ``packetAtUrl?at=<ns>`` only when it is set."""
    metadata_only = live_config(open_page(client, make_user(Role.LI_ADMIN), session))
    assert metadata_only["packetAtUrl"] is None
    analyst = make_user(Role.ANALYST)
    assign(analyst, _case_of(session))
    assert live_config(open_page(client, analyst, session))["packetAtUrl"] == (
        f"/sessions/{session.pk}/packets/"
    )


def test_the_page_has_the_live_list_controls_and_the_download_form(
    client: Client, session: Session
):
    analyst = make_user(Role.ANALYST)
    assign(analyst, _case_of(session))
    text = open_page(client, analyst, session).content.decode()
    for control in ("data-pause", "data-filters", "data-chart", "data-packets", "data-list-note"):
        assert control in text
    assert f'action="{reverse("exports:session", args=[session.pk])}"' in text
    # No inline script: only the JSON block and the static files.
    assert text.count("<script") == 4
    assert 'type="application/json"' in text


def test_the_session_page_takes_a_fixed_number_of_queries(
    client: Client, session: Session, django_assert_max_num_queries
):
    analyst = make_user(Role.ANALYST)
    assign(analyst, _case_of(session))
    for _ in range(20):
        make_capture_file(session)
    client.force_login(analyst)
    # The stored packet list reads its files' rows once, whatever their number.
    with django_assert_max_num_queries(11):
        client.get(reverse("console:session", args=[session.pk]))


def test_the_live_list_note_says_where_each_role_finds_the_packets_it_does_not_hold(
    client: Client, session: Session
):
    analyst = make_user(Role.ANALYST)
    assign(analyst, _case_of(session))
    older = live_config(open_page(client, analyst, session))["olderPackets"]
    assert older.endswith("open one by number, or download the session")
    metadata_only = live_config(open_page(client, make_user(Role.LI_ADMIN), session))
    assert "download" not in metadata_only["olderPackets"]
    assert "not yours to open" in metadata_only["olderPackets"]


def test_the_live_list_scrolls_in_its_own_box_above_the_capture_files(
    client: Client, session: Session
):
    analyst = make_user(Role.ANALYST)
    assign(analyst, _case_of(session))
    text = open_page(client, analyst, session).content.decode()
    box = text.index("data-packet-box")
    assert box < text.index('<table class="packets">') < text.index("<h2>Capture files</h2>")
    css = (settings.BASE_DIR / "static" / "css" / "jmirror.css").read_text()
    rule = css.split(".packet-list {", 1)[1].split("}", 1)[0]
    assert "max-height" in rule
    assert "overflow-y: auto" in rule
