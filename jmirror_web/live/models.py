"""The registry of what live pages watch, shared by every web process and receiver.

The web tier and the receivers may run on different hosts; what they share is the
database. Each live connection writes one :class:`LiveWatchRow` per session, intercept,
case or dashboard it subscribes to (at most ``MAX_SUBSCRIPTIONS``), refreshes their expiry
while it lives and deletes them when it unsubscribes or ends; the receivers read the rows
not yet expired (:mod:`jmirror_web.live.watching`). A web process that dies without
deleting its rows stops refreshing them, and they lapse.
"""

from __future__ import annotations

from django.db import models


class LiveWatchRow(models.Model):
    """One subscription of one live connection, as the receivers need to know it."""

    class Kind(models.TextChoices):
        SESSION = "session"
        INTERCEPT = "intercept"
        CASE = "case"
        # A dashboard: per-case counts of every case (the receiver sums them for all).
        DASHBOARD = "dashboard"

    # The connection's channel-layer name (unique per connection, across processes).
    channel = models.CharField(max_length=200)
    kind = models.CharField(max_length=9, choices=Kind.choices)
    # The Session, Intercept or Case primary key; 0 for a dashboard. Not a foreign key:
    # a watch must neither hold its object back from deletion nor be deleted with it.
    object_id = models.PositiveBigIntegerField()
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "kind", "object_id"], name="one_watch_per_connection_object"
            )
        ]
        indexes = [models.Index(fields=["expires_at"], name="live_watch_expires_at")]

    def __str__(self) -> str:
        return f"{self.kind} {self.object_id} watched by {self.channel}"
