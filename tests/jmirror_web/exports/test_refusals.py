"""Who is refused evidence, on every path out (pages and API), and that every refusal is
audited: an analyst of another case, an LI administrator who is not assigned, an auditor,
a system administrator, and a signed-out visitor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from jmirror_web.audit.models import AuditEvent
from jmirror_web.exports.models import Export
from jmirror_web.intercepts.access import Role
from tests.factories import assign, make_case, make_user
from tests.jmirror_web.exports.evidence import Stored, body

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_throttle_counts() -> None:
    cache.clear()  # the API's throttle counts live in the cache, which outlives a test


def user_of(kind: str) -> User | None:
    if kind == "anonymous":
        return None
    if kind == "analyst of another case":
        user = make_user(Role.ANALYST)
        assign(user, make_case())
        return user
    if kind == "unassigned li-admin":
        return make_user(Role.LI_ADMIN)
    if kind == "assigned auditor":
        return make_user(Role.AUDITOR)
    return make_user(Role.SYSADMIN)


KINDS = [
    "analyst of another case",
    "unassigned li-admin",
    "assigned auditor",
    "sysadmin",
    "anonymous",
]

Get = Callable[[User | None, str], Any]


def page_get(user: User | None, url: str) -> Any:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client.get(url)


def api_get(user: User | None, url: str) -> Any:
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client.get(url)


def download_paths(stored: Stored) -> list[tuple[str, Get, str]]:
    session, intercept = stored.session, stored.intercept
    return [
        ("session page", page_get, reverse("exports:session", args=[session.pk]) + "?format=pcap"),
        (
            "intercept page",
            page_get,
            reverse("exports:intercept", args=[intercept.pk]) + "?format=pcapng",
        ),
        ("api pcap", api_get, f"/api/sessions/{session.pk}/pcap?format=pcap"),
    ]


def assert_refused(user: User | None, response: Any, how: str, reason: str) -> None:
    if user is None:
        if how == "api":
            assert response.status_code == 401
            assert response.json() == {"detail": "Authentication credentials were not provided."}
        else:
            assert response.status_code == 302
            assert response["Location"].startswith(reverse("console:login"))
    else:
        assert response.status_code == 404
    refusal = AuditEvent.objects.filter(action="export.refused").order_by("-pk").first()
    assert refusal is not None, "the refusal is audited"
    assert refusal.actor == user
    assert refusal.details["reason"] == ("not signed in" if user is None else reason)


@pytest.mark.parametrize("kind", KINDS)
def test_no_one_without_the_download_right_gets_a_byte_on_any_path(
    stored: Stored, kind: str
) -> None:
    user = user_of(kind)
    if kind == "assigned auditor":
        assert user is not None
        assign(user, stored.case)  # an assignment gives an auditor no content
    for name, get, url in download_paths(stored):
        before = AuditEvent.objects.filter(action="export.refused").count()
        response = get(user, url)
        how = "api" if name.startswith("api") else "page"
        assert_refused(user, response, how, "no download right")
        assert AuditEvent.objects.filter(action="export.refused").count() == before + 1, name
    assert not Export.objects.exists()


@pytest.fixture
def made_export(stored: Stored, analyst: User) -> Export:
    client = Client()
    client.force_login(analyst)
    body(client.get(reverse("exports:session", args=[stored.session.pk]), {"format": "pcap"}))
    return Export.objects.get()


def manifest_paths(export: Export) -> list[tuple[str, Get, str]]:
    return [
        ("manifest page", page_get, reverse("exports:manifest", args=[export.pk])),
        ("manifest json", page_get, reverse("exports:manifest_json", args=[export.pk])),
        ("api manifest", api_get, f"/api/exports/{export.pk}"),
    ]


@pytest.mark.parametrize(
    "kind", ["analyst of another case", "unassigned li-admin", "sysadmin", "anonymous"]
)
def test_manifests_are_refused_to_users_without_a_claim_to_them(
    made_export: Export, kind: str
) -> None:
    user = user_of(kind)
    for name, get, url in manifest_paths(made_export):
        before = AuditEvent.objects.filter(action="export.refused").count()
        how = "api" if name.startswith("api") else "page"
        assert_refused(user, get(user, url), how, "manifest not visible")
        assert AuditEvent.objects.filter(action="export.refused").count() == before + 1, name


def test_the_requester_an_auditor_and_another_assigned_analyst_read_the_manifest(
    made_export: Export, stored: Stored, analyst: User
) -> None:
    colleague = make_user(Role.ANALYST)
    assign(colleague, stored.case)
    for user in (analyst, make_user(Role.AUDITOR), colleague):
        for _, get, url in manifest_paths(made_export):
            response = get(user, url)
            assert response.status_code == 200, (user, url)
            assert made_export.sha256 in response.content.decode()
    assert AuditEvent.objects.filter(action="export.manifest").count() == 9


def test_an_unassigned_requester_still_reads_the_manifest_of_their_export(
    made_export: Export, analyst: User, stored: Stored
) -> None:
    analyst.case_assignments.all().delete()
    response = api_get(analyst, f"/api/exports/{made_export.pk}")
    assert response.status_code == 200
    # ...but downloads no more.
    again = api_get(analyst, f"/api/sessions/{stored.session.pk}/pcap")
    assert again.status_code == 404
