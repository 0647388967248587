"""Build the receiver's :class:`~receiver.gate.Gate` from the intercept records.

The receiver polls :func:`gate_fingerprint` (about once a second) and calls
:func:`load_gate` only when the fingerprint changed, so that an edit to a case, an
intercept or a router takes effect within two seconds without reloading every second.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DatabaseError, connection
from django.db.models import Count, Max

from jmirror_web.intercepts.models import Case, Intercept, Router
from receiver.gate import CN2, JMIRROR, Gate, InterceptRule, RouterRule

logger = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def nanoseconds(moment: datetime) -> int:
    """``moment`` (aware) as integer nanoseconds since the epoch, without the rounding
    a float timestamp would bring."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def intercept_rule(intercept: Intercept, router_ids: frozenset[int]) -> InterceptRule:
    """The gate's view of one intercept (its case loaded with it). A CN2 intercept's
    lists are as its validation left them (distinct VN names, normalized targets)."""
    case = intercept.case
    start = max(intercept.valid_from, case.valid_from)
    end = min(intercept.valid_until, case.valid_until)
    return InterceptRule(
        intercept_id_pk=intercept.pk,
        liid=intercept.liid,
        case_id=case.pk,
        case_reference=case.reference,
        mirror_id=intercept.intercept_id,
        sid=intercept.sid,
        router_ids=router_ids,
        window=(nanoseconds(start), nanoseconds(end)),
        active=case.status == Case.Status.ACTIVE,
        keep_content=intercept.keep_content,
        kind=CN2 if intercept.is_cn2 else JMIRROR,
        analyzer_port=intercept.analyzer_port,
        virtual_networks=frozenset(_names(intercept.virtual_networks)),
        targets=tuple(_names(intercept.targets)),
    )


def _names(value: object) -> list[str]:
    # A JSON column: validation stores a list of strings, but a row written around it
    # could hold a string, whose characters must not become names.
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"not a list of names: {value!r:.80}")
    return value


def load_gate() -> Gate:
    """A gate from every router and intercept in the database."""
    routers = [
        RouterRule(router.pk, router.address, contrail=router.kind == Router.Kind.CN2)
        for router in Router.objects.all()
    ]
    intercepts = []
    for intercept in Intercept.objects.select_related("case").prefetch_related("routers"):
        try:
            rule = intercept_rule(
                intercept, frozenset(router.pk for router in intercept.routers.all())
            )
        except ValueError as error:
            # A row validation would refuse (written around it): that intercept claims
            # nothing, the others still do.
            logger.error("intercept %s is left out of the gate: %s", intercept.liid, error)
            continue
        intercepts.append(rule)
    return Gate(routers, intercepts)


def gate_fingerprint() -> tuple[Any, ...]:
    """Something cheap to compute that changes whenever the gate would.

    Row counts catch deletions; the latest ``updated_at`` catches edits and additions;
    the intercept-router links have no timestamp, so their count and highest primary
    key stand in (``routers.set()`` adds rows with new keys and deletes the others).
    """
    fingerprint: list[Any] = []
    for model in (Router, Intercept, Case):
        totals = model.objects.aggregate(count=Count("pk"), latest=Max("updated_at"))
        fingerprint += [totals["count"], totals["latest"]]
    links = Intercept.routers.through.objects.aggregate(count=Count("pk"), highest=Max("pk"))
    fingerprint += [links["count"], links["highest"]]
    return tuple(fingerprint)


class GateWatcher:
    """Keeps a capture's gate in step with the records: :meth:`refresh` (about once a
    second) rebuilds it only when :func:`gate_fingerprint` changed, and keeps the old
    one, logged, when the database does not answer."""

    def __init__(self) -> None:
        self._fingerprint = gate_fingerprint()
        self.gate = load_gate()

    def refresh(self) -> Gate:
        try:
            latest = gate_fingerprint()
            if latest != self._fingerprint:
                self.gate = load_gate()
                self._fingerprint = latest
                logger.info("records changed: gate reloaded (%r)", self.gate)
        except DatabaseError as error:
            logger.warning("cannot check the records (%s); keeping the gate", error)
            # A broken connection is not reused; Django opens a new one on the next query.
            connection.close()
        return self.gate
