import json

import pytest
from channels.testing import HttpCommunicator
from django.test import Client

from jmirror_web.asgi import application


def test_the_home_page_renders(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert [template.name for template in response.templates] == ["home.html"]
    assert b"<h1>jmirror-web</h1>" in response.content
    assert b'href="/admin/"' in response.content


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
