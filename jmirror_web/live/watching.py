"""What live pages watch: written by the live consumers, read by the receivers.

The receiver builds live summaries only for what some page watches. A connection's
subscriptions are kept in :class:`~jmirror_web.live.models.LiveWatchRow` rows:
:func:`keep` makes a connection's rows those of its current subscriptions (on every
subscribe, unsubscribe and revocation, and every :data:`REFRESH_SECONDS` as a heartbeat
that pushes their expiry :data:`LIFETIME` ahead), and :func:`forget` deletes them when the
connection ends. A web process that crashes deletes nothing: its rows lapse after
:data:`LIFETIME`, and the receivers stop summarising for them.

:func:`load_watch` is the receiver's side, two queries about once a second through
:class:`WatchLoader`, which also deletes lapsed rows now and then. The web tier's and the
receivers' clocks are compared through ``expires_at``: the lifetime's margin (three
heartbeats) absorbs the skew of NTP-synchronised hosts, which an LI site needs anyway for
its timestamps.

Only subscriptions the consumer granted are written (rights are checked before, in
:mod:`jmirror_web.live.rights`): a watch gives no access to anything, it only makes the
receiver send summaries that the consumers still filter by right.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Final

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from jmirror_web.intercepts.models import Session
from jmirror_web.live.models import LiveWatchRow
from jmirror_web.live.protocol import MAX_SUBSCRIPTIONS, Stream, SubscriptionKey
from receiver.watch import NOBODY, LiveWatch

logger = logging.getLogger(__name__)

REFRESH_SECONDS: Final = 30.0
LIFETIME: Final = timedelta(seconds=90)
# How often a receiver deletes lapsed rows (any receiver may: the delete is idempotent).
PRUNE_SECONDS: Final = 60.0
# How often a receiver reads the registry at most: a page that subscribes gets summaries
# within this (plus a round), and it is two small indexed queries.
LOAD_SECONDS: Final = 0.5
MAX_CHANNEL_LENGTH: Final = 200
# A connection holds at most MAX_SUBSCRIPTIONS subscriptions; its rows are bounded alike.
MAX_WATCHES_PER_CONNECTION: Final = MAX_SUBSCRIPTIONS

_KINDS: Final = {
    Stream.SESSION: LiveWatchRow.Kind.SESSION,
    Stream.INTERCEPT: LiveWatchRow.Kind.INTERCEPT,
    Stream.CASE: LiveWatchRow.Kind.CASE,
    Stream.DASHBOARD: LiveWatchRow.Kind.DASHBOARD,
}


def watched(keys: Iterable[SubscriptionKey]) -> set[tuple[str, int]]:
    """The (kind, object id) rows for a connection's subscriptions: health has none."""
    rows: set[tuple[str, int]] = set()
    for stream, object_id in keys:
        kind = _KINDS.get(stream)
        if kind is None:
            continue
        if stream == Stream.DASHBOARD:
            rows.add((kind.value, 0))
        elif object_id is not None:
            rows.add((kind.value, object_id))
    return rows


def keep(channel: str, keys: Iterable[SubscriptionKey], *, now: datetime | None = None) -> None:
    """Make ``channel``'s rows exactly those of ``keys``, expiring :data:`LIFETIME` from
    ``now``. The caller serialises the calls of one connection."""
    if not channel or len(channel) > MAX_CHANNEL_LENGTH:
        raise ValueError(f"a channel name must have 1 to {MAX_CHANNEL_LENGTH} characters")
    rows = watched(keys)
    if len(rows) > MAX_WATCHES_PER_CONNECTION:
        raise ValueError(f"at most {MAX_WATCHES_PER_CONNECTION} watches per connection")
    expires_at = (now or timezone.now()) + LIFETIME
    # Replaced as a whole: at most 20 rows, and no row of a subscription ended can survive.
    with transaction.atomic():
        LiveWatchRow.objects.filter(channel=channel).delete()
        LiveWatchRow.objects.bulk_create(
            [
                LiveWatchRow(channel=channel, kind=kind, object_id=object_id, expires_at=expires_at)
                for kind, object_id in sorted(rows)
            ]
        )


def refresh(channel: str, *, now: datetime | None = None) -> int:
    """Push the expiry of ``channel``'s rows :data:`LIFETIME` ahead of ``now``, in one
    UPDATE (the heartbeat of a connection whose subscriptions did not change); the number
    of rows refreshed, which the caller compares with what it wrote."""
    return LiveWatchRow.objects.filter(channel=channel).update(
        expires_at=(now or timezone.now()) + LIFETIME
    )


def forget(channel: str) -> None:
    """Delete ``channel``'s rows: the connection ended."""
    LiveWatchRow.objects.filter(channel=channel).delete()


def load_watch(now: datetime | None = None) -> LiveWatch:
    """What the live pages watch now, from the rows not lapsed: two queries, sessions
    named by their stream (router id, mid, sid) through a join with their rows."""
    live = LiveWatchRow.objects.filter(expires_at__gt=now or timezone.now())
    objects: dict[str, set[int]] = {kind.value: set() for kind in LiveWatchRow.Kind}
    rows = live.exclude(kind=LiveWatchRow.Kind.SESSION).values_list("kind", "object_id")
    # Many connections may watch one case: each pair once.
    for kind, object_id in rows.distinct():
        objects[kind].add(object_id)
    sessions = live.filter(kind=LiveWatchRow.Kind.SESSION).values("object_id")
    streams = Session.objects.filter(pk__in=sessions).values_list("router_id", "mid", "sid")
    return LiveWatch(
        streams=frozenset(streams),
        intercepts=frozenset(objects[LiveWatchRow.Kind.INTERCEPT]),
        cases=frozenset(objects[LiveWatchRow.Kind.CASE]),
        dashboard=bool(objects[LiveWatchRow.Kind.DASHBOARD]),
    )


def prune(now: datetime | None = None) -> int:
    """Delete the lapsed rows (of connections that ended without deleting theirs)."""
    deleted, _ = LiveWatchRow.objects.filter(expires_at__lte=now or timezone.now()).delete()
    return deleted


class WatchLoader:
    """The receiver's view of the registry: :meth:`refresh` reloads it at most every
    ``interval`` seconds (so the bookkeeping thread may call it on every turn of its
    loop); while the database does not answer, the last watch is kept, logged once per
    outage."""

    def __init__(self, interval: float = LOAD_SECONDS) -> None:
        self.watch: LiveWatch = NOBODY
        self._interval = interval
        self._next_load = 0.0
        self._next_prune = time.monotonic() + PRUNE_SECONDS
        self._failing = False

    def refresh(self) -> LiveWatch:
        now = time.monotonic()
        if now < self._next_load:
            return self.watch
        self._next_load = now + self._interval
        try:
            watch = load_watch()
            # The same object while nothing changed: the receive loop rebinds every
            # session when handed a watch that is not the one it applied.
            if watch != self.watch:
                self.watch = watch
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + PRUNE_SECONDS
                prune()
        except DatabaseError as error:
            if not self._failing:
                logger.warning("cannot read what live pages watch (%s); keeping the last", error)
            self._failing = True
            # A broken connection is not reused; Django opens a new one on the next query.
            connection.close()
            return self.watch
        if self._failing:
            logger.info("reading what live pages watch again")
        self._failing = False
        return self.watch
