"""Exports in the admin site: read-only, for auditors."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from jmirror_web.exports.models import Export
from jmirror_web.intercepts.access import Role
from tests.factories import make_user
from tests.jmirror_web.exports.evidence import Stored

pytestmark = pytest.mark.django_db


@pytest.fixture
def export(stored: Stored) -> Export:
    return Export.objects.create(
        requester_name="someone",
        kind=Export.Kind.SESSION,
        case=stored.case,
        intercept=stored.intercept,
        session=stored.session,
        format="pcap",
        file_name="x.pcap",
        sha256="ab" * 32,
    )


def test_an_auditor_reads_exports_and_changes_nothing(client: Client, export: Export) -> None:
    client.force_login(make_user(Role.AUDITOR))
    listing = client.get(reverse("admin:exports_export_changelist"))
    assert listing.status_code == 200
    assert "ab" * 32 in listing.content.decode()
    page = client.get(reverse("admin:exports_export_change", args=[export.pk]))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert client.get(reverse("admin:exports_export_add")).status_code == 403
    deleted = client.post(reverse("admin:exports_export_delete", args=[export.pk]), {"post": "yes"})
    assert deleted.status_code == 403
    assert Export.objects.filter(pk=export.pk).exists()


def test_an_li_administrator_does_not_see_exports_in_the_admin(
    client: Client, export: Export
) -> None:
    client.force_login(make_user(Role.LI_ADMIN))
    assert client.get(reverse("admin:exports_export_changelist")).status_code == 403
