"""The 403 and 404 pages: styled, with the console's navigation, and an expected 403 is
one line in the log rather than a traceback."""

from __future__ import annotations

import io
import logging

import pytest
from django.conf import settings
from django.test import Client

from jmirror_web.intercepts.access import Role
from jmirror_web.log_filters import ExpectedRefusalsOnOneLine
from tests.factories import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def analyst_client(client: Client) -> Client:
    client.force_login(make_user(Role.ANALYST))
    return client


def test_a_missing_page_is_styled_with_the_navigation(analyst_client: Client) -> None:
    response = analyst_client.get("/no-such-page/")
    assert response.status_code == 404
    page = response.content.decode()
    assert "<h1>Not found</h1>" in page
    assert ">Dashboard</a>" in page  # the console's navigation
    assert "css/jmirror.css" in page
    assert "Sign out" in page


def test_a_refused_page_is_styled_and_says_what_to_do(analyst_client: Client) -> None:
    response = analyst_client.get("/health/")
    assert response.status_code == 403
    page = response.content.decode()
    assert "<h1>Not allowed</h1>" in page
    assert ">Dashboard</a>" in page
    assert "Health</a>" not in page  # the navigation still hides what the role lacks


def test_a_missing_page_for_a_visitor_has_no_navigation(client: Client) -> None:
    response = client.get("/no-such-page/")
    assert response.status_code in (302, 404)
    if response.status_code == 404:
        assert "Sign out" not in response.content.decode()


def test_an_expected_403_is_one_line_in_the_log(analyst_client: Client) -> None:
    assert settings.LOGGING["handlers"]["console"]["filters"] == ["refusals"]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ExpectedRefusalsOnOneLine())
    request_log = logging.getLogger("django.request")
    request_log.addHandler(handler)
    try:
        assert analyst_client.get("/health/").status_code == 403
    finally:
        request_log.removeHandler(handler)
    logged = stream.getvalue()
    assert "Forbidden (Permission denied): /health/" in logged
    assert "Traceback" not in logged
    assert len(logged.strip().splitlines()) == 1


def test_other_errors_keep_their_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ExpectedRefusalsOnOneLine())
    log = logging.getLogger("tests.error_pages")
    log.addHandler(handler)
    try:
        try:
            raise ValueError("a real bug")
        except ValueError:
            log.exception("Internal Server Error: /x")
    finally:
        log.removeHandler(handler)
    assert "Traceback" in stream.getvalue()
    assert "ValueError: a real bug" in stream.getvalue()
