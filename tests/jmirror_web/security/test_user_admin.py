"""Users in the admin: roles and case assignments in place of the staff flag and raw
permission lists, no new way to grant a right, every change audited."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.access import Role
from tests.factories import assign, make_case, make_user
from tests.jmirror_web.live.helpers import FAST_HASHERS

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_hashers(settings: Any) -> None:
    settings.PASSWORD_HASHERS = FAST_HASHERS


def superuser_client() -> Client:
    client = Client()
    client.force_login(make_user(is_superuser=True, username="root"))
    return client


def form_of(user: User, **fields: object) -> dict[str, object]:
    data: dict[str, object] = {
        "username": user.username,
        "first_name": "",
        "last_name": "",
        "email": "",
        "is_active": "on",
        "groups": [str(group.pk) for group in user.groups.all()],
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": "2026-12-01",
        "date_joined_1": "10:00:00",
    }
    data.update(fields)
    return data


def test_the_user_list_shows_roles_and_assigned_cases_not_the_staff_flag() -> None:
    analyst = make_user(Role.ANALYST, username="ana")
    assign(analyst, make_case(reference="W-2"))
    assign(analyst, make_case(reference="W-1"))
    page = superuser_client().get(reverse("admin:auth_user_changelist")).content.decode()
    row = page.split(">ana</a>", 1)[1].split("</tr>", 1)[0]
    assert '<td class="field-roles">analyst</td>' in row
    assert '<td class="field-cases">W-1, W-2</td>' in row
    assert "staff status" not in page.lower()


def test_the_user_page_explains_roles_and_links_assignments_without_raw_permissions() -> None:
    analyst = make_user(Role.ANALYST)
    case = make_case(reference="W-7")
    assign(analyst, case)
    page = superuser_client().get(reverse("admin:auth_user_change", args=[analyst.pk]))
    text = page.content.decode()
    assert "the cases assigned to them: sessions, packets and downloads" in text
    assert f'<a href="{reverse("admin:intercepts_case_change", args=[case.pk])}">W-7</a>' in text
    assert 'name="user_permissions"' not in text
    assert 'name="is_staff"' not in text
    assert "Designates whether the user can log into this admin site" not in text
    # Only the four roles are offered.
    offered = page.context["adminform"].form.fields["groups"].queryset
    assert sorted(group.name for group in offered) == sorted(Role)


def test_a_role_given_on_the_user_page_is_audited_and_nothing_else_can_be_granted() -> None:
    user = make_user(username="newcomer")
    client = superuser_client()
    other = Group.objects.create(name="not-a-role")
    analysts = Group.objects.get(name=Role.ANALYST)
    permission = Permission.objects.get(codename="change_user")
    url = reverse("admin:auth_user_change", args=[user.pk])
    refused = client.post(url, form_of(user, groups=[str(other.pk)]))
    assert refused.status_code == 200
    assert "Select a valid choice" in refused.content.decode()
    data = form_of(
        user, groups=[str(analysts.pk)], is_staff="on", user_permissions=[str(permission.pk)]
    )
    assert client.post(url, data).status_code == 302
    user.refresh_from_db()
    assert [group.name for group in user.groups.all()] == [Role.ANALYST]
    assert not user.is_staff
    assert not user.user_permissions.exists()
    (added,) = AuditEvent.objects.filter(action="user.groups.add")
    assert added.details == {"ids": [str(analysts.pk)]}


def test_roles_are_read_only_and_say_what_they_give() -> None:
    make_user(Role.AUDITOR, username="aud")
    client = superuser_client()
    listed = client.get(reverse("admin:auth_group_changelist")).content.decode()
    assert "reads the records and the audit log; no packet content" in listed
    assert ">aud<" in listed or "aud</td>" in listed
    assert client.get(reverse("admin:auth_group_add")).status_code == 403
    auditors = Group.objects.get(name=Role.AUDITOR)
    assert (
        client.post(
            reverse("admin:auth_group_delete", args=[auditors.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    assert Group.objects.filter(pk=auditors.pk).exists()


def test_an_li_administrator_reads_users_and_changes_none() -> None:
    analyst = make_user(Role.ANALYST)
    client = Client()
    client.force_login(make_user(Role.LI_ADMIN))
    assert client.get(reverse("admin:auth_user_changelist")).status_code == 200
    url = reverse("admin:auth_user_change", args=[analyst.pk])
    shown = client.get(url).content.decode()
    assert 'name="groups"' not in shown  # read-only
    assert client.post(url, form_of(analyst, is_superuser="on")).status_code == 403
    analyst.refresh_from_db()
    assert not analyst.is_superuser
