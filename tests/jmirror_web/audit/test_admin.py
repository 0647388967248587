"""The audit log in the admin site: auditors read it, nobody changes or deletes it."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from jmirror_web.audit.models import AuditEvent, append_event, verify_chain
from jmirror_web.intercepts.access import Role
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def staff(role: Role | None = None, **fields: Any) -> User:
    # Staff status only opens the admin site; access.py decides what is inside.
    return make_user(role, is_staff=True, **fields)


def url(view: str, *args: Any) -> str:
    return reverse(f"admin:audit_auditevent_{view}", args=args)


def an_event() -> AuditEvent:
    return append_event(
        action="case.change",
        source_address="192.0.2.7",
        object_type="intercepts.Case",
        object_id="1",
        object_repr="W-1",
        details={"changes": {"title": {"before": "<a>", "after": "b"}}},
    )


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_auditor_lists_and_reads_events_without_a_save_button() -> None:
    event = an_event()
    client = signed_in(staff(Role.AUDITOR))
    listing = client.get(url("changelist"))
    assert listing.status_code == 200
    assert event in listing.context["cl"].result_list
    page = client.get(url("change", event.pk))
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert event.hash.encode() in page.content
    # Details are shown as JSON, escaped.
    assert b"&quot;before&quot;: &quot;&lt;a&gt;&quot;" in page.content


def test_the_list_filters_by_action_and_actor_and_searches() -> None:
    auditor = staff(Role.AUDITOR, username="ruth")
    client = signed_in(auditor)  # records ruth's login
    an_event()
    by_action = client.get(url("changelist"), {"action": "case.change"})
    assert [event.object_repr for event in by_action.context["cl"].result_list] == ["W-1"]
    by_actor = client.get(url("changelist"), {"actor_name": "ruth"})
    assert [event.action for event in by_actor.context["cl"].result_list] == ["login"]
    searched = client.get(url("changelist"), {"q": "W-1"})
    assert [event.action for event in searched.context["cl"].result_list] == ["case.change"]
    listing = client.get(url("changelist"))
    assert "admin/date_hierarchy.html" in [template.name for template in listing.templates]


@pytest.mark.parametrize("role", [Role.LI_ADMIN, Role.ANALYST, Role.SYSADMIN])
def test_other_roles_cannot_see_the_audit_log(role: Role) -> None:
    event = an_event()
    client = signed_in(staff(role))
    # An li-admin enters the admin but not the log; the others do not enter at all.
    refused = 403 if role == Role.LI_ADMIN else 302
    assert client.get(url("changelist")).status_code == refused
    assert client.get(url("change", event.pk)).status_code == refused
    index = client.get(reverse("admin:index"))
    assert index.status_code == (200 if role == Role.LI_ADMIN else 302)
    assert b"/admin/audit/" not in index.content


def superuser() -> User:
    return make_user(is_staff=True, is_superuser=True)


@pytest.mark.parametrize("who", ["auditor", "superuser"])
def test_nobody_can_delete_an_event_through_the_admin(who: str) -> None:
    event = an_event()
    user = staff(Role.AUDITOR) if who == "auditor" else superuser()
    client = signed_in(user)
    assert client.get(url("delete", event.pk)).status_code == 403
    assert client.post(url("delete", event.pk), {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).hash == event.hash
    assert verify_chain() is None


@pytest.mark.parametrize("who", ["auditor", "superuser"])
def test_nobody_can_change_or_add_an_event_through_the_admin(who: str) -> None:
    client = signed_in(staff(Role.AUDITOR) if who == "auditor" else superuser())
    event = an_event()
    response = client.post(url("change", event.pk), {"action": "nothing", "actor_name": "x"})
    assert response.status_code == 403
    assert client.get(url("add")).status_code == 403
    assert client.post(url("add"), {"action": "forged"}).status_code == 403
    assert AuditEvent.objects.order_by("-id").first() == event
    assert AuditEvent.objects.get(pk=event.pk).action == "case.change"
    assert verify_chain() is None


def test_the_list_offers_no_bulk_delete_and_ignores_one_posted() -> None:
    event = an_event()
    client = signed_in(superuser())
    listing = client.get(url("changelist"))
    assert "delete_selected" not in listing.context["cl"].model_admin.get_actions(
        listing.wsgi_request
    )
    response = client.post(
        url("changelist"),
        {"action": "delete_selected", "_selected_action": [str(event.pk)], "post": "yes"},
    )
    assert response.status_code == 200  # the list again: there is no action to run
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    assert verify_chain() is None
