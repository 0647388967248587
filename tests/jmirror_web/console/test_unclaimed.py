"""Unclaimed streams: the list for LI administrators, and the one-step action that creates
the intercept claiming a stream, validated as the admin and the API validate it."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Case, Intercept, Router, UnclaimedStream
from receiver.gate import Claim
from receiver.gate_loader import load_gate
from tests.factories import assign, make_case, make_intercept, make_router, make_user

pytestmark = pytest.mark.django_db

URL = reverse("console:unclaimed")
MID = 0xC0000300  # version bits set: the intercept id is 0x300


def make_stream(**fields: Any) -> UnclaimedStream:
    now = timezone.now()
    values: dict[str, Any] = {
        "source": "192.0.2.200",
        "mid": MID,
        "sid": 0x90,
        "reason": UnclaimedStream.Reason.NO_INTERCEPT,
        "packets": 12345,
        "first_seen": now - timedelta(minutes=3),
        "last_seen": now,
    }
    values.update(fields)
    return UnclaimedStream.objects.create(**values)


@pytest.fixture
def li_admin(client: Client) -> User:
    user = make_user(Role.LI_ADMIN)
    client.force_login(user)
    return user


@pytest.fixture
def router() -> Router:
    return make_router(name="bras-1", address="192.0.2.200")


def _map(client: Client, stream: UnclaimedStream, **data: Any) -> Any:
    prefix = f"stream{stream.pk}-"
    posted = {prefix + name: value for name, value in data.items()}
    return client.post(reverse("console:map_unclaimed", args=[stream.pk]), posted)


# Who may see it ------------------------------------------------------------------------


def test_anonymous_users_are_sent_to_sign_in(client: Client) -> None:
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console:login"))
    stream = make_stream()
    response = client.post(reverse("console:map_unclaimed", args=[stream.pk]))
    assert response.status_code == 302
    assert not Intercept.objects.exists()


@pytest.mark.parametrize("role", [Role.ANALYST, Role.AUDITOR, Role.SYSADMIN, None])
def test_only_li_administrators_may_see_it(client: Client, role: Role | None) -> None:
    user = make_user(role)
    if role is Role.ANALYST:
        assign(user, make_case())
    client.force_login(user)
    assert client.get(URL).status_code == 403


def test_li_administrators_see_the_streams_latest_first(
    client: Client, li_admin: User, router: Router
) -> None:
    now = timezone.now()
    make_stream(router=router, sid=0x1, last_seen=now - timedelta(hours=1))
    latest = make_stream(
        source="198.51.100.9", sid=0x2, reason=UnclaimedStream.Reason.UNKNOWN_ROUTER
    )
    page = client.get(URL)
    assert page.status_code == 200
    text = page.content.decode()
    assert text.index("198.51.100.9") < text.index("bras-1")
    assert "0xc0000300" in text  # mid, all 32 bits
    assert '0x300 <span class="muted">(768)</span>' in text  # the 30-bit intercept id
    assert "0x00000001" in text
    assert "12,345" in text
    assert "unknown router" in text
    assert "no intercept" in text
    assert f'<time datetime="{latest.last_seen.isoformat()}">' in text
    assert "create intercept from this" in text


def test_an_unknown_router_row_offers_to_register_the_router(
    client: Client, li_admin: User
) -> None:
    make_stream(source="::ffff:198.51.100.9", reason=UnclaimedStream.Reason.UNKNOWN_ROUTER)
    text = client.get(URL).content.decode()
    add = reverse("admin:intercepts_router_add")
    assert f'href="{add}?address=198.51.100.9"' in text
    assert "create intercept from this" not in text


def test_a_router_registered_since_is_found_by_address(client: Client, li_admin: User) -> None:
    make_stream(reason=UnclaimedStream.Reason.UNKNOWN_ROUTER)  # row written before
    make_router(name="registered-later", address="192.0.2.200")
    text = client.get(URL).content.decode()
    assert "registered-later" in text
    assert "create intercept from this" in text


def test_the_list_is_paginated(client: Client, li_admin: User) -> None:
    now = timezone.now()
    for sid in range(60):
        make_stream(sid=sid, last_seen=now - timedelta(seconds=sid))
    first = client.get(URL).content.decode()
    assert "page 1 of 2" in first
    assert "0x0000003b" not in first  # the oldest
    second = client.get(URL + "?page=2").content.decode()
    assert "0x0000003b" in second
    assert "0x00000000" not in second


def test_no_inline_script(client: Client, li_admin: User, router: Router) -> None:
    make_stream(router=router)
    text = client.get(URL).content.decode()
    assert "<script>" not in text
    assert "on" + "submit=" not in text


# Creating the intercept ----------------------------------------------------------------


def test_creating_an_intercept_that_the_receiver_gate_claims(
    client: Client, li_admin: User, router: Router
) -> None:
    case = make_case(reference="NZ-CASE-1")
    stream = make_stream(router=router)
    assert load_gate().claim(stream.source, stream.mid, stream.sid, time.time_ns()) == (
        "no_intercept"
    )
    response = _map(client, stream, case=case.pk, liid="NZ-0042", scope_router="on")
    assert response.status_code == 302
    assert response["Location"] == URL

    intercept = Intercept.objects.get(liid="NZ-0042")
    assert intercept.case == case
    assert intercept.intercept_id == 0x300
    assert intercept.sid is None
    assert list(intercept.routers.all()) == [router]
    assert intercept.valid_until == case.valid_until
    assert case.valid_from <= intercept.valid_from <= timezone.now()

    claim = load_gate().claim(stream.source, stream.mid, 0x1234, time.time_ns())
    assert isinstance(claim, Claim)
    assert claim.intercept.liid == "NZ-0042"
    assert claim.router.router_id == router.pk

    # Audited by the model signals, as the admin's creations are, and the mapping itself.
    created = AuditEvent.objects.get(action="intercept.create", object_id=str(intercept.pk))
    assert created.actor == li_admin
    assert created.details["after"]["intercept_id"] == 0x300
    assert AuditEvent.objects.filter(
        action="intercept.routers.add", object_id=str(intercept.pk), actor=li_admin
    ).exists()
    mapped = AuditEvent.objects.get(action="unclaimed.mapped")
    assert mapped.details == {
        "stream": stream.pk,
        "source": "192.0.2.200",
        "mid": MID,
        "sid": 0x90,
    }

    page = client.get(URL).content.decode()
    assert "Intercept NZ-0042 created under case NZ-CASE-1" in page
    assert "claimed now by NZ-0042" in page


def test_pinning_the_session_id_and_any_router(
    client: Client, li_admin: User, router: Router
) -> None:
    case = make_case()
    stream = make_stream(router=router)
    response = _map(client, stream, case=case.pk, liid="PINNED", pin_sid="on")
    assert response.status_code == 302
    intercept = Intercept.objects.get(liid="PINNED")
    assert intercept.sid == 0x90
    assert not intercept.routers.exists()
    gate = load_gate()
    assert isinstance(gate.claim(stream.source, stream.mid, 0x90, time.time_ns()), Claim)
    assert gate.claim(stream.source, stream.mid, 0x91, time.time_ns()) == "no_intercept"


def test_a_draft_case_is_offered_and_the_message_says_it_captures_nothing_yet(
    client: Client, li_admin: User, router: Router
) -> None:
    case = make_case(reference="DRAFT-1", status=Case.Status.DRAFT)
    make_case(reference="CLOSED-1", status=Case.Status.CLOSED)
    ended = make_case(
        reference="ENDED-1",
        valid_from=timezone.now() - timedelta(days=10),
        valid_until=timezone.now() - timedelta(days=1),
    )
    stream = make_stream(router=router)
    text = client.get(URL).content.decode()
    assert "DRAFT-1" in text
    assert "CLOSED-1" not in text
    assert "ENDED-1" not in text
    refused = _map(client, stream, case=ended.pk, liid="LATE")
    assert refused.status_code == 400
    assert not Intercept.objects.filter(liid="LATE").exists()
    response = _map(client, stream, case=case.pk, liid="DRAFTED", scope_router="on")
    assert response.status_code == 302
    page = client.get(URL).content.decode()
    assert "nothing is captured until it is active" in page


def test_a_get_is_refused(client: Client, li_admin: User, router: Router) -> None:
    stream = make_stream(router=router)
    response = client.get(reverse("console:map_unclaimed", args=[stream.pk]))
    assert response.status_code == 405
    assert not Intercept.objects.exists()


def test_the_action_needs_the_csrf_token(li_admin: User, router: Router) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(li_admin)
    stream = make_stream(router=router)
    response = _map(client, stream, case=make_case().pk, liid="NOCSRF")
    assert response.status_code == 403
    assert not Intercept.objects.exists()


def test_a_conflicting_intercept_is_refused_with_the_model_message(
    client: Client, li_admin: User, router: Router
) -> None:
    other_case = make_case(reference="OTHER-CASE")
    # Any router, any sid, in force from next week: the stream is outside its window now,
    # and an intercept from now to the end of the warrant would overlap it.
    make_intercept(
        other_case,
        liid="EXISTING",
        intercept_id=0x300,
        valid_from=timezone.now() + timedelta(days=7),
        valid_until=timezone.now() + timedelta(days=14),
    )
    stream = make_stream(router=router, reason=UnclaimedStream.Reason.OUTSIDE_WINDOW)
    assert "create intercept from this" in client.get(URL).content.decode()
    response = _map(client, stream, case=make_case().pk, liid="CLASH", scope_router="on")
    assert response.status_code == 400
    text = response.content.decode()
    assert "Intercept EXISTING (case OTHER-CASE) already claims mirror id 0x300" in text
    assert "two intercepts must never claim the same packet" in text
    assert " open>" in text  # the row's form stays open with its values
    assert 'value="CLASH"' in text
    assert not Intercept.objects.filter(liid="CLASH").exists()
    assert not AuditEvent.objects.filter(action="unclaimed.mapped").exists()


def test_a_bad_or_taken_liid_is_shown_on_its_field(
    client: Client, li_admin: User, router: Router
) -> None:
    case = make_case()
    make_intercept(case, liid="TAKEN", intercept_id=0x999)
    stream = make_stream(router=router)
    response = _map(client, stream, case=case.pk, liid="has space")
    assert response.status_code == 400
    assert b"A LIID is 1 to 25 letters" in response.content
    response = _map(client, stream, case=case.pk, liid="TAKEN")
    assert response.status_code == 400
    assert b"LIID already exists" in response.content
    assert Intercept.objects.count() == 1


def test_an_unknown_router_must_be_registered_first(client: Client, li_admin: User) -> None:
    stream = make_stream(source="198.51.100.9", reason=UnclaimedStream.Reason.UNKNOWN_ROUTER)
    response = _map(client, stream, case=make_case().pk, liid="NOROUTER", scope_router="on")
    assert response.status_code == 400
    assert b"No router is registered with address 198.51.100.9" in response.content
    assert not Intercept.objects.exists()


def test_a_missing_stream_is_404(client: Client, li_admin: User) -> None:
    response = client.post(reverse("console:map_unclaimed", args=[999999]), {})
    assert response.status_code == 404


@pytest.mark.parametrize("role", [Role.ANALYST, Role.AUDITOR, Role.SYSADMIN])
def test_others_are_refused_and_the_refusal_is_audited(
    client: Client, router: Router, role: Role
) -> None:
    user = make_user(role)
    case = make_case()
    assign(user, case)
    client.force_login(user)
    stream = make_stream(router=router)
    response = _map(client, stream, case=case.pk, liid="SNEAKY", scope_router="on")
    assert response.status_code == 403
    assert not Intercept.objects.exists()
    refused = AuditEvent.objects.get(action="unclaimed.map_refused")
    assert refused.actor == user
    assert refused.details["stream"] == stream.pk
