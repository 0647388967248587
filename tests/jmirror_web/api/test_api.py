"""The JSON API: who reads and writes what, token sign-in, validation, audit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rest_framework.throttling import UserRateThrottle

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Case, Intercept, Router, Session
from tests.factories import (
    assign,
    make_case,
    make_intercept,
    make_router,
    make_session,
    make_user,
)

pytestmark = pytest.mark.django_db

ENDPOINTS = ("cases", "intercepts", "routers", "sessions")


@pytest.fixture(autouse=True)
def _fresh_throttle_counts() -> None:
    # Throttle counts live in the cache, which outlives each test's database.
    cache.clear()


@dataclass
class World:
    """Two cases with an intercept and a session each, and one unclaimed session."""

    mine: Case
    other: Case
    my_intercept: Intercept
    other_intercept: Intercept
    my_session: Session
    other_session: Session
    unclaimed: Session
    router: Router


def unclaimed_session(router: Router) -> Session:
    now = timezone.now()
    return Session.objects.create(
        router=router, intercept=None, mid=0x7777, sid=1, first_seen=now, last_seen=now
    )


@pytest.fixture
def world() -> World:
    mine, other = make_case(reference="MINE"), make_case(reference="OTHER")
    router = make_router(name="edge1")
    my_intercept = make_intercept(mine, liid="MY-LIID", intercept_id=0x8000)
    other_intercept = make_intercept(other, liid="OTHER-LIID", intercept_id=0x9000)
    return World(
        mine=mine,
        other=other,
        my_intercept=my_intercept,
        other_intercept=other_intercept,
        my_session=make_session(my_intercept, router=router),
        other_session=make_session(other_intercept, router=router),
        unclaimed=unclaimed_session(router),
        router=router,
    )


def client_for(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def analyst_of(case: Case) -> User:
    user = make_user(Role.ANALYST)
    assign(user, case)
    return user


def ids(response: Any) -> set[int]:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


def intercept_body(case: Case, /, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "case": case.pk,
        "liid": "NZ-0042",
        "intercept_id": 0x8001,
        "valid_from": case.valid_from.isoformat(),
        "valid_until": case.valid_until.isoformat(),
    }
    body.update(fields)
    return body


# Who reads what ------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_anonymous_request_is_answered_401_with_the_token_challenge(
    world: World, endpoint: str
) -> None:
    client = client_for(None)
    for path in (f"/api/{endpoint}/", f"/api/{endpoint}/{world.mine.pk}/"):
        response = client.get(path)
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Token"
        assert "MINE" not in response.content.decode()


def test_an_analyst_sees_only_the_records_and_sessions_of_assigned_cases(world: World) -> None:
    client = client_for(analyst_of(world.mine))
    assert ids(client.get("/api/cases/")) == {world.mine.pk}
    assert ids(client.get("/api/intercepts/")) == {world.my_intercept.pk}
    assert ids(client.get("/api/sessions/")) == {world.my_session.pk}
    assert client.get("/api/routers/").status_code == 403


def test_an_analyst_gets_404_for_another_case_and_its_records(world: World) -> None:
    client = client_for(analyst_of(world.mine))
    for path in (
        f"/api/cases/{world.other.pk}/",
        f"/api/intercepts/{world.other_intercept.pk}/",
        f"/api/sessions/{world.other_session.pk}/",
        f"/api/sessions/{world.unclaimed.pk}/",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "OTHER" not in response.content.decode()
    assert client.get(f"/api/cases/{world.mine.pk}/").json()["reference"] == "MINE"


def test_an_auditor_reads_every_record_but_no_session(world: World) -> None:
    client = client_for(make_user(Role.AUDITOR))
    assert ids(client.get("/api/cases/")) == {world.mine.pk, world.other.pk}
    assert ids(client.get("/api/intercepts/")) == {world.my_intercept.pk, world.other_intercept.pk}
    assert ids(client.get("/api/routers/")) == {world.router.pk}
    assert ids(client.get("/api/sessions/")) == set()
    assert client.get(f"/api/sessions/{world.my_session.pk}/").status_code == 404


def test_an_assigned_auditor_still_sees_no_session_metadata(world: World) -> None:
    auditor = make_user(Role.AUDITOR)
    assign(auditor, world.mine)
    assert ids(client_for(auditor).get("/api/sessions/")) == set()


@pytest.mark.parametrize("role", [Role.SYSADMIN, None])
def test_a_system_administrator_or_a_user_without_role_sees_no_record(
    world: World, role: Role | None
) -> None:
    client = client_for(make_user(role))
    assert ids(client.get("/api/cases/")) == set()
    assert ids(client.get("/api/intercepts/")) == set()
    assert ids(client.get("/api/sessions/")) == set()
    assert client.get("/api/routers/").status_code == 403
    assert client.get(f"/api/cases/{world.mine.pk}/").status_code == 404


@pytest.mark.parametrize("superuser", [False, True], ids=["li-admin", "superuser"])
def test_record_managers_see_every_record_and_session_including_unclaimed_ones(
    world: World, superuser: bool
) -> None:
    # A superuser needs no group.
    user = make_user(is_superuser=True) if superuser else make_user(Role.LI_ADMIN)
    client = client_for(user)
    assert ids(client.get("/api/cases/")) == {world.mine.pk, world.other.pk}
    assert ids(client.get("/api/routers/")) == {world.router.pk}
    assert ids(client.get("/api/sessions/")) == {
        world.my_session.pk,
        world.other_session.pk,
        world.unclaimed.pk,
    }


def test_an_inactive_user_is_refused_even_with_a_session(world: World) -> None:
    client = APIClient()
    client.force_login(make_user(Role.LI_ADMIN, is_active=False))
    assert client.get("/api/cases/").status_code == 401


def test_sessions_carry_mirror_and_session_ids_as_integers_and_hex(world: World) -> None:
    session = make_session(world.my_intercept, router=world.router, mid=0x4000_8000, sid=0x90)
    row = client_for(analyst_of(world.mine)).get(f"/api/sessions/{session.pk}/").json()
    assert row["mid"] == 0x4000_8000
    assert row["mid_hex"] == "0x40008000"
    assert row["intercept_id"] == 0x8000
    assert (row["sid"], row["sid_hex"]) == (0x90, "0x90")
    assert (row["liid"], row["case"]) == ("MY-LIID", world.mine.pk)
    assert row["router_address"] == world.router.address


def test_an_unclaimed_session_has_no_liid_nor_case(world: World) -> None:
    row = client_for(make_user(Role.LI_ADMIN)).get(f"/api/sessions/{world.unclaimed.pk}/").json()
    assert (row["intercept"], row["liid"], row["case"]) == (None, None, None)


def test_sessions_and_intercepts_can_be_filtered_by_case_and_intercept(world: World) -> None:
    client = client_for(make_user(Role.LI_ADMIN))
    assert ids(client.get(f"/api/sessions/?case={world.other.pk}")) == {world.other_session.pk}
    assert ids(client.get(f"/api/sessions/?intercept={world.my_intercept.pk}")) == {
        world.my_session.pk
    }
    assert ids(client.get(f"/api/intercepts/?case={world.mine.pk}")) == {world.my_intercept.pk}
    response = client.get("/api/sessions/?case=one")
    assert response.status_code == 400
    assert response.json() == {"case": ["An id is a whole number."]}


def test_an_analyst_filtering_by_another_case_gets_nothing(world: World) -> None:
    client = client_for(analyst_of(world.mine))
    assert ids(client.get(f"/api/sessions/?case={world.other.pk}")) == set()


# Who writes ----------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.ANALYST, Role.AUDITOR, Role.SYSADMIN])
def test_only_record_managers_may_write(world: World, role: Role) -> None:
    user = make_user(role)
    assign(user, world.mine)
    client = client_for(user)
    body = {"name": "edge9", "address": "198.51.100.9"}
    assert client.post("/api/routers/", body, format="json").status_code == 403
    case_body = {"reference": "NEW", "title": "t", "agency": "a"}
    assert client.post("/api/cases/", case_body, format="json").status_code == 403
    assert client.patch(f"/api/cases/{world.mine.pk}/", {"title": "x"}).status_code == 403
    assert client.delete(f"/api/intercepts/{world.my_intercept.pk}/").status_code == 403
    assert not Router.objects.filter(name="edge9").exists()
    assert Case.objects.get(pk=world.mine.pk).title == "Test warrant"


@pytest.mark.parametrize("superuser", [False, True], ids=["li-admin", "superuser"])
def test_a_record_manager_creates_changes_and_deletes_records(
    world: World, superuser: bool
) -> None:
    user = make_user(is_superuser=True) if superuser else make_user(Role.LI_ADMIN)
    client = client_for(user)
    response = client.post(
        "/api/routers/",
        {"name": "edge9", "address": "198.51.100.9", "kind": "e-series", "port": 6502},
        format="json",
    )
    assert response.status_code == 201, response.content
    router_id = response.json()["id"]
    response = client.post(
        "/api/intercepts/",
        intercept_body(world.mine, routers=[router_id], sid=0x90),
        format="json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    assert (created["intercept_id"], created["intercept_id_hex"]) == (0x8001, "0x8001")
    assert (created["sid"], created["sid_hex"], created["routers"]) == (0x90, "0x90", [router_id])
    assert created["case_reference"] == "MINE"

    response = client.patch(
        f"/api/intercepts/{created['id']}/", {"target_description": "home DSL"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert Intercept.objects.get(pk=created["id"]).target_description == "home DSL"

    assert client.delete(f"/api/intercepts/{created['id']}/").status_code == 204
    assert client.delete(f"/api/routers/{router_id}/").status_code == 204
    assert not Intercept.objects.filter(liid="NZ-0042").exists()


def test_sessions_are_read_only_even_for_record_managers(world: World) -> None:
    client = client_for(make_user(Role.LI_ADMIN))
    assert client.post("/api/sessions/", {}, format="json").status_code == 405
    assert client.delete(f"/api/sessions/{world.my_session.pk}/").status_code == 405


def test_deleting_a_case_that_still_has_intercepts_is_a_conflict(world: World) -> None:
    response = client_for(make_user(Role.LI_ADMIN)).delete(f"/api/cases/{world.mine.pk}/")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        "MINE is still referred to by 1 record (such as MY-LIID); delete those first."
    )
    assert Case.objects.filter(pk=world.mine.pk).exists()


def test_a_session_signed_in_write_needs_the_csrf_token(world: World) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(make_user(Role.LI_ADMIN))
    response = client.patch(f"/api/cases/{world.mine.pk}/", {"title": "x"}, format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


# Token sign-in and audit ---------------------------------------------------------


def test_a_token_made_with_drf_create_token_signs_in(world: World) -> None:
    user = make_user(Role.AUDITOR, username="auditor1")
    call_command("drf_create_token", "auditor1", stdout=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=user).key}")
    assert ids(client.get("/api/cases/")) == {world.mine.pk, world.other.pk}


def test_a_wrong_token_or_basic_authentication_is_refused(world: World) -> None:
    make_user(Role.LI_ADMIN, username="admin1")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert client.get("/api/cases/").status_code == 401
    client.credentials(HTTP_AUTHORIZATION="Basic YWRtaW4xOmNvcnJlY3QgaG9yc2UgYmF0dGVyeSBzdGFwbGU=")
    assert client.get("/api/cases/").status_code == 401


def test_a_write_with_a_token_is_audited_with_the_token_user_as_actor(world: World) -> None:
    user = make_user(Role.LI_ADMIN, username="admin1")
    token = Token.objects.create(user=user)
    client = APIClient(REMOTE_ADDR="192.0.2.200")
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    body = {
        "reference": "W-2027-001",
        "title": "New warrant",
        "agency": "Police",
        "valid_from": "2026-12-01T00:00:00Z",
        "valid_until": "2027-02-28T00:00:00Z",
    }
    response = client.post("/api/cases/", body, format="json")
    assert response.status_code == 201, response.content
    event = AuditEvent.objects.get(action="case.create", object_repr="W-2027-001")
    assert (event.actor, event.source_address) == (user, "192.0.2.200")
    assert (event.object_id, event.object_repr) == (str(response.json()["id"]), "W-2027-001")

    client.patch(f"/api/cases/{response.json()['id']}/", {"status": "active"}, format="json")
    change = AuditEvent.objects.get(action="case.change")
    assert change.actor == user
    assert change.details["changes"]["status"] == {"before": "draft", "after": "active"}


def test_a_write_in_a_signed_in_session_is_audited_with_that_user(world: World) -> None:
    user = make_user(Role.LI_ADMIN)
    client = APIClient()
    client.force_login(user)
    response = client.delete(f"/api/intercepts/{world.other_intercept.pk}/")
    assert response.status_code == 409  # it has a session
    response = client.post(
        "/api/intercepts/", intercept_body(world.other, routers=[world.router.pk]), format="json"
    )
    assert response.status_code == 201, response.content
    created = str(response.json()["id"])
    assert AuditEvent.objects.get(action="intercept.create", object_id=created).actor == user
    assert AuditEvent.objects.get(action="intercept.routers.add", object_id=created).actor == user


# Bad input -----------------------------------------------------------------------


@pytest.fixture
def admin_client() -> APIClient:
    return client_for(make_user(Role.LI_ADMIN))


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        pytest.param(
            {"intercept_id": 2**30},
            {"intercept_id": ["Ensure this value is less than or equal to 1073741823."]},
            id="mirror id of 31 bits",
        ),
        pytest.param(
            {"intercept_id": -1},
            {"intercept_id": ["Ensure this value is greater than or equal to 0."]},
            id="negative mirror id",
        ),
        pytest.param(
            {"intercept_id": "0x8000"},
            {"intercept_id": ["A valid integer is required."]},
            id="mirror id as a hex string",
        ),
        pytest.param(
            {"sid": 2**32},
            {"sid": ["Ensure this value is less than or equal to 4294967295."]},
            id="session id of 33 bits",
        ),
        pytest.param(
            {"routers": [999999]},
            {"routers": ['Invalid pk "999999" - object does not exist.']},
            id="unknown router",
        ),
        pytest.param(
            {"routers": "edge1"},
            {"routers": ['Expected a list of items but got type "str".']},
            id="routers not a list",
        ),
        pytest.param(
            {"case": 999999},
            {"case": ['Invalid pk "999999" - object does not exist.']},
            id="unknown case",
        ),
        pytest.param(
            {"liid": "L" * 26},
            {
                "liid": [
                    "A LIID is 1 to 25 letters, digits, dots, dashes or underscores.",
                    "Ensure this field has no more than 25 characters.",
                ]
            },
            id="LIID too long",
        ),
        pytest.param(
            {"liid": "NZ 42/a"},
            {"liid": ["A LIID is 1 to 25 letters, digits, dots, dashes or underscores."]},
            id="LIID with separators",
        ),
        pytest.param(
            {"authcc": "nz"},
            {"authcc": ["Use the two capital letters of an ISO 3166-1 country code."]},
            id="lower-case country code",
        ),
        pytest.param(
            {"valid_from": "yesterday"},
            {
                "valid_from": [
                    "Datetime has wrong format. Use one of these formats instead: "
                    "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
                ]
            },
            id="not a time",
        ),
        pytest.param(
            {"keep_content": "perhaps"},
            {"keep_content": ["Must be a valid boolean."]},
            id="not a boolean",
        ),
    ],
)
def test_a_bad_intercept_is_refused_with_field_errors(
    admin_client: APIClient, world: World, fields: dict[str, Any], errors: dict[str, Any]
) -> None:
    response = admin_client.post(
        "/api/intercepts/", intercept_body(world.mine, **fields), format="json"
    )
    assert response.status_code == 400
    assert response.json() == errors
    assert not Intercept.objects.filter(case=world.mine).exclude(liid="MY-LIID").exists()


def test_an_intercept_window_outside_its_case_is_refused(
    admin_client: APIClient, world: World
) -> None:
    late = (world.mine.valid_until + timedelta(days=1)).isoformat()
    response = admin_client.post(
        "/api/intercepts/", intercept_body(world.mine, valid_until=late), format="json"
    )
    assert response.status_code == 400
    [message] = response.json()["valid_from"]
    assert message.startswith("The intercept's window must lie inside case MINE's validity (")


def test_an_intercept_that_ends_before_it_starts_is_refused(
    admin_client: APIClient, world: World
) -> None:
    body = intercept_body(
        world.mine,
        valid_from=world.mine.valid_until.isoformat(),
        valid_until=world.mine.valid_from.isoformat(),
    )
    response = admin_client.post("/api/intercepts/", body, format="json")
    assert response.status_code == 400
    assert response.json()["valid_until"] == ["The intercept must end after it starts."]


def test_an_intercept_claiming_the_packets_of_another_is_refused_naming_it(
    admin_client: APIClient, world: World
) -> None:
    make_intercept(world.other, liid="FIRST", intercept_id=0x300, routers=[world.router])
    body = intercept_body(world.mine, intercept_id=0x300, routers=[world.router.pk])
    response = admin_client.post("/api/intercepts/", body, format="json")
    assert response.status_code == 400
    [message] = response.json()["non_field_errors"]
    assert message.startswith("Intercept FIRST (case OTHER) already claims mirror id 0x300")
    # No routers named means every router: that overlaps too.
    body = intercept_body(world.mine, intercept_id=0x300, routers=[])
    assert admin_client.post("/api/intercepts/", body, format="json").status_code == 400


def test_the_same_mirror_id_from_other_routers_is_accepted(
    admin_client: APIClient, world: World
) -> None:
    make_intercept(world.other, liid="FIRST", intercept_id=0x300, routers=[world.router])
    elsewhere = make_router(name="edge2")
    body = intercept_body(world.mine, intercept_id=0x300, routers=[elsewhere.pk])
    response = admin_client.post("/api/intercepts/", body, format="json")
    assert response.status_code == 201, response.content
    # ...until it is moved onto the first one's router.
    response = admin_client.patch(
        f"/api/intercepts/{response.json()['id']}/",
        {"routers": [elsewhere.pk, world.router.pk]},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["non_field_errors"][0].startswith("Intercept FIRST ")
    assert set(Intercept.objects.get(liid="NZ-0042").routers.all()) == {elsewhere}


def test_changing_an_intercept_does_not_conflict_with_itself(
    admin_client: APIClient, world: World
) -> None:
    response = admin_client.patch(
        f"/api/intercepts/{world.my_intercept.pk}/", {"sid": 0x90}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["sid_hex"] == "0x90"


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        pytest.param(
            {"reference": "R" * 65},
            {"reference": ["Ensure this field has no more than 64 characters."]},
            id="reference too long",
        ),
        pytest.param(
            {"reference": "MINE"},
            {"reference": ["case with this reference already exists."]},
            id="reference taken",
        ),
        pytest.param(
            {"valid_until": "2026-11-30T00:00:00Z"},
            {"valid_until": ["The warrant must end after it starts."]},
            id="ends before it starts",
        ),
        pytest.param(
            {"status": "open"},
            {"status": ['"open" is not a valid choice.']},
            id="unknown status",
        ),
        pytest.param(
            {"retention_days": 36501},
            {"retention_days": ["Ensure this value is less than or equal to 36500."]},
            id="retention over a century",
        ),
    ],
)
def test_a_bad_case_is_refused_with_field_errors(
    admin_client: APIClient, world: World, fields: dict[str, Any], errors: dict[str, Any]
) -> None:
    body = {
        "reference": "W-1",
        "title": "t",
        "agency": "a",
        "valid_from": "2026-12-01T00:00:00Z",
        "valid_until": "2027-02-28T00:00:00Z",
    }
    body.update(fields)
    response = admin_client.post("/api/cases/", body, format="json")
    assert response.status_code == 400
    assert response.json() == errors
    assert Case.objects.count() == 2


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        pytest.param(
            {"address": "198.51.100.300"},
            {"address": ["Enter a valid IPv4 or IPv6 address."]},
            id="not an address",
        ),
        pytest.param(
            {"port": 65536},
            {"port": ["Ensure this value is less than or equal to 65535."]},
            id="port too high",
        ),
        pytest.param(
            {"address": "192.0.2.1", "name": "edge1"},
            {
                "name": ["router with this name already exists."],
                "address": ["router with this address already exists."],
            },
            id="name and address taken",
        ),
    ],
)
def test_a_bad_router_is_refused_with_field_errors(
    admin_client: APIClient, fields: dict[str, Any], errors: dict[str, Any]
) -> None:
    make_router(name="edge1", address="192.0.2.1")
    body = {"name": "edge9", "address": "198.51.100.9"}
    body.update(fields)
    response = admin_client.post("/api/routers/", body, format="json")
    assert response.status_code == 400
    assert response.json() == errors


def test_malformed_json_is_refused(admin_client: APIClient) -> None:
    response = admin_client.post(
        "/api/routers/", '{"name": "edge9",', content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error")


def test_a_form_encoded_body_is_refused_as_an_unsupported_media_type(
    admin_client: APIClient,
) -> None:
    response = admin_client.post("/api/routers/", {"name": "edge9"}, format="multipart")
    assert response.status_code == 415


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_a_body_over_the_upload_limit_is_refused_unread(admin_client: APIClient) -> None:
    body = json.dumps({"name": "edge9", "address": "198.51.100.9", "pad": "x" * 1000})
    response = admin_client.post("/api/routers/", body, content_type="application/json")
    assert response.status_code == 413
    assert response.json() == {"detail": "The request body is larger than 1000 bytes."}
    assert not Router.objects.filter(name="edge9").exists()


# Pages and throttles -------------------------------------------------------------


def test_lists_come_in_pages_of_50_and_at_most_200(admin_client: APIClient) -> None:
    Router.objects.bulk_create(
        Router(name=f"r{number:03}", address=f"10.0.{number // 250}.{number % 250 + 1}")
        for number in range(205)
    )
    page = admin_client.get("/api/routers/").json()
    assert (page["count"], len(page["results"])) == (205, 50)
    assert page["next"].endswith("/api/routers/?page=2")
    assert len(admin_client.get("/api/routers/?page_size=10").json()["results"]) == 10
    assert len(admin_client.get("/api/routers/?page_size=100000").json()["results"]) == 200


@pytest.mark.parametrize("size", ["0", "-1", "ten", "1e3", " 5", "9999999999"])
def test_a_page_size_that_is_not_a_positive_whole_number_is_refused(
    admin_client: APIClient, size: str
) -> None:
    response = admin_client.get("/api/routers/", {"page_size": size})
    assert response.status_code == 400
    assert response.json() == {"page_size": ["A page size is a whole number from 1 to 200."]}


def test_a_page_past_the_end_is_not_found(admin_client: APIClient) -> None:
    assert admin_client.get("/api/routers/?page=2").status_code == 404


def test_a_user_sending_too_many_requests_is_throttled(
    admin_client: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "2/minute"})
    assert admin_client.get("/api/routers/").status_code == 200
    assert admin_client.get("/api/cases/").status_code == 200
    response = admin_client.get("/api/routers/")
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0


def test_the_api_answers_json_only(admin_client: APIClient) -> None:
    response = admin_client.get("/api/routers/", HTTP_ACCEPT="text/html")
    assert response.status_code == 406
