"""The first administrator's printed password must be changed at first sign-in."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from jmirror_web.audit.models import AuditEvent
from jmirror_web.security.models import PasswordChangeRequired
from tests.factories import make_user

pytestmark = pytest.mark.django_db
NEW_PASSWORD = "a much better passphrase 42"


@pytest.fixture
def printed(monkeypatch: pytest.MonkeyPatch) -> tuple[User, str]:
    monkeypatch.delenv("JMIRROR_ADMIN_PASSWORD", raising=False)
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    found = re.search(r"with password (\S+) ", out.getvalue())
    assert found is not None
    assert "the first sign-in asks for a new one" in out.getvalue()
    return User.objects.get(username="admin"), found[1]


def _signed_in(user: User, password: str) -> Client:
    client = Client()
    assert client.login(username=user.username, password=password)
    return client


def test_every_page_sends_the_printed_password_to_be_changed(printed: tuple[User, str]) -> None:
    admin, password = printed
    client = _signed_in(admin, password)
    for page in ("/", "/health/", "/admin/", "/verify/"):
        response = client.get(page)
        assert response.status_code == 302, page
        assert response["Location"] == f"/accounts/password/?next={page}"
    api = client.get("/api/cases/")
    assert api.status_code == 403
    assert "Change the password" in api.json()["detail"]
    assert client.get("/accounts/password/").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_changing_it_lifts_the_requirement_and_is_audited(printed: tuple[User, str]) -> None:
    admin, password = printed
    client = _signed_in(admin, password)
    page = client.get("/accounts/password/").content.decode()
    assert "made for it and shown once" in page
    refused = client.post(
        "/accounts/password/",
        {"old_password": "wrong", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert refused.status_code == 200
    assert PasswordChangeRequired.objects.filter(user=admin).exists()
    done = client.post(
        "/accounts/password/?next=/health/",
        {
            "old_password": password,
            "new_password1": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD,
        },
    )
    assert done.status_code == 302
    assert done["Location"] == "/health/"
    assert not PasswordChangeRequired.objects.filter(user=admin).exists()
    assert client.get("/").status_code == 200  # still signed in, no longer sent away
    event = AuditEvent.objects.filter(action="auth.password_changed").get()
    assert event.details["required"] is True


def test_a_change_by_another_path_lifts_it_too(printed: tuple[User, str]) -> None:
    admin, _password = printed
    admin.set_password(NEW_PASSWORD)  # as manage.py changepassword or the admin does
    admin.save()
    assert _signed_in(admin, NEW_PASSWORD).get("/").status_code == 200
    assert not PasswordChangeRequired.objects.filter(user=admin).exists()


def test_the_next_address_never_leaves_the_site(printed: tuple[User, str]) -> None:
    admin, password = printed
    done = _signed_in(admin, password).post(
        "/accounts/password/?next=//evil.example/",
        {
            "old_password": password,
            "new_password1": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD,
        },
    )
    assert done["Location"] == "/"


def test_a_password_from_the_environment_or_another_user_is_not_sent_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JMIRROR_ADMIN_PASSWORD", "correct horse battery staple")
    call_command("ensure_admin", stdout=io.StringIO())
    admin = User.objects.get(username="admin")
    assert not PasswordChangeRequired.objects.filter(user=admin).exists()
    analyst = make_user()
    client = Client()
    client.force_login(analyst)
    assert client.get("/").status_code == 200
    assert client.get("/accounts/password/").status_code == 200
