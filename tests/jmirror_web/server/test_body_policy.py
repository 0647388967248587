"""Which body a request may send, from its head (jmirror_web.server.body_policy): "signed in" is
looked up in the session store or the token table, never read from a cookie's presence;
and when a body is too slow (BodyWatch)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token

from jmirror_web.intercepts.access import Role
from jmirror_web.server.body_policy import (
    MULTIPART_ENVELOPE,
    RATE_WINDOW_SECONDS,
    BodyWatch,
    Head,
    Who,
    limit_for,
    needs_lookup,
    who_asks,
)
from tests.factories import make_user

MIB = 1024 * 1024
VERIFY = Head("POST", "/verify/", "multipart/form-data; boundary=x")


def signed_in_cookie() -> tuple[Any, str]:
    user = make_user(Role.ANALYST)
    client = Client()
    client.force_login(user)
    return user, f"csrftoken=abc; sessionid={client.cookies['sessionid'].value}"


@pytest.mark.django_db
def test_a_live_session_is_signed_in_and_may_upload_to_the_verify_page(settings: Any) -> None:
    settings.JMIRROR_VERIFY_MAX_MB = 3
    _, cookie = signed_in_cookie()
    head = Head(VERIFY.method, VERIFY.path, VERIFY.content_type, cookie=cookie)
    assert who_asks(head) is Who.SIGNED_IN
    limit = limit_for(head, Who.SIGNED_IN)
    assert limit.limit == 3 * MIB + MULTIPART_ENVELOPE
    assert limit.streamed_verify


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["signed out", "deactivated", "password changed", "made up"])
def test_a_cookie_without_a_live_sign_in_is_anonymous(how: str) -> None:
    user, cookie = signed_in_cookie()
    if how == "signed out":
        from django.contrib.sessions.models import Session

        Session.objects.all().delete()
    elif how == "deactivated":
        user.is_active = False
        user.save()
    elif how == "password changed":
        user.set_password("another long passphrase 8")
        user.save()
    else:
        cookie = "sessionid=" + "x" * 32
    assert who_asks(Head("POST", "/verify/", cookie=cookie)) is Who.ANONYMOUS


@pytest.mark.django_db
def test_an_api_token_counts_on_the_api_only() -> None:
    token = Token.objects.create(user=make_user(Role.ANALYST))
    authorization = f"Token {token.key}"
    assert who_asks(Head("POST", "/api/cases/", authorization=authorization)) is Who.API_TOKEN
    assert who_asks(Head("POST", "/healthz", authorization=authorization)) is Who.ANONYMOUS
    assert who_asks(Head("POST", "/api/cases/", authorization="Token nope")) is Who.ANONYMOUS


def test_only_a_signed_in_multipart_post_to_the_verify_page_is_large(settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100_000
    settings.JMIRROR_ANONYMOUS_BODY_MAX_BYTES = 4096
    assert limit_for(VERIFY, Who.ANONYMOUS).limit == 4096
    assert limit_for(VERIFY, Who.API_TOKEN).limit == 100_000
    other = Head("POST", "/verify/", "application/x-www-form-urlencoded")
    assert limit_for(other, Who.SIGNED_IN).limit == 100_000
    assert limit_for(Head("POST", "/healthz"), Who.SIGNED_IN).limit == 100_000


def test_the_database_is_asked_only_when_the_answer_matters(settings: Any) -> None:
    settings.JMIRROR_ANONYMOUS_BODY_MAX_BYTES = 4096
    with_cookie = Head("POST", "/verify/", cookie="sessionid=abc")
    assert not needs_lookup(with_cookie, 4096)  # small enough for anyone
    assert needs_lookup(with_cookie, 4097)
    assert needs_lookup(with_cookie, None)  # chunked
    assert not needs_lookup(Head("POST", "/verify/"), None)  # no credential: anonymous
    assert not needs_lookup(Head("POST", "/verify/", cookie="csrftoken=abc"), None)
    assert not needs_lookup(Head("POST", "/verify/", cookie='sessionid="; bad'), None)


def test_a_body_under_the_floor_over_a_window_is_too_slow() -> None:
    watch = BodyWatch(started=0.0, floor=1000, total=600)
    watch.progress(1000 * int(RATE_WINDOW_SECONDS))
    assert watch.verdict(RATE_WINDOW_SECONDS) is None  # exactly the floor
    watch.progress(10)
    assert watch.verdict(RATE_WINDOW_SECONDS + 1) is None  # a window not yet over
    verdict = watch.verdict(2 * RATE_WINDOW_SECONDS)
    assert verdict is not None
    assert "under 1000" in verdict


def test_a_body_over_its_total_time_is_too_slow_however_fast() -> None:
    watch = BodyWatch(started=0.0, floor=0, total=30)
    watch.progress(10**9)
    assert watch.verdict(29.0) is None
    verdict = watch.verdict(31.0)
    assert verdict is not None
    assert "longer than 30 s" in verdict
