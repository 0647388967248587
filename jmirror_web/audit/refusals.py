"""Auditing refused requests for case objects, rate-limited so that probing is visible
but cannot flood the audit log.

Every page, API endpoint and websocket subscription that refuses a case, intercept,
session or export (404 for a signed-in user, the sign-in page or 401 for a visitor)
calls :func:`audit_refusal` (or :func:`audit_refusal_by`, without a request). The
first refusal of a *probe* — who (the user, or the source address of a visitor), what
(object type and the id asked for, whether it exists or not) and where (the page or
endpoint) — in each window of :data:`settings.JMIRROR_REFUSAL_AUDIT_SECONDS` is written;
the repeats are counted, and the next event written for that probe says how many were
left out (``suppressed``). Each user (or address) also has a budget of
:data:`ACTOR_BUDGET` events per window, so enumerating ids is bounded too; refusals over
the budget are counted and reported on that user's next event (``suppressed_other``).

The tallies are kept in process, in a bounded LRU map (:class:`RefusalLimiter`), not in
Django's cache framework: no shared cache is configured (the default local-memory cache
is per process too), counting "suppressed since the last event" is a read-modify-write
that the cache API cannot do atomically, and writing the audit log must not depend on a
cache server being up. A web tier of several processes therefore has one limit per
process, which only multiplies the bound. A tally pushed out of the map by
:data:`MAX_PROBES` newer ones is not lost: its count goes to its user's
``suppressed_other`` (and a user pushed out with counts unreported is logged).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Final

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.db import models
from django.http import Http404, HttpRequest, HttpResponseBase

from jmirror_web.audit.log import client_address
from jmirror_web.audit.models import AuditEvent, append_event

logger = logging.getLogger(__name__)

ACCESS_REFUSED: Final = "access.refused"
"""The action of a refused page or API request for a case object. Downloads, packets
and live subscriptions keep the actions they had (``export.refused``, ``packet view
refused``, ``live.subscribe_refused``) and go through the same limit."""

ACTOR_BUDGET: Final = 100
"""Refusal events written per user (or visitor address) per window."""
MAX_PROBES: Final = 10_000
"""Probes (and users) whose tallies are kept; the least recently refused go first."""
MAX_ID_CHARS: Final = 64  # as AuditEvent.object_id


@dataclass
class _Probe:
    written_at: float
    suppressed: int = 0


@dataclass
class _Actor:
    window_start: float
    written: int = 0
    unreported: int = field(default=0)


@dataclass(frozen=True)
class Admitted:
    """A refusal to write, with the counts of those left out before it."""

    suppressed: int
    suppressed_other: int


class RefusalLimiter:
    """Decides which refusals are written: the first per probe per window, within the
    actor's budget. Thread-safe: sync views run in several threads of one process."""

    def __init__(self, max_probes: int = MAX_PROBES, budget: int = ACTOR_BUDGET) -> None:
        self._max = max_probes
        self._budget = budget
        self._probes: OrderedDict[tuple[Hashable, ...], _Probe] = OrderedDict()
        self._actors: OrderedDict[Hashable, _Actor] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._probes.clear()
            self._actors.clear()

    def admit(
        self, actor: Hashable, probe: tuple[Hashable, ...], window: float, now: float
    ) -> Admitted | None:
        """The counts to write with this refusal, or None when it is only counted."""
        key = (actor, *probe)
        with self._lock:
            tally = self._probes.get(key)
            if tally is not None and now - tally.written_at < window:
                tally.suppressed += 1
                self._probes.move_to_end(key)
                return None
            budget = self._actors.get(actor)
            if budget is None or now - budget.window_start >= window:
                unreported = budget.unreported if budget is not None else 0
                budget = _Actor(window_start=now, unreported=unreported)
            self._actors[actor] = budget
            self._actors.move_to_end(actor)
            if budget.written >= self._budget:
                budget.unreported += 1
                self._trim()
                return None
            budget.written += 1
            admitted = Admitted(tally.suppressed if tally else 0, budget.unreported)
            budget.unreported = 0
            self._probes[key] = _Probe(written_at=now)
            self._probes.move_to_end(key)
            self._trim()
            return admitted

    def _trim(self) -> None:
        while len(self._probes) > self._max:
            (actor, *_), evicted = self._probes.popitem(last=False)
            if evicted.suppressed and actor in self._actors:
                self._actors[actor].unreported += evicted.suppressed
        while len(self._actors) > self._max:
            actor, evicted_actor = self._actors.popitem(last=False)
            if evicted_actor.unreported:
                # Over 10,000 users and addresses refused at once: said in the log rather
                # than dropped without a word.
                logger.warning(
                    "refusal audit: %d refusals by %s not written (tally map full)",
                    evicted_actor.unreported,
                    actor,
                )


limiter = RefusalLimiter()


def _window() -> float:
    return float(getattr(settings, "JMIRROR_REFUSAL_AUDIT_SECONDS", 600))


def _label(model: type[models.Model] | str) -> str:
    return model if isinstance(model, str) else model._meta.label


def audit_refusal_by(
    actor: Any,
    address: str | None,
    model: type[models.Model] | str,
    object_id: Any,
    reason: str,
    *,
    where: str,
    action: str = ACCESS_REFUSED,
    obj: models.Model | None = None,
    lookup: Callable[[], models.Model | None] | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent | None:
    """Record a refusal of object ``object_id`` of ``model`` (asked for by ``actor``
    from ``address``, at ``where``), unless the limit leaves it out; the event written,
    or None. ``obj`` is the object when it exists (or ``lookup`` finds it, asked only
    for an event written; none found makes the reason "no such object"): its name goes
    in the event, which only auditors read, never into what the refused user is shown."""
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    # A visitor is known by address only: all of its refusals share that one budget.
    who: Hashable = ("user", user.pk) if user is not None else ("address", address or "")
    object_type = _label(model)
    requested = str(object_id)[:MAX_ID_CHARS]
    admitted = limiter.admit(
        who, (action, object_type, requested, where), _window(), time.monotonic()
    )
    if admitted is None:
        return None
    if lookup is not None:
        # Only for the refusals written: the repeats a script sends cost no query.
        obj = lookup()
        if obj is None:
            reason = "no such object"
    written: dict[str, Any] = {**(details or {}), "reason": reason, "where": where}
    if admitted.suppressed:
        written["suppressed"] = admitted.suppressed
    if admitted.suppressed_other:
        written["suppressed_other"] = admitted.suppressed_other
    return append_event(
        action=action,
        actor=user,
        source_address=address,
        object_type=object_type,
        object_id=requested,
        object_repr=str(obj) if obj is not None else "",
        details=written,
    )


def audit_refusal(
    request: HttpRequest,
    model: type[models.Model] | str,
    object_id: Any,
    reason: str,
    *,
    action: str = ACCESS_REFUSED,
    obj: models.Model | None = None,
    lookup: Callable[[], models.Model | None] | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent | None:
    """:func:`audit_refusal_by` for a request: its user, address, and path; the probe is
    told apart by the URL's name (so a script walking numbers of one page is one probe
    per object)."""
    match = request.resolver_match
    where = match.view_name if match is not None else request.path[:200]
    return audit_refusal_by(
        getattr(request, "user", None),
        client_address(request),
        model,
        object_id,
        reason,
        where=where,
        action=action,
        obj=obj,
        lookup=lookup,
        details={"path": request.path[:200], **(details or {})},
    )


View = Callable[..., HttpResponseBase]


def refusals_audited(
    model: type[models.Model], id_kwarg: str, *, not_found: bool = True
) -> Callable[[View], View]:
    """``login_required`` for the page of one case object (named by the URL's
    ``id_kwarg``) that audits a visitor's refusal, and, with ``not_found``, the view's
    404 as the signed-in user's refusal (the view answers 404 only for an object that is
    missing or that the user may not see, which must look alike). The response is the
    one the view or ``login_required`` would give: only the audit log learns more."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            object_id = kwargs.get(id_kwarg, "")
            if not request.user.is_authenticated:
                audit_refusal(request, model, object_id, "not signed in")
                return redirect_to_login(request.get_full_path())
            if not not_found:
                return view(request, *args, **kwargs)
            try:
                return view(request, *args, **kwargs)
            except Http404:
                audit_not_found(request, model, object_id)
                raise

        return wrapped

    return decorate


def audit_not_found(
    request: HttpRequest,
    model: type[models.Model],
    object_id: Any,
    details: dict[str, Any] | None = None,
) -> AuditEvent | None:
    """Audit the 404 of a case object's page or endpoint, which is the same for a missing
    object and one the user may not see; the event (for auditors only) tells them apart."""

    def lookup() -> models.Model | None:
        try:
            return model._default_manager.filter(pk=object_id).first()
        except (ValueError, TypeError, ValidationError):
            return None  # an id that is not one (an API path takes any text)

    return audit_refusal(
        request, model, object_id, "not visible to this user", lookup=lookup, details=details
    )


URL_OBJECTS: Final = {
    "case_id": "intercepts.Case",
    "case": "intercepts.Case",
    "intercept_id": "intercepts.Intercept",
    "intercept": "intercepts.Intercept",
    "session_id": "intercepts.Session",
    "session": "intercepts.Session",
    "export_id": "exports.Export",
    "export": "exports.Export",
}
"""The case objects named by URL parameters (and by the export views' details)."""


def object_in(parameters: dict[str, Any]) -> tuple[str, str]:
    """The (model label, id) of the case object ``parameters`` name, else ("", "")."""
    for name, label in URL_OBJECTS.items():
        if name in parameters:
            return label, str(parameters[name])
    return "", ""
