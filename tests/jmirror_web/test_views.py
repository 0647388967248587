import json

import pytest
from channels.testing import HttpCommunicator
from django.test import Client

from jmirror_web.asgi import application
from jmirror_web.intercepts.access import Role
from tests.factories import make_user


@pytest.mark.django_db
def test_the_home_page_sends_an_anonymous_visitor_to_sign_in(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


@pytest.mark.django_db
def test_the_home_page_is_the_dashboard_for_a_signed_in_user(client: Client) -> None:
    client.force_login(make_user(Role.ANALYST))
    response = client.get("/")
    assert response.status_code == 200
    assert next(template.name for template in response.templates) == "console/dashboard.html"
    assert b"<h1>Dashboard" in response.content


@pytest.mark.django_db
def test_healthz_answers_ok_once_the_database_takes_a_query(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
async def test_healthz_answers_through_the_asgi_application_daphne_serves() -> None:
    communicator = HttpCommunicator(
        application, "GET", "/healthz", headers=[(b"host", b"localhost")]
    )
    response = await communicator.get_response(timeout=5)
    assert response["status"] == 200
    assert json.loads(response["body"]) == {"status": "ok"}


def test_the_admin_redirects_an_anonymous_visitor_to_its_login(client: Client) -> None:
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/"


def test_a_request_for_a_host_not_allowed_is_refused(client: Client) -> None:
    assert client.get("/", headers={"host": "intercept.example.org"}).status_code == 400
