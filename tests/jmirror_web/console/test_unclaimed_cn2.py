"""Unclaimed Contrail streams (a CN2 vRouter's frames to one analyzer port: mid
CONTRAIL_MID, sid the port) on the console's page and in the admin: shown by their port,
mapped to a CN2 intercept of that port, their unknown router registered as a vRouter."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Intercept, Router, UnclaimedStream
from receiver.contrail import CONTRAIL_MID
from receiver.gate import Claim
from receiver.gate_loader import load_gate
from tests.factories import make_case, make_intercept, make_router, make_user

pytestmark = pytest.mark.django_db

URL = reverse("console:unclaimed")
PORT = 8123
SOURCE = "192.0.2.77"


def make_contrail_stream(**fields: Any) -> UnclaimedStream:
    now = timezone.now()
    values: dict[str, Any] = {
        "source": SOURCE,
        "mid": CONTRAIL_MID,
        "sid": PORT,
        "reason": UnclaimedStream.Reason.NO_INTERCEPT,
        "packets": 321,
        "first_seen": now - timedelta(minutes=3),
        "last_seen": now,
    }
    values.update(fields)
    return UnclaimedStream.objects.create(**values)


@pytest.fixture
def li_admin(client: Client) -> User:
    user = make_user(Role.LI_ADMIN)
    client.force_login(user)
    return user


@pytest.fixture
def vrouter() -> Router:
    return make_router(
        name="vr-7", address=SOURCE, kind=Router.Kind.CN2, format=Router.Format.CONTRAIL, port=PORT
    )


def _map(client: Client, stream: UnclaimedStream, **data: Any) -> Any:
    prefix = f"stream{stream.pk}-"
    posted = {prefix + name: value for name, value in data.items()}
    return client.post(reverse("console:map_unclaimed", args=[stream.pk]), posted)


def _claim(port: int = PORT) -> Claim | str:
    claim, _low, _high, _whole = load_gate().claim_contrail_span(
        SOURCE, port, "vn-a", "vn-b", "10.0.0.1", "10.0.0.2", time.time_ns()
    )
    return claim


def test_a_contrail_row_shows_its_port_not_mid_and_sid(
    client: Client, li_admin: User, vrouter: Router
) -> None:
    make_contrail_stream(router=vrouter)
    text = client.get(URL).content.decode()
    assert f'<td colspan="3" data-contrail>Contrail, analyzer port {PORT}</td>' in text
    assert f"{CONTRAIL_MID:x}" not in text
    assert f"0x{PORT:08x}" not in text
    assert "only session id" not in text  # a CN2 intercept has none to pin
    assert f"claims the Contrail frames sent to analyzer port {PORT}" in text


def test_mapping_a_contrail_stream_creates_a_cn2_intercept_of_its_port(
    client: Client, li_admin: User, vrouter: Router
) -> None:
    case = make_case(reference="CN2-CASE")
    stream = make_contrail_stream(router=vrouter)
    assert _claim() == "no_intercept"
    response = _map(client, stream, case=case.pk, liid="CN2-0001", scope_router="on")
    assert response.status_code == 302

    intercept = Intercept.objects.get(liid="CN2-0001")
    assert intercept.kind == Intercept.Kind.CN2
    assert (intercept.analyzer_port, intercept.intercept_id, intercept.sid) == (PORT, None, None)
    assert list(intercept.routers.all()) == [vrouter]
    claim = _claim()
    assert isinstance(claim, Claim)
    assert claim.intercept.liid == "CN2-0001"
    assert _claim(PORT + 1) == "no_intercept"

    mapped = AuditEvent.objects.get(action="unclaimed.mapped")
    assert mapped.details == {
        "stream": stream.pk,
        "source": SOURCE,
        "format": "contrail",
        "analyzer_port": PORT,
    }
    page = client.get(URL).content.decode()
    assert (
        f"Intercept CN2-0001 created under case CN2-CASE: Contrail frames to analyzer port "
        f"{PORT}, from vr-7 only." in page
    )
    assert "claimed now by CN2-0001" in page


def test_a_pin_sid_sent_anyway_is_ignored_and_any_vrouter_may_be_chosen(
    client: Client, li_admin: User, vrouter: Router
) -> None:
    stream = make_contrail_stream(router=vrouter)
    response = _map(client, stream, case=make_case().pk, liid="CN2-ANY", pin_sid="on")
    assert response.status_code == 302
    intercept = Intercept.objects.get(liid="CN2-ANY")
    assert (intercept.sid, intercept.analyzer_port) == (None, PORT)
    assert not intercept.routers.exists()
    assert "from any registered vRouter" in client.get(URL).content.decode()


def test_a_second_intercept_of_the_port_is_refused_with_the_models_message(
    client: Client, li_admin: User, vrouter: Router
) -> None:
    make_intercept(
        make_case(reference="FIRST"),
        liid="CN2-FIRST",
        kind=Intercept.Kind.CN2,
        intercept_id=None,
        analyzer_port=PORT,
        valid_from=timezone.now() + timedelta(days=7),
        valid_until=timezone.now() + timedelta(days=14),
    )
    stream = make_contrail_stream(router=vrouter, reason=UnclaimedStream.Reason.OUTSIDE_WINDOW)
    response = _map(client, stream, case=make_case().pk, liid="CN2-CLASH", scope_router="on")
    assert response.status_code == 400
    assert "CN2-FIRST" in response.content.decode()
    assert not Intercept.objects.filter(liid="CN2-CLASH").exists()


def test_an_unknown_vrouter_is_registered_as_cn2_on_the_streams_port(
    client: Client, li_admin: User
) -> None:
    make_contrail_stream(reason=UnclaimedStream.Reason.UNKNOWN_ROUTER)
    text = client.get(URL).content.decode()
    add = reverse("admin:intercepts_router_add")
    link = f"{add}?address={SOURCE}&amp;kind=cn2&amp;port={PORT}"
    assert f'href="{link}">register CN2 vRouter {SOURCE}</a>' in text
    assert "create intercept from this" not in text

    # The admin's form opens filled in, and saved as it is makes a vRouter on that port.
    form = client.get(link.replace("&amp;", "&")).content.decode()
    assert f'value="{PORT}"' in form
    # As a browser sends it: the format left at the form's default follows the kind.
    posted = {"name": "vr-new", "address": SOURCE, "kind": "cn2", "port": str(PORT)}
    response = client.post(add, posted | {"format": "jmirror"})
    assert response.status_code == 302
    router = Router.objects.get(name="vr-new")
    assert (router.kind, router.format, router.port) == ("cn2", "contrail", PORT)


def test_mapping_needs_the_router_registered_first(client: Client, li_admin: User) -> None:
    stream = make_contrail_stream(reason=UnclaimedStream.Reason.UNKNOWN_ROUTER)
    response = _map(client, stream, case=make_case().pk, liid="CN2-NOROUTER", scope_router="on")
    assert response.status_code == 400
    assert f"No router is registered with address {SOURCE}".encode() in response.content
    assert not Intercept.objects.exists()


def test_a_router_of_the_wrong_kind_is_named_and_not_mapped(client: Client, li_admin: User) -> None:
    mx = make_router(name="mx-7", address=SOURCE, kind=Router.Kind.MX)
    stream = make_contrail_stream(router=mx, reason=UnclaimedStream.Reason.UNKNOWN_ROUTER)
    text = client.get(URL).content.decode()
    assert "Router mx-7 is registered as MX Series (Junos), but it sends Contrail" in text
    assert f'href="{reverse("admin:intercepts_router_change", args=[mx.pk])}"' in text
    assert "create intercept from this" not in text
    response = _map(client, stream, case=make_case().pk, liid="CN2-WRONG", scope_router="on")
    assert response.status_code == 400
    assert b"change its kind to CN2" in response.content
    assert not Intercept.objects.exists()


@pytest.mark.parametrize("role", [Role.ANALYST, Role.AUDITOR, Role.SYSADMIN])
def test_others_may_neither_see_nor_map_it(client: Client, vrouter: Router, role: Role) -> None:
    client.force_login(make_user(role))
    stream = make_contrail_stream(router=vrouter)
    assert client.get(URL).status_code == 403
    response = _map(client, stream, case=make_case().pk, liid="CN2-SNEAK", scope_router="on")
    assert response.status_code == 403
    assert not Intercept.objects.exists()


# The admin's list ------------------------------------------------------------------------


def test_the_admin_list_shows_the_port_and_links_to_the_cn2_forms(
    client: Client, li_admin: User, vrouter: Router
) -> None:
    make_contrail_stream(router=vrouter)
    make_contrail_stream(source="192.0.2.99", reason=UnclaimedStream.Reason.UNKNOWN_ROUTER)
    text = client.get(reverse("admin:intercepts_unclaimedstream_changelist")).content.decode()
    assert "Contrail (CN2)" in text
    assert f"analyzer port {PORT}" in text
    assert f"{CONTRAIL_MID:x}" not in text

    register = reverse("admin:intercepts_router_add")
    assert f'href="{register}?address=192.0.2.99&amp;kind=cn2&amp;port={PORT}"' in text
    add = reverse("admin:intercepts_intercept_add")
    link = f"{add}?kind=cn2&amp;analyzer_port={PORT}&amp;routers={vrouter.pk}"
    assert f'href="{link}">create CN2 intercept for analyzer port {PORT}</a>' in text

    # The intercept form opens as a CN2 one of the port and the vRouter.
    query = parse_qs(urlsplit(link.replace("&amp;", "&")).query)
    assert query == {"kind": ["cn2"], "analyzer_port": [str(PORT)], "routers": [str(vrouter.pk)]}
    form = client.get(link.replace("&amp;", "&")).content.decode()
    assert f'name="analyzer_port" value="{PORT}"' in form
    assert '<option value="cn2" selected>' in form
