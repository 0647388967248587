"""The session page's "open packet number" form."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import PASSWORD, make_user

pytestmark = pytest.mark.django_db


def signed_in() -> Client:
    client = Client()
    assert client.login(username=make_user().username, password=PASSWORD)
    return client


def test_a_number_goes_on_to_that_packets_page_which_decides_the_right() -> None:
    page = signed_in().get(reverse("console:packet_jump", args=[7]), {"number": "12"})
    assert page.status_code == 302
    assert page["Location"] == reverse("console:packet", args=[7, 12])


@pytest.mark.parametrize("number", ["", "0", "-1", "x", "1e3", "9" * 30, "²", "١٢"])
def test_a_bad_number_is_not_found(number: str) -> None:
    page = signed_in().get(reverse("console:packet_jump", args=[7]), {"number": number})
    assert page.status_code == 404


def test_anonymous_visitors_are_sent_to_sign_in(client: Client) -> None:
    page = client.get(reverse("console:packet_jump", args=[7]), {"number": "1"})
    assert page.status_code == 302
    assert page["Location"].startswith(reverse("console:login"))
