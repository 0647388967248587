"""manage.py ensure_admin: the first administrator, made once."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from tests.factories import make_user

pytestmark = pytest.mark.django_db


def ensure_admin() -> str:
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    return out.getvalue()


def test_it_creates_an_administrator_once_and_prints_a_password_that_works(monkeypatch):
    monkeypatch.delenv("JMIRROR_ADMIN_PASSWORD", raising=False)
    first = ensure_admin()
    found = re.search(r"created administrator 'admin' with password (\S+) ", first)
    assert found is not None
    admin = User.objects.get(username="admin")
    assert admin.is_superuser
    assert admin.check_password(found[1])
    # Again: nothing happens, nothing printed, the password is not reset.
    assert ensure_admin() == ""
    admin.refresh_from_db()
    assert admin.check_password(found[1])


def test_the_password_may_come_from_the_environment_and_is_not_printed(monkeypatch):
    monkeypatch.setenv("JMIRROR_ADMIN_USER", "chief")
    monkeypatch.setenv("JMIRROR_ADMIN_PASSWORD", "correct horse battery staple")
    out = ensure_admin()
    assert "staple" not in out
    assert User.objects.get(username="chief").check_password("correct horse battery staple")


def test_a_weak_password_from_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("JMIRROR_ADMIN_PASSWORD", "admin")
    with pytest.raises(CommandError, match="JMIRROR_ADMIN_PASSWORD is too weak"):
        ensure_admin()
    assert not User.objects.exists()


def test_a_plain_user_of_that_name_is_not_promoted(monkeypatch):
    monkeypatch.delenv("JMIRROR_ADMIN_PASSWORD", raising=False)
    make_user(username="admin")
    with pytest.raises(CommandError, match="exists but is not a superuser"):
        ensure_admin()
    assert not User.objects.filter(is_superuser=True).exists()
