"""The admin site's CN2 side: adding a CN2 intercept with its claims one a line, its
list row and page (no mirror id), and vRouters whose format and port follow the kind."""

from __future__ import annotations

import pytest
from pytest_django.fixtures import Settings

from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Intercept, Router
from tests.factories import make_intercept, make_router
from tests.jmirror_web.intercepts.test_admin import (
    intercept_form,
    port_note_of,
    provisioning_text,
    running_receiver,
    signed_in,
    staff,
    url,
    whole_seconds_case,
)
from tests.jmirror_web.live.helpers import FAST_HASHERS

pytestmark = pytest.mark.django_db


def cn2_form(case, **fields):
    values = {
        "kind": "cn2",
        "intercept_id": "",
        "analyzer_port": "8099",
        "virtual_networks": "",
        "targets": "",
    }
    return intercept_form(case, **(values | fields))


def vrouter(**fields) -> Router:
    return make_router(kind=Router.Kind.CN2, format=Router.Format.CONTRAIL, port=8099, **fields)


def test_a_cn2_intercept_is_added_with_its_claims_one_a_line() -> None:
    case = whole_seconds_case()
    router = vrouter()
    client = signed_in(staff(Role.LI_ADMIN))
    response = client.post(
        url("intercept", "add"),
        cn2_form(
            case,
            routers=[str(router.pk)],
            virtual_networks="red\r\n\r\n  blue  \r\n",
            targets="10.0.0.7/32\n2001:DB8::/48",
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    intercept = Intercept.objects.get(liid="NZ-0042")
    assert (intercept.kind, intercept.intercept_id, intercept.analyzer_port) == ("cn2", None, 8099)
    assert intercept.virtual_networks == ["red", "blue"]
    assert intercept.targets == ["10.0.0.7", "2001:db8::/48"]


def test_a_cn2_intercept_naming_an_mx_router_or_with_a_mirror_id_is_refused() -> None:
    case = whole_seconds_case()
    mx = make_router(name="mx1")
    client = signed_in(staff(Role.LI_ADMIN))
    response = client.post(
        url("intercept", "add"), cn2_form(case, routers=[str(mx.pk)], intercept_id="768")
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["intercept_id"] == [
        "A CN2 intercept has no mirror id: it claims Contrail frames by analyzer port, virtual "
        "network or target."
    ]
    response = client.post(url("intercept", "add"), cn2_form(case, routers=[str(mx.pk)]))
    assert response.context["adminform"].form.errors["routers"] == [
        "mx1: not a CN2 vRouter; a CN2 intercept claims only the Contrail frames vRouters send."
    ]
    response = client.post(url("intercept", "add"), cn2_form(case, targets="10.0.0.7/24"))
    assert response.context["adminform"].form.errors["targets"] == [
        "Target '10.0.0.7/24' has bits set beyond its prefix length: did you mean 10.0.0.0/24?"
    ]
    assert not Intercept.objects.exists()


def test_a_cn2_intercepts_row_and_page_show_its_claims_and_the_mirror_destination(
    settings: Settings,
) -> None:
    settings.MEDIATION_ADDRESS = "198.51.100.7"
    intercept = make_intercept(
        liid="CN2-1",
        kind=Intercept.Kind.CN2,
        intercept_id=None,
        analyzer_port=8099,
        virtual_networks=["red"],
        routers=[vrouter(name="vr1")],
    )
    client = signed_in(staff(Role.LI_ADMIN))
    listing = client.get(url("intercept", "changelist")).content.decode()
    assert '<td class="field-mirror_id">CN2: analyzer port 8099; VN red</td>' in listing
    assert '<td class="field-session_id">-</td>' in listing

    page = client.get(url("intercept", "change", intercept.pk))
    assert page.status_code == 200
    text = page.content.decode()
    assert "analyzer IP address: 198.51.100.7\nanalyzer UDP port:   8099\n" in text
    assert "ERX-Med-Dev-Handle" not in text
    form = page.context["adminform"].form
    assert "intercept_id" not in form.fields
    assert "kind" not in form.fields  # chosen once
    assert form["virtual_networks"].value() == "red"
    assert "red</textarea>" in text


def test_a_jmirror_intercepts_page_has_no_cn2_fields() -> None:
    intercept = make_intercept(intercept_id=0x300)
    client = signed_in(staff(Role.LI_ADMIN))
    form = client.get(url("intercept", "change", intercept.pk)).context["adminform"].form
    assert "intercept_id" in form.fields
    assert not {"analyzer_port", "virtual_networks", "targets"} & set(form.fields)


def router_form(**fields: str) -> dict[str, str]:
    return (
        {"name": "vr1", "address": "192.0.2.77", "kind": "mx", "port": "30030"}
        | {"format": "jmirror"}
        | fields
    )


def test_a_new_vrouters_format_and_port_follow_its_kind_unless_changed() -> None:
    client = signed_in(staff(Role.LI_ADMIN))
    response = client.post(url("router", "add"), router_form(kind="cn2"))
    assert response.status_code == 302
    router = Router.objects.get(name="vr1")
    assert (router.format, router.port) == ("contrail", 8099)

    response = client.post(
        url("router", "add"),
        router_form(name="vr2", address="192.0.2.78", kind="cn2", port="9000"),
    )
    assert Router.objects.get(name="vr2").port == 9000

    response = client.post(
        url("router", "add"),
        router_form(name="mx9", address="192.0.2.79", format="contrail"),
    )
    assert response.context["adminform"].form.errors["format"] == [
        "E Series and MX routers send jmirror; only a CN2 vRouter sends the Contrail Juniper "
        "header."
    ]


def test_a_cn2_intercepts_page_says_whether_a_receiver_listens_on_its_analyzer_port(
    settings: Settings,
) -> None:
    settings.PASSWORD_HASHERS = FAST_HASHERS
    intercept = make_intercept(
        kind=Intercept.Kind.CN2, intercept_id=None, analyzer_port=8099, routers=[vrouter()]
    )
    client = signed_in(staff(Role.LI_ADMIN))
    running_receiver("0.0.0.0:30030")
    note = port_note_of(provisioning_text(client, intercept))
    assert note.startswith(
        "Port 8099 (the intercept&#x27;s analyzer port) differs from what the running "
        "receivers listen on: UDP 30030."
    )
    running_receiver("0.0.0.0:8099")
    assert port_note_of(provisioning_text(client, intercept)).startswith(
        "A running receiver listens on UDP port 8099"
    )
