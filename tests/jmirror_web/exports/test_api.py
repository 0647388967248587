"""The export API: GET /api/sessions/<id>/pcap with a token, its parameters and errors in
JSON, and GET /api/exports/<id> for the manifest."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from jmirror_web.exports.models import MANIFEST_SCHEMA, Export
from receiver.store import LINKTYPE_RAW
from tests.jmirror_web.exports.evidence import Stored, body, events, frames_of, iso, sha256

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_throttle_counts() -> None:
    cache.clear()


@pytest.fixture
def api(analyst: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=analyst).key}")
    return client


def pcap_url(stored: Stored) -> str:
    return f"/api/sessions/{stored.session.pk}/pcap"


def test_a_token_downloads_the_session_as_pcapng_by_default(api: APIClient, stored: Stored) -> None:
    response = api.get(pcap_url(stored))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-pcapng"
    data = body(response)
    assert frames_of(data) == [(t, LINKTYPE_RAW, d) for t, d in stored.frames]
    export = Export.objects.get()
    assert export.format == "pcapng"
    assert export.sha256 == sha256(data)
    assert events("export.complete")[0].details["sha256"] == sha256(data)


def test_start_end_and_format_select_the_window(api: APIClient, stored: Stored) -> None:
    start, end = stored.frames[2][0], stored.frames[5][0]
    response = api.get(pcap_url(stored), {"start": iso(start), "end": iso(end), "format": "pcap"})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/vnd.tcpdump.pcap"
    data = body(response)
    assert frames_of(data) == [(t, LINKTYPE_RAW, d) for t, d in stored.frames[2:5]]
    assert Export.objects.get().sha256 == sha256(data)


def test_the_api_filters_like_the_page(api: APIClient, stored: Stored) -> None:
    data = body(api.get(pcap_url(stored), {"ports": "53", "addresses": "203.0.113.8"}))
    assert frames_of(data) == [(t, LINKTYPE_RAW, d) for t, d in stored.frames[1::4]]


def test_a_client_asking_for_the_files_type_gets_it(api: APIClient, stored: Stored) -> None:
    response = api.get(pcap_url(stored), HTTP_ACCEPT="application/x-pcapng")
    assert response.status_code == 200
    body(response)


@pytest.mark.parametrize(
    ("params", "errors"),
    [
        ({"start": "not a time"}, {"start": ["Enter a time as ISO 8601"]}),
        ({"format": "zip"}, {"format": ["Select a valid choice. zip is not one"]}),
        ({"ports": "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17"}, {"ports": ["At most 16 ports."]}),
        ({"protocols": "bogus"}, {"protocols": ["'bogus' is not a protocol"]}),
    ],
)
def test_bad_parameters_are_a_400_in_json(
    api: APIClient, stored: Stored, params: dict[str, str], errors: dict[str, list[str]]
) -> None:
    response = api.get(pcap_url(stored), params)
    assert response.status_code == 400
    answer = response.json()
    assert set(answer) == set(errors)
    for field, messages in errors.items():
        assert answer[field][0].startswith(messages[0])
    assert events("export.refused")[-1].details["reason"] == "invalid parameters"
    assert not Export.objects.exists()


def test_a_window_outside_the_warrant_is_a_400_naming_the_allowed_range(
    api: APIClient, stored: Stored
) -> None:
    before = stored.case.valid_from - timedelta(days=1)
    response = api.get(pcap_url(stored), {"start": before.isoformat()})
    assert response.status_code == 400
    message = response.json()["start"][0]
    assert message.startswith("The window must lie inside the warrant")
    assert f"{stored.case.valid_from:%Y-%m-%d %H:%M:%S}" in message
    assert events("export.refused")[-1].details["reason"] == message


def test_a_window_without_traffic_is_a_400(api: APIClient, stored: Stored) -> None:
    after = stored.session.last_seen + timedelta(seconds=1)
    response = api.get(pcap_url(stored), {"start": after.isoformat()})
    assert response.status_code == 400
    assert "has no traffic in that window" in response.json()["start"][0]


def test_a_session_that_does_not_exist_is_a_404_and_audited(api: APIClient) -> None:
    response = api.get("/api/sessions/999999/pcap")
    assert response.status_code == 404
    assert events("export.refused")[-1].details == {
        "reason": "no download right",
        "session": 999999,
        "path": "/api/sessions/999999/pcap",
        "where": "api:session_pcap",
    }


def test_the_manifest_says_what_was_exported(api: APIClient, stored: Stored, analyst: User) -> None:
    data = body(api.get(pcap_url(stored), {"format": "pcap", "ports": "443"}))
    export = Export.objects.get()
    response = api.get(f"/api/exports/{export.pk}")
    assert response.status_code == 200
    manifest: dict[str, Any] = response.json()
    assert manifest["schema"] == MANIFEST_SCHEMA
    assert manifest["export"] == export.pk
    assert manifest["state"] == "complete"
    assert manifest["requester"] == analyst.username
    assert manifest["case"]["reference"] == stored.case.reference
    assert manifest["intercept"]["liid"] == stored.intercept.liid
    assert manifest["sha256"] == sha256(data)
    assert manifest["size"] == len(data)
    assert manifest["packets"] == 3
    assert manifest["filter"] == {"addresses": [], "ports": [443], "protocols": []}
    assert manifest["format"] == "pcap"
    assert manifest["file_name"] == export.file_name
    [session] = manifest["sessions"]
    assert session["router"] == stored.router.name
    assert session["sid"] == f"{stored.session.sid:#x}"
    assert session["mid"] == f"{stored.session.mid:#x}"
    assert sorted(f["sha256"] for f in session["files"]) == sorted(f.sha256 for f in stored.files)
    assert manifest["first_packet"] == f"{iso(stored.frames[0][0])[:-1]}789Z"
    assert manifest["window"] == {"start": None, "end": None}
    assert manifest["completed_at"] is not None
