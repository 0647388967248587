"""Probing is visible: every URL of a case object (case, intercept, session, packet,
export, their API endpoints) refused to a user who may not see it, or to a visitor,
leaves exactly one audit refusal event naming the object asked for, a repeat within the
window adds none, and the refusal itself shows nothing (a forbidden object's 404 is the
404 of a missing one).

The URLs are generated from the URL configuration, as in test_no_leaks.py, so a case
object's page added later is walked too. The admin's pages are not walked here: they
are for record managers and auditors, who may see the records anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import get_resolver, resolve
from rest_framework.test import APIClient

from jmirror_web.audit.models import AuditEvent
from jmirror_web.exports.models import Export
from jmirror_web.intercepts.access import Role
from tests.factories import (
    assign,
    make_capture_file,
    make_case,
    make_intercept,
    make_router,
    make_session,
    make_user,
)
from tests.test_no_leaks import SECRET_MARKERS, _routes

pytestmark = pytest.mark.django_db

REFUSALS = ("access.refused", "export.refused", "packet view refused")
MISSING = 999_999
OTHER = "424242"  # any other parameter (a packet number), unlike any object's id
# The URL parameters that name a case object, and the API's detail routes.
OBJECT_PARAMETERS = {
    "case_id": "intercepts.Case",
    "intercept_id": "intercepts.Intercept",
    "session_id": "intercepts.Session",
    "export_id": "exports.Export",
}
API_DETAIL = {
    "api/cases/": "intercepts.Case",
    "api/intercepts/": "intercepts.Intercept",
    "api/sessions/": "intercepts.Session",
}
# How a page is asked for when a plain GET would not reach its access check.
POSTED = {"exports:verify_session_files"}
QUERIES = {"console:packet_jump": {"at": "1"}}
# Every case object's page and endpoint today; the walk must find at least these.
EXPECTED = {
    "console:case",
    "console:session",
    "console:packet",
    "console:packet_jump",
    "exports:session",
    "exports:intercept",
    "exports:case",
    "exports:case_exports",
    "exports:manifest",
    "exports:manifest_json",
    "exports:verify_session_files",
    "api:case-detail",
    "api:intercept-detail",
    "api:session-detail",
    "api:session_pcap",
    "api:case_pcap",
    "api:export",
}
_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")


@dataclass(frozen=True)
class Probe:
    name: str
    object_type: str
    path: str  # with {} for the object's id


def case_object_probes() -> list[Probe]:
    probes = {}
    for route in _routes(get_resolver().url_patterns):
        route = route.replace("^", "").replace("$", "").replace("\\Z", "").replace("\\", "")
        route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", route)
        if route.startswith("admin/"):
            continue
        names = _PARAMETER.findall(route)
        object_type = next((OBJECT_PARAMETERS[n] for n in names if n in OBJECT_PARAMETERS), None)
        if object_type is None and "pk" in names:
            object_type = next((t for p, t in API_DETAIL.items() if route.startswith(p)), None)
        if object_type is None:
            continue
        template = "/" + _PARAMETER.sub(
            lambda m: "{}" if m[1] in OBJECT_PARAMETERS or m[1] == "pk" else OTHER, route
        )
        name = resolve(template.format(1)).view_name
        probes[template] = Probe(name, object_type, template)
    return sorted(probes.values(), key=lambda probe: probe.path)


@pytest.fixture
def secret() -> dict[str, int]:
    case = make_case(reference="SECRET-CASE-REF", title="Secret warrant title")
    router = make_router(name="secret-router")
    intercept = make_intercept(
        case, liid="SECRETLIID", target_description="secret target description", routers=[router]
    )
    session = make_session(intercept, router=router)
    make_capture_file(session, path="sessions/secret/1.pcap")
    export = Export.objects.create(
        requester_name="someone",
        kind="session",
        case=case,
        intercept=intercept,
        session=session,
        format="pcap",
        file_name="SECRETLIID-export.pcap",
    )
    return {
        "intercepts.Case": case.pk,
        "intercepts.Intercept": intercept.pk,
        "intercepts.Session": session.pk,
        "exports.Export": export.pk,
    }


def ask(client: Client, probe: Probe, object_id: int) -> Any:
    path = probe.path.format(object_id)
    if probe.name in POSTED:
        return client.post(path)
    return client.get(path, QUERIES.get(probe.name, {}))


def refusals_after(last_id: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(id__gt=last_id, action__in=REFUSALS).order_by("id"))


def last_event_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def body(response: Any) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("utf-8", "replace")
    return str(response.content.decode("utf-8", "replace"))


def test_the_walk_finds_every_case_object_page_and_endpoint() -> None:
    assert {probe.name for probe in case_object_probes()} >= EXPECTED


def _analyst_of_another_case() -> User:
    user = make_user(Role.ANALYST)
    assign(user, make_case())
    return user


@pytest.mark.parametrize("who", ["analyst of another case", "sysadmin", "anonymous"])
def test_every_refused_case_object_url_is_audited_once_per_window(
    secret: dict[str, int], who: str
) -> None:
    client: Client = APIClient()
    user = None
    if who == "analyst of another case":
        user = _analyst_of_another_case()
    elif who == "sysadmin":
        user = make_user(Role.SYSADMIN)
    if user is not None:
        client.force_login(user)
    problems = []
    for probe in case_object_probes():
        object_id = secret[probe.object_type]
        for attempt in (object_id, MISSING):
            before = last_event_id()
            first = ask(client, probe, attempt)
            written = refusals_after(before)
            label = f"{probe.path.format(attempt)} ({who})"
            if first.status_code not in (302, 401, 403, 404):
                problems.append(f"{label} answered {first.status_code}")
            if len(written) != 1:
                problems.append(f"{label} left {len(written)} refusal events")
                continue
            event = written[0]
            if (event.object_type, event.object_id) != (probe.object_type, str(attempt)):
                problems.append(f"{label} audited {event.object_type} {event.object_id}")
            if event.actor_id != (user.pk if user else None):
                problems.append(f"{label} audited actor {event.actor_id}")
            # The same probe again within the window: counted, not written.
            before = last_event_id()
            ask(client, probe, attempt)
            if refusals_after(before):
                problems.append(f"{label} was audited again within the window")
            leaked = [marker for marker in SECRET_MARKERS if marker in body(first)]
            if leaked:
                problems.append(f"{label} shows {leaked}")
    assert problems == []


@pytest.mark.parametrize("who", ["analyst of another case", "anonymous"])
def test_a_forbidden_object_is_refused_exactly_as_a_missing_one(
    secret: dict[str, int], who: str
) -> None:
    client: Client = APIClient()
    if who != "anonymous":
        client.force_login(_analyst_of_another_case())
    for probe in case_object_probes():
        object_id = secret[probe.object_type]
        forbidden, missing = ask(client, probe, object_id), ask(client, probe, MISSING)
        assert forbidden.status_code == missing.status_code, probe.path
        for part in (lambda r: r.get("Location", ""), body):
            assert without_id(part(forbidden), object_id) == without_id(part(missing), MISSING)


def without_id(text: str, object_id: int) -> str:
    """The text with the id taken out of the paths in it (plain or URL-encoded), and the
    page's CSRF token (its sign-out form's), which Django masks afresh for every page."""
    text = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', 'name="csrfmiddlewaretoken"', text)
    return re.sub(rf"(/|%2F){object_id}(?![0-9])", r"\1{}", text)


def test_the_repeats_are_counted_into_the_next_window_event(
    secret: dict[str, int], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jmirror_web.audit import refusals

    clock = [1000.0]
    monkeypatch.setattr(refusals.time, "monotonic", lambda: clock[0])
    settings.JMIRROR_REFUSAL_AUDIT_SECONDS = 60
    client = Client()
    client.force_login(_analyst_of_another_case())
    path = f"/cases/{secret['intercepts.Case']}/"
    for _ in range(4):
        assert client.get(path).status_code == 404
    clock[0] += 61
    assert client.get(path).status_code == 404
    events = list(AuditEvent.objects.filter(action="access.refused").order_by("id"))
    assert [event.details.get("suppressed") for event in events] == [None, 3]
    assert events[0].details == {
        "path": path,
        "reason": "not visible to this user",
        "where": "console:case",
    }
    # For the auditor: the case asked for is named (the refused user saw a bare 404).
    assert events[0].object_repr.startswith("SECRET-CASE-REF")
    assert client.get(f"/cases/{MISSING}/").status_code == 404
    missing = AuditEvent.objects.filter(action="access.refused").latest("id")
    assert (missing.object_id, missing.object_repr) == (str(MISSING), "")
    assert missing.details["reason"] == "no such object"


@pytest.mark.django_db(transaction=True)
async def test_refused_live_subscriptions_and_connections_are_audited_once_per_window(
    settings: Any,
) -> None:
    from asgiref.sync import sync_to_async

    from tests.jmirror_web.live.helpers import (
        FAST_HASHERS,
        communicator,
        ensure_role_groups,
        live,
        sign_in,
        subscribe,
    )

    settings.PASSWORD_HASHERS = FAST_HASHERS

    def world() -> tuple[int, str]:
        ensure_role_groups()
        return make_case().pk, sign_in(_analyst_of_another_case())[1]

    case_id, cookie = await sync_to_async(world)()
    async with live(cookie) as socket:
        for object_id in (case_id, case_id, MISSING, MISSING):
            assert (await subscribe(socket, "case", object_id))["code"] == "forbidden"
    for _ in range(3):
        socket = communicator(cookie=None)
        assert (await socket.connect(timeout=5))[0]
        await socket.disconnect()

    def refusals() -> list[tuple[str, str, str]]:
        return [
            (event.action, event.object_id, event.details["reason"])
            for event in AuditEvent.objects.filter(action__startswith="live.").exclude(
                action="live.subscribe"
            )
        ]

    assert sorted(await sync_to_async(refusals)()) == sorted(
        [
            ("live.connect_refused", "", "not_signed_in"),
            ("live.subscribe_refused", str(MISSING), "forbidden"),
            ("live.subscribe_refused", str(case_id), "forbidden"),
        ]
    )
