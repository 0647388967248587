"""django-axes as configured: N failed sign-ins lock the (user, address) pair out of the
console, the admin and any other sign-in, with a clear page and an audit event."""

from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.access import Role
from tests.factories import PASSWORD, make_user

pytestmark = pytest.mark.django_db

LOGIN_PAGES = ["console:login", "admin:login"]


@pytest.fixture(autouse=True)
def throttling(settings: Any) -> None:
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 3


def sign_in(page: str, username: str, password: str, address: str = "192.0.2.1") -> Any:
    return Client(REMOTE_ADDR=address).post(
        reverse(page), {"username": username, "password": password}
    )


def signed_in(response: Any) -> bool:
    return response.status_code == 302 and "_auth_user_id" in response.client.session


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_the_limit_of_failures_locks_the_user_out_even_with_the_right_password(page: str):
    make_user(Role.LI_ADMIN, username="ana")
    responses = [sign_in(page, "ana", "wrong") for _ in range(settings.AXES_FAILURE_LIMIT)]

    assert [response.status_code for response in responses[:-1]] == [200, 200]
    locked = responses[-1]
    assert locked.status_code == 429
    assert "Sign-in locked" in locked.content.decode()
    assert "After 3 failed sign-ins as <strong>ana</strong>" in locked.content.decode()
    right = sign_in(page, "ana", PASSWORD)
    assert right.status_code == 429
    assert not signed_in(right)


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_below_the_limit_the_right_password_still_signs_in(page: str):
    make_user(Role.LI_ADMIN, username="ana")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(page, "ana", "wrong").status_code == 200
    assert signed_in(sign_in(page, "ana", PASSWORD))


def test_the_lockout_is_audited_with_the_user_and_address():
    make_user(Role.ANALYST, username="ana")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in("console:login", "ana", "wrong", address="198.51.100.9")

    events = list(AuditEvent.objects.filter(action="login_locked_out"))
    assert len(events) == 1
    assert events[0].source_address == "198.51.100.9"
    assert events[0].details["username"] == "ana"
    assert events[0].details["failure_limit"] == 3
    assert events[0].details["path"] == reverse("console:login")
    failures = AuditEvent.objects.filter(action="login_failed")
    assert failures.count() == settings.AXES_FAILURE_LIMIT


def test_every_attempt_during_the_lockout_is_audited_as_locked_out_too():
    make_user(Role.ANALYST, username="ana")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in("console:login", "ana", "wrong")
    sign_in("console:login", "ana", PASSWORD)

    assert AuditEvent.objects.filter(action="login_locked_out").count() == 2


def test_other_users_and_the_same_user_elsewhere_are_not_locked_out():
    make_user(Role.ANALYST, username="ana")
    make_user(Role.ANALYST, username="bob")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in("console:login", "ana", "wrong", address="192.0.2.1")

    assert signed_in(sign_in("console:login", "bob", PASSWORD, address="192.0.2.1"))
    assert signed_in(sign_in("console:login", "ana", PASSWORD, address="192.0.2.2"))
    assert sign_in("console:login", "ana", PASSWORD, address="192.0.2.1").status_code == 429


def test_failures_on_the_console_and_the_admin_count_together():
    make_user(Role.LI_ADMIN, username="ana")
    sign_in("console:login", "ana", "wrong")
    sign_in("admin:login", "ana", "wrong")
    assert sign_in("console:login", "ana", "wrong").status_code == 429
    assert sign_in("admin:login", "ana", PASSWORD).status_code == 429


def test_a_sign_in_without_a_request_is_refused_rather_than_left_unthrottled():
    from axes.exceptions import AxesBackendRequestParameterRequired
    from django.contrib.auth import authenticate

    make_user(Role.ANALYST, username="ana")
    with pytest.raises(AxesBackendRequestParameterRequired):
        authenticate(username="ana", password=PASSWORD)


@pytest.mark.django_db(transaction=True)
async def test_the_lockout_page_is_served_under_asgi_too():
    """Daphne runs the middleware chain asynchronously, where axes takes another path."""
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    await sync_to_async(make_user)(Role.ANALYST, username="ana")
    client = AsyncClient(REMOTE_ADDR="192.0.2.1")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = await client.post(
            reverse("console:login"), {"username": "ana", "password": "wrong"}
        )
    assert response.status_code == 429
    assert "as <strong>ana</strong>" in response.content.decode()
    right = await client.post(reverse("console:login"), {"username": "ana", "password": PASSWORD})
    assert right.status_code == 429
