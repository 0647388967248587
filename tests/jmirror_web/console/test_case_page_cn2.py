"""The case page and the audit trail of a CN2 intercept: its claims where a jmirror
intercept shows its mirror and session ids."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Intercept, Router
from tests.factories import make_case, make_intercept, make_router, make_user

pytestmark = pytest.mark.django_db


def test_the_case_page_shows_a_cn2_intercepts_claims(client: Client):
    case = make_case(reference="CASE-CN2")
    vrouter = make_router(name="vr-1", kind=Router.Kind.CN2, format=Router.Format.CONTRAIL)
    make_intercept(
        case,
        liid="CN2-PAGE",
        kind=Intercept.Kind.CN2,
        intercept_id=None,
        analyzer_port=8099,
        virtual_networks=["red"],
        targets=["10.0.0.0/24"],
        routers=[vrouter],
    )
    make_intercept(case, liid="JM-PAGE", intercept_id=0x300)
    client.force_login(make_user(Role.LI_ADMIN))

    response = client.get(reverse("console:case", args=[case.pk]))

    assert response.status_code == 200
    text = response.content.decode()
    assert (
        '<td class="mono" colspan="2"><span class="muted">CN2:</span> analyzer port 8099; '
        "VN red; target 10.0.0.0/24</td>"
    ) in text
    assert "0xNone" not in text
    assert '<td class="mono">0x300</td>' in text


def test_a_cn2_intercepts_lists_are_audited_as_lists():
    intercept = make_intercept(
        kind=Intercept.Kind.CN2, intercept_id=None, analyzer_port=None, targets=["10.0.0.1"]
    )
    created = AuditEvent.objects.filter(action="intercept.create").last()
    assert created.details["after"]["targets"] == ["10.0.0.1"]
    assert created.details["after"]["intercept_id"] is None
    intercept.targets = ["10.0.0.1", "10.0.0.2"]
    intercept.save()
    changed = AuditEvent.objects.filter(action="intercept.change").last()
    assert changed.details["changes"] == {
        "targets": {"before": ["10.0.0.1"], "after": ["10.0.0.1", "10.0.0.2"]}
    }
