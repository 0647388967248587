"""Recording audit events: the one function every part of jmirror-web calls
(:func:`record`), and the hooks that record sign-ins and every change to the records.

Changes are recorded from model signals, so the admin, the API, imports and the shell
are all covered by the same code. Who made a change comes from the audit context: the
request being served (set by :class:`AuditContextMiddleware`) or a management command
(:func:`acting_as`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import models
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.http import HttpRequest, HttpResponse

from jmirror_web.audit.models import AuditEvent, append_event


@dataclass(frozen=True)
class AuditContext:
    actor: Any
    source_address: str | None


_context: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar(
    "audit_context", default=None
)


def client_address(request: HttpRequest) -> str | None:
    """The peer address of the request, as the server gives it; X-Forwarded-For is never
    read. Behind a reverse proxy (``JMIRROR_BEHIND_PROXY``), ``manage.py serve`` gives
    the client's address from X-Real-IP instead of the proxy's."""
    address: str | None = request.META.get("REMOTE_ADDR") or None
    return address


@contextlib.contextmanager
def acting_as(actor: Any, source_address: str | None = None) -> Iterator[None]:
    """Attribute the events recorded inside the block to ``actor``."""
    token = _context.set(AuditContext(actor, source_address))
    try:
        yield
    finally:
        _context.reset(token)


def record(
    action: str,
    obj: models.Model | None = None,
    *,
    request: HttpRequest | None = None,
    actor: Any = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record one audit event. The actor and source address come from ``request``,
    else ``actor``, else the current audit context."""
    source_address = None
    if request is not None:
        actor = getattr(request, "user", None)
        source_address = client_address(request)
    elif actor is None:
        context = _context.get()
        if context is not None:
            actor, source_address = _actor_of(context.actor), context.source_address
    return append_event(
        action=action,
        actor=actor,
        source_address=source_address,
        object_type=obj._meta.label if obj is not None else "",
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        object_repr=str(obj) if obj is not None else "",
        details=details,
    )


def current_context() -> AuditContext | None:
    """Who events recorded now would name: for work deferred to later (after a commit),
    to be restored there with :func:`acting_as`."""
    return _context.get()


class AuditContextMiddleware:
    """Makes the request's user and address the audit context of whatever the request
    changes."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        with acting_as(_LazyUser(request), client_address(request)):
            response: HttpResponse = self.get_response(request)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        with acting_as(_LazyUser(request), client_address(request)):
            response: HttpResponse = await self.get_response(request)
        return response


class _LazyUser:
    """The request's user, looked up when an event is recorded: authentication may
    happen (sign-in, token) after this middleware has run."""

    def __init__(self, request: HttpRequest) -> None:
        self._request = request

    @property
    def is_authenticated(self) -> bool:
        user = getattr(self._request, "user", None)
        return bool(user is not None and user.is_authenticated)

    def resolve(self) -> Any:
        return getattr(self._request, "user", None)


def _actor_of(actor: Any) -> Any:
    return actor.resolve() if isinstance(actor, _LazyUser) else actor


# Sign-ins -------------------------------------------------------------------------


def _logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    address = client_address(request) if request is not None else None
    append_event(action="login", actor=user, source_address=address)


def _logged_out(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    address = client_address(request) if request is not None else None
    append_event(action="logout", actor=user, source_address=address)


def _login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    address = client_address(request) if request is not None else None
    # Django has already masked the password in credentials; keep only the username.
    details = {"username": str(credentials.get("username", ""))[:150]}
    # A sign-in refused for its two-factor code says so: its password was right.
    if kwargs.get("reason"):
        details["reason"] = str(kwargs["reason"])[:64]
    append_event(action="login_failed", source_address=address, details=details)


# Record changes -------------------------------------------------------------------

_SECRET_FIELDS = frozenset({"password"})


def field_values(instance: models.Model) -> dict[str, Any]:
    """A record's concrete field values, JSON-ready, for before/after details."""
    values: dict[str, Any] = {}
    for field in instance._meta.concrete_fields:
        if field.attname in _SECRET_FIELDS:
            continue
        value = field.value_from_object(instance)
        if isinstance(value, list) and all(isinstance(item, int | str | bool) for item in value):
            values[field.attname] = list(value)  # a JSON list (a CN2 intercept's targets)
        else:
            values[field.attname] = (
                value if isinstance(value, int | str | bool | None) else str(value)
            )
    return values


def _changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        name: {"before": before.get(name), "after": value}
        for name, value in after.items()
        if before.get(name) != value and name not in ("updated_at", "last_login")
    }


def _remember_before(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    if instance.pk is None or kwargs.get("raw"):
        return
    previous = sender._default_manager.filter(pk=instance.pk).first()
    instance._audit_before = field_values(previous) if previous is not None else None  # type: ignore[attr-defined]


def _saved(
    sender: type[models.Model], instance: models.Model, created: bool, **kwargs: Any
) -> None:
    if kwargs.get("raw"):
        return
    after = field_values(instance)
    if created:
        action, details = "create", {"after": after}
    else:
        before = getattr(instance, "_audit_before", None) or {}
        changes = _changes(before, after)
        if not changes:
            return  # e.g. a sign-in updating last_login: not a change of the record
        action, details = "change", {"changes": changes}
    record(f"{sender._meta.model_name}.{action}", instance, details=details)


def _deleted(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    record(
        f"{sender._meta.model_name}.delete", instance, details={"before": field_values(instance)}
    )


def _relation_changed(
    sender: Any, instance: models.Model, action: str, pk_set: set[Any] | None, **kwargs: Any
) -> None:
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    field = next(
        (
            m2m.name
            for m2m in instance._meta.many_to_many
            if getattr(m2m.remote_field, "through", None) is sender
        ),
        sender._meta.model_name,
    )
    record(
        f"{instance._meta.model_name}.{field}.{action.removeprefix('post_')}",
        instance,
        details={"ids": sorted(str(pk) for pk in pk_set or ())},
    )


def audited_models() -> list[type[models.Model]]:
    from django.contrib.auth.models import Group

    from jmirror_web.intercepts.models import Case, CaseAssignment, Intercept, Router

    return [Case, CaseAssignment, Intercept, Router, get_user_model(), Group]


def connect() -> None:
    """Wire the hooks (from AuditConfig.ready). Group membership and user permissions
    are the user model's auto-created relations, so the loop covers them too."""
    user_logged_in.connect(_logged_in, dispatch_uid="audit_login")
    user_logged_out.connect(_logged_out, dispatch_uid="audit_logout")
    user_login_failed.connect(_login_failed, dispatch_uid="audit_login_failed")
    for model in audited_models():
        label = model._meta.label
        pre_save.connect(_remember_before, sender=model, dispatch_uid=f"audit_pre_{label}")
        post_save.connect(_saved, sender=model, dispatch_uid=f"audit_save_{label}")
        post_delete.connect(_deleted, sender=model, dispatch_uid=f"audit_delete_{label}")
        for m2m in model._meta.many_to_many:
            through = m2m.remote_field.through
            if through is not None and through._meta.auto_created:
                m2m_changed.connect(
                    _relation_changed, sender=through, dispatch_uid=f"audit_m2m_{through}"
                )
