"""The conversations pages, the case search and their API: what a metadata holder sees,
and every refusal audited on every new route."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse

from jmirror_web.audit.models import AuditEvent
from jmirror_web.audit.refusals import ACCESS_REFUSED
from jmirror_web.conversations import summaries
from jmirror_web.conversations.views import SEARCHED
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Session
from tests.factories import assign, make_session
from tests.jmirror_web.conversations.stored_session import (
    CLIENT,
    TLS_SERVER,
    WEB,
    store_packets,
    subscriber_traffic,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def summarised(session: Session, data_dir: Path) -> Session:
    store_packets(data_dir, session, subscriber_traffic())
    summaries.summarise(10)
    return session


def signed_in(client: Client, role: Role, session: Session | None = None) -> User:
    # Without a password: hashing one is most of a test's time, and force_login needs none.
    user = User.objects.create(username=f"{role}-{User.objects.count()}")
    user.groups.add(Group.objects.get_or_create(name=role.value)[0])
    if session is not None:
        assert session.intercept is not None
        assign(user, session.intercept.case)
    client.force_login(user)
    return user


def case_id(session: Session) -> int:
    assert session.intercept is not None
    return session.intercept.case_id


def routes(session: Session) -> list[tuple[str, bool]]:
    """Every new URL of the session and its case, and whether it is the API's."""
    return [
        (reverse("conversations:session", args=[session.pk]), False),
        (reverse("conversations:case", args=[case_id(session)]), False),
        (reverse("conversations:search", args=[case_id(session)]) + "?q=example", False),
        (reverse("api:session_conversations", args=[session.pk]), True),
        (reverse("api:session_names", args=[session.pk]), True),
        (reverse("api:case_search", args=[case_id(session)]) + "?q=example", True),
    ]


def test_a_metadata_holder_sees_the_sessions_conversations_and_names_with_their_links(
    client: Client, summarised: Session
) -> None:
    signed_in(client, Role.ANALYST, summarised)
    page = client.get(reverse("conversations:session", args=[summarised.pk]))
    assert page.status_code == 200
    rows = page.context["conversations"]
    # By bytes, largest first: the TLS connection carried the ClientHello.
    assert [(row["address_b"], row["port_b"]) for row in rows] == [
        (TLS_SERVER, 443),
        (WEB, 80),
        ("198.51.100.53", 53),
    ]
    tls = rows[0]
    assert (tls["protocol"], tls["tcp_state"], tls["packets_ab"], tls["packets_ba"]) == (
        "TCP",
        "closed (FIN)",
        4,
        2,
    )
    link = urlsplit(tls["packets_url"])
    assert link.path == reverse("console:session", args=[summarised.pk])
    assert parse_qs(link.query)["address"] == [CLIENT]
    assert parse_qs(link.query)["port"] == ["443"]
    export = urlsplit(tls["export_url"])
    assert export.path == reverse("exports:session", args=[summarised.pk])
    assert parse_qs(export.query)["ports"] == ["40000 443"]
    text = page.content.decode()
    assert "secure.example.net" in text
    assert "www.example.org" in text

    by_packets = client.get(
        reverse("conversations:session", args=[summarised.pk]), {"sort": "packets", "q": "udp"}
    )
    assert [row["protocol"] for row in by_packets.context["conversations"]] == ["UDP"]
    assert by_packets.context["names"] == []  # no name has "udp" in it


def test_the_export_link_opens_the_form_filled_in_without_downloading(
    client: Client, summarised: Session
) -> None:
    signed_in(client, Role.ANALYST, summarised)
    page = client.get(reverse("conversations:session", args=[summarised.pk]))
    form = client.get(page.context["conversations"][0]["export_url"])
    assert form.status_code == 200
    assert not hasattr(form, "streaming_content")
    assert form.context["form"].initial["ports"] == "40000 443"
    assert f'value="{CLIENT} {TLS_SERVER}"' in form.content.decode()


def test_a_user_without_the_download_right_gets_no_export_link(
    client: Client, summarised: Session
) -> None:
    signed_in(client, Role.LI_ADMIN)  # metadata of every case, content of none unassigned
    answer = client.get(reverse("api:session_conversations", args=[summarised.pk])).json()
    assert len(answer["results"]) == 3
    assert {row["export_url"] for row in answer["results"]} == {None}


def test_the_api_lists_names_sorted_and_filtered(client: Client, summarised: Session) -> None:
    signed_in(client, Role.ANALYST, summarised)
    url = reverse("api:session_names", args=[summarised.pk])
    answer = client.get(url, {"sort": "name"}).json()
    assert [(row["kind"], row["name"]) for row in answer["results"]] == [
        ("tls-sni", "secure.example.net"),
        ("dns-answer", "www.example.com"),
        ("dns-query", "www.example.com"),
        ("http-host", "www.example.org"),
    ]
    assert (answer["more"], answer["left_out"]) == (False, 0)
    only = client.get(url, {"q": "93.184.216.34"}).json()["results"]
    assert [row["kind"] for row in only] == ["dns-answer"]
    refused = client.get(url, {"sort": "size"})
    assert refused.status_code == 400
    assert "sort" in refused.json()


def test_the_case_search_finds_by_address_name_port_and_time_and_is_audited(
    client: Client, summarised: Session
) -> None:
    user = signed_in(client, Role.ANALYST, summarised)
    other = make_session(summarised.intercept)  # no traffic: never found by a term
    url = reverse("api:case_search", args=[case_id(summarised)])

    def found(**query: str) -> dict[str, Any]:
        answer = client.get(url, query)
        assert answer.status_code == 200, answer.content
        result: dict[str, Any] = answer.json()
        return result

    by_name = found(q="Example.NET")
    assert [each["id"] for each in by_name["sessions"]] == [summarised.pk]
    assert [row["address_b"] for row in by_name["conversations"]] == [TLS_SERVER]
    assert [row["name"] for row in by_name["names"]] == ["secure.example.net"]
    # The resolver is no server of the name: its question finds no conversation.
    resolved = found(q="www.example.com")
    assert resolved["conversations"] == []
    assert sorted(row["kind"] for row in resolved["names"]) == ["dns-answer", "dns-query"]
    by_address = found(q=WEB)
    assert [(row["address_b"], row["port_b"]) for row in by_address["conversations"]] == [(WEB, 80)]
    assert [row["kind"] for row in by_address["names"]] == ["http-host"]
    by_port = found(q="53")
    assert [row["port_b"] for row in by_port["conversations"]] == [53]
    assert by_port["names"] == []
    both = found(q=f"{TLS_SERVER} 80")
    assert both["conversations"] == []
    assert both["sessions"] == []
    before = found(q="example", end="2000-01-01T00:00:00")
    assert (before["sessions"], before["conversations"], before["names"]) == ([], [], [])
    in_time = found(start="2023-11-14T22:13:20", end="2023-11-14T22:13:21")
    assert {each["id"] for each in in_time["sessions"]} == {summarised.pk}
    assert other.pk not in {each["id"] for each in in_time["sessions"]}

    searches = AuditEvent.objects.filter(action=SEARCHED, actor=user)
    assert searches.count() == 7
    assert searches.order_by("pk").first().details == {"q": "Example.NET"}  # type: ignore[union-attr]

    page = client.get(reverse("conversations:search", args=[case_id(summarised)]), {"q": "example"})
    assert page.status_code == 200
    assert "secure.example.net" in page.content.decode()
    refused = client.get(url, {"q": "70000"})
    assert refused.status_code == 400
    assert "not a port" in refused.json()["q"][0]


def test_the_case_page_has_the_search_box(client: Client, summarised: Session) -> None:
    signed_in(client, Role.ANALYST, summarised)
    page = client.get(reverse("console:case", args=[case_id(summarised)])).content.decode()
    assert f'action="{reverse("conversations:search", args=[case_id(summarised)])}"' in page


@pytest.mark.parametrize("role", [Role.ANALYST, Role.AUDITOR, Role.SYSADMIN])
def test_users_without_the_metadata_right_are_refused_on_every_route_audited(
    client: Client, summarised: Session, role: Role
) -> None:
    """An analyst not assigned to the case, an auditor and a system administrator (who
    may read records, or health, but no case's metadata)."""
    user = signed_in(client, role)
    for url, api in routes(summarised):
        response = client.get(url)
        assert response.status_code == 404, url
        if api:
            assert "results" not in response.json()
    refusals = AuditEvent.objects.filter(action=ACCESS_REFUSED, actor=user)
    assert refusals.count() == len(routes(summarised))
    assert {event.details["reason"] for event in refusals} == {"not visible to this user"}
    assert not AuditEvent.objects.filter(action=SEARCHED).exists()


def test_visitors_are_refused_on_every_route_audited(client: Client, summarised: Session) -> None:
    for url, api in routes(summarised):
        response = client.get(url)
        assert response.status_code == (401 if api else 302), url
    refusals = AuditEvent.objects.filter(action=ACCESS_REFUSED, actor__isnull=True)
    assert refusals.count() == len(routes(summarised))
    assert {event.details["reason"] for event in refusals} == {"not signed in"}
