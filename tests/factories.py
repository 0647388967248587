"""Small factories for records, so tests say only what matters to them."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import Group, User
from django.utils import timezone

from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import (
    CaptureFile,
    Case,
    CaseAssignment,
    Intercept,
    Router,
    Session,
)

_numbers = itertools.count(1)
PASSWORD = "correct horse battery staple"


def make_user(role: Role | None = None, *, username: str | None = None, **fields: Any) -> User:
    user = User.objects.create_user(
        username=username or f"user{next(_numbers)}", password=PASSWORD, **fields
    )
    if role is not None:
        # get_or_create: a transactional test before this one may have flushed the
        # groups that migration 0002 made.
        user.groups.add(Group.objects.get_or_create(name=role.value)[0])
    return user


def make_case(**fields: Any) -> Case:
    now = timezone.now()
    values: dict[str, Any] = {
        "reference": f"CASE-{next(_numbers)}",
        "title": "Test warrant",
        "agency": "Test agency",
        "valid_from": now - timedelta(days=1),
        "valid_until": now + timedelta(days=30),
        "status": Case.Status.ACTIVE,
    }
    values.update(fields)
    return Case.objects.create(**values)


def assign(user: User, case: Case) -> CaseAssignment:
    return CaseAssignment.objects.create(user=user, case=case)


def make_router(**fields: Any) -> Router:
    number = next(_numbers)
    values: dict[str, Any] = {
        "name": f"router{number}",
        "address": f"192.0.2.{number % 250 + 1}" if number < 250 else f"2001:db8::{number:x}",
        "kind": Router.Kind.MX,
        "port": 30030,
    }
    values.update(fields)
    return Router.objects.create(**values)


def make_intercept(case: Case | None = None, **fields: Any) -> Intercept:
    case = case or make_case()
    routers = fields.pop("routers", ())
    values: dict[str, Any] = {
        "case": case,
        "liid": f"LIID-{next(_numbers)}",
        "intercept_id": next(_numbers),
        "valid_from": case.valid_from,
        "valid_until": case.valid_until,
    }
    values.update(fields)
    intercept = Intercept.objects.create(**values)
    if routers:
        intercept.routers.set(routers)
    return intercept


def make_session(intercept: Intercept | None = None, **fields: Any) -> Session:
    intercept = intercept or make_intercept()
    now = timezone.now()
    values: dict[str, Any] = {
        "router": fields.pop("router", None) or make_router(),
        "intercept": intercept,
        "mid": intercept.intercept_id,
        "sid": next(_numbers),
        "first_seen": now - timedelta(minutes=5),
        "last_seen": now,
        "packets": 10,
        "bytes": 1000,
        "stored_packets": 10,
    }
    values.update(fields)
    return Session.objects.create(**values)


def make_capture_file(session: Session | None = None, **fields: Any) -> CaptureFile:
    session = session or make_session()
    first: datetime = session.first_seen
    values: dict[str, Any] = {
        "session": session,
        "path": f"sessions/{session.pk}/{next(_numbers)}.pcap",
        "first_packet": first,
        "last_packet": session.last_seen,
        "packets": 10,
        "bytes": 1000,
        "sha256": "0" * 64,
        "closed": True,
    }
    values.update(fields)
    return CaptureFile.objects.create(**values)
