"""Every URL the project serves, walked as an anonymous user and as users who must not see
a case, looking for that case's data in what comes back.

The walk is generated from the URL configuration, so a page or endpoint added later is
walked too, without anyone remembering to add it here. Path parameters are filled with
the primary key of every record of the secret case, so detail pages of its case,
intercept, session, capture file, router and audit events are all requested.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from jmirror_web.audit.log import record
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
from tests.jmirror_web.live.helpers import (
    FAST_HASHERS,
    LIVE_PATH,
    closed_with,
    communicator,
    ensure_role_groups,
    live,
    publish,
    sign_in,
    subscribe,
    summary,
)

pytestmark = pytest.mark.django_db

# Strings that exist only in the secret case's records.
SECRET_MARKERS = (
    "SECRET-CASE-REF",
    "Secret warrant title",
    "SECRETLIID",
    "secret target description",
    "secret-router",
    "sessions/secret/",
    "secret-audit-detail",
)
# Pages anyone may see: the sign-in pages, the health probe and the home page.
PUBLIC = {
    "/",
    "/healthz",
    "/admin/login/",
    "/admin/logout/",
    "/accounts/login/",
    "/accounts/logout/",
    "/api/",
}
_CONVERTER = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>")


def _routes(patterns: list[URLPattern | URLResolver], prefix: str = "") -> Iterator[str]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        else:
            yield route


def _concrete(route: str, values: list[str]) -> Iterator[str]:
    """The route as paths: regex routes (the admin's) lose their anchors, and every
    parameter is filled with each of ``values``."""
    route = route.replace("^", "").replace("$", "").replace("\\Z", "").replace("\\", "")
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", route)
    if "(" in route or "[" in route:
        return  # a pattern that cannot be written as a plain path (none are expected)
    if not _CONVERTER.search(route):
        yield "/" + route
        return
    for value in values:
        yield "/" + _CONVERTER.sub(value, route)


@pytest.fixture
def secret_case_ids() -> list[str]:
    case = make_case(reference="SECRET-CASE-REF", title="Secret warrant title")
    router = make_router(name="secret-router")
    intercept = make_intercept(
        case, liid="SECRETLIID", target_description="secret target description", routers=[router]
    )
    session = make_session(intercept, router=router)
    capture = make_capture_file(session, path="sessions/secret/1.pcap")
    event = record("test.secret", case, details={"note": "secret-audit-detail"})
    # Another case with the same kinds of records, which some users are assigned to.
    visible = make_case(valid_from=case.valid_from - timedelta(days=1))
    make_session(make_intercept(visible))
    ids = {case.pk, router.pk, intercept.pk, session.pk, capture.pk, event.pk}
    return sorted({str(value) for value in ids} | {"add"})


def all_paths(values: list[str]) -> list[str]:
    return sorted(
        {
            path
            for route in _routes(get_resolver().url_patterns)
            for path in _concrete(route, values)
            if not path.startswith("/static/")
        }
    )


def leaks(client: Client, paths: list[str]) -> list[str]:
    found = []
    for path in paths:
        response = client.get(path)
        if getattr(response, "streaming", False):
            body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
        else:
            body = response.content
        text = body.decode("utf-8", "replace")
        found += [
            f"{path} ({response.status_code}) shows {m!r}" for m in SECRET_MARKERS if m in text
        ]
    return found


def test_the_walk_covers_the_admin_and_the_api(secret_case_ids: list[str]):
    paths = all_paths(secret_case_ids)
    assert any(path.startswith("/admin/intercepts/intercept/") for path in paths)
    assert any(path.startswith("/api/cases/") for path in paths)
    assert len(paths) > 50


def test_an_anonymous_user_gets_nothing_but_the_public_pages(
    client: Client, secret_case_ids: list[str]
):
    opened = []
    for path in all_paths(secret_case_ids):
        status = client.get(path).status_code
        if path not in PUBLIC and status not in (301, 302, 401, 403, 404, 405):
            opened.append(f"{path} answered {status}")
    assert opened == []
    assert leaks(client, all_paths(secret_case_ids)) == []


def _signed_in(client: Client, user: User) -> Client:
    client.force_login(user)
    return client


@pytest.mark.parametrize("role", [Role.ANALYST, Role.SYSADMIN])
def test_a_user_of_another_case_sees_nothing_of_the_secret_case(
    client: Client, secret_case_ids: list[str], role: Role
):
    user = make_user(role, is_staff=True)
    assign(user, make_case())
    assert leaks(_signed_in(client, user), all_paths(secret_case_ids)) == []


def test_an_auditor_sees_the_records_but_no_session_or_file_of_the_secret_case(
    client: Client, secret_case_ids: list[str]
):
    auditor = make_user(Role.AUDITOR, is_staff=True)
    client.force_login(auditor)
    found = leaks(client, all_paths(secret_case_ids))
    # Auditors read every record (cases, intercepts, routers) and the audit log; the
    # capture file path is session data they must not see.
    assert [entry for entry in found if "sessions/secret/" in entry] == []


def test_the_live_websocket_route_is_the_only_one_and_is_walked_below():
    # A new websocket route must be added to the walk below before this passes again.
    from jmirror_web.asgi import application
    from jmirror_web.live.routing import websocket_urlpatterns

    assert set(application.application_mapping) == {"http", "websocket"}
    assert [str(pattern.pattern) for pattern in websocket_urlpatterns] == [LIVE_PATH.lstrip("/")]


@pytest.mark.django_db(transaction=True)
async def test_an_anonymous_user_gets_no_live_data(secret_case_ids: list[str]):
    socket = communicator(cookie=None)
    assert (await socket.connect(timeout=5))[0]
    assert await closed_with(socket) == 4401
    await socket.disconnect()


def _live_users() -> dict[str, str]:
    ensure_role_groups()
    cookies = {}
    for role in (Role.ANALYST, Role.SYSADMIN, Role.AUDITOR):
        user = make_user(role, is_staff=True)
        assign(user, make_case())
        cookies[role.value] = sign_in(user)[1]
    return cookies


@pytest.mark.django_db(transaction=True)
async def test_a_user_of_another_case_gets_no_live_data_of_the_secret_case(
    secret_case_ids: list[str], settings: Any
):
    settings.PASSWORD_HASHERS = FAST_HASHERS
    cookies = await sync_to_async(_live_users)()
    secret = await sync_to_async(
        lambda: Session.objects.select_related("intercept").get(intercept__liid="SECRETLIID")
    )()
    numbers = [int(value) for value in secret_case_ids if value.isdigit()]
    for cookie in cookies.values():
        # One connection per stream: all of them at once would meet the message rate limit.
        for stream in ("session", "intercept", "case"):
            async with live(cookie) as socket:
                for number in numbers:
                    reply = await subscribe(socket, stream, number)
                    assert (reply["type"], reply["code"]) == ("error", "forbidden")
        async with live(cookie) as socket:
            assert (await subscribe(socket, "dashboard"))["type"] == "subscribed"
            await publish(summary(secret))
            assert await socket.receive_nothing(timeout=0.3)
