"""The Content-Security-Policy and the other security headers on the pages, and the
admin's pages checked for what the policy would block (inline scripts and styles)."""

import re
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from jmirror_web.security import sessions
from tests.factories import PASSWORD, make_case, make_intercept, make_router, make_user

pytestmark = pytest.mark.django_db

POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "object-src": "'none'",
}
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", re.I)
STYLE_ATTRIBUTE = re.compile(r"<[a-z][^>]*\sstyle=", re.I)
STYLE_ELEMENT = re.compile(r"<style\b", re.I)
EVENT_HANDLER = re.compile(r"<[a-z][^>]*\son[a-z]+=", re.I)


def policy_of(response: Any) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    parts = (part.strip().split(None, 1) for part in header.split(";") if part.strip())
    return {name: value for name, value in parts}  # noqa: C416 (pairs, typed as lists)


def superuser_client() -> Client:
    client = Client()
    client.force_login(make_user(username="root", is_superuser=True, is_staff=True))
    return client


def admin_pages() -> list[str]:
    case = make_case()
    make_router()
    intercept = make_intercept(case)
    urls = [reverse("admin:index"), reverse("admin:password_change")]
    for model in admin.site._registry:
        info = f"{model._meta.app_label}_{model._meta.model_name}"
        urls.append(reverse(f"admin:{info}_changelist"))
    urls += [
        reverse("admin:intercepts_case_add"),
        reverse("admin:intercepts_intercept_add"),
        reverse("admin:intercepts_case_change", args=[case.pk]),
        reverse("admin:intercepts_intercept_change", args=[intercept.pk]),
        reverse("admin:auth_user_add"),
    ]
    return urls


def test_every_admin_page_has_the_policy_and_nothing_it_would_block():
    client = superuser_client()
    for url in admin_pages():
        response = client.get(url)
        assert response.status_code == 200, url
        assert response["Content-Type"].startswith("text/html")
        assert policy_of(response).items() >= POLICY.items(), url
        html = response.content.decode()
        assert INLINE_SCRIPT.findall(html) == [], url
        assert STYLE_ATTRIBUTE.findall(html) == [], url
        assert STYLE_ELEMENT.findall(html) == [], url
        assert EVENT_HANDLER.findall(html) == [], url


@pytest.mark.parametrize(
    "url", ["/", "/accounts/login/", "/admin/login/", "/no-such-page/", "/api/cases/"]
)
def test_anonymous_responses_carry_the_policy_and_the_other_headers(url: str):
    response = Client().get(url)

    assert policy_of(response).items() >= POLICY.items()
    assert "'self'" in policy_of(response)["connect-src"]
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


def test_the_console_pages_carry_the_policy():
    client = superuser_client()
    for url in ["/", reverse("console:health"), reverse("console:unclaimed")]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert policy_of(response).items() >= POLICY.items(), url


def test_the_sign_in_page_uses_no_inline_script_or_style():
    html = Client().get(reverse("console:login")).content.decode()
    assert INLINE_SCRIPT.findall(html) == []
    assert STYLE_ATTRIBUTE.findall(html) == []


def test_the_session_cookie_is_http_only_strict_and_ends_with_the_browser(settings: Any):
    make_user(username="ana")
    response = Client().post(reverse("console:login"), {"username": "ana", "password": PASSWORD})
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["max-age"] == ""  # no lifetime: gone when the browser closes


def test_the_idle_expiry_moves_on_at_most_once_a_minute(monkeypatch: pytest.MonkeyPatch):
    client = Client()
    client.force_login(make_user(username="ana"))
    session = client.session
    expiry = session.get_expiry_date()
    stored = session[sessions.KEY]

    client.get(reverse("home"))
    assert client.session[sessions.KEY] == stored  # within the minute: no write

    now = stored + sessions.REFRESH_SECONDS + 1
    monkeypatch.setattr(sessions.time, "time", lambda: now)
    client.get(reverse("home"))
    assert client.session[sessions.KEY] == now
    assert client.session.get_expiry_date() >= expiry
