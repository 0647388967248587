"""The health page's drops by reason include Contrail's "wrong capture host" (frames
claimed whose Juniper header's capture host is not the vRouter's address), in words and
explained, beside the gate's reasons; a reason the page does not know still shows."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jmirror_web.console.health import DROP_REASON_TEXT, KNOWN_DROP_REASONS
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import ReceiverProcess
from receiver.pipeline import WRONG_CAPTURE_HOST
from tests.factories import make_user

pytestmark = pytest.mark.django_db

URL = reverse("console:health")


def receiver(drops: dict[str, int]) -> ReceiverProcess:
    now = timezone.now()
    return ReceiverProcess.objects.create(
        hostname="mediation-cn2",
        pid=77,
        started_at=now - timedelta(minutes=5),
        reported_at=now,
        drops=drops,
    )


def drop_cells(text: str) -> list[str]:
    row = re.search(
        r'<table class="health-drops">.*?<tr data-receiver="mediation-cn2:77">(.*?)</tr>',
        text,
        re.S,
    )
    assert row is not None
    return re.findall(r'<td class="num">([^<]*)</td>', row[1])


def test_wrong_capture_host_is_a_labelled_and_explained_column(client: Client) -> None:
    receiver({"no_intercept": 3, WRONG_CAPTURE_HOST: 4321, "future_reason": 9})
    client.force_login(make_user(Role.SYSADMIN))
    text = client.get(URL).content.decode()
    heading = re.search(
        r'<th class="num" data-reason="wrong_capture_host" title="([^"]*)">([^<]*)<br>', text
    )
    assert heading is not None
    assert heading[2] == "wrong capture host"
    assert "capture host in its Juniper header is not the address" in heading[1]
    assert '<dd data-reason="wrong_capture_host">Contrail: claimed, but the capture host' in text
    # The gate's reasons, then Contrail's, then any other key a receiver reported.
    assert drop_cells(text) == ["0", "3", "0", "4,321", "9"]
    assert '<th class="num" data-reason="future_reason">future_reason</th>' in text


def test_a_zero_shows_as_a_zero(client: Client) -> None:
    receiver({})
    client.force_login(make_user(Role.SYSADMIN))
    text = client.get(URL).content.decode()
    assert drop_cells(text) == ["0", "0", "0", "0"]


def test_every_known_reason_has_words() -> None:
    assert set(KNOWN_DROP_REASONS) <= set(DROP_REASON_TEXT)
    assert WRONG_CAPTURE_HOST in KNOWN_DROP_REASONS
