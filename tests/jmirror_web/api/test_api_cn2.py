"""The JSON API's CN2 side: vRouters and CN2 intercepts written and read, with the
model's validation."""

from __future__ import annotations

import pytest

from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Intercept, Router
from tests.factories import make_case, make_intercept, make_user
from tests.jmirror_web.api.test_api import client_for, intercept_body

pytestmark = pytest.mark.django_db


def test_a_record_manager_creates_a_vrouter_and_a_cn2_intercept_and_reads_them_back():
    case = make_case(reference="MINE")
    client = client_for(make_user(Role.LI_ADMIN))
    response = client.post(
        "/api/routers/",
        {"name": "vr1", "address": "198.51.100.31", "kind": "cn2"},
        format="json",
    )
    assert response.status_code == 201, response.content
    router = response.json()
    assert (router["format"], router["port"]) == ("contrail", 8099)

    response = client.post(
        "/api/intercepts/",
        intercept_body(
            case,
            kind="cn2",
            intercept_id=None,
            analyzer_port=8099,
            virtual_networks=["red"],
            targets=["10.0.0.7/32", "2001:DB8::/48"],
            routers=[router["id"]],
        ),
        format="json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    assert (created["kind"], created["intercept_id"], created["intercept_id_hex"]) == (
        "cn2",
        None,
        None,
    )
    assert created["targets"] == ["10.0.0.7", "2001:db8::/48"]
    assert Intercept.objects.get(pk=created["id"]).targets == ["10.0.0.7", "2001:db8::/48"]
    read = client.get(f"/api/intercepts/{created['id']}/").json()
    assert (read["analyzer_port"], read["virtual_networks"]) == (8099, ["red"])


def test_a_jmirror_intercept_reads_with_its_kind_and_empty_cn2_claims():
    intercept = make_intercept(intercept_id=0x8000)
    client = client_for(make_user(is_superuser=True))
    read = client.get(f"/api/intercepts/{intercept.pk}/").json()
    assert (read["kind"], read["intercept_id_hex"], read["analyzer_port"]) == (
        "jmirror",
        "0x8000",
        None,
    )
    assert (read["virtual_networks"], read["targets"]) == ([], [])


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        (
            {"intercept_id": 0x300},
            {
                "intercept_id": [
                    "A CN2 intercept has no mirror id: it claims Contrail frames by analyzer "
                    "port, virtual network or target."
                ]
            },
        ),
        (
            {"analyzer_port": 0},
            {"analyzer_port": ["Ensure this value is greater than or equal to 1."]},
        ),
        (
            {"targets": ["10.0.0.7/8"]},
            {
                "targets": [
                    "Target '10.0.0.7/8' has bits set beyond its prefix length: did you mean "
                    "10.0.0.0/8?"
                ]
            },
        ),
        (
            {"virtual_networks": {"name": "red"}},
            {"virtual_networks": ["Give the virtual networks as a list of names."]},
        ),
        (
            {"analyzer_port": None},
            {
                "non_field_errors": [
                    "A CN2 intercept claims by analyzer port, virtual networks or targets: "
                    "give at least one."
                ]
            },
        ),
        ({"kind": "vxlan"}, {"kind": ['"vxlan" is not a valid choice.']}),
    ],
)
def test_a_bad_cn2_intercept_is_refused_with_the_models_message(fields, errors):
    case = make_case()
    client = client_for(make_user(Role.LI_ADMIN))
    body = intercept_body(case, kind="cn2", intercept_id=None, analyzer_port=8099) | fields
    response = client.post("/api/intercepts/", body, format="json")
    assert response.status_code == 400
    assert response.json() == errors
    assert not Intercept.objects.exists()


def test_a_cn2_intercept_naming_an_mx_router_is_refused():
    case = make_case()
    mx = Router.objects.create(name="mx1", address="192.0.2.5")
    client = client_for(make_user(Role.LI_ADMIN))
    body = intercept_body(case, kind="cn2", intercept_id=None, analyzer_port=8099, routers=[mx.pk])
    response = client.post("/api/intercepts/", body, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "routers": [
            "mx1: not a CN2 vRouter; a CN2 intercept claims only the Contrail frames vRouters send."
        ]
    }
