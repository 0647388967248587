"""Sign-in and sign-out of the console pages."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import PASSWORD, make_user

pytestmark = pytest.mark.django_db


def test_the_sign_in_page_renders_without_a_session(client: Client) -> None:
    page = client.get(reverse("console:login"))
    assert page.status_code == 200
    assert b'name="username"' in page.content
    assert b"Sign out" not in page.content


def test_a_wrong_password_is_refused_with_a_message(client: Client) -> None:
    user = make_user()
    page = client.post(reverse("console:login"), {"username": user.username, "password": "no"})
    assert page.status_code == 200
    assert b"did not match" in page.content
    assert "_auth_user_id" not in client.session


def test_signing_in_then_out(client: Client) -> None:
    user = make_user()
    page = client.post(reverse("console:login"), {"username": user.username, "password": PASSWORD})
    assert page.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)
    out = client.post(reverse("console:logout"))
    assert out.status_code == 302
    assert out["Location"] == reverse("console:login")
    assert "_auth_user_id" not in client.session
