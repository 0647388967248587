"""The database side of the live consumer: who is signed in, what a subscription may
receive, and the audit events of both (synchronous: the consumer calls these through
``database_sync_to_async``).

Every decision goes through :mod:`jmirror_web.intercepts.access`, as the views' do, and
is taken on a user freshly loaded from the session store: a user object kept from the
websocket's handshake would still carry the roles and ``is_active`` of that moment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Final

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.contrib.sessions.backends.base import SessionBase
from django.db import models
from django.utils.crypto import constant_time_compare

from jmirror_web.audit.log import acting_as, record
from jmirror_web.audit.refusals import audit_refusal_by
from jmirror_web.intercepts.access import Action, cases_for, may
from jmirror_web.intercepts.models import Case, Intercept, Session
from jmirror_web.live.buffer import MAX_DASHBOARD_CASES
from jmirror_web.live.protocol import Stream, SubscriptionKey
from jmirror_web.security import two_factor

SUBSCRIBED: Final = "live.subscribe"
REFUSED: Final = "live.subscribe_refused"
REVOKED: Final = "live.revoke"
CONNECT_REFUSED: Final = "live.connect_refused"


@dataclass(frozen=True)
class Grant:
    """What an accepted subscription receives: summaries of these cases only, and packet
    info only with ``content``."""

    case_ids: frozenset[int]
    content: bool = False


def _session_user(session_key: str | None, user_pk: Any) -> tuple[Any, dict[str, Any]]:
    """The active user signed in with ``session_key`` and the session's data, if it is
    still ``user_pk``'s session, else (None, {}): signed out (the session is gone or
    expired), deactivated, or the password changed (the session's auth hash no longer
    matches)."""
    if not session_key:
        return None, {}
    engine = import_module(settings.SESSION_ENGINE)
    store: SessionBase = engine.SessionStore(session_key)
    data = store.load()  # empty for a deleted or expired session; never creates one
    backend_path = data.get(BACKEND_SESSION_KEY)
    if (
        not isinstance(backend_path, str)
        or backend_path not in settings.AUTHENTICATION_BACKENDS
        or SESSION_KEY not in data
    ):
        return None, {}
    try:
        stored_pk = get_user_model()._meta.pk.to_python(data[SESSION_KEY])
    except Exception:  # a session written by something else: not a sign-in
        return None, {}
    if stored_pk != user_pk:
        return None, {}
    # ModelBackend.get_user returns None for an inactive user.
    user = load_backend(backend_path).get_user(stored_pk)
    if user is None or not user.is_active:
        return None, {}
    session_hash = data.get(HASH_SESSION_KEY)
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if not session_hash or not any(constant_time_compare(session_hash, h) for h in hashes):
        return None, {}
    return user, data


def signed_in_user(session_key: str | None, user_pk: Any) -> Any:
    """The user signed in with ``session_key`` (see :func:`_session_user`), if the
    session is also not one that owes a two-factor code (see
    :mod:`jmirror_web.security.two_factor`), else None."""
    user, data = _session_user(session_key, user_pk)
    if user is None or _two_factor_step(user, data) is not None:
        return None
    return user


def _two_factor_step(user: Any, data: dict[str, Any]) -> two_factor.Step | None:
    # Read from the session store, as OTPMiddleware reads it for a request: no Django
    # middleware runs for a websocket, and the handshake's session may be stale.
    return two_factor.missing_step(user, two_factor.session_verified(user, data))


def admit(session_key: str | None, user_pk: Any, address: str | None) -> bool:
    """Whether a new connection is from a signed-in user (:func:`signed_in_user`); a
    session that owes a two-factor code is refused and audited."""
    user, data = _session_user(session_key, user_pk)
    if user is None:
        return False
    step = _two_factor_step(user, data)
    if step is not None:
        refuse_connection(user, address, f"two_factor_{step.value}")
        return False
    return True


def client_address(scope: dict[str, Any]) -> str | None:
    """The peer's IP address as the server saw it (the audit log stores IPs only)."""
    client = scope.get("client")
    if not client:
        return None
    try:
        return str(ipaddress.ip_address(client[0]))
    except (ValueError, TypeError, IndexError):
        return None


def _object(key: SubscriptionKey) -> tuple[models.Model | None, Case | None]:
    """The subscribed object and the case whose rights decide, or (None, None)."""
    stream, object_id = key
    if object_id is None:
        return None, None
    if stream == Stream.SESSION:
        session = (
            Session.objects.select_related("intercept__case", "router").filter(pk=object_id).first()
        )
        if session is None:
            return None, None
        return session, session.intercept.case if session.intercept is not None else None
    if stream == Stream.INTERCEPT:
        intercept = Intercept.objects.select_related("case").filter(pk=object_id).first()
        return intercept, intercept.case if intercept is not None else None
    case = Case.objects.filter(pk=object_id).first()
    return case, case


def dashboard_cases(user: Any) -> frozenset[int]:
    # Only active cases can receive traffic (the receiver stores nothing else), and the
    # re-check adds a case that becomes active. Capped so that one connection's groups and
    # buffer stay bounded; most recent warrants first.
    ids = (
        cases_for(user, Action.VIEW_METADATA)
        .filter(status=Case.Status.ACTIVE)
        .order_by("-valid_from", "-pk")
        .values_list("pk", flat=True)[:MAX_DASHBOARD_CASES]
    )
    return frozenset(ids)


def decide(user: Any, key: SubscriptionKey) -> tuple[Grant | None, models.Model | None]:
    """The grant for ``key`` (None: refused) and the object it is about."""
    stream, _ = key
    if stream == Stream.DASHBOARD:
        return Grant(dashboard_cases(user)), None
    if stream == Stream.HEALTH:
        return (Grant(frozenset()) if may(user, Action.VIEW_HEALTH) else None), None
    obj, case = _object(key)
    # No such object and no right to it are refused alike: ids must not be probed.
    if case is None or not may(user, Action.VIEW_METADATA, case):
        return None, obj
    return Grant(frozenset({case.pk}), content=may(user, Action.VIEW_CONTENT, case)), obj


def _details(key: SubscriptionKey, **more: Any) -> dict[str, Any]:
    return {"stream": key[0].value, "id": key[1], **more}


def subscribe(
    session_key: str | None, user_pk: Any, key: SubscriptionKey, address: str | None
) -> tuple[bool, Grant | None]:
    """(still signed in, grant or None), the decision audited."""
    user = signed_in_user(session_key, user_pk)
    if user is None:
        return False, None
    grant, obj = decide(user, key)
    if grant is None:
        _audit_refused(user, address, key, "forbidden", obj)
        return True, grant
    with acting_as(user, address):
        if key[0] == Stream.DASHBOARD:
            record(SUBSCRIBED, details=_details(key, cases=len(grant.case_ids)))
        else:
            record(SUBSCRIBED, obj, details=_details(key, content=grant.content))
    return True, grant


def refuse(
    session_key: str | None,
    user_pk: Any,
    key: SubscriptionKey,
    address: str | None,
    reason: str,
) -> None:
    """Audit a subscription refused before its rights were looked at (too many)."""
    _audit_refused(signed_in_user(session_key, user_pk), address, key, reason, None)


_STREAM_OBJECTS: Final = {
    Stream.SESSION: Session,
    Stream.INTERCEPT: Intercept,
    Stream.CASE: Case,
}


def _audit_refused(
    user: Any, address: str | None, key: SubscriptionKey, reason: str, obj: models.Model | None
) -> None:
    """A refused subscription, rate-limited per user and stream like the pages' refusals
    (:mod:`jmirror_web.audit.refusals`): a script subscribing to id after id is bounded."""
    stream, object_id = key
    model = _STREAM_OBJECTS.get(stream)
    audit_refusal_by(
        user,
        address,
        model if model is not None else "",
        object_id if object_id is not None else "",
        reason,
        where=f"live.{stream.value}",
        action=REFUSED,
        obj=obj,
        details=_details(key),
    )


def refuse_connection(user: Any, address: str | None, reason: str, **details: Any) -> None:
    """Audit a websocket handshake refused for its origin or for want of a sign-in,
    rate-limited per user (or address) and reason."""
    audit_refusal_by(
        user,
        address,
        "",
        "",
        reason,
        where=f"live.connect.{reason}",
        action=CONNECT_REFUSED,
        details=details,
    )


def recheck(
    session_key: str | None,
    user_pk: Any,
    grants: dict[SubscriptionKey, Grant],
    address: str | None,
) -> tuple[bool, dict[SubscriptionKey, Grant | None]]:
    """(still signed in, the grant each subscription has now, None where revoked).

    A session or intercept whose case changed is revoked rather than followed: the page
    subscribed to it under the old case, and may subscribe again."""
    user = signed_in_user(session_key, user_pk)
    if user is None:
        return False, {}
    verdicts: dict[SubscriptionKey, Grant | None] = {}
    for key, before in grants.items():
        grant, obj = decide(user, key)
        if grant is not None and key[0] in (Stream.SESSION, Stream.INTERCEPT, Stream.CASE):
            grant = grant if grant.case_ids == before.case_ids else None
        verdicts[key] = grant
        if grant is None:
            with acting_as(user, address):
                record(REVOKED, obj, details=_details(key, reason="no longer allowed"))
    return True, verdicts
