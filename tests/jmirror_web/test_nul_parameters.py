"""A NUL in the address or a query parameter is a 400 before anything reaches the
database (PostgreSQL refuses NUL in text: an admin search with one was a 500 there)."""

import pytest
from channels.testing import HttpCommunicator
from django.test import Client

from jmirror_web.asgi import application
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Router
from tests.factories import make_user

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("url", "data"),
    [
        ("/admin/intercepts/router/", {"q": "core\x00"}),
        ("/admin/intercepts/router/", {"name__exact": "\x00"}),
        ("/admin/intercepts/router/", {"a\x00": "1"}),
        ("/admin/audit/auditevent/", {"q": "x", "action": ["ok", "\x00"]}),
    ],
)
def test_a_nul_in_a_page_parameter_is_a_400_saying_so(client: Client, url, data) -> None:
    Router.objects.create(name="core-1", address="192.0.2.1")
    client.force_login(make_user(Role.LI_ADMIN))
    response = client.get(url, data)
    assert response.status_code == 400
    assert "NUL character" in response.content.decode()


def test_a_nul_in_an_api_parameter_is_a_json_400(client: Client) -> None:
    client.force_login(make_user(Role.LI_ADMIN))
    response = client.get("/api/sessions/", {"case": "1\x00"})
    assert response.status_code == 400
    assert "NUL character" in response.json()["detail"]
    assert "'case'" in response.json()["detail"]


def test_a_nul_in_the_address_is_a_400(client: Client) -> None:
    client.force_login(make_user(Role.LI_ADMIN))
    response = client.get("/api/cases/%00%91/")
    assert response.status_code == 400
    assert "The address" in response.json()["detail"]


def test_a_parameter_without_nul_goes_on(client: Client) -> None:
    Router.objects.create(name="core-1", address="192.0.2.1")
    client.force_login(make_user(Role.LI_ADMIN))
    response = client.get("/admin/intercepts/router/", {"q": "core"})
    assert response.status_code == 200
    assert "core-1" in response.content.decode()


async def test_the_check_runs_under_asgi_too() -> None:
    communicator = HttpCommunicator(
        application, "GET", "/healthz?x=%00", headers=[(b"host", b"127.0.0.1")]
    )
    response = await communicator.get_response()
    assert response["status"] == 400
    assert b"NUL character" in response["body"]
